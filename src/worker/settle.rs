//! Carries out an [`Outcome`]: ack, or re-publish (delay queue or dead-letter queue) with
//! confirms and ack only once the broker has the copy, so a message is never lost.

use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use lapin::BasicProperties;
use lapin::message::Delivery;
use lapin::options::{BasicAckOptions, BasicNackOptions};
use lapin::types::FieldTable;
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;
use tokio::time::Instant;
use tracing::{error, info, warn};

use super::follow_up::{self, Claim, FollowUps};
use super::outcome::{Failure, Outcome};
use crate::broker::{Broker, BrokerError, Topology, copy_properties, headers};
use crate::domain::backoff::{Backoff, Jitter};
use crate::domain::event::{EXPERIMENT_PRUNE, Event, ExperimentPrune};
use crate::domain::policy::PolicyOverrides;
use crate::domain::time::EpochMs;
use crate::engine::{Engine, now};
use crate::metrics::{self, Finished, Health, Metrics, Refused};
use crate::mlflow::MlflowError;

/// A delivery with what the worker read from its headers.
#[derive(Debug)]
pub(super) struct Received {
    pub delivery: Delivery,
    /// The routing key the message was published with (see [`headers::ROUTING_KEY`]).
    pub routing_key: String,
    /// This delivery's attempt, 1 for the first.
    pub attempt: u32,
    /// Times it was handed back unstarted since its last attempt.
    pub hand_backs: u32,
    /// A follow-up the worker scheduled itself: when it is due.
    pub follow_up_at: Option<EpochMs>,
    /// And the chain it belongs to.
    pub follow_up_chain: Option<String>,
    /// When the consumer received it: RabbitMQ's consumer_timeout runs from about then.
    pub received_at: Instant,
    /// Counts the delivery as received and in flight until dropped.
    pub metrics: metrics::Message,
}

impl Received {
    /// Reads the delivery as [`Topology::origin`] says it may be believed, counted in
    /// `metrics` from now until it is dropped.
    pub(super) fn new(delivery: Delivery, topology: &Topology, metrics: &Metrics) -> Self {
        let origin = topology.origin(&delivery);
        Received {
            metrics: metrics.received(&origin.routing_key),
            delivery,
            routing_key: origin.routing_key,
            attempt: origin.attempt,
            hand_backs: origin.hand_backs,
            follow_up_at: origin.follow_up_at,
            follow_up_chain: origin.follow_up_chain,
            received_at: Instant::now(),
        }
    }
}

/// Ids for the log line of a settled delivery.
#[derive(Debug, Default, Clone, Copy)]
pub(super) struct Subject<'a> {
    pub experiment_id: Option<&'a str>,
    pub run_id: Option<&'a str>,
}

/// Settles deliveries on one broker connection.
pub(super) struct Settler {
    broker: Arc<Broker>,
    topology: Topology,
    host: String,
    /// Re-publications that failed in a row, for the backoff before handing a delivery back.
    failed_republications: AtomicU32,
    /// `broker.ack_deadline`: how long a copy may wait for RabbitMQ to unblock publishing.
    ack_deadline: Duration,
    /// A copy to one of the worker's own queues was unroutable (the queue was deleted): the
    /// session ends, and the next one declares the topology again.
    topology_gone: AtomicBool,
    /// Follow-up passes scheduled and not due yet; outlives the session.
    follow_ups: Arc<Mutex<FollowUps>>,
    metrics: Metrics,
    /// Told when RabbitMQ refuses the user a copy, and when a copy goes through again.
    health: Arc<Health>,
}

/// What a [`Settler`] is built from besides its connection.
pub(super) struct SettlerContext {
    pub topology: Topology,
    pub host: String,
    /// `broker.ack_deadline`.
    pub ack_deadline: Duration,
    pub follow_ups: Arc<Mutex<FollowUps>>,
    pub metrics: Metrics,
    pub health: Arc<Health>,
}

