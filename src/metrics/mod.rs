//! Prometheus metrics and the listener serving them with `/healthz` and `/readyz`. A leaf: it
//! knows labels and counts, not the errors or reports they come from. [`Metrics`] is a value
//! (a registry of its own), handed to the clients, the engine and the worker; each notable
//! event is one of its methods, called next to the log line that reports it. Labels are
//! low-cardinality (kind, outcome, target, operation, status class, error class), never an
//! experiment or run id.
//!
//! - `server`: the HTTP listener ([`Server`]).
//! - `health`: what `/healthz` and `/readyz` answer ([`Health`]), from the worker's loop, its
//!   broker session and when MLflow and the store last answered.

mod health;
mod server;

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use prometheus::core::Collector;
use prometheus::{
    Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts,
    Registry,
};

use health::Upstream;
pub use health::{Health, ProbeReport, Refused, STALLED_AFTER, UNANSWERED_FOR};
pub use server::Server;

/// Totals of one registry so far: requests and what was deleted ([`Metrics::progress`]).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Progress {
    /// Requests sent to MLflow, whatever the answer (`model_pruner_requests_total`).
    pub mlflow_requests: u64,
    /// Requests sent to the object store, whatever the answer (the same counter).
    pub store_requests: u64,
    /// Model folders deleted from the store (`model_pruner_models_deleted_total`).
    pub models_deleted: u64,
    /// Objects deleted from the store (`model_pruner_objects_deleted_total`).
    pub objects_deleted: u64,
    /// Bytes freed in the store (`model_pruner_deleted_bytes_total`).
    pub bytes_deleted: u64,
}

/// The gauges `model-pruner report --textfile` writes for a textfile collector: batch-job
/// figures of the last report, without labels, not series of the worker's registry.
pub const REPORT_GAUGES: [(&str, &str); 7] = [
    (
        "model_pruner_report_stored_bytes",
        "Bytes under the reported experiments' artifact roots.",
    ),
    (
        "model_pruner_report_stored_objects",
        "Objects under the reported experiments' artifact roots.",
    ),
    (
        "model_pruner_report_reclaimable_bytes",
        "Bytes a pass over the reported experiments would delete now.",
    ),
    (
        "model_pruner_report_reclaimable_models",
        "Models a pass over the reported experiments would delete now.",
    ),
    (
        "model_pruner_report_experiments",
        "Experiments in the report.",
    ),
    (
        "model_pruner_report_skipped_experiments",
        "Experiments the report could not read to the end.",
    ),
    (
        "model_pruner_report_timestamp_seconds",
        "When the report was made, in seconds since the epoch.",
    ),
];

use crate::domain::classify::{ErrorClass, REASONS};
use crate::domain::event::{EXPERIMENT_PRUNE, RUN_FINISHED};
use crate::domain::size::Bytes;

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

/// The worker's metrics: a registry of their own (what `/metrics` serves) and the series in it,
/// plus when MLflow and the store last answered (for `/readyz`). Cheap to clone: every clone
/// counts into the same series. Each notable event is one method, called next to the log line
/// that reports it.
#[derive(Clone)]
pub struct Metrics(Arc<Series>);

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Metrics")
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics::new()
    }
}

struct Series {
    registry: Registry,
    /// Every series name defined, histogram suffixes included.
    names: BTreeSet<String>,
    upstream: Arc<Upstream>,
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
    copies_refused: IntCounterVec,
    acks_lost: IntCounterVec,
    follow_ups: IntCounter,
    concurrency_limit: IntGaugeVec,
    requests_in_flight: IntGaugeVec,
    overloads: IntCounterVec,
}

/// Registers collectors into a registry and remembers their series names.
struct Registrar {
    registry: Registry,
    names: BTreeSet<String>,
}

