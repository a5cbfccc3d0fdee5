//! Benchmarks of model-pruner against the local stack (`scripts/stack.sh`): sweep throughput
//! against the store's own limit, burst throughput, latency and request counts, and the worker
//! process's peak memory and CPU time. Not a test: it asserts correctness (every event acked,
//! the right objects left), never timings. `scripts/bench.sh` runs it; see `--help`.
//!
//! # Layout
//! - `worker`: the worker as a separate process: its log, `/metrics` and `/proc` figures.
//! - `seed`: experiments, runs and objects created for the scenarios.
//! - `raw`: the plain-S3-client baseline.
//! - `cpu`: CPU seconds of the machine's processes by group during a phase.
//! - `scenarios`: sweep and burst, and the per-phase split of their requests.
//! - `steady`: one event at a time on an experiment at its top N (latency).
//! - `replicas`: one burst drained by 1, 2 and 4 worker processes.
//! - `fleet`: `model-pruner report` over many experiments, beside a raw listing.
//! - `report`: the table and the JSON file.

#![allow(
    unreachable_pub,
    reason = "a test or bench crate has no public API: `pub` only shares items between its modules"
)]
#![allow(
    clippy::unwrap_used,
    reason = "tests and the bench fail loudly on the unexpected; the lint is for the product"
)]

mod cpu;
mod fleet;
#[path = "../../tests/support/mlflow_fixtures.rs"]
mod mlflow_fixtures;
mod raw;
mod replicas;
mod report;
mod scenarios;
mod seed;
mod steady;
#[path = "../../tests/support/store_fixtures.rs"]
mod store_fixtures;
mod worker;

use std::path::PathBuf;

use anyhow::Context as _;
use clap::Parser;
use lapin::options::{ExchangeDeleteOptions, QueueDeleteOptions};
use model_pruner::broker::{Broker, Topology};
use model_pruner::settings::Settings;

use worker::{Names, Worker};

#[derive(Debug, Parser)]
#[command(about = "model-pruner benchmarks against the local stack (scripts/stack.sh env)")]
struct Args {
    /// Tiny sizes, for CI: checks the harness end to end in well under a minute.
    #[arg(long)]
    smoke: bool,
    /// Runs of the sweep experiment.
    #[arg(long, default_value_t = 200)]
    sweep_runs: usize,
    /// Files of each run's model.
    #[arg(long, default_value_t = 50)]
    files_per_run: usize,
    /// Models the sweep keeps.
    #[arg(long, default_value_t = 10)]
    keep_top: usize,
    /// Runs of the scale sweep (scenario 4); 0 skips it.
    #[arg(long, default_value_t = 2000)]
    scale_runs: usize,
    /// Files of each scale-sweep run's model (default: --files-per-run). With 20,000 runs, 2
    /// keeps the seed to 40,000 objects: the scenario measures memory per run.
    #[arg(long)]
    scale_files: Option<usize>,
    /// Versions registered elsewhere in the registry before the sweep is run again (scenario 5:
    /// what a pass pays for the rest of a shared registry); 0 skips it.
    #[arg(long, default_value_t = 2000)]
    registry_versions: usize,
    /// Experiments of the burst; 0 skips it.
    #[arg(long, default_value_t = 20)]
    burst_experiments: usize,
    /// Runs (and run.finished events) per burst experiment.
    #[arg(long, default_value_t = 50)]
    burst_runs: usize,
    /// Files of each burst run's model.
    #[arg(long, default_value_t = 2)]
    burst_files: usize,
    /// Events of the steady-state scenario (one at a time); 0 skips it.
    #[arg(long, default_value_t = 40)]
    steady_events: usize,
    /// Worker processes of each replicas round, e.g. `1,2,4`; `0` skips the scenario.
    #[arg(long, value_delimiter = ',', default_value = "1,2,4")]
    replicas: Vec<usize>,
    /// Experiments of each replicas burst.
    #[arg(long, default_value_t = 20)]
    replica_experiments: usize,
    /// Runs (and run.finished events) per replicas experiment.
    #[arg(long, default_value_t = 10)]
    replica_runs: usize,
    /// Models each replicas experiment keeps.
    #[arg(long, default_value_t = 3)]
    replica_keep: usize,
    /// Experiments of the fleet report (scenario 6); 0 skips it.
    #[arg(long, default_value_t = 200)]
    report_experiments: usize,
    /// Runs per fleet-report experiment.
    #[arg(long, default_value_t = 50)]
    report_runs: usize,
    /// Files of each fleet-report run's model.
    #[arg(long, default_value_t = 2)]
    report_files: usize,
    /// Skip the per-run raw baseline (halves the objects seeded for the raw side).
    #[arg(long)]
    no_raw_per_run: bool,
    /// Uploads in flight while seeding.
    #[arg(long, default_value_t = 64)]
    upload_concurrency: usize,
    /// The worker binary (default: the one cargo built with this bench).
    #[arg(long)]
    worker_bin: Option<PathBuf>,
    /// A setting for the worker process, e.g.
    /// `--worker-env MODEL_PRUNER__CONCURRENCY__PARALLEL_DELETIONS=8` (repeatable).
    #[arg(long, value_parser = key_value)]
    worker_env: Vec<(String, String)>,
    /// Where the JSON result and the worker's log go.
    #[arg(long, default_value = "target/bench")]
    out: PathBuf,
    /// Passed by `cargo bench`; ignored.
    #[arg(long, hide = true)]
    bench: bool,
    /// Test-harness listing (`cargo nextest --all-targets`): there are no tests here.
    #[arg(long, hide = true)]
    list: bool,
    #[arg(long, hide = true)]
    format: Option<String>,
    #[arg(long, hide = true)]
    ignored: bool,
}