/// Why a follow-up could not be scheduled.
#[derive(Debug, thiserror::Error)]
pub(super) enum FollowUpError {
    #[error("MLflow, reading or writing the experiment's follow-up claim tag: {0}")]
    Claim(MlflowError),
    #[error(transparent)]
    Broker(BrokerError),
    #[error("not scheduled within {0:?} (MLflow or RabbitMQ slow to answer)")]
    TimedOut(Duration),
}

/// Time kept back from the ack deadline for a copy's confirm, the backoff and the nack.
const SETTLE_MARGIN: Duration = Duration::from_secs(15);

/// The wait before a delivery whose re-publication failed goes back to the queue, by the
/// failures in a row: doubles from a second up to ten (well under RabbitMQ's acknowledgement
/// timeout), so a broker that keeps refusing the copies is not hammered with redeliveries, each
/// of which reruns a pass.
const REQUEUE: Backoff = Backoff::new(
    Duration::from_secs(1),
    Duration::from_secs(10),
    Jitter::None,
);

impl Settler {
    /// A settler publishing its copies on `broker`.
    pub(super) fn new(broker: Arc<Broker>, ctx: SettlerContext) -> Self {
        let SettlerContext {
            topology,
            host,
            ack_deadline,
            follow_ups,
            metrics,
            health,
        } = ctx;
        Settler {
            broker,
            topology,
            host,
            failed_republications: AtomicU32::new(0),
            ack_deadline,
            topology_gone: AtomicBool::new(false),
            follow_ups,
            metrics,
            health,
        }
    }

    /// Whether copies can still go out: an error once the publishing connection closed or a
    /// copy found one of the worker's own queues gone (the next session declares them again).
    pub(super) fn usable(&self) -> Result<(), BrokerError> {
        // lapin reports an error only to a listener that existed when it happened.
        if !self.broker.is_connected() {
            return Err(BrokerError::Closed {
                connection: "publishing",
            });
        }
        if self.topology_gone.load(Ordering::Relaxed) {
            return Err(BrokerError::TopologyGone);
        }
        Ok(())
    }

    /// What the worker counts.
    pub(super) fn metrics(&self) -> &Metrics {
        &self.metrics
    }

    /// Applies `outcome` to `received` and logs it. Errors are logged, never returned: a
    /// delivery that cannot be settled stays with the broker, which redelivers it.
    pub(super) async fn settle(&self, received: Received, outcome: Outcome, subject: Subject<'_>) {
        let experiment_id = subject.experiment_id.unwrap_or("");
        let run_id = subject.run_id.unwrap_or("");
        let routing_key = received.routing_key.as_str();
        let (queue, failure, attempts) = match &outcome {
            Outcome::Ack => {
                info!(
                    experiment_id,
                    run_id,
                    routing_key,
                    outcome = outcome.as_str(),
                    "event handled"
                );
                received.metrics.finished(Finished::from(&outcome));
                return ack(&received, subject).await;
            }
            Outcome::Delay {
                failure,
                attempts,
                step,
            } => (
                self.topology.delay_queues[*step].name.as_str(),
                failure,
                *attempts,
            ),
            Outcome::DeadLetter { failure, attempts } => {
                (self.topology.dead_letter_queue.as_str(), failure, *attempts)
            }
        };
        let properties = copy_properties(
            &received.delivery.properties,
            failure_headers(
                received.delivery.properties.headers().as_ref(),
                routing_key,
                failure,
                attempts,
                OffsetDateTime::now_utc(),
                &self.host,
            ),
        );
        if !self.republish(&received, queue, properties, subject).await {
            return;
        }
        let (class, kind, message) = (failure.class.as_str(), failure.kind, &failure.message);
        match outcome {
            Outcome::Delay { .. } => warn!(
                experiment_id, run_id, routing_key, outcome = outcome.as_str(), error_class = class,
                error_kind = kind, attempts, queue, error = %message, "event delayed"
            ),
            _ => error!(
                experiment_id, run_id, routing_key, outcome = outcome.as_str(), error_class = class,
                error_kind = kind, attempts, error = %message, "event dead-lettered"
            ),
        }
        received.metrics.finished(Finished::from(&outcome));
        ack(&received, subject).await;
    }