impl Metrics {
    /// Defines every series (and the build info) in a new registry.
    pub fn new() -> Self {
        let mut r = Registrar {
            registry: Registry::new(),
            names: BTreeSet::new(),
        };
        let mut m = Series {
            registry: Registry::new(),
            names: BTreeSet::new(),
            upstream: Arc::new(Upstream::default()),
            received: r.counter_vec(
                "model_pruner_messages_received_total",
                "Deliveries taken from the work queue, by kind (routing key).",
                &["kind"],
            ),
            finished: r.counter_vec(
                "model_pruner_messages_finished_total",
                "Deliveries settled, by kind and outcome: ok (acked), delayed (sent to a delay \
                 queue), dead_lettered, retried (re-publishing failed: back to the work queue), \
                 handed_back (held up to broker.ack_deadline: sent through the first delay queue \
                 with its attempt unchanged), snoozed (a follow-up pass that is not due yet, sent \
                 on through a delay queue).",
                &["kind", "outcome"],
            ),
            processing: r.histogram_vec(
                "model_pruner_processing_duration_seconds",
                "Time from receiving a delivery to settling it, waiting for its experiment included.",
                &["kind"],
                PASS_BUCKETS,
            ),
            in_flight: r.register(
                IntGauge::new(
                    "model_pruner_messages_in_flight",
                    "Deliveries received and not settled yet (waiting for their experiment or in a pass).",
                ),
                &[""],
            ),
            passes: r.counter_vec(
                "model_pruner_passes_total",
                "Ranking passes, by outcome (ok, failed, panicked, timed_out: cancelled at \
                 broker.ack_deadline).",
                &["outcome"],
            ),
            pass_duration: r.register(
                Histogram::with_opts(
                    HistogramOpts::new(
                        "model_pruner_pass_duration_seconds",
                        "Duration of one ranking-and-pruning pass.",
                    )
                    .buckets(PASS_BUCKETS.to_vec()),
                ),
                &["_bucket", "_sum", "_count"],
            ),
            coalesced: r.counter(
                "model_pruner_coalesced_events_total",
                "Events handled by a pass started for an earlier event of their experiment.",
            ),
            last_pass: r.register(
                IntGauge::new(
                    "model_pruner_last_successful_pass_timestamp_seconds",
                    "Unix time of the last successful pass (0 before the first).",
                ),
                &[""],
            ),
            runs_evaluated: r.counter(
                "model_pruner_runs_evaluated_total",
                "Runs ranked by successful passes.",
            ),
            runs: r.counter_vec(
                "model_pruner_runs_total",
                "Runs by what passes did with them: kept, in_grace (out of the top N but \
                 finished less than the policy's grace ago), protected, skipped, pruned \
                 (model files deleted and run marked; dry runs prune nothing), empty_folder \
                 (planned, but its folders held no file: not marked) or unmarked (files \
                 deleted, MLflow refused the mark; the next pass completes it).",
                &["decision"],
            ),
            models_deleted: r.counter(
                "model_pruner_models_deleted_total",
                "Model folders deleted from the store.",
            ),
            objects_deleted: r.counter(
                "model_pruner_objects_deleted_total",
                "Objects deleted from the store.",
            ),
            bytes_deleted: r.counter(
                "model_pruner_deleted_bytes_total",
                "Bytes freed in the store.",
            ),
            requests: r.counter_vec(
                "model_pruner_requests_total",
                "Requests to MLflow and the object store, by target, operation and status class \
                 (2xx, 4xx, 5xx; error when no answer came).",
                &["target", "operation", "status"],
            ),
            request_duration: r.histogram_vec(
                "model_pruner_request_duration_seconds",
                "Latency of requests to MLflow and the object store.",
                &["target", "operation"],
                REQUEST_BUCKETS,
            ),
            retries: r.counter_vec(
                "model_pruner_retries_total",
                "In-process retries of MLflow and object-store calls after a transient failure, \
                 by target and reason.",
                &["target", "reason"],
            ),
            dead_letters: r.counter_vec(
                "model_pruner_dead_letters_total",
                "Messages sent to the dead-letter queue, by error class and reason (error kind).",
                &["class", "reason"],
            ),
            copies_refused: r.counter_vec(
                "model_pruner_copies_refused_total",
                "Copies RabbitMQ refused (nacked) because the target queue was full, by queue \
                 (dead_letter, delay): the message stays in the work queue and is tried again.",
                &["queue"],
            ),
            acks_lost: r.counter_vec(
                "model_pruner_acks_lost_total",
                "Acks and nacks that did not reach RabbitMQ (the channel had closed, e.g. after \
                 consumer_timeout), by operation: the broker redelivers those messages.",
                &["operation"],
            ),
            follow_ups: r.counter(
                "model_pruner_follow_ups_scheduled_total",
                "Follow-up passes scheduled at the end of a grace window (one per experiment \
                 while one is pending).",
            ),
            concurrency_limit: r.gauge_vec(
                "model_pruner_requests_allowed_in_flight",
                "Requests this process may have in flight towards a target (mlflow, store) now: \
                 the adaptive limit (mlflow.requests_in_flight, store.requests_in_flight).",
                &["target"],
            ),
            requests_in_flight: r.gauge_vec(
                "model_pruner_requests_in_flight",
                "Requests this process has in flight towards a target now.",
                &["target"],
            ),
            overloads: r.counter_vec(
                "model_pruner_overloads_total",
                "Requests to a target that timed out or were answered as overloaded (429, 502, \
                 503, 504, S3 SlowDown), by target: each cuts the adaptive limit.",
                &["target"],
            ),
        };
        let build_info = r.register(
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
                "superseded",
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
        for queue in ["dead_letter", "delay"] {
            m.copies_refused.with_label_values(&[queue]);
        }
        // A counter series that appears at 1 shows no increase() or rate() in its first
        // window: the dashboard would miss the first retry of a kind.
        for target in [Target::Mlflow, Target::Store] {
            m.overloads.with_label_values(&[target.as_str()]);
            for reason in REASONS {
                m.retries.with_label_values(&[target.as_str(), reason]);
            }
        }
        for decision in [
            "kept",
            "in_grace",
            "protected",
            "skipped",
            "pruned",
            "empty_folder",
            "unmarked",
        ] {
            m.runs.with_label_values(&[decision]);
        }
        m.registry = r.registry;
        m.names = r.names;
        Metrics(Arc::new(m))
    }
}

impl Registrar {
    fn register<C: Collector + Clone + 'static>(
        &mut self,
        collector: Result<C, prometheus::Error>,
        suffixes: &[&str],
    ) -> C {
        let collector = collector.expect("valid metric definition");
        for desc in collector.desc() {
            for suffix in suffixes {
                self.names.insert(format!("{}{suffix}", desc.fq_name));
            }
        }
        self.registry
            .register(Box::new(collector.clone()))
            .expect("metric registered once");
        collector
    }

