//! The exchange and queues the worker needs, derived from settings and declared idempotently
//! at start and after every reconnect.
//!
//! ```text
//! publishers ─▶ exchange (topic) ─run.finished, experiment.prune─▶ work queue (quorum)
//! work queue ─over delivery limit─▶ dead-letter queue (classic, bounded)
//! worker ─transient failure─▶ delay queue <prefix>.<step> (quorum) ─TTL expired─▶ work queue
//! worker ─permanent failure or out of attempts─▶ dead-letter queue
//! ```
//!
//! Both hops the broker makes on its own (over the delivery limit, delay expired) are
//! at-least-once: the queue they leave is a quorum queue with `x-dead-letter-strategy:
//! at-least-once`, which keeps a message until the target queue has confirmed its copy
//! (RabbitMQ's default strategy drops it if the target cannot take it). That strategy needs
//! `x-overflow: reject-publish`. The dead-letter queue stays classic: `dlq` commands walk it
//! with get-then-requeue, which keeps order there and counts no deliveries. It holds at most
//! `broker.dead_letter_max_length` letters and refuses more (reject-publish), never dropping
//! one: the worker's copy is nacked and the message stays in the work queue, and the broker's
//! own at-least-once hop keeps it there too.

use std::time::Duration;

use humantime_serde::re::humantime;
use lapin::message::Delivery;
use lapin::options::{ExchangeDeclareOptions, QueueBindOptions, QueueDeclareOptions};
use lapin::types::{AMQPValue, FieldTable, LongString};
use lapin::{Channel, ExchangeKind};

use super::headers;
use crate::domain::event::{EXPERIMENT_PRUNE, RUN_FINISHED};
use crate::domain::time::EpochMs;
use crate::settings::Settings;

/// The routing keys the work queue is bound to.
pub const BINDINGS: [&str; 2] = [RUN_FINISHED, EXPERIMENT_PRUNE];

/// The names and parameters of every exchange and queue.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Topology {
    /// The durable topic exchange events are published to (`broker.exchange`).
    pub exchange: String,
    /// The quorum queue the workers consume, bound to [`BINDINGS`] (`broker.work_queue`).
    pub work_queue: String,
    /// The classic queue of messages that failed permanently or ran out of attempts
    /// (`broker.dead_letter_queue`).
    pub dead_letter_queue: String,
    /// The dead-letter queue's `x-max-length`: over it the broker refuses new letters.
    pub dead_letter_max_length: u32,
    /// The work queue's `x-delivery-limit`: a message redelivered more times than this is
    /// dead-lettered by the broker.
    pub delivery_limit: u32,
    /// One delay queue per step of `retry.delays`, in order.
    pub delay_queues: Vec<DelayQueue>,
}

/// What a delivery from the work queue is, as far as the worker may believe it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Origin {
    /// The routing key that decides how the body is parsed.
    pub routing_key: String,
    /// This delivery's attempt, 1 for the first.
    pub attempt: u32,
    /// It came back from one of the worker's delay queues, so its worker headers are trusted.
    pub from_delay_queue: bool,
    /// Times it was handed back unstarted since its last attempt (0 unless trusted).
    pub hand_backs: u32,
    /// A follow-up the worker scheduled: when it is due (none unless trusted).
    pub follow_up_at: Option<EpochMs>,
    /// The chain of that follow-up (none unless trusted, or from a version without chains).
    pub follow_up_chain: Option<String>,
}

/// A queue that holds messages for `delay`, then dead-letters them back to the work queue.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DelayQueue {
    /// `<broker.delay_queue_prefix>.<step>`, e.g. `model-pruner.delay.30s` ([`delay_queue_name`]).
    pub name: String,
    /// How long a message stays in it (the queue's `x-message-ttl`): one step of `retry.delays`.
    pub delay: Duration,
}

