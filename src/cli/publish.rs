//! `model-pruner publish`: sends one event to the exchange exactly as a training pipeline or an
//! operator would, and fails loudly when the broker does not take it.
//!
//! The topology is deliberately not declared: an exchange or work queue that does not exist is
//! a deployment problem the operator must see (exit 1), not something a publisher should paper
//! over by creating an exchange nobody consumes.

use std::process::ExitCode;

use anyhow::{Context, bail};
use clap::Subcommand;
use lapin::ExchangeKind;
use lapin::options::ExchangeDeclareOptions;
use lapin::types::FieldTable;

use super::{ExperimentArgs, PolicyArgs, SweepFlags};
use crate::broker::{Broker, BrokerError};
use crate::domain::event::{Event, ExperimentPrune, RunFinished};
use crate::settings::Settings;

/// The events `publish` sends.
#[derive(Debug, Subcommand)]
pub(super) enum PublishCommand {
    /// Announce that a training run ended: a worker ranks its experiment and prunes.
    ///
    /// Published persistent and mandatory, with publisher confirms. Exit 0 once the broker
    /// confirmed it, 1 if it was not routed to a queue, refused or the broker failed, 2 on bad
    /// arguments or settings.
    ///
    /// Example: model-pruner publish run-finished --experiment-id 12 --run-id 9f1c2e --keep-top 5
    RunFinished {
        /// MLflow experiment id.
        #[arg(long)]
        experiment_id: String,
        /// MLflow run id of the run that ended.
        #[arg(long)]
        run_id: String,
        #[command(flatten)]
        policy: PolicyArgs,
    },
    /// Ask a worker to sweep a whole experiment, optionally retiring it afterwards.
    ///
    /// Exit codes as for run-finished. --experiment-name asks MLflow for the id first.
    ///
    /// Example: model-pruner publish prune-experiment --experiment-id 12 --keep-top 0 --delete-experiment
    PruneExperiment {
        #[command(flatten)]
        target: ExperimentArgs,
        #[command(flatten)]
        flags: SweepFlags,
    },
}

impl PublishCommand {
    fn policy(&self) -> &PolicyArgs {
        match self {
            PublishCommand::RunFinished { policy, .. } => policy,
            PublishCommand::PruneExperiment { target, .. } => &target.policy,
        }
    }

    /// The event, with the experiment id looked up when the experiment is given by name.
    async fn event(self, settings: &Settings) -> anyhow::Result<Event> {
        match self {
            PublishCommand::RunFinished {
                experiment_id,
                run_id,
                policy,
            } => Ok(Event::RunFinished(RunFinished {
                experiment_id,
                run_id,
                policy: policy.overrides(),
            })),
            PublishCommand::PruneExperiment { target, flags } => {
                Ok(Event::ExperimentPrune(ExperimentPrune {
                    experiment_id: target.id(settings).await?,
                    policy: target.policy.overrides(),
                    delete_experiment: flags.delete_experiment,
                    dry_run: flags.dry_run,
                    force: flags.force,
                }))
            }
        }
    }
}

/// Runs `publish`: 0 published, 1 not published, 2 an event that breaks the contract.
pub(super) async fn run(settings: &Settings, command: PublishCommand) -> anyhow::Result<ExitCode> {
    if let Err(failure) = command.policy().check(&settings.policy) {
        return Ok(failure.exit(false));
    }
    let event = command.event(settings).await?;
    let body = event.to_body();
    // The worker would dead-letter what the contract refuses (an empty id): refuse it here.
    if let Err(e) = Event::parse(event.routing_key(), &body) {
        eprintln!("model-pruner: {e}");
        return Ok(ExitCode::from(2));
    }
    publish_event(settings, &event).await?;
    println!(
        "published {} to exchange {:?}: {}",
        event.routing_key(),
        settings.broker.exchange,
        String::from_utf8_lossy(&body)
    );
    Ok(ExitCode::SUCCESS)
}

/// Publishes `event` persistent and mandatory with confirms; fails if the exchange does not
/// exist, no queue is bound to the event's routing key, or the broker refuses it.
pub(super) async fn publish_event(settings: &Settings, event: &Event) -> anyhow::Result<()> {
    let broker = Broker::connect(&settings.broker, "model-pruner publish")
        .await
        .context("connecting to RabbitMQ")?;
    let published = publish_on(&broker, settings, event).await;
    let _ = broker.close().await;
    published
}

/// [`publish_event`] on an open connection, for commands that publish many events.
pub(super) async fn publish_on(
    broker: &Broker,
    settings: &Settings,
    event: &Event,
) -> anyhow::Result<()> {
    let exchange = settings.broker.exchange.as_str();
    // Passive: checks the exchange exists without creating it. A missing exchange would
    // otherwise surface as a channel error in the middle of the publish.
    broker
        .channel()
        .exchange_declare(
            exchange.into(),
            ExchangeKind::Topic,
            ExchangeDeclareOptions {
                passive: true,
                ..ExchangeDeclareOptions::default()
            },
            FieldTable::default(),
        )
        .await
        .with_context(|| {
            format!(
                "exchange {exchange:?} does not exist (a worker declares it at start; check \
                 broker.exchange)"
            )
        })?;
    let published = broker
        .publish(
            exchange,
            event.routing_key(),
            &event.to_body(),
            FieldTable::default(),
        )
        .await;
    match published {
        Ok(()) => Ok(()),
        Err(e @ BrokerError::Unroutable { .. }) => bail!(
            "{e} (no queue is bound to {:?}: is the work queue declared? start a worker once)",
            event.routing_key()
        ),
        Err(e) => Err(e.into()),
    }
}