    fn counter(&mut self, name: &str, help: &str) -> IntCounter {
        self.register(IntCounter::new(name, help), &[""])
    }

    fn gauge_vec(&mut self, name: &str, help: &str, labels: &[&str]) -> IntGaugeVec {
        self.register(IntGaugeVec::new(Opts::new(name, help), labels), &[""])
    }

    fn counter_vec(&mut self, name: &str, help: &str, labels: &[&str]) -> IntCounterVec {
        self.register(IntCounterVec::new(Opts::new(name, help), labels), &[""])
    }

    fn histogram_vec(
        &mut self,
        name: &str,
        help: &str,
        labels: &[&str],
        buckets: &[f64],
    ) -> HistogramVec {
        let opts = HistogramOpts::new(name, help).buckets(buckets.to_vec());
        self.register(
            HistogramVec::new(opts, labels),
            &["_bucket", "_sum", "_count"],
        )
    }
}

impl Metrics {
    /// Counts a follow-up pass scheduled at the end of a grace window.
    pub fn follow_up_scheduled(&self) {
        self.0.follow_ups.inc();
    }

    /// Starts the dead-letter counter at zero for every error class and each of `kinds`, so that
    /// the first dead letter of a kind shows as an increase.
    pub fn expect_dead_letters(&self, kinds: impl IntoIterator<Item = &'static str>) {
        for kind in kinds {
            for class in [ErrorClass::Transient, ErrorClass::Permanent] {
                self.0
                    .dead_letters
                    .with_label_values(&[class.as_str(), kind]);
            }
        }
    }

    /// Counts an ack or nack (`operation`) that did not reach the broker.
    pub fn ack_lost(&self, operation: &'static str) {
        self.0.acks_lost.with_label_values(&[operation]).inc();
    }

    /// Counts a copy RabbitMQ refused into `queue` (`dead_letter` or `delay`): full.
    pub fn copy_refused(&self, queue: &'static str) {
        self.0.copies_refused.with_label_values(&[queue]).inc();
    }

    /// Counts a pass that covered `events` deliveries; a successful one (`Some`) also counts what
    /// it decided.
    pub fn pass_finished(&self, runs: Option<RunCounts>, events: usize, elapsed: Duration) {
        self.0.pass_duration.observe(elapsed.as_secs_f64());
        self.0.coalesced.inc_by(events.saturating_sub(1) as u64);
        let Some(runs) = runs else {
            self.0.passes.with_label_values(&["failed"]).inc();
            return;
        };
        self.0.passes.with_label_values(&["ok"]).inc();
        self.0.runs_evaluated.inc_by(runs.evaluated as u64);
        for (decision, count) in [
            ("kept", runs.kept),
            ("in_grace", runs.in_grace),
            ("protected", runs.protected),
            ("skipped", runs.skipped),
            ("empty_folder", runs.empty_folder),
        ] {
            self.0
                .runs
                .with_label_values(&[decision])
                .inc_by(count as u64);
        }
        self.0.last_pass.set(unix_now().as_secs() as i64);
    }

