//! Prometheus metrics and the listener serving them with `/healthz` and `/readyz`. Each notable
//! event has one function here, called next to the log line that reports it. Labels are
//! low-cardinality (kind, outcome, target, operation, status class, error class), never an
//! experiment or run id.
//!
//! - `server`: the HTTP listener ([`Server`]).
//! - `health`: what `/healthz` and `/readyz` answer ([`Health`]), from the worker's loop, its
//!   broker session and when MLflow and the store last answered.

mod health;
mod server;

use std::collections::BTreeSet;
use std::sync::{LazyLock, Mutex, PoisonError};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use prometheus::core::Collector;
use prometheus::{
    Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts,
    Registry,
};

pub use health::{Health, ProbeReport, STALLED_AFTER, UNANSWERED_FOR};
pub use server::Server;

use crate::domain::classify::{ErrorClass, REASONS};
use crate::domain::event::{EXPERIMENT_PRUNE, RUN_FINISHED};

/// The registry `/metrics` serves.
pub static REGISTRY: LazyLock<Registry> = LazyLock::new(Registry::new);

/// Every series name the worker defines, histogram suffixes included.
static NAMES: Mutex<BTreeSet<String>> = Mutex::new(BTreeSet::new());

/// One HTTP call: 5 ms to 30 s (the default request timeout).
const REQUEST_BUCKETS: &[f64] = &[
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
];
/// One message or pass: 10 ms to 10 min (a large experiment deletes many objects).
const PASS_BUCKETS: &[f64] = &[
    0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0,
];

/// Message kinds: the routing keys of the contract, anything else is `unknown`.
const KINDS: [&str; 3] = [RUN_FINISHED, EXPERIMENT_PRUNE, "unknown"];

struct Metrics {
    received: IntCounterVec,
    finished: IntCounterVec,
    processing: HistogramVec,
    in_flight: IntGauge,
    passes: IntCounterVec,
    pass_duration: Histogram,
    coalesced: IntCounter,
    last_pass: IntGauge,
    runs_evaluated: IntCounter,
    runs: IntCounterVec,
    models_deleted: IntCounter,
    objects_deleted: IntCounter,
    bytes_deleted: IntCounter,
    requests: IntCounterVec,
    request_duration: HistogramVec,
    retries: IntCounterVec,
    dead_letters: IntCounterVec,
    acks_lost: IntCounterVec,
    follow_ups: IntCounter,
}

static M: LazyLock<Metrics> = LazyLock::new(Metrics::new);

