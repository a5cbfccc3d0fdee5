//! The worker suite's settings on top of `support::app` (a prefetch of 16, quick retries),
//! its prune event, and a drain check on the broker's management API.

use std::time::Duration;

use model_pruner::domain::event::{Event, ExperimentPrune};
use model_pruner::settings::Settings;

pub use crate::support::app::{TestApp, attempts, header};
use crate::support::eventually::eventually_every;
use crate::support::management::Management;
use crate::support::mlflow_fixtures::ExperimentFixture;
use crate::support::world::{keep, sweep};
use crate::support::{app, world};

/// Settings with unique names and small delays; `MODEL_PRUNER__*` from the environment apply.
pub fn settings() -> Settings {
    let mut s = app::quick_retries(app::settings("mp-test", Duration::from_secs(1)));
    s.broker.prefetch = 16;
    s
}

/// Fresh settings that consume the same queues as `base`.
pub fn same_queues(base: &Settings) -> Settings {
    app::same_queues(settings(), base)
}

/// A `run.finished` body for `run`, keeping the top `keep_top`.
pub fn run_finished(exp: &ExperimentFixture, run: &world::ModelRun, keep_top: i64) -> Vec<u8> {
    world::run_finished(exp, run, keep(keep_top)).to_body()
}

/// An `experiment.prune` body keeping the top `keep_top`, forced or not.
pub fn prune(exp: &ExperimentFixture, keep_top: i64, force: bool) -> Vec<u8> {
    Event::ExperimentPrune(ExperimentPrune {
        force,
        ..sweep(exp, keep(keep_top))
    })
    .to_body()
}

/// The statistics the management API shows are refreshed every 5 s by default.
const STATS_INTERVAL: Duration = Duration::from_secs(6);

/// Waits until the work queue has no ready messages (checked live over AMQP) and then no
/// ready or unacked ones in a management sample taken at least one statistics interval later.
pub async fn wait_drained(app: &TestApp, timeout: Duration) {
    let management = Management::from_env();
    let work = app.topology.work_queue.clone();
    let mut empty_since = None;
    eventually_every(
        timeout,
        Duration::from_millis(250),
        &format!("work queue {work} not drained"),
        async || {
            let now = tokio::time::Instant::now();
            if app.queue_len(&work).await > 0 {
                empty_since = None;
                false
            } else {
                let since = *empty_since.get_or_insert(now);
                now - since >= STATS_INTERVAL && management.queue_messages(&work).await == Some(0)
            }
        },
    )
    .await;
}

/// The sum of the series of counter `name` of the app's worker that carry `label`, if given.
pub fn counted(app: &TestApp, name: &str, label: Option<(&str, &str)>) -> f64 {
    app.metrics()
        .registry()
        .gather()
        .iter()
        .filter(|f| f.name() == name)
        .flat_map(|f| f.get_metric())
        .filter(|m| {
            label.is_none_or(|(k, v)| {
                m.get_label()
                    .iter()
                    .any(|l| l.name() == k && l.value() == v)
            })
        })
        .map(|m| m.get_counter().value())
        .sum()
}
