//! `model-pruner migrate-queues`: brings the queues an earlier version declared to the arguments
//! this version declares (RabbitMQ cannot change a queue's arguments: the worker's declaration
//! fails with PRECONDITION_FAILED), without losing a message.
//!
//! Queues are emptied into holding queues (each message copied with a confirm, then acked),
//! deleted, declared again, and refilled. Every delay queue is emptied first, since one expiring
//! into the work queue while that is replaced would lose the message; the work queue only if it
//! differs. Its messages keep what the worker may believe of them: one a pipeline published goes
//! back through the exchange with its routing key (holding queues bound to the exchange also
//! catch what pipelines publish while the work queue is gone); one back from a delay queue goes
//! into the first delay queue as the same attempt. Run it with the workers stopped; running it
//! again finishes an interrupted migration.

use std::process::ExitCode;

use anyhow::{Context, bail};
use lapin::Channel;
use lapin::message::Delivery;
use lapin::options::{
    BasicAckOptions, BasicGetOptions, QueueBindOptions, QueueDeclareOptions, QueueDeleteOptions,
};
use lapin::protocol::AMQPSoftError;
use lapin::types::FieldTable;

use crate::broker::{BINDINGS, Broker, BrokerError, PERSISTENT, Topology, headers};
use crate::settings::Settings;

/// A worker queue as the broker has it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// Not declared yet: the worker declares it at start.
    Missing,
    UpToDate,
    /// Declared with other arguments.
    Differs {
        messages: u32,
        consumers: u32,
    },
}

/// Where a moved message goes.
enum Destination<'a> {
    /// Through the default exchange into this queue, properties kept.
    Queue(&'a str),
    /// Through this exchange with this routing key, properties kept.
    Exchange(&'a str, &'a str),
    /// Into this (delay) queue as the same attempt of the event with this routing key.
    HandBack {
        queue: &'a str,
        routing_key: String,
        attempt: u32,
    },
}

pub async fn run(settings: &Settings, dry_run: bool) -> anyhow::Result<ExitCode> {
    let topology = Topology::from_settings(settings);
    let broker = Broker::connect(&settings.broker, "model-pruner migrate-queues")
        .await
        .context("connecting to RabbitMQ")?;
    let mut queues: Vec<&str> = topology
        .delay_queues
        .iter()
        .map(|d| d.name.as_str())
        .collect();
    queues.push(&topology.work_queue);
    let mut states = Vec::new();
    let mut pending = false;
    for queue in &queues {
        let state = state(&broker, &topology, queue).await?;
        let leftovers = leftovers(&broker, &topology, queue).await?;
        println!("{queue}: {}", describe(state, leftovers));
        pending |= leftovers > 0 || matches!(state, State::Differs { .. });
        states.push(state);
    }
    if dry_run || !pending {
        if !dry_run {
            broker.declare(&topology).await?;
        }
        let _ = broker.close().await;
        return Ok(ExitCode::SUCCESS);
    }
    if let Some((_, consumers)) = passive(&broker, &topology.work_queue).await?
        && consumers > 0
    {
        bail!(
            "{} has {consumers} consumers: stop the workers, then run this again",
            topology.work_queue
        );
    }
    // Every delay queue is emptied first, whether it differs or not: a delay queue expiring
    // into the work queue while it is being replaced would lose the message.
    let mut moved = vec![0; queues.len()];
    for (i, queue) in queues[..queues.len() - 1].iter().enumerate() {
        if states[i] == State::Missing {
            continue;
        }
        let (hold, _) = holding(&topology, queue).remove(0);
        declare_holding(broker.channel(), &hold).await?;
        moved[i] = drain_and_delete(&broker, queue, |_| Destination::Queue(&hold)).await?;
    }
    if matches!(states[queues.len() - 1], State::Differs { .. }) {
        moved[queues.len() - 1] = migrate_work_queue(&broker, &topology).await?;
    }
    broker
        .declare(&topology)
        .await
        .context("declaring the topology after the migration")?;
    for (i, queue) in queues.iter().enumerate() {
        let refilled = refill(&broker, &topology, queue).await?;
        if states[i] != State::UpToDate || refilled > 0 {
            println!(
                "{queue}: migrated ({} messages moved, {refilled} put back)",
                moved[i]
            );
        }
    }
    let _ = broker.close().await;
    Ok(ExitCode::SUCCESS)
}