    /// Counts a pass that panicked (`outcome="panicked"`) or was cancelled at the ack deadline
    /// (`outcome="timed_out"`); its deliveries are retried later.
    pub fn pass_interrupted(&self, outcome: &'static str, events: usize, elapsed: Duration) {
        self.0.pass_duration.observe(elapsed.as_secs_f64());
        self.0.coalesced.inc_by(events.saturating_sub(1) as u64);
        self.0.passes.with_label_values(&[outcome]).inc();
    }

    /// Counts a planned run a pass left with `decision` `unmarked` (files deleted, MLflow
    /// refused the mark).
    pub fn run_left(&self, decision: &'static str) {
        self.0.runs.with_label_values(&[decision]).inc();
    }

    /// Counts a run whose `models` model folders (`objects` objects, `bytes` bytes) were deleted.
    pub fn run_pruned(&self, models: usize, objects: u64, bytes: Bytes) {
        self.0.runs.with_label_values(&["pruned"]).inc();
        self.0.models_deleted.inc_by(models as u64);
        self.0.objects_deleted.inc_by(objects);
        self.0.bytes_deleted.inc_by(bytes.0);
    }

    /// What this registry has counted so far, for a person watching a long command.
    pub fn progress(&self) -> Progress {
        let mut requests = [0u64; 2];
        for family in self.0.requests.collect() {
            for metric in family.get_metric() {
                let target = metric
                    .get_label()
                    .iter()
                    .find(|l| l.name() == "target")
                    .map(|l| l.value().to_owned());
                let slot = match target.as_deref() {
                    Some("mlflow") => 0,
                    Some(_) => 1,
                    None => continue,
                };
                requests[slot] += metric.get_counter().value() as u64;
            }
        }
        Progress {
            mlflow_requests: requests[0],
            store_requests: requests[1],
            models_deleted: self.0.models_deleted.get(),
            objects_deleted: self.0.objects_deleted.get(),
            bytes_deleted: self.0.bytes_deleted.get(),
        }
    }

    /// Counts one request to `target` answered with `status` (`None`: no answer) after `elapsed`,
    /// and tells readiness whether the system answered (any status below 500).
    pub fn request(&self, target: Target, operation: &str, status: Option<u16>, elapsed: Duration) {
        let answered = status.is_some_and(|s| s < 500);
        self.request_answered(target, operation, status, answered, elapsed);
    }

    /// The adaptive limit of requests in flight towards `target`, and how many are.
    pub fn concurrency_limit(&self, target: Target, limit: usize, in_flight: usize) {
        let label = [target.as_str()];
        self.0
            .concurrency_limit
            .with_label_values(&label)
            .set(limit as i64);
        self.0
            .requests_in_flight
            .with_label_values(&label)
            .set(in_flight as i64);
    }

    /// [`Metrics::request`], with the caller saying whether the system itself answered (a
    /// client error that is not the system's own, from whatever sits at a wrong URL, is not
    /// an answer).
    pub fn request_answered(
        &self,
        target: Target,
        operation: &str,
        status: Option<u16>,
        answered: bool,
        elapsed: Duration,
    ) {
        let class = match status {
            Some(200..=299) => "2xx",
            Some(300..=399) => "3xx",
            Some(400..=499) => "4xx",
            Some(500..=599) => "5xx",
            _ => "error",
        };
        self.0
            .requests
            .with_label_values(&[target.as_str(), operation, class])
            .inc();
        self.0
            .request_duration
            .with_label_values(&[target.as_str(), operation])
            .observe(elapsed.as_secs_f64());
        self.0.upstream.record(target, answered, unix_now());
    }

    /// A request to `target` timed out or was answered as overloaded.
    pub fn overload(&self, target: Target) {
        self.0.overloads.with_label_values(&[target.as_str()]).inc();
    }

    /// Counts one in-process retry against `target` (`mlflow` or `store`) for `reason`.
    pub fn retry(&self, target: &str, reason: &str) {
        self.0.retries.with_label_values(&[target, reason]).inc();
    }

    /// Every series name `/metrics` can show, histograms as `_bucket`, `_sum` and `_count`.
    pub fn exported_names(&self) -> &BTreeSet<String> {
        &self.0.names
    }

    /// The registry `/metrics` serves.
    pub fn registry(&self) -> &Registry {
        &self.0.registry
    }

    /// A delivery received: in flight until the returned [`Message`] is dropped.
    pub fn received(&self, routing_key: &str) -> Message {
        let kind = kind(routing_key);
        self.0.received.with_label_values(&[kind]).inc();
        self.0.in_flight.inc();
        Message {
            metrics: self.clone(),
            kind,
            received: Instant::now(),
        }
    }
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
    metrics: Metrics,
    kind: &'static str,
    received: Instant,
}

