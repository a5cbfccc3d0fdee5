//! One pass over the messages of a queue, each held unacked until settled, and the confirmed
//! re-publication of a dead letter.

use std::time::Duration;

use anyhow::Context;
use lapin::Channel;
use lapin::message::Delivery;
use lapin::options::{BasicAckOptions, BasicGetOptions, BasicNackOptions};

use crate::broker::{Broker, BrokerError, faithful_properties, headers};
use crate::settings::Settings;

/// Publishes a copy of a dead letter to the exchange with its original routing key: the
/// original properties (type, priority, reply-to, content encoding, and the expiration unless
/// `keep_expiration` is false),
/// persistent, without any `model-pruner-*` header (a fresh attempt count; on a letter the
/// broker dead-lettered they are the publisher's), with confirms and the mandatory flag.
pub(super) async fn republish(
    broker: &Broker,
    exchange: &str,
    routing_key: &str,
    delivery: &Delivery,
    keep_expiration: bool,
) -> Result<(), BrokerError> {
    let original = &delivery.properties;
    let fresh = headers::without_worker_headers(headers::republished(original.headers().as_ref()));
    let properties = faithful_properties(original, fresh, keep_expiration);
    broker
        .publish_with(exchange, routing_key, &delivery.data, properties)
        .await
}

/// One pass over the messages a queue held when it started, each delivery held unacked until
/// it is acked or [`DlqWalk::release`] requeues all held ones at once.
pub(crate) struct DlqWalk<'a> {
    pub broker: &'a Broker,
    pub channel: &'a Channel,
    pub queue: String,
    /// Messages in the queue at the start; the walk stops there, so messages that arrive
    /// meanwhile (or that it requeues itself) are not visited twice.
    pub total: u64,
    seen: u64,
    /// The latest delivery still held; a multiple nack up to it requeues every held one.
    last_held: Option<Delivery>,
    /// Longest wait for the broker to answer a get, an ack or a nack.
    timeout: Duration,
}

impl<'a> DlqWalk<'a> {
    pub(crate) async fn start(
        broker: &'a Broker,
        queue: &str,
        settings: &Settings,
    ) -> anyhow::Result<DlqWalk<'a>> {
        let total = broker.ready_messages(queue).await.with_context(|| {
            format!("dead-letter queue {queue:?} does not exist (check broker.dead_letter_queue)")
        })?;
        Ok(DlqWalk {
            broker,
            channel: broker.channel(),
            queue: queue.to_owned(),
            total: total.into(),
            seen: 0,
            last_held: None,
            timeout: settings.broker.connect_timeout,
        })
    }

    /// The next message, unacked; `None` once the messages present at the start are visited.
    pub(crate) async fn next(&mut self) -> anyhow::Result<Option<Delivery>> {
        if self.seen >= self.total {
            return Ok(None);
        }
        let get = self.channel.basic_get(
            self.queue.as_str().into(),
            BasicGetOptions { no_ack: false },
        );
        let got = bounded(self.timeout, "basic.get", get)
            .await
            .with_context(|| format!("basic.get on {:?}", self.queue))?;
        Ok(got.map(|m| {
            self.seen += 1;
            m.delivery
        }))
    }

    /// 1-based position of the last message returned by [`DlqWalk::next`].
    pub(crate) fn position(&self) -> u64 {
        self.seen
    }

    pub(crate) fn hold(&mut self, delivery: Delivery) {
        self.last_held = Some(delivery);
    }

    pub(crate) async fn ack(&self, delivery: &Delivery) -> anyhow::Result<()> {
        bounded(
            self.timeout,
            "basic.ack",
            delivery.acker.ack(BasicAckOptions::default()),
        )
        .await
        .context("basic.ack")?
        .then_some(())
        .context("basic.ack: the delivery was already settled or its channel closed")
    }

    /// Requeues every held message with one multiple nack; RabbitMQ puts each back where it
    /// was in the classic queue.
    pub(crate) async fn release(&mut self) -> anyhow::Result<()> {
        let Some(last) = self.last_held.take() else {
            return Ok(());
        };
        let nack = last.acker.nack(BasicNackOptions {
            multiple: true,
            requeue: true,
        });
        bounded(self.timeout, "basic.nack", nack)
            .await
            .context("basic.nack (requeue)")?
            .then_some(())
            .context("basic.nack (requeue): the channel closed; the broker requeues on its own")
    }
}

/// Waits for `call` (the broker operation `op`) at most `limit`: a broker that stops answering
/// ends the command with an error instead of hanging it; what it held goes back to the queue
/// when the connection closes.
async fn bounded<T>(
    limit: Duration,
    op: &'static str,
    call: impl Future<Output = lapin::Result<T>>,
) -> anyhow::Result<T> {
    match tokio::time::timeout(limit, call).await {
        Ok(result) => Ok(result?),
        Err(_) => anyhow::bail!("RabbitMQ did not answer {op} within {limit:?}"),
    }
}
