//! `model-pruner migrate-queues`: brings the queues an earlier version declared to the arguments
//! this version declares (RabbitMQ cannot change a queue's arguments: the worker's declaration
//! fails with PRECONDITION_FAILED), without losing a message or changing what it is.
//!
//! A queue that differs is emptied into a holding queue (each message copied with a confirm,
//! then acked), deleted, declared again and refilled. When the work queue is replaced, every
//! delay queue is emptied first (those that match stay, empty), so none expires into it while
//! it is gone, and holding queues bound to the exchange catch what pipelines publish meanwhile.
//! Every message of the work queue, and every one caught, goes back through the first delay
//! queue as what the worker would have believed it to be: its routing key and attempt, from
//! [`Topology::origin`]. The dead-letter queue is moved out and back letter by letter, each
//! copy carrying only what the worker or the broker said about it ([`DeadLetter::moved_headers`]:
//! the copy loses `x-death`, so a publisher's `model-pruner-*` headers must not become the
//! worker's); a letter whose properties are unreadable cannot be copied faithfully and stops
//! the migration before anything moves. Run it with the workers stopped; running it again
//! finishes an interrupted migration.

use std::process::ExitCode;

use anyhow::{Context, bail};
use lapin::message::Delivery;
use lapin::options::{
    BasicAckOptions, BasicGetOptions, QueueBindOptions, QueueDeclareOptions, QueueDeleteOptions,
};
use lapin::protocol::AMQPSoftError;
use lapin::types::FieldTable;

use time::OffsetDateTime;

use crate::broker::{
    BINDINGS, Broker, BrokerError, Topology, copy_properties, faithful_properties, headers,
};
use crate::cli::dlq::{DeadLetter, DlqWalk};
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

/// A queue's state, with the broker's word on what differs.
struct Found {
    state: State,
    /// RabbitMQ's reply naming the first argument that differs, with both values.
    difference: Option<String>,
}