    /// Rejects a delivery whose properties or header names were not UTF-8 without requeueing
    /// it: RabbitMQ dead-letters the original bytes into the dead-letter queue (at least once),
    /// where a copy the worker published would carry the U+FFFD it was read with. Never parsed,
    /// never retried; the messages behind it are not affected.
    pub(super) async fn reject_unreadable(&self, received: Received) {
        let reject = BasicNackOptions {
            requeue: false,
            ..BasicNackOptions::default()
        };
        let rejected = received.delivery.acker.nack(reject).await;
        if matches!(rejected, Ok(true)) {
            error!(
                routing_key = received.delivery.routing_key.as_str(),
                bytes = received.delivery.data.len(),
                queue = self.topology.dead_letter_queue.as_str(),
                outcome = "dead_letter",
                error_class = "permanent",
                error_kind = "unreadable",
                "event dead-lettered unread: its properties or header names are not valid UTF-8 \
                 (RabbitMQ moved the original bytes to the dead-letter queue)"
            );
            received.metrics.finished(Finished::DeadLettered {
                class: "permanent",
                reason: "unreadable",
            });
        }
        settled(rejected, "nack", &received, Subject::default());
    }

    /// Hands back a delivery held for `broker.ack_deadline`: a copy goes through the first
    /// delay queue with its routing key and attempt unchanged, then the delivery is acked, so
    /// RabbitMQ never times the consumer out and no delivery is counted against the limit.
    pub(super) async fn hand_back(&self, received: Received, subject: Subject<'_>) {
        let queue = self.topology.delay_queue(1).name.as_str();
        let original = received.delivery.properties.headers().as_ref();
        let h = headers::handed_back(
            original,
            &received.routing_key,
            received.attempt,
            received.hand_backs + 1,
        );
        let properties = copy_properties(&received.delivery.properties, h);
        if !self.republish(&received, queue, properties, subject).await {
            return;
        }
        warn!(
            experiment_id = subject.experiment_id.unwrap_or(""),
            run_id = subject.run_id.unwrap_or(""),
            routing_key = received.routing_key.as_str(),
            attempt = received.attempt,
            held = ?received.received_at.elapsed(),
            queue,
            "event held up to broker.ack_deadline: handed back through a delay queue"
        );
        received.metrics.finished(Finished::HandedBack);
        ack(&received, subject).await;
    }

    /// Schedules a follow-up pass over the experiment at `at` (the end of a
    /// grace window), with the policy overrides of the pass that needs it, unless
    /// one that comes no later is pending: in this worker, or claimed by any worker in the
    /// experiment's claim tag (see [`follow_up`]). The claim is written once the broker has the
    /// follow-up, so a claim never names a chain that does not exist. Returns whether one was
    /// published (confirmed). Takes at most twice `broker.confirm_timeout`, so that a pass
    /// ending at its deadline still settles its deliveries in time.
    pub(super) async fn follow_up(
        &self,
        engine: &Engine,
        experiment_id: &str,
        policy: &PolicyOverrides,
        at: EpochMs,
    ) -> Result<bool, FollowUpError> {
        let limit = self.broker.confirm_timeout() * 2;
        tokio::time::timeout(limit, self.schedule(engine, experiment_id, policy, at))
            .await
            .unwrap_or(Err(FollowUpError::TimedOut(limit)))
    }

