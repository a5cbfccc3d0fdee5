//! Prometheus metrics of the worker. Labels are low-cardinality (target, outcome, class), never
//! an experiment or run id.

use std::sync::LazyLock;

use prometheus::{IntCounterVec, Opts, Registry};

/// The registry `/metrics` serves.
pub static REGISTRY: LazyLock<Registry> = LazyLock::new(Registry::new);

fn counter_vec(name: &str, help: &str, labels: &[&str]) -> IntCounterVec {
    let c = IntCounterVec::new(Opts::new(name, help), labels).expect("valid metric definition");
    REGISTRY
        .register(Box::new(c.clone()))
        .expect("metric registered once");
    c
}

static RETRIES: LazyLock<IntCounterVec> = LazyLock::new(|| {
    counter_vec(
        "model_pruner_retries_total",
        "In-process retries of MLflow and object-store calls after a transient failure.",
        &["target"],
    )
});

/// Counts one in-process retry against `target` (`mlflow` or `store`).
pub fn retry(target: &str) {
    RETRIES.with_label_values(&[target]).inc();
}