/// What a moved message becomes.
enum Copy<'a> {
    /// The same message in `queue`, without the headers the broker manages.
    Plain { queue: &'a str },
    /// A dead letter in `queue` with `headers`, its properties kept but an expiration (a
    /// letter must not expire in the dead-letter queue).
    Letter { queue: &'a str, headers: FieldTable },
    /// Into the (delay) `queue` as this attempt of the event with this routing key.
    HandBack {
        queue: &'a str,
        routing_key: String,
        attempt: u32,
        hand_backs: u32,
    },
}

pub(super) async fn run(settings: &Settings, dry_run: bool) -> anyhow::Result<ExitCode> {
    let topology = Topology::from_settings(settings);
    let broker = Broker::connect(&settings.broker, "model-pruner migrate-queues")
        .await
        .context("connecting to RabbitMQ")?;
    let work = topology.work_queue.as_str();
    let dead = topology.dead_letter_queue.as_str();
    let delays: Vec<&str> = topology
        .delay_queues
        .iter()
        .map(|d| d.name.as_str())
        .collect();
    let mut states = Vec::new();
    let mut pending = false;
    for queue in delays.iter().copied().chain([work, dead]) {
        let Found { state, difference } = state(&broker, &topology, queue).await?;
        let mut held = Vec::new();
        for (name, _) in holding(&topology, queue) {
            if let Some((messages, _)) = passive(&broker, &name).await? {
                held.push(format!("{name} ({messages} messages)"));
            }
        }
        println!("{queue}: {}", describe(state, difference.as_deref(), &held));
        pending |= !held.is_empty() || matches!(state, State::Differs { .. });
        states.push(state);
    }
    if dry_run || !pending {
        if !dry_run {
            broker.declare(&topology).await?;
        }
        let _ = broker.close().await;
        return Ok(ExitCode::SUCCESS);
    }
    no_consumers(&broker, work).await?;
    let work_differs = matches!(states[delays.len()], State::Differs { .. });
    let dead_differs = matches!(states[delays.len() + 1], State::Differs { .. });
    let mut moved = vec![0; delays.len() + 2];
    if let State::Differs { messages, .. } = states[delays.len() + 1]
        && messages > topology.dead_letter_max_length
    {
        bail!(
            "{dead} holds {messages} letters, more than broker.dead_letter_max_length ({}): \
             replay or purge some, or raise the bound, then run this again",
            topology.dead_letter_max_length
        );
    }
    if dead_differs {
        no_consumers(&broker, dead).await?;
        let now = OffsetDateTime::now_utc();
        let mut unreadable = Vec::new();
        let mut walk = DlqWalk::start(&broker, dead, settings).await?;
        while let Some(delivery) = walk.next().await? {
            if DeadLetter::read(walk.position(), &delivery, &topology, now).unreadable {
                unreadable.push(walk.position().to_string());
            }
            walk.hold(delivery);
        }
        walk.release().await?;
        if !unreadable.is_empty() {
            bail!(
                "{dead}: the dead letters at positions {} have unreadable properties and cannot \
                 be copied faithfully: purge them (model-pruner dlq purge), then run this again",
                unreadable.join(", ")
            );
        }
    }
    for (i, queue) in delays.iter().enumerate() {
        let differs = matches!(states[i], State::Differs { .. });
        if states[i] == State::Missing || !(differs || work_differs) {
            continue;
        }
        let (hold, _) = holding(&topology, queue).remove(0);
        declare_holding(&broker, &hold).await?;
        moved[i] = drain(&broker, queue, |_| Ok(Copy::Plain { queue: &hold })).await?;
        if differs {
            delete_drained(&broker, queue).await?;
        }
    }
    if work_differs {
        moved[delays.len()] = migrate_work_queue(&broker, &topology).await?;
    }
    if dead_differs {
        moved[delays.len() + 1] = migrate_dead_letter_queue(&broker, &topology).await?;
    }
    broker
        .declare(&topology)
        .await
        .context("declaring the topology after the migration")?;
    for (i, queue) in delays.iter().copied().chain([work, dead]).enumerate() {
        let refilled = refill(&broker, &topology, queue).await?;
        if states[i] != State::UpToDate || moved[i] > 0 || refilled > 0 {
            println!(
                "{queue}: migrated ({} messages moved out, {refilled} put back)",
                moved[i]
            );
        }
    }
    let _ = broker.close().await;
    Ok(ExitCode::SUCCESS)
}

fn describe(state: State, difference: Option<&str>, held: &[String]) -> String {
    let mut text = match state {
        State::Missing => "missing (the worker declares it)".to_owned(),
        State::UpToDate => "up to date".to_owned(),
        State::Differs {
            messages,
            consumers,
        } => format!(
            "declared with other arguments: needs migrating ({messages} ready messages, \
             {consumers} consumers){}",
            difference
                .map(|d| format!("; RabbitMQ says: {d}"))
                .unwrap_or_default()
        ),
    };
    if !held.is_empty() {
        text.push_str(&format!(
            "; holding queues of an interrupted migration: {}",
            held.join(", ")
        ));
    }
    text
}

/// Compares `queue` with the arguments this version declares, on throw-away channels (a
/// refused declaration closes its channel).
async fn state(broker: &Broker, topology: &Topology, queue: &str) -> anyhow::Result<Found> {
    let found = |state| Found {
        state,
        difference: None,
    };
    let Some((messages, consumers)) = passive(broker, queue).await? else {
        return Ok(found(State::Missing));
    };
    let args = topology
        .arguments(queue)
        .expect("one of the topology's queues");
    let channel = broker.open_channel().await?;
    let declared = channel
        .queue_declare(queue.into(), QueueDeclareOptions::durable(), args)
        .await
        .map_err(|cause| BrokerError::Amqp {
            op: "queue.declare",
            cause,
        });
    match declared {
        Ok(_) => {
            let _ = channel.close(200, "OK".into()).await;
            Ok(found(State::UpToDate))
        }
        Err(e) if e.soft() == Some(AMQPSoftError::PRECONDITIONFAILED) => Ok(Found {
            state: State::Differs {
                messages,
                consumers,
            },
            difference: e.reply_text(),
        }),
        Err(e) => Err(e).with_context(|| format!("comparing the arguments of {queue}")),
    }
}

/// Ready messages and consumers of `queue`, or `None` if it does not exist.
async fn passive(broker: &Broker, queue: &str) -> anyhow::Result<Option<(u32, u32)>> {
    broker
        .lookup(queue)
        .await
        .with_context(|| format!("looking up {queue}"))
}

/// Fails while a worker consumes the work queue.
async fn no_consumers(broker: &Broker, work: &str) -> anyhow::Result<()> {
    if let Some((_, consumers)) = passive(broker, work).await?
        && consumers > 0
    {
        bail!("{work} has {consumers} consumers: stop the workers, then run this again");
    }
    Ok(())
}

/// The holding queues of `queue`: a delay queue's own, or for the work queue one per routing
/// key it is bound to (bound to the exchange while the work queue is replaced).
fn holding(topology: &Topology, queue: &str) -> Vec<(String, Option<&'static str>)> {
    if queue != topology.work_queue {
        return vec![(format!("{queue}.migrating"), None)];
    }
    BINDINGS
        .iter()
        .map(|key| (format!("{queue}.migrating.{key}"), Some(*key)))
        .collect()
}

/// The holding queue of the first delay queue, where the work queue's messages wait.
fn first_delay_holding(topology: &Topology) -> String {
    holding(topology, &topology.delay_queue(1).name).remove(0).0
}

async fn migrate_work_queue(broker: &Broker, topology: &Topology) -> anyhow::Result<u64> {
    let queue = topology.work_queue.as_str();
    let exchange = topology.exchange.as_str();
    let channel = broker.channel();
    let first_delay = first_delay_holding(topology);
    declare_holding(broker, &first_delay).await?;
    for (name, key) in holding(topology, queue) {
        let key = key.expect("the work queue's holding queues have a key");
        declare_holding(broker, &name).await?;
        // Bound before the work queue is unbound: what pipelines publish meanwhile is
        // caught (perhaps twice, which a pass does not mind), never dropped.
        channel
            .queue_bind(
                name.as_str().into(),
                exchange.into(),
                key.into(),
                QueueBindOptions::default(),
                FieldTable::default(),
            )
            .await
            .with_context(|| format!("binding {name} to {exchange} with {key}"))?;
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
    let moved = drain(broker, queue, |delivery| {
        let origin = topology.origin(delivery);
        Ok(Copy::HandBack {
            queue: &first_delay,
            routing_key: origin.routing_key,
            attempt: origin.attempt,
            hand_backs: origin.hand_backs,
        })
    })
    .await?;
    no_consumers(broker, queue).await?;
    delete_drained(broker, queue).await?;
    Ok(moved)
}

/// Moves the dead letters out into their holding queue, each carrying only what the worker or
/// the broker said about it (see the module), and deletes the queue once empty. The work queue
/// may still dead-letter into it meanwhile (a message expiring there): the delete is
/// only-if-empty, and what arrived is moved too before trying again.
async fn migrate_dead_letter_queue(broker: &Broker, topology: &Topology) -> anyhow::Result<u64> {
    let dead = topology.dead_letter_queue.as_str();
    let (hold, _) = holding(topology, dead).remove(0);
    declare_holding(broker, &hold).await?;
    let mut moved = 0;
    for _ in 0..10 {
        let now = OffsetDateTime::now_utc();
        moved += drain(broker, dead, |delivery| {
            let letter = DeadLetter::read(0, delivery, topology, now);
            if letter.unreadable {
                bail!(
                    "a dead letter with unreadable properties reached {dead} during the \
                     migration: purge it (model-pruner dlq purge), then run this again"
                );
            }
            Ok(Copy::Letter {
                queue: &hold,
                headers: letter.moved_headers(delivery.properties.headers().as_ref()),
            })
        })
        .await?;
        let channel = broker.open_channel().await?;
        let deleted = channel
            .queue_delete(
                dead.into(),
                QueueDeleteOptions {
                    if_empty: true,
                    ..QueueDeleteOptions::default()
                },
            )
            .await;
        match deleted {
            Ok(_) => return Ok(moved),
            Err(lapin_error) => {
                let e = BrokerError::Amqp {
                    op: "queue.delete",
                    cause: lapin_error,
                };
                if e.soft() != Some(AMQPSoftError::PRECONDITIONFAILED) {
                    return Err(e).with_context(|| format!("deleting {dead}"));
                }
            }
        }
    }
    bail!("{dead} kept receiving letters while it was being emptied; run this again")
}

/// Empties and deletes `queue`'s holding queues: a delay queue's messages go back into it; what
/// the work queue's holding queues caught goes through the first delay queue as the event its
/// publisher sent (the routing key it was published with, attempt 1).
async fn refill(broker: &Broker, topology: &Topology, queue: &str) -> anyhow::Result<u64> {
    let first_delay = topology.delay_queue(1).name.as_str();
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
        total += drain(broker, &name, |delivery| {
            Ok(match key {
                Some(_) => Copy::HandBack {
                    queue: first_delay,
                    routing_key: delivery.routing_key.to_string(),
                    attempt: 1,
                    hand_backs: 0,
                },
                // Moved out as the worker's letters already (see run): back as they are.
                None if queue == topology.dead_letter_queue => Copy::Letter {
                    queue,
                    headers: headers::republished(delivery.properties.headers().as_ref()),
                },
                None => Copy::Plain { queue },
            })
        })
        .await?;
        // Holding queues are classic: deleted only if nothing arrived since.
        broker
            .channel()
            .queue_delete(
                name.as_str().into(),
                QueueDeleteOptions {
                    if_empty: true,
                    ..QueueDeleteOptions::default()
                },
            )
            .await
            .with_context(|| format!("deleting {name} (is something publishing into it?)"))?;
    }
    Ok(total)
}

/// Copies every message of `from` as `copy` says, each confirmed by the broker before the
/// original is acked.
async fn drain<'a>(
    broker: &Broker,
    from: &str,
    copy: impl Fn(&Delivery) -> anyhow::Result<Copy<'a>>,
) -> anyhow::Result<u64> {
    let channel = broker.open_channel().await?;
    let mut moved = 0;
    while let Some(message) = channel
        .basic_get(from.into(), BasicGetOptions { no_ack: false })
        .await
        .with_context(|| format!("basic.get on {from}"))?
    {
        let delivery = message.delivery;
        let original = &delivery.properties;
        let (queue, properties) = match copy(&delivery)? {
            Copy::Plain { queue } => (
                queue,
                copy_properties(original, headers::republished(original.headers().as_ref())),
            ),
            Copy::Letter { queue, headers } => {
                (queue, faithful_properties(original, headers, false))
            }
            Copy::HandBack {
                queue,
                routing_key,
                attempt,
                hand_backs,
            } => {
                let h = headers::handed_back(
                    original.headers().as_ref(),
                    &routing_key,
                    attempt,
                    hand_backs,
                );
                (queue, copy_properties(original, h))
            }
        };
        broker
            .publish_to_queue(queue, &delivery.data, properties)
            .await
            .with_context(|| format!("moving a message of {from} to {queue}"))?;
        let acked = delivery
            .acker
            .ack(BasicAckOptions::default())
            .await
            .with_context(|| format!("acking a moved message of {from}"))?;
        if !acked {
            bail!("the channel reading {from} closed; run this again to finish");
        }
        moved += 1;
    }
    let _ = channel.close(200, "OK".into()).await;
    Ok(moved)
}

/// Deletes a queue [`drain`] emptied. Quorum queues cannot be deleted only-if-empty, so the
/// broker's count of what the delete dropped is checked: nothing may publish into `queue` by
/// now (the workers are stopped, the exchange no longer routes to it, the delay queues that
/// fed it are empty).
async fn delete_drained(broker: &Broker, queue: &str) -> anyhow::Result<()> {
    let dropped = broker
        .channel()
        .queue_delete(queue.into(), QueueDeleteOptions::default())
        .await
        .with_context(|| format!("deleting {queue}"))?;
    if dropped > 0 {
        bail!(
            "{dropped} messages reached {queue} after it was emptied and were deleted with it: \
             something still publishes into it (a worker, a shovel, another binding)"
        );
    }
    Ok(())
}

/// A classic queue whatever the vhost's default type: it is deleted only-if-empty.
async fn declare_holding(broker: &Broker, name: &str) -> anyhow::Result<()> {
    let mut args = FieldTable::default();
    headers::set_str(&mut args, "x-queue-type", "classic");
    broker
        .channel()
        .queue_declare(name.into(), QueueDeclareOptions::durable(), args)
        .await
        .with_context(|| format!("declaring the holding queue {name}"))?;
    Ok(())
}