fn describe(state: State, leftovers: u32) -> String {
    let mut text = match state {
        State::Missing => "missing (the worker declares it)".to_owned(),
        State::UpToDate => "up to date".to_owned(),
        State::Differs {
            messages,
            consumers,
        } => format!(
            "declared with other arguments: needs migrating ({messages} ready messages, \
             {consumers} consumers)"
        ),
    };
    if leftovers > 0 {
        text.push_str(&format!(
            "; {leftovers} messages wait in holding queues of an interrupted migration"
        ));
    }
    text
}

/// Compares `queue` with the arguments this version declares, on throw-away channels (a
/// refused declaration closes its channel). Declares a missing queue only if it matches.
async fn state(broker: &Broker, topology: &Topology, queue: &str) -> anyhow::Result<State> {
    let Some((messages, consumers)) = passive(broker, queue).await? else {
        return Ok(State::Missing);
    };
    let args = topology
        .arguments(queue)
        .expect("one of the topology's queues");
    let channel = broker.open_channel().await?;
    let declared = channel
        .queue_declare(queue.into(), QueueDeclareOptions::durable(), args)
        .await
        .map_err(|source| BrokerError::Amqp {
            op: "queue.declare",
            source,
        });
    match declared {
        Ok(_) => {
            let _ = channel.close(200, "OK".into()).await;
            Ok(State::UpToDate)
        }
        Err(e) if e.soft() == Some(AMQPSoftError::PRECONDITIONFAILED) => Ok(State::Differs {
            messages,
            consumers,
        }),
        Err(e) => Err(e).with_context(|| format!("comparing the arguments of {queue}")),
    }
}

/// Ready messages and consumers of `queue`, or `None` if it does not exist.
async fn passive(broker: &Broker, queue: &str) -> anyhow::Result<Option<(u32, u32)>> {
    let channel = broker.open_channel().await?;
    let declared = channel
        .queue_declare(
            queue.into(),
            QueueDeclareOptions {
                passive: true,
                ..QueueDeclareOptions::default()
            },
            FieldTable::default(),
        )
        .await
        .map_err(|source| BrokerError::Amqp {
            op: "passive queue.declare",
            source,
        });
    match declared {
        Ok(q) => {
            let _ = channel.close(200, "OK".into()).await;
            Ok(Some((q.message_count(), q.consumer_count())))
        }
        Err(e) if e.soft() == Some(AMQPSoftError::NOTFOUND) => Ok(None),
        Err(e) => Err(e).with_context(|| format!("looking up {queue}")),
    }
}

/// The holding queues of `queue`: one for the delay queues; for the work queue one per
/// routing key it is bound to, plus one for messages that go back as they are.
fn holding(topology: &Topology, queue: &str) -> Vec<(String, Option<&'static str>)> {
    if queue != topology.work_queue {
        return vec![(format!("{queue}.migrating"), None)];
    }
    let mut names: Vec<_> = BINDINGS
        .iter()
        .map(|key| (format!("{queue}.migrating.{key}"), Some(*key)))
        .collect();
    names.push((format!("{queue}.migrating.as-is"), None));
    names
}

async fn leftovers(broker: &Broker, topology: &Topology, queue: &str) -> anyhow::Result<u32> {
    let mut total = 0;
    for (name, _) in holding(topology, queue) {
        total += passive(broker, &name).await?.map_or(0, |(m, _)| m);
    }
    Ok(total)
}

async fn migrate_work_queue(broker: &Broker, topology: &Topology) -> anyhow::Result<u64> {
    let queue = topology.work_queue.as_str();
    let exchange = topology.exchange.as_str();
    let channel = broker.channel();
    let holds = holding(topology, queue);
    declare_holding(channel, &first_delay_holding(topology)).await?;
    for (name, key) in &holds {
        declare_holding(channel, name).await?;
        if let Some(key) = key {
            // Bound before the work queue is unbound: what pipelines publish meanwhile is
            // caught (perhaps twice, which a pass does not mind), never dropped.
            channel
                .queue_bind(
                    name.as_str().into(),
                    exchange.into(),
                    (*key).into(),
                    QueueBindOptions::default(),
                    FieldTable::default(),
                )
                .await
                .with_context(|| format!("binding {name} to {exchange} with {key}"))?;
        }
    }
    for key in BINDINGS {
        channel
            .queue_unbind(
                queue.into(),
                exchange.into(),
                key.into(),
                FieldTable::default(),
            )
            .await
            .with_context(|| format!("unbinding {queue} from {exchange}"))?;
    }
    // The delay queues are gone by now: a retry waits in the first one's holding queue.
    let first_delay = first_delay_holding(topology);
    let moved = drain_and_delete(broker, queue, |delivery| {
        let origin = topology.origin(delivery);
        if origin.from_delay_queue {
            return Destination::HandBack {
                queue: &first_delay,
                routing_key: origin.routing_key,
                attempt: origin.attempt,
            };
        }
        let published = delivery.exchange.as_str() == exchange;
        match holds
            .iter()
            .find(|(_, key)| published && *key == Some(delivery.routing_key.as_str()))
        {
            Some((name, _)) => Destination::Queue(name),
            None => Destination::Queue(&holds[holds.len() - 1].0),
        }
    })
    .await?;
    Ok(moved)
}

