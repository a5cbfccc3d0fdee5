//! `model-pruner dlq`: list, replay and purge dead letters without losing or reordering any.
//!
//! Every command walks the dead letters present when it starts with `basic.get` *without* ack,
//! holding each delivery until it is settled: a replayed one is acked only after the broker
//! confirmed its copy on the exchange, a purged one is acked, and every other one stays unacked
//! until the end, when one `basic.nack(multiple, requeue)` hands them all back. The dead-letter
//! queue is a classic queue, where RabbitMQ requeues to the original position, so skipped
//! messages keep their order; if the process dies, the broker requeues what it held the same
//! way. At worst an interrupted replay leaves a duplicate (confirmed but not yet acked), which
//! the worker handles idempotently.

mod letter;
mod walk;

use std::io::Write;
use std::process::ExitCode;

use anyhow::Context;
use clap::Subcommand;
use time::OffsetDateTime;

use crate::broker::{Broker, BrokerError, Topology};
use crate::settings::Settings;
use letter::table;
pub(super) use letter::{DeadLetter, Filter, Rate, Source};
pub(super) use walk::DlqWalk;
use walk::republish;

/// The `dlq` subcommands.
#[derive(Debug, Subcommand)]
pub(super) enum DlqCommand {
    /// Show dead letters, oldest first, leaving them in place and in order.
    ///
    /// One line each: position, age since the last failure, routing key, experiment and run
    /// (from the body), error class and kind, attempts, error message.
    ///
    /// Example: model-pruner dlq list --limit 20
    List {
        /// Dead letters to show, from the head of the queue.
        #[arg(long, default_value_t = 100)]
        limit: u32,
        /// Print a JSON array instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Send matching dead letters back to the exchange with their original routing key and a
    /// fresh attempt count, once the cause is fixed.
    ///
    /// Each copy is confirmed by the broker before its dead letter is acked, so an interrupted
    /// replay loses nothing (at worst one duplicate). Non-matching dead letters stay, in order.
    /// Exit 1 if any matching message could not be replayed.
    ///
    /// Example: model-pruner dlq replay --error-class transient --rate 10/s
    Replay {
        /// Replay at most this many messages.
        #[arg(long)]
        limit: Option<u32>,
        #[command(flatten)]
        filter: Filter,
        /// Show what would be replayed; move nothing.
        #[arg(long)]
        dry_run: bool,
        /// Maximum messages per second, e.g. 5 or 5/s.
        #[arg(long, value_name = "N/s")]
        rate: Option<Rate>,
    },
    /// Delete matching dead letters for good; the others stay, in order.
    ///
    /// Example: model-pruner dlq purge --experiment-id 12 --yes
    Purge {
        #[command(flatten)]
        filter: Filter,
        /// Confirm the deletion (not needed with --dry-run).
        #[arg(long, required_unless_present = "dry_run")]
        yes: bool,
        /// Count what would be deleted; delete nothing.
        #[arg(long)]
        dry_run: bool,
    },
}

impl DlqCommand {
    /// `list --json`: errors are written as JSON too.
    pub(super) fn json(&self) -> bool {
        matches!(self, DlqCommand::List { json: true, .. })
    }
}

/// Runs a `dlq` subcommand.
pub(super) async fn run(settings: &Settings, command: DlqCommand) -> anyhow::Result<ExitCode> {
    let broker = Broker::connect(&settings.broker, "model-pruner dlq")
        .await
        .context("connecting to RabbitMQ")?;
    let topology = Topology::from_settings(settings);
    let mut walk = DlqWalk::start(&broker, &topology.dead_letter_queue, settings).await?;
    let result = match command {
        DlqCommand::List { limit, json } => list(&mut walk, &topology, limit, json).await,
        DlqCommand::Replay {
            limit,
            filter,
            dry_run,
            rate,
        } => {
            let run = Replay {
                topology: &topology,
                filter: &filter,
                limit,
                dry_run,
                rate,
            };
            replay(&mut walk, run).await
        }
        DlqCommand::Purge {
            filter, dry_run, ..
        } => purge(&mut walk, &topology, &filter, dry_run).await,
    };
    let released = walk.release().await;
    let _ = broker.close().await;
    let code = result?;
    released?;
    Ok(code)
}

async fn list(
    walk: &mut DlqWalk<'_>,
    topology: &Topology,
    limit: u32,
    json: bool,
) -> anyhow::Result<ExitCode> {
    let now = OffsetDateTime::now_utc();
    let mut letters = Vec::new();
    while letters.len() < limit as usize {
        let Some(delivery) = walk.next().await? else {
            break;
        };
        letters.push(DeadLetter::read(walk.position(), &delivery, topology, now));
        walk.hold(delivery);
    }
    let mut out = std::io::stdout().lock();
    if json {
        writeln!(out, "{}", serde_json::to_string_pretty(&letters)?)?;
    } else {
        write!(out, "{}", table(&letters))?;
        writeln!(
            out,
            "{} of {} dead letters in {:?} shown",
            letters.len(),
            walk.total,
            walk.queue
        )?;
    }
    Ok(ExitCode::SUCCESS)
}

/// What `dlq replay` was asked to do.
struct Replay<'a> {
    topology: &'a Topology,
    filter: &'a Filter,
    limit: Option<u32>,
    dry_run: bool,
    rate: Option<Rate>,
}