/// How a delivery was settled.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Finished<'a> {
    /// Handled without a failure and acked (`outcome="ok"`).
    Ok,
    /// Re-publishing failed; the delivery was returned to the work queue.
    Retried,
    /// Failed transiently: copied to a delay queue, then acked (`outcome="delayed"`).
    Delayed,
    /// Held up to `broker.ack_deadline`: sent through the first delay queue, attempt unchanged.
    HandedBack,
    /// A follow-up pass that is not due yet: sent on through a delay queue.
    Snoozed,
    /// A follow-up whose chain another chain took over: stopped.
    Superseded,
    /// Failed permanently or out of attempts: copied to the dead-letter queue, then acked.
    DeadLettered {
        /// The failure's class, `transient` or `permanent` (`model_pruner_dead_letters_total`).
        class: &'a str,
        /// The failure's kind, e.g. `mlflow` or `invalid_message` (label `reason`).
        reason: &'a str,
    },
}

impl Message {
    /// Counts an ack or nack (`operation`) of this delivery that did not reach the broker.
    pub fn ack_lost(&self, operation: &'static str) {
        self.metrics.ack_lost(operation);
    }

    /// Counts the settlement and the time since the delivery arrived.
    pub fn finished(&self, how: Finished<'_>) {
        let series = &self.metrics.0;
        let outcome = match how {
            Finished::Ok => "ok",
            Finished::Retried => "retried",
            Finished::Delayed => "delayed",
            Finished::HandedBack => "handed_back",
            Finished::Snoozed => "snoozed",
            Finished::Superseded => "superseded",
            Finished::DeadLettered { class, reason } => {
                series
                    .dead_letters
                    .with_label_values(&[class, reason])
                    .inc();
                "dead_lettered"
            }
        };
        series
            .finished
            .with_label_values(&[self.kind, outcome])
            .inc();
        series
            .processing
            .with_label_values(&[self.kind])
            .observe(self.received.elapsed().as_secs_f64());
    }
}

impl Drop for Message {
    fn drop(&mut self) {
        self.metrics.0.in_flight.dec();
    }
}

/// What a successful pass decided, run by run, for the runs counter.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RunCounts {
    /// Runs in the pass's ranking, whatever their decision (`model_pruner_runs_evaluated_total`).
    pub evaluated: usize,
    /// Runs kept by rank or as one of the `keep_latest` (`decision="kept"`).
    pub kept: usize,
    /// Runs out of the top N but finished less than `grace` ago (`decision="in_grace"`).
    pub in_grace: usize,
    /// Runs kept by a registry version or the `model_pruner.keep` tag (`decision="protected"`).
    pub protected: usize,
    /// Skipped, but for the runs whose planned folders held no file (`empty_folder`).
    pub skipped: usize,
    /// Planned runs whose folders held no file: nothing deleted, not marked.
    pub empty_folder: usize,
}

/// The system a request went to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Target {
    /// The MLflow tracking server (label `target="mlflow"`).
    Mlflow,
    /// The S3-compatible store holding the model files (label `target="store"`).
    Store,
}

impl Target {
    /// The value of the `target` label: `mlflow` or `store`.
    pub fn as_str(self) -> &'static str {
        match self {
            Target::Mlflow => "mlflow",
            Target::Store => "store",
        }
    }
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
    fn readiness_sees_the_answers_its_own_metrics_counted() {
        let metrics = Metrics::new();
        let health = Health::new(STALLED_AFTER, &metrics);
        health.set_consuming(true);
        let other = Metrics::new();
        let unrelated = Health::new(STALLED_AFTER, &other);
        assert!(health.readiness().body.contains("mlflow: unknown"));
        metrics.request(Target::Mlflow, "runs/search", Some(200), Duration::ZERO);
        metrics.request(Target::Store, "ListObjectsV2", None, Duration::ZERO);
        let ready = health.readiness();
        assert!(ready.ok, "{}", ready.body);
        assert!(
            ready.body.contains("mlflow: ok (last answer"),
            "{}",
            ready.body
        );
        assert!(ready.body.contains("store: degraded"), "{}", ready.body);
        // Another worker's metrics keep their own view.
        assert!(unrelated.readiness().body.contains("mlflow: unknown"));
    }

    #[test]
    fn names_follow_prometheus_conventions() {
        let metrics = Metrics::new();
        let names = metrics.exported_names();
        assert!(names.contains("model_pruner_build_info"));
        assert!(names.contains("model_pruner_request_duration_seconds_bucket"));
        for name in names {
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