fn first_delay_holding(topology: &Topology) -> String {
    holding(topology, &topology.delay_queue(1).name).remove(0).0
}

/// Puts the messages of `queue`'s holding queues back (the work queue's through the exchange
/// with their routing key, or as they are), then deletes the holding queues.
async fn refill(broker: &Broker, topology: &Topology, queue: &str) -> anyhow::Result<u64> {
    let mut total = 0;
    for (name, key) in holding(topology, queue) {
        if passive(broker, &name).await?.is_none() {
            continue;
        }
        if let Some(key) = key {
            broker
                .channel()
                .queue_unbind(
                    name.as_str().into(),
                    topology.exchange.as_str().into(),
                    key.into(),
                    FieldTable::default(),
                )
                .await
                .with_context(|| format!("unbinding {name}"))?;
        }
        total += drain_and_delete(broker, &name, |_| match key {
            Some(key) => Destination::Exchange(&topology.exchange, key),
            None => Destination::Queue(queue),
        })
        .await?;
    }
    Ok(total)
}

/// Copies every message of `from` where `route` says, with a confirm before each ack, then
/// deletes `from`. Nothing else may publish into `from` meanwhile (the workers are stopped,
/// the exchange no longer routes to it, the delay queues feeding the work queue are gone):
/// quorum queues cannot be deleted only-if-empty, so the broker's count of what the delete
/// dropped is checked instead.
async fn drain_and_delete<'a>(
    broker: &Broker,
    from: &str,
    route: impl Fn(&Delivery) -> Destination<'a>,
) -> anyhow::Result<u64> {
    let channel = broker.open_channel().await?;
    let mut moved = 0;
    while let Some(message) = channel
        .basic_get(from.into(), BasicGetOptions { no_ack: false })
        .await
        .with_context(|| format!("basic.get on {from}"))?
    {
        let delivery = message.delivery;
        let properties = delivery.properties.clone().with_delivery_mode(PERSISTENT);
        let (exchange, routing_key, properties) = match route(&delivery) {
            Destination::Queue(queue) => ("", queue.to_owned(), properties),
            Destination::Exchange(exchange, key) => (exchange, key.to_owned(), properties),
            Destination::HandBack {
                queue,
                routing_key,
                attempt,
            } => {
                let h = headers::handed_back(
                    delivery.properties.headers().as_ref(),
                    &routing_key,
                    attempt,
                );
                ("", queue.to_owned(), properties.with_headers(h))
            }
        };
        broker
            .publish_with(exchange, &routing_key, &delivery.data, properties)
            .await
            .with_context(|| format!("moving a message of {from} to {routing_key}"))?;
        delivery
            .acker
            .ack(BasicAckOptions::default())
            .await
            .with_context(|| format!("acking a moved message of {from}"))?;
        moved += 1;
    }
    let dropped = channel
        .queue_delete(from.into(), QueueDeleteOptions::default())
        .await
        .with_context(|| format!("deleting {from}"))?;
    let _ = channel.close(200, "OK".into()).await;
    if dropped > 0 {
        bail!(
            "{dropped} messages reached {from} after it was emptied and were deleted with it: \
             something still publishes into it (a worker?)"
        );
    }
    Ok(moved)
}

async fn declare_holding(channel: &Channel, name: &str) -> anyhow::Result<()> {
    channel
        .queue_declare(
            name.into(),
            QueueDeclareOptions::durable(),
            FieldTable::default(),
        )
        .await
        .with_context(|| format!("declaring the holding queue {name}"))?;
    Ok(())
}
