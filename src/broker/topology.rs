//! The exchange and queues the worker needs, derived from settings and declared idempotently
//! at start and after every reconnect.
//!
//! ```text
//! publishers ─▶ exchange (topic) ─run.finished, experiment.prune─▶ work queue (quorum)
//! work queue ─over delivery limit─▶ dead-letter queue
//! worker ─transient failure─▶ delay queue <prefix>.<step> ─TTL expired─▶ work queue
//! worker ─permanent failure or out of attempts─▶ dead-letter queue
//! ```

use std::time::Duration;

use humantime_serde::re::humantime;
use lapin::options::{ExchangeDeclareOptions, QueueBindOptions, QueueDeclareOptions};
use lapin::types::{AMQPValue, FieldTable, LongString};
use lapin::{Channel, ExchangeKind};

use crate::domain::event::{EXPERIMENT_PRUNE, RUN_FINISHED};
use crate::settings::Settings;

/// The names and parameters of every exchange and queue.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Topology {
    pub exchange: String,
    pub work_queue: String,
    pub dead_letter_queue: String,
    pub delivery_limit: u32,
    /// One delay queue per step of `retry.delays`, in order.
    pub delay_queues: Vec<DelayQueue>,
}

/// A queue that holds messages for `delay`, then dead-letters them back to the work queue.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DelayQueue {
    pub name: String,
    pub delay: Duration,
}

impl Topology {
    pub fn from_settings(settings: &Settings) -> Self {
        let b = &settings.broker;
        Topology {
            exchange: b.exchange.clone(),
            work_queue: b.work_queue.clone(),
            dead_letter_queue: b.dead_letter_queue.clone(),
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
        for key in [RUN_FINISHED, EXPERIMENT_PRUNE] {
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
        // A classic queue: listing dead letters (get, then requeue) must not count against a
        // quorum queue's delivery limit.
        channel
            .queue_declare(
                self.dead_letter_queue.as_str().into(),
                durable,
                FieldTable::default(),
            )
            .await?;
        Ok(())
    }

    /// Quorum queue; a message redelivered more than `delivery_limit` times (a worker crashing
    /// on it) goes to the dead-letter queue instead of being dropped.
    pub fn work_queue_arguments(&self) -> FieldTable {
        let mut args = FieldTable::default();
        args.insert("x-queue-type".into(), string("quorum"));
        args.insert(
            "x-delivery-limit".into(),
            AMQPValue::LongLongInt(self.delivery_limit.into()),
        );
        args.insert("x-dead-letter-exchange".into(), string(""));
        args.insert(
            "x-dead-letter-routing-key".into(),
            string(&self.dead_letter_queue),
        );
        args
    }

    /// A per-queue TTL (not per message, which only expires at the head of the queue).
    pub fn delay_queue_arguments(&self, queue: &DelayQueue) -> FieldTable {
        let ttl_ms = i64::try_from(queue.delay.as_millis()).unwrap_or(i64::MAX);
        let mut args = FieldTable::default();
        args.insert("x-message-ttl".into(), AMQPValue::LongLongInt(ttl_ms));
        args.insert("x-dead-letter-exchange".into(), string(""));
        args.insert("x-dead-letter-routing-key".into(), string(&self.work_queue));
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
    fn work_queue_is_a_quorum_queue_dead_lettering_to_the_dlq() {
        let args = topology(&[10]).work_queue_arguments();
        let get = |k: &str| args.inner().get(k).cloned();
        assert_eq!(get("x-queue-type"), Some(string("quorum")));
        assert_eq!(get("x-delivery-limit"), Some(AMQPValue::LongLongInt(20)));
        assert_eq!(get("x-dead-letter-exchange"), Some(string("")));
        assert_eq!(get("x-dead-letter-routing-key"), Some(string("dl")));
    }

    #[test]
    fn delay_queue_expires_into_the_work_queue() {
        let t = topology(&[10]);
        let args = t.delay_queue_arguments(&t.delay_queues[0]);
        let get = |k: &str| args.inner().get(k).cloned();
        assert_eq!(get("x-message-ttl"), Some(AMQPValue::LongLongInt(10_000)));
        assert_eq!(get("x-dead-letter-exchange"), Some(string("")));
        assert_eq!(get("x-dead-letter-routing-key"), Some(string("w")));
    }
}