impl Topology {
    /// The names and parameters `[broker]` sets, with one delay queue per `retry.delays` step.
    pub fn from_settings(settings: &Settings) -> Self {
        let b = &settings.broker;
        Topology {
            exchange: b.exchange.clone(),
            work_queue: b.work_queue.clone(),
            dead_letter_queue: b.dead_letter_queue.clone(),
            dead_letter_max_length: b.dead_letter_max_length,
            delivery_limit: b.delivery_limit,
            delay_queues: settings
                .retry
                .delays
                .iter()
                .map(|d| DelayQueue {
                    name: delay_queue_name(&b.delay_queue_prefix, **d),
                    delay: **d,
                })
                .collect(),
        }
    }

    /// The delay queue used after the `failures`-th failed attempt (1-based); the last step
    /// repeats.
    pub fn delay_queue(&self, failures: u32) -> &DelayQueue {
        let last = self.delay_queues.len().saturating_sub(1);
        let index = (failures.max(1) as usize - 1).min(last);
        &self.delay_queues[index]
    }

    /// Reads a delivery from the work queue. The worker's own headers (original routing key,
    /// attempts so far) are trusted only on a message that came back from one of the delay
    /// queues: the broker dead-lettered it (latest `x-death`: a delay queue, expired) to the
    /// work queue through the default exchange. Any other message is what its publisher sent:
    /// the delivery's routing key decides how it is parsed and it is attempt 1, whatever
    /// headers it carries, so a publisher allowed one routing key cannot make another event or
    /// skip its retries.
    pub fn origin(&self, delivery: &Delivery) -> Origin {
        let h = delivery.properties.headers().as_ref();
        let from_delay_queue = delivery.exchange.as_str().is_empty()
            && delivery.routing_key.as_str() == self.work_queue
            && headers::last_death(h).is_some_and(|(queue, reason)| {
                reason == "expired" && self.delay_queues.iter().any(|d| d.name == queue)
            });
        let delivered_with = delivery.routing_key.as_str();
        if !from_delay_queue {
            return Origin {
                routing_key: delivered_with.to_owned(),
                attempt: 1,
                from_delay_queue,
                hand_backs: 0,
                follow_up_at: None,
                follow_up_chain: None,
            };
        }
        Origin {
            routing_key: headers::get_str(h, headers::ROUTING_KEY)
                .unwrap_or_else(|| delivered_with.to_owned()),
            attempt: headers::get_u32(h, headers::ATTEMPTS)
                .unwrap_or(0)
                .saturating_add(1),
            from_delay_queue,
            hand_backs: headers::get_u32(h, headers::HAND_BACKS).unwrap_or(0),
            follow_up_at: headers::get_i64(h, headers::FOLLOW_UP_AT).map(EpochMs::from_millis),
            follow_up_chain: headers::get_str(h, headers::FOLLOW_UP_CHAIN),
        }
    }

    /// The next leg of a follow-up due in `remaining`: the shortest delay queue that holds a
    /// message that long, with the message's own expiration set to `remaining`; or, when the
    /// wait is longer than every delay, the longest delay queue for its full delay (the
    /// follow-up then travels on until it is due).
    pub fn follow_up_leg(&self, remaining: Duration) -> (&DelayQueue, Option<Duration>) {
        match self
            .delay_queues
            .iter()
            .filter(|q| q.delay >= remaining)
            .min_by_key(|q| q.delay)
        {
            Some(q) => (q, Some(remaining).filter(|r| *r < q.delay)),
            None => (
                self.delay_queues
                    .iter()
                    .max_by_key(|q| q.delay)
                    .expect("settings require at least one delay step"),
                None,
            ),
        }
    }

    /// The arguments `queue` is declared with, if it is one of the worker's queues.
    pub fn arguments(&self, queue: &str) -> Option<FieldTable> {
        if queue == self.work_queue {
            return Some(self.work_queue_arguments());
        }
        if queue == self.dead_letter_queue {
            return Some(self.dead_letter_queue_arguments());
        }
        let delay = self.delay_queues.iter().find(|d| d.name == queue)?;
        Some(self.delay_queue_arguments(delay))
    }