impl Metrics {
    fn new() -> Self {
        let m = Metrics {
            received: counter_vec(
                "model_pruner_messages_received_total",
                "Deliveries taken from the work queue, by kind (routing key).",
                &["kind"],
            ),
            finished: counter_vec(
                "model_pruner_messages_finished_total",
                "Deliveries settled, by kind and outcome: ok (acked), delayed (sent to a delay \
                 queue), dead_lettered, retried (re-publishing failed: back to the work queue), \
                 handed_back (held up to broker.ack_deadline: sent through the first delay queue \
                 with its attempt unchanged), snoozed (a follow-up pass that is not due yet, sent \
                 on through a delay queue).",
                &["kind", "outcome"],
            ),
            processing: histogram_vec(
                "model_pruner_processing_duration_seconds",
                "Time from receiving a delivery to settling it, waiting for its experiment included.",
                &["kind"],
                PASS_BUCKETS,
            ),
            in_flight: register(
                IntGauge::new(
                    "model_pruner_messages_in_flight",
                    "Deliveries received and not settled yet (waiting for their experiment or in a pass).",
                ),
                &[""],
            ),
            passes: counter_vec(
                "model_pruner_passes_total",
                "Ranking passes, by outcome (ok, failed, panicked, timed_out: cancelled at \
                 broker.ack_deadline).",
                &["outcome"],
            ),
            pass_duration: register(
                Histogram::with_opts(
                    HistogramOpts::new(
                        "model_pruner_pass_duration_seconds",
                        "Duration of one ranking-and-pruning pass.",
                    )
                    .buckets(PASS_BUCKETS.to_vec()),
                ),
                &["_bucket", "_sum", "_count"],
            ),
            coalesced: counter(
                "model_pruner_coalesced_events_total",
                "Events handled by a pass started for an earlier event of their experiment.",
            ),
            last_pass: register(
                IntGauge::new(
                    "model_pruner_last_successful_pass_timestamp_seconds",
                    "Unix time of the last successful pass (0 before the first).",
                ),
                &[""],
            ),
            runs_evaluated: counter(
                "model_pruner_runs_evaluated_total",
                "Runs ranked by successful passes.",
            ),
            runs: counter_vec(
                "model_pruner_runs_total",
                "Runs by what passes did with them: kept, in_grace (out of the top N but \
                 finished less than the policy's grace ago), protected, skipped, or pruned \
                 (model files deleted and run marked; dry runs prune nothing).",
                &["decision"],
            ),
            models_deleted: counter(
                "model_pruner_models_deleted_total",
                "Model folders deleted from the store.",
            ),
            objects_deleted: counter(
                "model_pruner_objects_deleted_total",
                "Objects deleted from the store.",
            ),
            bytes_deleted: counter(
                "model_pruner_deleted_bytes_total",
                "Bytes freed in the store.",
            ),
            requests: counter_vec(
                "model_pruner_requests_total",
                "Requests to MLflow and the object store, by target, operation and status class \
                 (2xx, 4xx, 5xx; error when no answer came).",
                &["target", "operation", "status"],
            ),
            request_duration: histogram_vec(
                "model_pruner_request_duration_seconds",
                "Latency of requests to MLflow and the object store.",
                &["target", "operation"],
                REQUEST_BUCKETS,
            ),
            retries: counter_vec(
                "model_pruner_retries_total",
                "In-process retries of MLflow and object-store calls after a transient failure, \
                 by target and reason.",
                &["target", "reason"],
            ),
            dead_letters: counter_vec(
                "model_pruner_dead_letters_total",
                "Messages sent to the dead-letter queue, by error class and reason (error kind).",
                &["class", "reason"],
            ),
            acks_lost: counter_vec(
                "model_pruner_acks_lost_total",
                "Acks and nacks that did not reach RabbitMQ (the channel had closed, e.g. after \
                 consumer_timeout), by operation: the broker redelivers those messages.",
                &["operation"],
            ),
            follow_ups: counter(
                "model_pruner_follow_ups_scheduled_total",
                "Follow-up passes scheduled at the end of a grace window (one per experiment \
                 while one is pending).",
            ),
        };
        let build_info = register(
            IntGaugeVec::new(
                Opts::new(
                    "model_pruner_build_info",
                    "Always 1; the version label names the running build.",
                ),
                &["version"],
            ),
            &[""],
        );
        build_info
            .with_label_values(&[env!("CARGO_PKG_VERSION")])
            .set(1);
        // Series that exist from the start, so rates and ratios are 0 rather than absent.
        for kind in KINDS {
            m.received.with_label_values(&[kind]);
            for outcome in [
                "ok",
                "retried",
                "delayed",
                "dead_lettered",
                "handed_back",
                "snoozed",
            ] {
                m.finished.with_label_values(&[kind, outcome]);
            }
        }
        for outcome in ["ok", "failed", "panicked", "timed_out"] {
            m.passes.with_label_values(&[outcome]);
        }
        for operation in ["ack", "nack"] {
            m.acks_lost.with_label_values(&[operation]);
        }
        // A counter series that appears at 1 shows no increase() or rate() in its first
        // window: the dashboard would miss the first retry of a kind.
        for target in [Target::Mlflow, Target::Store] {
            for reason in REASONS {
                m.retries.with_label_values(&[target.as_str(), reason]);
            }
        }
        for decision in ["kept", "in_grace", "protected", "skipped", "pruned"] {
            m.runs.with_label_values(&[decision]);
        }
        m
    }
}