    async fn schedule(
        &self,
        engine: &Engine,
        experiment_id: &str,
        policy: &PolicyOverrides,
        at: EpochMs,
    ) -> Result<bool, FollowUpError> {
        let now = now();
        let key = follow_up::Key::new(experiment_id, policy);
        if !self.follow_ups().needed(&key, at, now) {
            return Ok(false);
        }
        let tag = follow_up::Key::claim_tag(policy);
        let claimed = engine
            .experiment_tag(experiment_id, &tag)
            .await
            .map_err(FollowUpError::Claim)?
            .as_deref()
            .and_then(Claim::parse);
        if let Some(claim) = claimed.filter(|c| c.covers(at, now)) {
            tracing::debug!(experiment_id, due = %claim.due, "a follow-up that comes no later is claimed");
            self.follow_ups().scheduled(key, claim.due, now);
            return Ok(false);
        }
        let claim = Claim::new(at);
        let body = Event::ExperimentPrune(ExperimentPrune {
            experiment_id: experiment_id.to_owned(),
            policy: policy.clone(),
            delete_experiment: false,
            dry_run: false,
            force: false,
        })
        .to_body();
        let (queue, properties) =
            self.follow_up_leg(BasicProperties::default(), at, &claim.chain, now);
        self.publish_to_own_queue(queue, &body, properties)
            .await
            .map_err(FollowUpError::Broker)?;
        self.metrics.follow_up_scheduled();
        info!(experiment_id, due = %at, queue, chain = claim.chain.as_str(), "follow-up pass scheduled at the end of the grace window");
        // Remembered only once claimed: if the claim cannot be written, the events are retried
        // and their pass schedules (and claims) another chain, which this one then gives way to.
        engine
            .set_experiment_tag(experiment_id, &tag, &claim.value())
            .await
            .map_err(FollowUpError::Claim)?;
        self.follow_ups().scheduled(key, at, now);
        Ok(true)
    }

    /// Sends a follow-up that is not due yet on its way through a delay queue, then acks it;
    /// or, when another chain due no later has claimed the experiment's follow-ups, acks it
    /// without sending it on: that chain's pass stands in for this one. When the claim cannot
    /// be read, it travels on.
    pub(super) async fn snooze(&self, engine: &Engine, received: Received, at: EpochMs) {
        let subject = Subject::default();
        let chain = received.follow_up_chain.clone();
        let target = Event::parse(EXPERIMENT_PRUNE, &received.delivery.data).ok();
        if let (Some(chain), Some(Event::ExperimentPrune(prune))) = (&chain, &target) {
            let tag = follow_up::Key::claim_tag(&prune.policy);
            match engine.experiment_tag(&prune.experiment_id, &tag).await {
                Ok(Some(value)) => {
                    let superseding =
                        Claim::parse(&value).filter(|c| c.supersedes(chain, at, now()));
                    if let Some(claim) = superseding {
                        info!(
                            experiment_id = prune.experiment_id.as_str(),
                            chain = chain.as_str(),
                            by = claim.chain.as_str(),
                            "follow-up stopped: another chain due no later took over"
                        );
                        received.metrics.finished(Finished::Superseded);
                        return ack(&received, subject).await;
                    }
                }
                Ok(None) => {}
                Err(e) => warn!(
                    experiment_id = prune.experiment_id.as_str(), error = %e,
                    "could not read the follow-up claim: sent on"
                ),
            }
        }
        let chain = chain.unwrap_or_default();
        let (queue, properties) =
            self.follow_up_leg(received.delivery.properties.clone(), at, &chain, now());
        if !self.republish(&received, queue, properties, subject).await {
            return;
        }
        tracing::debug!(due = %at, queue, "follow-up not due yet: sent on");
        received.metrics.finished(Finished::Snoozed);
        ack(&received, subject).await;
    }

    /// The queue and properties of a follow-up's next leg towards `at`.
    fn follow_up_leg(
        &self,
        original: BasicProperties,
        at: EpochMs,
        chain: &str,
        now: EpochMs,
    ) -> (&str, BasicProperties) {
        let remaining = at.since(now);
        let (queue, expiration) = self.topology.follow_up_leg(remaining);
        let mut properties =
            copy_properties(&original, headers::follow_up(EXPERIMENT_PRUNE, at, chain));
        if let Some(expiration) = expiration {
            properties = properties.with_expiration(expiration.as_millis().to_string().into());
        }
        (queue.name.as_str(), properties)
    }