fn key_value(text: &str) -> Result<(String, String), String> {
    text.split_once('=')
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .ok_or_else(|| format!("expected KEY=VALUE, got {text:?}"))
}

/// What the scenarios share.
pub struct Env {
    /// The stack's tracking server, for seeding and checks.
    pub mlflow: mlflow_fixtures::Mlflow,
    /// The stack's S3 store, for seeding files and the raw baselines.
    pub s3: aws_sdk_s3::Client,
    /// The stack's RabbitMQ, for publishing events to the workers under test.
    pub broker: Broker,
    /// Unique names for this run's experiments, exchanges and queues.
    pub names: Names,
    /// Files uploaded at once while seeding (`--upload-concurrency`).
    pub upload_concurrency: usize,
}

/// The 1, 5 and 15 minute load averages.
pub fn load_average() -> [f64; 3] {
    let text = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    let mut it = text.split_whitespace().map(|v| v.parse().unwrap_or(0.0));
    [(); 3].map(|()| it.next().unwrap_or(0.0))
}

fn main() -> std::process::ExitCode {
    let mut args = Args::parse();
    if args.list {
        return std::process::ExitCode::SUCCESS;
    }
    if args.smoke {
        args.sweep_runs = 20;
        args.files_per_run = 5;
        args.scale_runs = 40;
        args.registry_versions = 20;
        args.burst_experiments = 3;
        args.burst_runs = 12;
        args.burst_files = 1;
        args.report_experiments = 3;
        args.report_runs = 5;
        args.report_files = 1;
        args.steady_events = 3;
        args.replicas = vec![1, 2];
        args.replica_experiments = 2;
        args.replica_runs = 4;
        args.replica_keep = 2;
    }
    let runtime = tokio::runtime::Runtime::new().expect("tokio runtime");
    match runtime.block_on(run(args)) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("[bench] error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

async fn run(args: Args) -> anyhow::Result<()> {
    std::fs::create_dir_all(&args.out)
        .with_context(|| format!("creating {}", args.out.display()))?;
    let machine = report::Machine::collect().await;
    let bin = args
        .worker_bin
        .clone()
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_BIN_EXE_model-pruner")));
    let names = Names::unique();
    let mut settings = Settings::load(None).context("loading settings (MODEL_PRUNER__*)")?;
    settings.broker.exchange = names.exchange.clone();
    settings.broker.work_queue = names.work_queue.clone();
    settings.broker.dead_letter_queue = names.dead_letter_queue.clone();
    settings.broker.delay_queue_prefix = names.delay_queue_prefix.clone();
    let topology = Topology::from_settings(&settings);
    let env = Env {
        mlflow: mlflow_fixtures::Mlflow::from_env()?,
        s3: store_fixtures::client()?,
        broker: Broker::connect(&settings.broker, "model-pruner bench").await?,
        names,
        upload_concurrency: args.upload_concurrency,
    };
    let stamp = time::OffsetDateTime::now_utc().unix_timestamp();
    let log_path = std::path::absolute(args.out.join(format!("worker-{stamp}.log")))?;
    let worker = Worker::start(&bin, &env.names, &args.worker_env, &log_path).await?;
    eprintln!(
        "[bench] worker {} (pid {}) consuming {}; log {}",
        bin.display(),
        worker.pid(),
        env.names.work_queue,
        log_path.display()
    );
    let started = worker.proc_stats()?;

    let start_replica = async |i: usize| {
        let log = std::path::absolute(args.out.join(format!("worker-{stamp}-replica-{i}.log")))?;
        Worker::start(&bin, &env.names, &args.worker_env, &log).await
    };
    let result = scenarios_in_order(&args, &env, &worker, start_replica).await;
    let fleet_report = match &result {
        Ok(_) if args.report_experiments > 0 => Some(
            fleet::report(
                &env,
                &bin,
                args.report_experiments,
                args.report_runs,
                args.report_files,
                args.keep_top,
            )
            .await
            .context("fleet report"),
        ),
        _ => None,
    };
    let end = worker.proc_stats();
    worker.stop().await?;
    teardown(&env, &topology).await;
    let scenarios = result?;
    let fleet_report = fleet_report.transpose()?;
    if let Some(r) = &fleet_report {
        r.print();
    }
    let report = report::Report {
        machine,
        args: format!("{args:?}"),
        smoke: args.smoke,
        worker_bin: bin.display().to_string(),
        worker_at_start: started,
        worker_at_end: end?,
        sweep: scenarios.0,
        burst: scenarios.1,
        scale: scenarios.2,
        registry: scenarios.3,
        steady: scenarios.4,
        replicas: scenarios.5,
        fleet_report,
    };
    report.print();
    let path = args.out.join(if args.smoke {
        format!("bench-smoke-{stamp}.json")
    } else {
        format!("bench-{stamp}.json")
    });
    std::fs::write(&path, serde_json::to_string_pretty(&report)?)?;
    let latest = args.out.join(if args.smoke {
        "latest-smoke.json"
    } else {
        "latest.json"
    });
    std::fs::copy(&path, &latest)?;
    eprintln!(
        "[bench] wrote {} (and {})",
        path.display(),
        latest.display()
    );
    Ok(())
}

type Results = (
    Option<scenarios::SweepResult>,
    Option<scenarios::BurstResult>,
    Option<scenarios::SweepResult>,
    Option<scenarios::RegistryResult>,
    Option<steady::SteadyResult>,
    Vec<replicas::ReplicasRow>,
);

async fn scenarios_in_order(
    args: &Args,
    env: &Env,
    worker: &Worker,
    start_replica: impl AsyncFn(usize) -> anyhow::Result<Worker>,
) -> anyhow::Result<Results> {
    let raw_per_run = !args.no_raw_per_run;
    let sweep = if args.sweep_runs > 0 {
        let r = scenarios::sweep(
            env,
            worker,
            args.sweep_runs,
            args.files_per_run,
            args.keep_top,
            raw_per_run,
        )
        .await
        .context("sweep")?;
        report::print_sweep("sweep", &r);
        Some(r)
    } else {
        None
    };
    let burst = if args.burst_experiments > 0 {
        let r = scenarios::burst(
            env,
            worker,
            args.burst_experiments,
            args.burst_runs,
            args.burst_files,
        )
        .await
        .context("burst")?;
        Some(r)
    } else {
        None
    };
    let scale = if args.scale_runs > 0 {
        let r = scenarios::sweep(
            env,
            worker,
            args.scale_runs,
            args.scale_files.unwrap_or(args.files_per_run),
            args.keep_top,
            raw_per_run,
        )
        .await
        .context("scale sweep")?;
        report::print_sweep("scale", &r);
        Some(r)
    } else {
        None
    };
    let registry = if args.registry_versions > 0 && args.sweep_runs > 0 {
        let r = scenarios::registry(
            env,
            worker,
            args.registry_versions,
            args.sweep_runs,
            args.files_per_run,
            args.keep_top,
        )
        .await
        .context("sweep beside a large registry")?;
        report::print_sweep("registry", &r.sweep);
        Some(r)
    } else {
        None
    };
    let steady = if args.steady_events > 0 {
        Some(
            steady::steady(
                env,
                worker,
                args.keep_top,
                args.burst_files,
                args.steady_events,
            )
            .await
            .context("steady state")?,
        )
    } else {
        None
    };
    let replicas = replicas::replicas(
        env,
        worker,
        start_replica,
        &args.replicas,
        args.replica_experiments,
        args.replica_runs,
        args.replica_keep,
    )
    .await
    .context("replicas")?;
    Ok((sweep, burst, scale, registry, steady, replicas))
}

/// Deletes the bench's queues and exchange; failures are only reported.
async fn teardown(env: &Env, topology: &Topology) {
    let channel = env.broker.channel();
    for queue in topology.queue_names() {
        if let Err(e) = channel
            .queue_delete(queue.into(), QueueDeleteOptions::default())
            .await
        {
            eprintln!("[bench] deleting queue {queue}: {e}");
        }
    }
    if let Err(e) = channel
        .exchange_delete(
            topology.exchange.as_str().into(),
            ExchangeDeleteOptions::default(),
        )
        .await
    {
        eprintln!("[bench] deleting exchange {}: {e}", topology.exchange);
    }
    let _ = env.broker.close().await;
}