    /// Declares the exchange, the queues and the bindings. Declaring what already exists with
    /// the same arguments is a no-op; different arguments fail with PRECONDITION_FAILED.
    pub async fn declare(&self, channel: &Channel) -> lapin::Result<()> {
        let durable = QueueDeclareOptions::durable();
        channel
            .exchange_declare(
                self.exchange.as_str().into(),
                ExchangeKind::Topic,
                ExchangeDeclareOptions {
                    durable: true,
                    ..ExchangeDeclareOptions::default()
                },
                FieldTable::default(),
            )
            .await?;
        channel
            .queue_declare(
                self.work_queue.as_str().into(),
                durable,
                self.work_queue_arguments(),
            )
            .await?;
        for key in BINDINGS {
            channel
                .queue_bind(
                    self.work_queue.as_str().into(),
                    self.exchange.as_str().into(),
                    key.into(),
                    QueueBindOptions::default(),
                    FieldTable::default(),
                )
                .await?;
        }
        for q in &self.delay_queues {
            channel
                .queue_declare(
                    q.name.as_str().into(),
                    durable,
                    self.delay_queue_arguments(q),
                )
                .await?;
        }
        channel
            .queue_declare(
                self.dead_letter_queue.as_str().into(),
                durable,
                self.dead_letter_queue_arguments(),
            )
            .await?;
        Ok(())
    }

    /// Quorum queue; a message redelivered more than `delivery_limit` times (a worker crashing
    /// on it) goes to the dead-letter queue, at least once.
    pub fn work_queue_arguments(&self) -> FieldTable {
        let mut args = at_least_once_dead_lettering(&self.dead_letter_queue);
        args.insert(
            "x-delivery-limit".into(),
            AMQPValue::LongLongInt(self.delivery_limit.into()),
        );
        args
    }

    /// Classic whatever the vhost's default queue type: listing dead letters (get, then
    /// requeue) must not count against a quorum queue's delivery limit, which would drop them
    /// after a few listings. Bounded, refusing letters over the bound rather than dropping the
    /// oldest (RabbitMQ's default overflow).
    pub fn dead_letter_queue_arguments(&self) -> FieldTable {
        let mut args = FieldTable::default();
        args.insert("x-queue-type".into(), string("classic"));
        args.insert(
            "x-max-length".into(),
            AMQPValue::LongLongInt(self.dead_letter_max_length.into()),
        );
        args.insert("x-overflow".into(), string("reject-publish"));
        args
    }

    /// Quorum queue with a per-queue TTL: every message has the same one, so they expire in
    /// order at the head of the queue, back into the work queue, at least once.
    pub fn delay_queue_arguments(&self, queue: &DelayQueue) -> FieldTable {
        let ttl_ms = i64::try_from(queue.delay.as_millis()).unwrap_or(i64::MAX);
        let mut args = at_least_once_dead_lettering(&self.work_queue);
        args.insert("x-message-ttl".into(), AMQPValue::LongLongInt(ttl_ms));
        args
    }

    /// Every queue name, for tests and tools that tear the topology down.
    pub fn queue_names(&self) -> Vec<&str> {
        let mut names = vec![self.work_queue.as_str(), self.dead_letter_queue.as_str()];
        names.extend(self.delay_queues.iter().map(|q| q.name.as_str()));
        names
    }
}

/// `<prefix>.<step>` with the step written the humantime way without spaces: `10s`, `1m30s`.
pub fn delay_queue_name(prefix: &str, delay: Duration) -> String {
    let step = humantime::format_duration(delay)
        .to_string()
        .replace(' ', "");
    format!("{prefix}.{step}")
}

/// A quorum queue that dead-letters into `target` (through the default exchange), keeping each
/// message until `target` confirmed its copy.
fn at_least_once_dead_lettering(target: &str) -> FieldTable {
    let mut args = FieldTable::default();
    args.insert("x-queue-type".into(), string("quorum"));
    args.insert("x-dead-letter-exchange".into(), string(""));
    args.insert("x-dead-letter-routing-key".into(), string(target));
    args.insert("x-dead-letter-strategy".into(), string("at-least-once"));
    args.insert("x-overflow".into(), string("reject-publish"));
    args
}