async fn replay(walk: &mut DlqWalk<'_>, run: Replay<'_>) -> anyhow::Result<ExitCode> {
    let Replay {
        topology,
        filter,
        limit,
        dry_run,
        rate,
    } = run;
    let exchange = topology.exchange.as_str();
    let progress =
        super::format::progress_bar(walk.total, if dry_run { "checked" } else { "replayed" });
    let mut ticker = rate.map(Rate::ticker);
    let (mut moved, mut skipped, mut failed) = (0u64, 0u64, 0u64);
    let now = OffsetDateTime::now_utc();
    while limit.is_none_or(|l| moved < u64::from(l)) {
        let Some(delivery) = walk.next().await? else {
            break;
        };
        progress.inc(1);
        let letter = DeadLetter::read(walk.position(), &delivery, topology, now);
        if !filter.matches(&letter) {
            skipped += 1;
            walk.hold(delivery);
            continue;
        }
        let routing_key = match (&letter.routing_key, letter.unreadable) {
            (Some(key), false) => key.as_str(),
            (key, unreadable) => {
                let why = if unreadable {
                    "its properties or header names are not valid UTF-8, so a copy would not be \
                     what its publisher sent (purge it and have the publisher send it again)"
                } else if key.is_none() && letter.source == Source::Worker {
                    "the worker recorded no routing key for it"
                } else {
                    "no routing key it entered the work queue with can be believed"
                };
                progress.suspend(|| {
                    eprintln!(
                        "dead letter {}: not replayed, left in place: {why}",
                        letter.position
                    )
                });
                failed += 1;
                walk.hold(delivery);
                continue;
            }
        };
        if dry_run {
            moved += 1;
            walk.hold(delivery);
            continue;
        }
        if let Some(t) = ticker.as_mut() {
            t.tick().await;
        }
        // A letter that expired is replayed to be processed, not to expire again.
        let expired =
            letter.source == Source::Broker && letter.error_kind.as_deref() == Some("expired");
        match republish(walk.broker, exchange, routing_key, &delivery, !expired).await {
            Ok(()) => {
                walk.ack(&delivery).await?;
                moved += 1;
            }
            Err(e @ (BrokerError::Unroutable { .. } | BrokerError::Nacked { .. })) => {
                progress.suspend(|| eprintln!("dead letter {}: {e}", letter.position));
                failed += 1;
                walk.hold(delivery);
            }
            // The channel is gone: what it held returns to the queue on its own.
            Err(e) => {
                progress.abandon();
                failed += 1;
                eprintln!("replayed {moved}, skipped {skipped}, failed {failed}");
                return Err(e).context("replaying dead letters");
            }
        }
    }
    progress.finish_and_clear();
    let verb = if dry_run { "would replay" } else { "replayed" };
    println!(
        "{verb} {moved} to exchange {exchange:?}, skipped {skipped} (not matching), failed {failed}"
    );
    Ok(if failed > 0 {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    })
}

async fn purge(
    walk: &mut DlqWalk<'_>,
    topology: &Topology,
    filter: &Filter,
    dry_run: bool,
) -> anyhow::Result<ExitCode> {
    let progress = super::format::progress_bar(walk.total, "checked");
    let (mut removed, mut kept) = (0u64, 0u64);
    let now = OffsetDateTime::now_utc();
    while let Some(delivery) = walk.next().await? {
        progress.inc(1);
        let letter = DeadLetter::read(walk.position(), &delivery, topology, now);
        if !filter.matches(&letter) {
            kept += 1;
            walk.hold(delivery);
        } else if dry_run {
            removed += 1;
            walk.hold(delivery);
        } else {
            walk.ack(&delivery).await?;
            removed += 1;
        }
    }
    progress.finish_and_clear();
    let verb = if dry_run { "would remove" } else { "removed" };
    println!(
        "{verb} {removed} dead letters, {kept} left in {:?}",
        walk.queue
    );
    Ok(ExitCode::SUCCESS)
}