    /// Publishes into one of the worker's own queues; an unroutable copy means the queue is
    /// gone, which ends the session (see [`Settler::topology_gone`]).
    async fn publish_to_own_queue(
        &self,
        queue: &str,
        body: &[u8],
        properties: BasicProperties,
    ) -> Result<(), BrokerError> {
        let published = self.broker.publish_to_queue(queue, body, properties).await;
        match &published {
            Ok(()) => self.health.set_refused(Refused::Copy, None),
            Err(BrokerError::Unroutable { .. }) => {
                self.topology_gone.store(true, Ordering::Relaxed)
            }
            Err(BrokerError::Nacked { .. }) => {
                let kind = if queue == self.topology.dead_letter_queue {
                    "dead_letter"
                } else {
                    "delay"
                };
                error!(
                    queue,
                    "RabbitMQ refused the copy: the queue is full (the dead-letter queue holds \
                     at most broker.dead_letter_max_length letters); the message stays in the \
                     work queue and is tried again. Replay or purge dead letters to make room"
                );
                self.metrics.copy_refused(kind);
            }
            Err(e) if e.is_access_refused() => {
                error!(
                    queue, error = %e,
                    "RabbitMQ refused the worker's user write access to publish a copy through \
                     the default exchange (amq.default): grant what deploy/README.md lists"
                );
                let what = format!("publishing a copy into {queue:?}: {e}");
                self.health.set_refused(Refused::Copy, Some(what));
            }
            Err(_) => {}
        }
        published
    }