fn register<C: Collector + Clone + 'static>(
    collector: Result<C, prometheus::Error>,
    suffixes: &[&str],
) -> C {
    let collector = collector.expect("valid metric definition");
    let mut names = NAMES.lock().unwrap_or_else(PoisonError::into_inner);
    for desc in collector.desc() {
        for suffix in suffixes {
            names.insert(format!("{}{suffix}", desc.fq_name));
        }
    }
    REGISTRY
        .register(Box::new(collector.clone()))
        .expect("metric registered once");
    collector
}

fn counter(name: &str, help: &str) -> IntCounter {
    register(IntCounter::new(name, help), &[""])
}

fn counter_vec(name: &str, help: &str, labels: &[&str]) -> IntCounterVec {
    register(IntCounterVec::new(Opts::new(name, help), labels), &[""])
}

fn histogram_vec(name: &str, help: &str, labels: &[&str], buckets: &[f64]) -> HistogramVec {
    let opts = HistogramOpts::new(name, help).buckets(buckets.to_vec());
    register(
        HistogramVec::new(opts, labels),
        &["_bucket", "_sum", "_count"],
    )
}

/// Counts a follow-up pass scheduled at the end of a grace window.
pub fn follow_up_scheduled() {
    M.follow_ups.inc();
}

/// Registers every metric (and the build info); idempotent. The server calls it before serving.
pub fn init() {
    LazyLock::force(&M);
}

/// Every series name `/metrics` can show, histograms as `_bucket`, `_sum` and `_count`.
pub fn exported_names() -> BTreeSet<String> {
    init();
    NAMES.lock().unwrap_or_else(PoisonError::into_inner).clone()
}

fn kind(routing_key: &str) -> &'static str {
    KINDS
        .into_iter()
        .find(|k| *k == routing_key)
        .unwrap_or("unknown")
}

fn unix_now() -> Duration {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
}

/// A delivery the worker holds: received and in flight from [`Message::received`] until it is
/// dropped, settled or not (a delivery dropped with its connection is redelivered).
#[derive(Debug)]
pub struct Message {
    kind: &'static str,
    received: Instant,
}

/// How a delivery was settled.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Finished<'a> {
    Ok,
    /// Re-publishing failed; the delivery was returned to the work queue.
    Retried,
    Delayed,
    /// Held up to `broker.ack_deadline`: sent through the first delay queue, attempt unchanged.
    HandedBack,
    /// A follow-up pass that is not due yet: sent on through a delay queue.
    Snoozed,
    DeadLettered {
        class: &'a str,
        reason: &'a str,
    },
}

impl Message {
    pub fn received(routing_key: &str) -> Self {
        let kind = kind(routing_key);
        M.received.with_label_values(&[kind]).inc();
        M.in_flight.inc();
        Message {
            kind,
            received: Instant::now(),
        }
    }

    /// Counts the settlement and the time since the delivery arrived.
    pub fn finished(&self, how: Finished<'_>) {
        let outcome = match how {
            Finished::Ok => "ok",
            Finished::Retried => "retried",
            Finished::Delayed => "delayed",
            Finished::HandedBack => "handed_back",
            Finished::Snoozed => "snoozed",
            Finished::DeadLettered { class, reason } => {
                M.dead_letters.with_label_values(&[class, reason]).inc();
                "dead_lettered"
            }
        };
        M.finished.with_label_values(&[self.kind, outcome]).inc();
        M.processing
            .with_label_values(&[self.kind])
            .observe(self.received.elapsed().as_secs_f64());
    }
}

impl Drop for Message {
    fn drop(&mut self) {
        M.in_flight.dec();
    }
}

/// Starts the dead-letter counter at zero for every error class and each of `kinds`, so that
/// the first dead letter of a kind shows as an increase.
pub fn expect_dead_letters(kinds: impl IntoIterator<Item = &'static str>) {
    for kind in kinds {
        for class in [ErrorClass::Transient, ErrorClass::Permanent] {
            M.dead_letters.with_label_values(&[class.as_str(), kind]);
        }
    }
}

/// Counts an ack or nack (`operation`) that did not reach the broker.
pub fn ack_lost(operation: &'static str) {
    M.acks_lost.with_label_values(&[operation]).inc();
}