fn string(s: &str) -> AMQPValue {
    AMQPValue::LongString(LongString::from(s))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn topology(delays: &[u64]) -> Topology {
        Topology {
            exchange: "x".into(),
            work_queue: "w".into(),
            dead_letter_queue: "dl".into(),
            dead_letter_max_length: 1000,
            delivery_limit: 20,
            delay_queues: delays
                .iter()
                .map(|s| DelayQueue {
                    name: delay_queue_name("d", Duration::from_secs(*s)),
                    delay: Duration::from_secs(*s),
                })
                .collect(),
        }
    }

    #[test]
    fn delay_queues_are_named_after_their_step() {
        assert_eq!(delay_queue_name("p", Duration::from_secs(10)), "p.10s");
        assert_eq!(delay_queue_name("p", Duration::from_secs(60)), "p.1m");
        assert_eq!(delay_queue_name("p", Duration::from_secs(90)), "p.1m30s");
        assert_eq!(delay_queue_name("p", Duration::from_millis(500)), "p.500ms");
    }

    #[test]
    fn nth_failure_uses_nth_step_and_the_last_step_repeats() {
        let t = topology(&[10, 60, 300]);
        let delays: Vec<u64> = (1..=5).map(|n| t.delay_queue(n).delay.as_secs()).collect();
        assert_eq!(delays, [10, 60, 300, 300, 300]);
        assert_eq!(t.delay_queue(0).delay.as_secs(), 10);
    }

    #[test]
    fn a_follow_up_takes_the_shortest_delay_queue_that_holds_it_with_its_own_expiration() {
        let t = topology(&[60, 10, 300]);
        let leg = |secs| {
            let (q, expiration) = t.follow_up_leg(Duration::from_secs(secs));
            (q.delay.as_secs(), expiration.map(|e| e.as_secs()))
        };
        assert_eq!(leg(4), (10, Some(4)));
        assert_eq!(leg(10), (10, None));
        assert_eq!(leg(11), (60, Some(11)));
        assert_eq!(leg(299), (300, Some(299)));
        // Longer than every delay: the longest queue, for its whole delay.
        assert_eq!(leg(7200), (300, None));
    }

    #[test]
    fn work_queue_is_a_quorum_queue_dead_lettering_to_the_dlq_at_least_once() {
        let args = topology(&[10]).work_queue_arguments();
        let get = |k: &str| args.inner().get(k).cloned();
        assert_eq!(get("x-queue-type"), Some(string("quorum")));
        assert_eq!(get("x-delivery-limit"), Some(AMQPValue::LongLongInt(20)));
        assert_eq!(get("x-dead-letter-exchange"), Some(string("")));
        assert_eq!(get("x-dead-letter-routing-key"), Some(string("dl")));
        assert_eq!(get("x-dead-letter-strategy"), Some(string("at-least-once")));
        assert_eq!(get("x-overflow"), Some(string("reject-publish")));
        assert_eq!(args.inner().len(), 6);
    }

    #[test]
    fn dead_letter_queue_is_a_bounded_classic_queue_refusing_over_the_bound() {
        let t = topology(&[10]);
        let args = t.dead_letter_queue_arguments();
        let get = |k: &str| args.inner().get(k).cloned();
        assert_eq!(get("x-queue-type"), Some(string("classic")));
        assert_eq!(get("x-max-length"), Some(AMQPValue::LongLongInt(1000)));
        assert_eq!(get("x-overflow"), Some(string("reject-publish")));
        assert_eq!(args.inner().len(), 3);
        assert_eq!(t.arguments("dl"), Some(args));
    }

    #[test]
    fn delay_queue_is_a_quorum_queue_expiring_into_the_work_queue_at_least_once() {
        let t = topology(&[10]);
        let args = t.delay_queue_arguments(&t.delay_queues[0]);
        let get = |k: &str| args.inner().get(k).cloned();
        assert_eq!(get("x-queue-type"), Some(string("quorum")));
        assert_eq!(get("x-message-ttl"), Some(AMQPValue::LongLongInt(10_000)));
        assert_eq!(get("x-dead-letter-exchange"), Some(string("")));
        assert_eq!(get("x-dead-letter-routing-key"), Some(string("w")));
        assert_eq!(get("x-dead-letter-strategy"), Some(string("at-least-once")));
        assert_eq!(get("x-overflow"), Some(string("reject-publish")));
        assert_eq!(args.inner().len(), 6);
    }
}