    fn follow_ups(&self) -> std::sync::MutexGuard<'_, FollowUps> {
        self.follow_ups
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    /// Publishes a copy of `received` into `queue` with confirms; true once the broker has it.
    /// Otherwise the delivery goes back to the work queue after a wait growing with the
    /// failures in a row, and false.
    async fn republish(
        &self,
        received: &Received,
        queue: &str,
        properties: BasicProperties,
        subject: Subject<'_>,
    ) -> bool {
        if !received.delivery.acker.usable() {
            // The consuming channel closed: the broker redelivers the original, so a copy
            // would only be a duplicate.
            settled(Ok(false), "ack", received, subject);
            return false;
        }
        // RabbitMQ blocks a publishing connection under a resource alarm: wait for it to lift,
        // within the delivery's deadline, rather than queue a copy that would go out late.
        let waited_until = received.received_at + self.ack_deadline.saturating_sub(SETTLE_MARGIN);
        while self.broker.is_blocked() && Instant::now() < waited_until {
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
        let published = if self.broker.is_blocked() {
            Err(BrokerError::Blocked)
        } else {
            self.publish_to_own_queue(queue, &received.delivery.data, properties)
                .await
        };
        let Err(e) = published else {
            self.failed_republications.store(0, Ordering::Relaxed);
            return true;
        };
        let failures = self.failed_republications.fetch_add(1, Ordering::Relaxed);
        let wait = REQUEUE.next(failures);
        error!(
            experiment_id = subject.experiment_id.unwrap_or(""),
            run_id = subject.run_id.unwrap_or(""),
            routing_key = received.routing_key.as_str(),
            queue, error = %e, retry_in = ?wait,
            "could not re-publish the message; returning it to the work queue"
        );
        tokio::time::sleep(wait).await;
        received.metrics.finished(Finished::Retried);
        let requeue = BasicNackOptions {
            requeue: true,
            ..BasicNackOptions::default()
        };
        let nacked = received.delivery.acker.nack(requeue).await;
        settled(nacked, "nack", received, subject);
        false
    }
}

async fn ack(received: &Received, subject: Subject<'_>) {
    let acked = received
        .delivery
        .acker
        .ack(BasicAckOptions::default())
        .await;
    settled(acked, "ack", received, subject);
}

/// Counts and logs an ack or nack (`operation`) that did not reach the broker: lapin answers
/// `Ok(false)` when the channel had already closed (RabbitMQ's consumer_timeout, a lost
/// connection), and the broker then redelivers the message.
fn settled(
    result: lapin::Result<bool>,
    operation: &'static str,
    received: &Received,
    subject: Subject<'_>,
) {
    let error = match result {
        Ok(true) => return,
        Ok(false) => "the channel was closed".to_owned(),
        Err(e) => e.to_string(),
    };
    received.metrics.ack_lost(operation);
    error!(
        experiment_id = subject.experiment_id.unwrap_or(""),
        run_id = subject.run_id.unwrap_or(""),
        routing_key = received.routing_key.as_str(),
        delivery_tag = received.delivery.delivery_tag,
        operation,
        error,
        "the broker did not get this {operation}; it will redeliver the message"
    );
}

/// The original headers (minus those the broker manages) plus the worker's: attempts, the
/// original routing key, the failure, its first and last time, and who handled it.
pub(super) fn failure_headers(
    original: Option<&FieldTable>,
    routing_key: &str,
    failure: &Failure,
    attempts: u32,
    now: OffsetDateTime,
    host: &str,
) -> FieldTable {
    let now = now
        .format(&Rfc3339)
        .expect("a UTC time formats as RFC 3339");
    let first = headers::get_str(original, headers::FIRST_FAILURE).unwrap_or_else(|| now.clone());
    let mut h = headers::republished(original);
    headers::set_u32(&mut h, headers::ATTEMPTS, attempts);
    headers::set_u32(&mut h, headers::HAND_BACKS, 0);
    headers::set_str(&mut h, headers::ROUTING_KEY, routing_key);
    headers::set_str(&mut h, headers::ERROR_CLASS, failure.class.as_str());
    headers::set_str(&mut h, headers::ERROR_KIND, failure.kind);
    headers::set_str(
        &mut h,
        headers::ERROR_MESSAGE,
        headers::truncate_message(&failure.message),
    );
    headers::set_str(&mut h, headers::FIRST_FAILURE, &first);
    headers::set_str(&mut h, headers::LAST_FAILURE, &now);
    headers::set_str(&mut h, headers::WORKER_VERSION, env!("CARGO_PKG_VERSION"));
    headers::set_str(&mut h, headers::WORKER_HOST, host);
    h
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::classify::ErrorClass;
    use lapin::types::AMQPValue;

    fn failure() -> Failure {
        Failure {
            class: ErrorClass::Transient,
            kind: "mlflow",
            message: "connection refused".into(),
        }
    }

    #[test]
    fn failure_headers_record_the_failure_and_keep_the_first_time() {
        let t1 = OffsetDateTime::from_unix_timestamp(1_735_725_600).unwrap();
        let t2 = OffsetDateTime::from_unix_timestamp(1_735_725_900).unwrap();
        let first = failure_headers(None, "run.finished", &failure(), 1, t1, "h1");
        let second = failure_headers(Some(&first), "run.finished", &failure(), 2, t2, "h2");
        let s = |k| headers::get_str(Some(&second), k);
        assert_eq!(headers::get_u32(Some(&second), headers::ATTEMPTS), Some(2));
        assert_eq!(s(headers::ROUTING_KEY).as_deref(), Some("run.finished"));
        assert_eq!(s(headers::ERROR_CLASS).as_deref(), Some("transient"));
        assert_eq!(s(headers::ERROR_KIND).as_deref(), Some("mlflow"));
        assert_eq!(
            s(headers::ERROR_MESSAGE).as_deref(),
            Some("connection refused")
        );
        assert_eq!(
            s(headers::FIRST_FAILURE).as_deref(),
            Some("2025-01-01T10:00:00Z")
        );
        assert_eq!(
            s(headers::LAST_FAILURE).as_deref(),
            Some("2025-01-01T10:05:00Z")
        );
        assert_eq!(s(headers::WORKER_HOST).as_deref(), Some("h2"));
        assert_eq!(
            s(headers::WORKER_VERSION).as_deref(),
            Some(env!("CARGO_PKG_VERSION"))
        );
    }

    #[test]
    fn requeues_after_failed_republications_back_off_up_to_ten_seconds() {
        let delays: Vec<u64> = [0, 1, 2, 3, 5, 6, 99]
            .map(|failures_before| REQUEUE.next(failures_before).as_secs())
            .to_vec();
        assert_eq!(delays, [1, 2, 4, 8, 10, 10, 10]);
    }

    fn topology() -> Topology {
        Topology {
            exchange: "x".into(),
            work_queue: "work".into(),
            dead_letter_queue: "dead".into(),
            dead_letter_max_length: 1000,
            delivery_limit: 5,
            delay_queues: vec![crate::broker::DelayQueue {
                name: "p.30s".into(),
                delay: std::time::Duration::from_secs(30),
            }],
        }
    }

    fn delivery(exchange: &str, routing_key: &str, h: FieldTable) -> Delivery {
        let mut d = Delivery::mock(
            1,
            exchange.into(),
            routing_key.into(),
            false,
            b"{}".to_vec(),
        );
        d.properties = BasicProperties::default().with_headers(h);
        d
    }

    fn own_headers(mut h: FieldTable) -> FieldTable {
        headers::set_u32(&mut h, headers::ATTEMPTS, 2);
        headers::set_u32(&mut h, headers::HAND_BACKS, 99);
        headers::set_str(&mut h, headers::ROUTING_KEY, "experiment.prune");
        h.insert(headers::FOLLOW_UP_AT.into(), AMQPValue::LongLongInt(42));
        h
    }

    #[test]
    fn attempts_and_routing_key_come_from_the_headers_after_a_delay_queue() {
        let back = own_headers(headers::tests::with_deaths(&[("p.30s", "expired")]));
        let r = Received::new(delivery("", "work", back), &topology(), &Metrics::new());
        assert_eq!(
            (
                r.routing_key.as_str(),
                r.attempt,
                r.hand_backs,
                r.follow_up_at
            ),
            ("experiment.prune", 3, 99, Some(EpochMs::from_millis(42)))
        );

        let r = Received::new(
            delivery("x", "run.finished", FieldTable::default()),
            &topology(),
            &Metrics::new(),
        );
        assert_eq!((r.routing_key.as_str(), r.attempt), ("run.finished", 1));
    }

    #[test]
    fn a_handed_back_copy_returns_as_the_same_attempt_of_the_same_event() {
        let back = own_headers(headers::tests::with_deaths(&[("p.30s", "expired")]));
        let held = Received::new(delivery("", "work", back), &topology(), &Metrics::new());
        assert_eq!(held.attempt, 3);
        let original = held.delivery.properties.headers().as_ref();
        let mut copy = headers::handed_back(original, &held.routing_key, held.attempt, 2);
        // What the broker adds when the copy expires from the delay queue.
        copy.insert(
            "x-death".into(),
            headers::tests::with_deaths(&[("p.30s", "expired")]).inner()["x-death"].clone(),
        );
        let returned = Received::new(delivery("", "work", copy), &topology(), &Metrics::new());
        assert_eq!(
            (
                returned.routing_key.as_str(),
                returned.attempt,
                returned.hand_backs
            ),
            ("experiment.prune", 3, 2)
        );

        let first = Received::new(
            delivery("x", "run.finished", FieldTable::default()),
            &topology(),
            &Metrics::new(),
        );
        let copy = headers::handed_back(None, &first.routing_key, first.attempt, 1);
        assert_eq!(headers::get_u32(Some(&copy), headers::ATTEMPTS), Some(0));
    }

    #[test]
    fn headers_a_publisher_wrote_widen_nothing() {
        let forged = [
            // Straight from a pipeline, through the exchange.
            ("x", "run.finished", own_headers(FieldTable::default())),
            // With an x-death of the worker's delay queue, but not dead-lettered by it.
            (
                "x",
                "run.finished",
                own_headers(headers::tests::with_deaths(&[("p.30s", "expired")])),
            ),
            // Dead-lettered by some other queue, or rejected rather than expired.
            (
                "",
                "work",
                own_headers(headers::tests::with_deaths(&[("other.30s", "expired")])),
            ),
            (
                "",
                "work",
                own_headers(headers::tests::with_deaths(&[("p.30s", "rejected")])),
            ),
        ];
        for (exchange, routing_key, h) in forged {
            let r = Received::new(
                delivery(exchange, routing_key, h),
                &topology(),
                &Metrics::new(),
            );
            assert_eq!(
                (
                    r.routing_key.as_str(),
                    r.attempt,
                    r.hand_backs,
                    r.follow_up_at
                ),
                (routing_key, 1, 0, None)
            );
        }
    }
}