/// What a successful pass decided, run by run, for the runs counter.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RunCounts {
    pub evaluated: usize,
    pub kept: usize,
    pub in_grace: usize,
    pub protected: usize,
    pub skipped: usize,
}

/// Counts a pass that covered `events` deliveries; a successful one (`Some`) also counts what
/// it decided.
pub fn pass_finished(runs: Option<RunCounts>, events: usize, elapsed: Duration) {
    M.pass_duration.observe(elapsed.as_secs_f64());
    M.coalesced.inc_by(events.saturating_sub(1) as u64);
    let Some(runs) = runs else {
        M.passes.with_label_values(&["failed"]).inc();
        return;
    };
    M.passes.with_label_values(&["ok"]).inc();
    M.runs_evaluated.inc_by(runs.evaluated as u64);
    for (decision, count) in [
        ("kept", runs.kept),
        ("in_grace", runs.in_grace),
        ("protected", runs.protected),
        ("skipped", runs.skipped),
    ] {
        M.runs.with_label_values(&[decision]).inc_by(count as u64);
    }
    M.last_pass.set(unix_now().as_secs() as i64);
}

/// Counts a pass that panicked (`outcome="panicked"`) or was cancelled at the ack deadline
/// (`outcome="timed_out"`); its deliveries are retried later.
pub fn pass_interrupted(outcome: &'static str, events: usize, elapsed: Duration) {
    M.pass_duration.observe(elapsed.as_secs_f64());
    M.coalesced.inc_by(events.saturating_sub(1) as u64);
    M.passes.with_label_values(&[outcome]).inc();
}

/// Counts a run whose `models` model folders (`objects` objects, `bytes` bytes) were deleted.
pub fn run_pruned(models: usize, objects: u64, bytes: u64) {
    M.runs.with_label_values(&["pruned"]).inc();
    M.models_deleted.inc_by(models as u64);
    M.objects_deleted.inc_by(objects);
    M.bytes_deleted.inc_by(bytes);
}

/// The system a request went to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Target {
    Mlflow,
    Store,
}

impl Target {
    pub fn as_str(self) -> &'static str {
        match self {
            Target::Mlflow => "mlflow",
            Target::Store => "store",
        }
    }
}

/// Counts one request to `target` answered with `status` (`None`: no answer) after `elapsed`,
/// and tells readiness whether the system answered (any status below 500).
pub fn request(target: Target, operation: &str, status: Option<u16>, elapsed: Duration) {
    let class = match status {
        Some(200..=299) => "2xx",
        Some(300..=399) => "3xx",
        Some(400..=499) => "4xx",
        Some(500..=599) => "5xx",
        _ => "error",
    };
    M.requests
        .with_label_values(&[target.as_str(), operation, class])
        .inc();
    M.request_duration
        .with_label_values(&[target.as_str(), operation])
        .observe(elapsed.as_secs_f64());
    health::record(target, status.is_some_and(|s| s < 500), unix_now());
}

/// Counts one in-process retry against `target` (`mlflow` or `store`) for `reason`.
pub fn retry(target: &str, reason: &str) {
    M.retries.with_label_values(&[target, reason]).inc();
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unknown_routing_keys_share_one_kind() {
        assert_eq!(kind("run.finished"), "run.finished");
        assert_eq!(kind("experiment.prune"), "experiment.prune");
        assert_eq!(kind("model.deleted"), "unknown");
        assert_eq!(kind(""), "unknown");
    }

    #[test]
    fn names_follow_prometheus_conventions() {
        let names = exported_names();
        assert!(names.contains("model_pruner_build_info"));
        assert!(names.contains("model_pruner_request_duration_seconds_bucket"));
        for name in &names {
            assert!(name.starts_with("model_pruner_"), "{name}");
            let unit = [
                "_total",
                "_seconds",
                "_seconds_bucket",
                "_seconds_sum",
                "_seconds_count",
                "_in_flight",
                "_info",
            ];
            assert!(unit.iter().any(|u| name.ends_with(u)), "{name}");
        }
    }
}
