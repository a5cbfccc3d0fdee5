//! The `model-pruner` command line: thin wrappers that load settings, build the engine or the
//! worker and print results. Exit codes: 0 done, 1 the operation failed, 2 bad settings or usage.

mod audit;
mod dlq;
mod format;
mod migrate;
mod plan;
mod publish;
mod report;
mod sweep;

use std::io::IsTerminal;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::{Args, Parser, Subcommand};

use crate::broker::{Broker, Topology};
use crate::domain::policy::{self, PolicyDefaults, PolicyOverrides};
use crate::engine::{Check, Engine, PassKind, PassRequest};
use crate::metrics::Metrics;
use crate::mlflow::MlflowClient;
use crate::settings::Settings;
use crate::store::Usage;
use crate::telemetry;

#[derive(Debug, Parser)]
#[command(
    name = "model-pruner",
    version,
    about = "Keeps the best N models of each MLflow experiment and deletes the rest from S3."
)]
struct Cli {
    /// Settings file applied over config/default.toml (env: MODEL_PRUNER_CONFIG).
    #[arg(long, global = true, value_name = "PATH")]
    config: Option<PathBuf>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Consume run.finished and experiment.prune events until SIGTERM or SIGINT.
    ///
    /// Example: MODEL_PRUNER__MLFLOW__TRACKING_URI=http://mlflow:5000 model-pruner worker
    Worker,
    /// Print a shell completion script; needs no settings.
    ///
    /// Example: model-pruner completions bash > /etc/bash_completion.d/model-pruner
    Completions {
        /// bash, zsh, fish, elvish or powershell.
        shell: clap_complete::Shell,
    },
    /// Inspect the settings.
    #[command(subcommand)]
    Config(ConfigCommand),
    /// Publish an event to the exchange (persistent, mandatory, confirmed), as a training
    /// pipeline would.
    ///
    /// Example: model-pruner publish run-finished --experiment-id 12 --run-id 9f1c2e
    #[command(subcommand)]
    Publish(publish::PublishCommand),
    /// Inspect, replay or purge the dead-letter queue without losing or reordering messages.
    ///
    /// Example: model-pruner dlq list; model-pruner dlq replay --experiment-id 12
    #[command(subcommand)]
    Dlq(dlq::DlqCommand),
    /// Bring queues declared by an earlier version to this version's arguments, moving their
    /// messages through holding queues (each copy confirmed before its original is acked).
    ///
    /// Needed when the worker stops with PRECONDITION_FAILED after an upgrade. Stop the
    /// workers first; running it again finishes an interrupted migration.
    ///
    /// Example: model-pruner migrate-queues --dry-run; model-pruner migrate-queues
    MigrateQueues {
        /// Say which queues differ; change nothing.
        #[arg(long)]
        dry_run: bool,
    },
    /// Check an experiment's stored files against MLflow and its policy; exit 0 consistent,
    /// 3 needs attention, 1 the audit failed, 2 bad settings or usage.
    ///
    /// Reports files left by unfinished deletions, unprotected models stored beyond the top N
    /// and objects that belong to no known run or model; --fix publishes the experiment.prune
    /// that deletes the models beyond the top N.
    ///
    /// Example: model-pruner audit --experiment-id 12 --fix
    Audit(audit::AuditArgs),
    /// Every experiment of the tracking server (or those --filter selects): runs, models and
    /// bytes stored, and what a pass would delete now, largest first; changes nothing. Exit 1
    /// when an experiment could not be read.
    ///
    /// Example: model-pruner report --filter "tags.team = 'nlp'" --keep-top 3
    Report(report::ReportArgs),
    /// Publish one experiment.prune (confirmed) per experiment --filter selects, or with --all
    /// per experiment that opted in with a model_pruner.* policy tag; workers carry them out.
    ///
    /// Example: model-pruner sweep --all --rate 5/s --dry-run
    Sweep(sweep::SweepArgs),
    /// Print an experiment's ranking and what a pass would delete; changes nothing.
    ///
    /// Example: model-pruner plan --experiment-id 12 --metric loss --direction min --keep-top 3
    Plan {
        #[command(flatten)]
        target: ExperimentArgs,
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Sweep an experiment now, in this process (what an experiment.prune event does).
    ///
    /// On a terminal it shows what it would delete and asks first (--yes skips the question).
    ///
    /// Example: model-pruner prune --experiment-name fine-tune-bert --keep-top 5 --dry-run
    Prune {
        #[command(flatten)]
        target: ExperimentArgs,
        #[command(flatten)]
        flags: SweepFlags,
        #[command(flatten)]
        confirm: Confirm,
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
}

impl Command {
    /// The command reads or deletes objects in the store, and needs its keys.
    fn uses_the_store(&self) -> bool {
        match self {
            Command::Worker
            | Command::Audit(_)
            | Command::Report(_)
            | Command::Plan { .. }
            | Command::Prune { .. } => true,
            Command::Config(ConfigCommand::Check { connect }) => *connect,
            _ => false,
        }
    }

    /// The command writes JSON for a script (`--json`), errors included.
    fn json(&self) -> bool {
        match self {
            Command::Plan { json, .. } | Command::Prune { json, .. } => *json,
            Command::Audit(args) => args.json(),
            Command::Report(args) => args.json(),
            Command::Dlq(command) => command.json(),
            _ => false,
        }
    }
}

#[derive(Debug, Subcommand)]
enum ConfigCommand {
    /// Print the effective settings (secrets redacted); exit 2 naming the bad key if invalid.
    ///
    /// With --connect, also try each system as the worker will use it (nothing is changed):
    /// the tracking URI answers MLflow's REST API, each allowed bucket can be listed, the
    /// broker accepts the user and has the topology. One `# system: ok|FAILED` line each,
    /// naming the settings to look at; exit 1 if any failed.
    ///
    /// Example: MODEL_PRUNER__POLICY__KEEP_TOP=5 model-pruner config check --connect
    Check {
        /// Try MLflow, the store and RabbitMQ with these settings.
        #[arg(long)]
        connect: bool,
    },
}

/// Policy overrides given on the command line; each wins over experiment tags and settings.
#[derive(Debug, Args)]
struct PolicyArgs {
    /// Main metric (overrides experiment tags and settings).
    #[arg(long)]
    metric: Option<String>,
    /// max keeps the highest values, min the lowest.
    #[arg(long, value_parser = ["max", "min"])]
    direction: Option<String>,
    /// Models to keep by rank (per group with --group-by).
    #[arg(long)]
    keep_top: Option<u32>,
    /// Most recently finished runs kept besides the top N (per group).
    #[arg(long)]
    keep_latest: Option<u32>,
    /// Leave runs that finished less than this ago (20s, 2h; 0s turns it off).
    #[arg(long)]
    grace: Option<String>,
    /// Rank within groups of runs sharing params.<name> or tags.<name> ("" turns it off).
    #[arg(long)]
    group_by: Option<String>,
    /// Runs whose metric is below this do not count towards the top N.
    #[arg(long, allow_hyphen_values = true)]
    min_metric: Option<f64>,
    /// Runs whose metric is above this do not count towards the top N.
    #[arg(long, allow_hyphen_values = true)]
    max_metric: Option<f64>,
    /// Only runs that finished at least this long ago are candidates (30d; 0s turns it off).
    #[arg(long)]
    older_than: Option<String>,
}

impl PolicyArgs {
    /// A usage error naming the option when the overrides break the worker's rules on their
    /// own (a worker would dead-letter such an event as `invalid_policy`).
    fn check(&self, defaults: &PolicyDefaults) -> Result<(), Failure> {
        policy::check_overrides(&self.overrides(), defaults).map_err(|e| Failure {
            code: 2,
            message: format!(
                "--{} {:?}: {}",
                e.field.replace('_', "-"),
                e.value,
                e.reason
            ),
        })
    }

    fn overrides(&self) -> PolicyOverrides {
        PolicyOverrides {
            metric: self.metric.clone(),
            direction: self.direction.clone(),
            keep_top: self.keep_top.map(i64::from),
            keep_latest: self.keep_latest.map(i64::from),
            grace: self.grace.clone(),
            group_by: self.group_by.clone(),
            min_metric: self.min_metric,
            max_metric: self.max_metric,
            older_than: self.older_than.clone(),
        }
    }
}

/// An experiment (by id or by name) and optional policy overrides.
#[derive(Debug, Args)]
struct ExperimentArgs {
    /// MLflow experiment id.
    #[arg(long, required_unless_present = "experiment_name")]
    experiment_id: Option<String>,
    /// MLflow experiment name, looked up with experiments/get-by-name.
    #[arg(long, conflicts_with = "experiment_id")]
    experiment_name: Option<String>,
    #[command(flatten)]
    policy: PolicyArgs,
}

impl ExperimentArgs {
    /// The experiment id given, or the id of the experiment named (one MLflow request).
    async fn id(&self, settings: &Settings) -> anyhow::Result<String> {
        if let Some(id) = &self.experiment_id {
            return Ok(id.clone());
        }
        let name = self.experiment_name.as_deref().unwrap_or_default();
        let mlflow = MlflowClient::new(&settings.mlflow, &Metrics::new())
            .context("building the MLflow client")?;
        match mlflow.get_experiment_by_name(name).await {
            Ok(experiment) => Ok(experiment.experiment_id),
            Err(e) if e.is_not_found() => {
                anyhow::bail!("no experiment is named {name:?} in MLflow (--experiment-name)")
            }
            Err(e) => Err(e).with_context(|| format!("looking up experiment {name:?}")),
        }
    }

    fn request(&self, experiment_id: &str, kind: PassKind, dry_run: bool) -> PassRequest {
        PassRequest {
            experiment_id: experiment_id.to_owned(),
            policy: self.policy.overrides(),
            run_ids: vec![],
            kind,
            dry_run,
        }
    }
}

/// How a sweep runs: the flags of an experiment.prune event.
#[derive(Debug, Args)]
struct SweepFlags {
    /// Soft-delete the experiment in MLflow once all its unprotected models are gone.
    #[arg(long)]
    delete_experiment: bool,
    /// Plan only: report what would be deleted, delete and mark nothing.
    #[arg(long)]
    dry_run: bool,
    /// Go past policy.max_deletions_per_pass.
    #[arg(long)]
    force: bool,
}

/// Confirmation of a destructive command run by a person.
#[derive(Debug, Args)]
struct Confirm {
    /// Do not ask: on a terminal, a prune without --dry-run shows the plan and asks first.
    #[arg(long, short = 'y')]
    yes: bool,
}

/// Entry point of the binary.
pub fn main() -> ExitCode {
    let cli = Cli::parse();
    // Before the settings load: a completion script needs none.
    if let Command::Completions { shell } = cli.command {
        let mut command = <Cli as clap::CommandFactory>::command();
        clap_complete::generate(shell, &mut command, "model-pruner", &mut std::io::stdout());
        return ExitCode::SUCCESS;
    }
    let json = cli.command.json();
    let settings = match Settings::load(cli.config.as_deref()) {
        Ok(s) => s,
        Err(e) => {
            let message = e.to_string();
            return Failure { code: 2, message }.exit(json);
        }
    };
    if cli.command.uses_the_store()
        && let Err(e) = settings.store.check_keys()
    {
        let message = e.to_string();
        return Failure { code: 2, message }.exit(json);
    }
    telemetry::init(settings.log.format, !matches!(cli.command, Command::Worker));
    for warning in crate::settings::env_warnings(std::env::vars()) {
        tracing::warn!("{warning}");
    }
    let runtime = tokio::runtime::Runtime::new().expect("a tokio runtime starts");
    match runtime.block_on(try_main(cli.command, settings)) {
        Ok(code) => code,
        Err(e) => Failure {
            code: 1,
            message: format!("{e:#}"),
        }
        .exit(json),
    }
}

async fn try_main(command: Command, settings: Settings) -> anyhow::Result<ExitCode> {
    match command {
        Command::Completions { .. } => unreachable!("printed by main before the settings load"),
        Command::Worker => {
            let listen = settings.metrics.listen;
            let server = crate::metrics::Server::bind(listen)
                .with_context(|| format!("cannot listen on {listen} (metrics.listen)"))?;
            let (metrics, shutdown) = (Metrics::new(), crate::worker::shutdown_signal());
            crate::worker::run(settings, server, metrics, shutdown).await?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Publish(command) => publish::run(&settings, command).await,
        Command::Dlq(command) => dlq::run(&settings, command).await,
        Command::Audit(args) => Ok(audit::run(&settings, args).await),
        Command::Report(args) => report::run(&settings, args).await,
        Command::Sweep(args) => sweep::run(&settings, args).await,
        Command::MigrateQueues { dry_run } => migrate::run(&settings, dry_run).await,
        Command::Config(ConfigCommand::Check { connect }) => {
            print!("{}", settings.to_redacted_toml());
            if !connect {
                return Ok(ExitCode::SUCCESS);
            }
            let engine =
                Engine::new(&settings, &Metrics::new()).context("building the MLflow client")?;
            let mut checks = engine.check_connections().await;
            checks.push(check_broker(&settings).await);
            println!();
            for c in &checks {
                match &c.problem {
                    None => println!("# {}: ok: {}", c.system, c.detail),
                    Some(p) => println!(
                        "# {}: FAILED: {}: {p} (check {})",
                        c.system, c.detail, c.settings
                    ),
                }
            }
            Ok(if checks.iter().all(|c| c.problem.is_none()) {
                ExitCode::SUCCESS
            } else {
                ExitCode::FAILURE
            })
        }
        Command::Plan { target, json } => {
            if let Err(failure) = target.policy.check(&settings.policy) {
                return Ok(failure.exit(json));
            }
            let id = target.id(&settings).await?;
            let metrics = Metrics::new();
            let engine = Engine::new(&settings, &metrics).context("building the MLflow client")?;
            let kind = PassKind::Sweep {
                delete_experiment: false,
                force: true,
            };
            let watch = plan::Watch::start(&metrics, json);
            let report = engine.run_pass(&target.request(&id, kind, true)).await;
            watch.done();
            let report = report.with_context(|| format!("planning experiment {id}"))?;
            let freed = plan::measure(&engine, &report).await?;
            plan::print(&report, &freed, json)?;
            if let Some(note) = plan::nothing_stored(&report, &freed, &settings) {
                eprintln!("note: {note}");
            }
            let max = settings.policy.max_deletions_per_pass;
            if report.planned.len() > max as usize {
                eprintln!(
                    "note: {} models to delete is more than policy.max_deletions_per_pass = {max}: \
                     a run.finished pass, or a prune without --force (force: true), would stop \
                     and delete nothing",
                    report.planned.len()
                );
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Prune {
            target,
            flags,
            confirm,
            json,
        } => {
            if let Err(failure) = target.policy.check(&settings.policy) {
                return Ok(failure.exit(json));
            }
            let id = target.id(&settings).await?;
            let metrics = Metrics::new();
            let engine = Engine::new(&settings, &metrics).context("building the MLflow client")?;
            let kind = PassKind::Sweep {
                delete_experiment: flags.delete_experiment,
                force: flags.force,
            };
            if !flags.dry_run && !confirm.yes && std::io::stdin().is_terminal() {
                let watch = plan::Watch::start(&metrics, json);
                let preview = engine.run_pass(&target.request(&id, kind, true)).await;
                watch.done();
                let preview = preview.with_context(|| format!("planning experiment {id}"))?;
                let usage = plan::measure(&engine, &preview).await?;
                if let Some(note) = plan::nothing_stored(&preview, &usage, &settings) {
                    eprintln!("note: {note}");
                }
                // Nothing to approve: no pass runs, so nothing appears and goes unseen.
                if preview.planned.is_empty() && !flags.delete_experiment {
                    plan::print(&preview, &usage, json)?;
                    return Ok(ExitCode::SUCCESS);
                }
                if !plan::confirm(&preview, &usage, flags.delete_experiment).await? {
                    return Ok(Failure {
                        code: 1,
                        message: "not confirmed: nothing deleted".into(),
                    }
                    .exit(json));
                }
            }
            let watch = plan::Watch::start(&metrics, json);
            let report = engine
                .run_pass(&target.request(&id, kind, flags.dry_run))
                .await;
            watch.done();
            let report = report.with_context(|| format!("pruning experiment {id}"))?;
            let freed = if flags.dry_run {
                let usage = plan::measure(&engine, &report).await?;
                if let Some(note) = plan::nothing_stored(&report, &usage, &settings) {
                    eprintln!("note: {note}");
                }
                usage
            } else {
                Usage {
                    objects: report.objects_deleted(),
                    bytes: report.bytes_deleted(),
                }
            };
            plan::print(&report, &freed, json)?;
            Ok(ExitCode::SUCCESS)
        }
    }
}

/// A command that did not do its work: its exit code and what to tell the user.
struct Failure {
    code: u8,
    message: String,
}

impl Failure {
    /// Prints the failure on stderr, and under `--json` also as `{"error": {...}}` on stdout
    /// (where a script reads the result); returns the exit code.
    fn exit(self, json: bool) -> ExitCode {
        eprintln!("model-pruner: {}", self.message);
        if json {
            let error = serde_json::json!({
                "error": {"message": self.message, "exit_code": self.code}
            });
            println!("{error}");
        }
        ExitCode::from(self.code)
    }
}

/// Whether the broker accepts the user and already has the worker's exchange and work queue
/// (a worker declares them at start: missing ones are reported, not failed).
async fn check_broker(settings: &Settings) -> Check {
    let topology = Topology::from_settings(settings);
    let mut check = Check {
        system: "broker",
        settings: "broker.url, broker.exchange, broker.work_queue (and the user's permissions)",
        detail: "RabbitMQ accepts the user".to_owned(),
        problem: None,
        misconfigured: false,
    };
    let broker = match Broker::connect(&settings.broker, "model-pruner config check").await {
        Ok(broker) => broker,
        Err(e) => {
            check.problem = Some(e.to_string());
            return check;
        }
    };
    match broker.lookup(&topology.work_queue).await {
        Ok(Some((ready, consumers))) => {
            check.detail = format!(
                "RabbitMQ accepts the user; work queue {:?}: {ready} ready, {consumers} consumers",
                topology.work_queue
            )
        }
        Ok(None) => {
            check.detail = format!(
                "RabbitMQ accepts the user; work queue {:?} not declared yet (a worker declares \
                 it at start)",
                topology.work_queue
            )
        }
        Err(e) => check.problem = Some(e.to_string()),
    }
    let _ = broker.close().await;
    check
}
