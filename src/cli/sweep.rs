//! `model-pruner sweep`: one confirmed `experiment.prune` per selected experiment, for the
//! experiments no pipeline sends events for. The workers share them out as any other events.

use std::process::ExitCode;

use anyhow::Context;
use clap::Args;

use super::dlq::Rate;
use super::{Failure, PolicyArgs, format, publish};
use crate::broker::Broker;
use crate::domain::event::{Event, ExperimentPrune};
use crate::domain::policy;
use crate::metrics::Metrics;
use crate::mlflow::MlflowClient;
use crate::settings::Settings;

/// Arguments of `sweep`.
#[derive(Debug, Args)]
pub(super) struct SweepArgs {
    /// The experiments matching this MLflow experiment-search filter, e.g. "tags.team = 'nlp'".
    #[arg(long, required_unless_present = "all", conflicts_with = "all")]
    filter: Option<String>,
    /// Every experiment that opted in with a model_pruner.* policy tag (every active experiment
    /// with fleet.manage_all_experiments = true).
    #[arg(long)]
    all: bool,
    /// Events published per second at most, e.g. 5 or 5/s.
    #[arg(long, value_name = "N/s")]
    rate: Option<Rate>,
    /// Print the events that would be published; publish nothing.
    #[arg(long)]
    dry_run: bool,
    /// Let each prune go past policy.max_deletions_per_pass.
    #[arg(long)]
    force: bool,
    #[command(flatten)]
    policy: PolicyArgs,
}

/// Runs `sweep`: 0 all published, 1 something failed (what was published stays published).
pub(super) async fn run(settings: &Settings, args: SweepArgs) -> anyhow::Result<ExitCode> {
    if let Err(failure) = args.policy.check(&settings.policy) {
        return Ok(failure.exit(false));
    }
    let mlflow = MlflowClient::new(&settings.mlflow, &Metrics::new())
        .context("building the MLflow client")?;
    let filter = args.filter.as_deref().unwrap_or_default();
    let found = match mlflow.search_experiments(filter).await {
        Ok(found) => found,
        Err(e) if e.error_code() == Some("INVALID_PARAMETER_VALUE") => {
            let message = format!("--filter {filter:?}: MLflow cannot read it: {e}");
            return Ok(Failure { code: 2, message }.exit(false));
        }
        Err(e) => return Err(e).context("listing the experiments"),
    };
    let every = args.filter.is_some() || settings.fleet.manage_all_experiments;
    let selected: Vec<_> = found
        .into_iter()
        .filter(|e| every || policy::opted_in(&e.tags))
        .collect();
    let events: Vec<Event> = selected
        .iter()
        .map(|e| {
            Event::ExperimentPrune(ExperimentPrune {
                experiment_id: e.experiment_id.clone(),
                policy: args.policy.overrides(),
                delete_experiment: false,
                dry_run: false,
                force: args.force,
            })
        })
        .collect();
    if args.dry_run {
        for (experiment, event) in selected.iter().zip(&events) {
            println!(
                "would publish {} for experiment {} ({:?}): {}",
                event.routing_key(),
                experiment.experiment_id,
                experiment.name,
                String::from_utf8_lossy(&event.to_body())
            );
        }
        println!(
            "{} selected; nothing published (dry run)",
            format::count(events.len() as u64, "experiment")
        );
        return Ok(ExitCode::SUCCESS);
    }
    let broker = Broker::connect(&settings.broker, "model-pruner sweep")
        .await
        .context("connecting to RabbitMQ")?;
    let mut ticker = args.rate.map(Rate::ticker);
    let progress = format::progress_bar(events.len() as u64, "published");
    let mut published = 0usize;
    let mut result = Ok(());
    for (experiment, event) in selected.iter().zip(&events) {
        if let Some(t) = ticker.as_mut() {
            t.tick().await;
        }
        if let Err(e) = publish::publish_on(&broker, settings, event).await {
            result = Err(e).with_context(|| {
                format!(
                    "publishing experiment.prune for experiment {} after {published} of {}",
                    experiment.experiment_id,
                    events.len()
                )
            });
            break;
        }
        published += 1;
        progress.inc(1);
    }
    progress.finish_and_clear();
    let _ = broker.close().await;
    result?;
    println!(
        "published {} to exchange {:?} (confirmed)",
        format::count(published as u64, "experiment.prune event"),
        settings.broker.exchange
    );
    Ok(ExitCode::SUCCESS)
}
