//! The measured scenarios: a sweep of one large experiment (against the raw store baseline) and
//! a burst of `run.finished` events over many experiments.

use std::collections::BTreeMap;
use std::time::{Duration, Instant, SystemTime};

use anyhow::{Context as _, bail, ensure};
use lapin::BasicProperties;
use lapin::Confirmation;
use lapin::options::BasicPublishOptions;
use serde::Serialize;
use serde_json::json;

use crate::cpu::{CpuSnapshot, CpuUse};
use crate::raw::{self, Timed};
use crate::seed::{self, Seeded};
use crate::worker::{ProcStats, Scrape, Worker, delta};
use crate::{Env, load_average};

const REQUESTS: &str = "model_pruner_requests_total";
const REQUEST_SECONDS: &str = "model_pruner_request_duration_seconds_sum";

/// What the worker asked of MLflow and the store during a scenario.
#[derive(Debug, Clone, Serialize)]
pub struct Requests {
    /// Requests by operation, e.g. `runs/search`, `DeleteObjects`.
    pub mlflow: BTreeMap<String, f64>,
    pub store: BTreeMap<String, f64>,
    /// Seconds spent waiting for answers, summed over concurrent requests, by operation.
    pub mlflow_seconds: BTreeMap<String, f64>,
    pub store_seconds: BTreeMap<String, f64>,
}

impl Requests {
    pub fn between(before: &Scrape, after: &Scrape) -> Self {
        let d = |metric: &str, target: &str| {
            delta(
                &after.by(metric, &[("target", target)], "operation"),
                &before.by(metric, &[("target", target)], "operation"),
            )
        };
        Requests {
            mlflow: d(REQUESTS, "mlflow"),
            store: d(REQUESTS, "store"),
            mlflow_seconds: d(REQUEST_SECONDS, "mlflow"),
            store_seconds: d(REQUEST_SECONDS, "store"),
        }
    }

    /// Both scenarios' requests together (several workers of one scenario).
    pub fn add(mut self, other: Requests) -> Requests {
        for (mine, theirs) in [
            (&mut self.mlflow, other.mlflow),
            (&mut self.store, other.store),
            (&mut self.mlflow_seconds, other.mlflow_seconds),
            (&mut self.store_seconds, other.store_seconds),
        ] {
            for (op, n) in theirs {
                *mine.entry(op).or_insert(0.0) += n;
            }
        }
        self
    }

    /// Requests and the seconds spent waiting for them, by phase of a pass: reads and looks
    /// (searches and gets), listing, deletes, marks (MLflow writes). Seconds are summed over
    /// requests in flight together, so a phase's seconds over the wall time tells how many of
    /// its requests overlapped on average.
    pub fn phases(&self) -> BTreeMap<&'static str, Phase> {
        let mut phases: BTreeMap<&'static str, Phase> = BTreeMap::new();
        let mut add = |phase, n: f64, seconds: f64| {
            let p = phases.entry(phase).or_default();
            p.requests += n;
            p.seconds += seconds;
        };
        for (op, n) in &self.mlflow {
            let seconds = self.mlflow_seconds.get(op).copied().unwrap_or(0.0);
            let phase = match op.as_str() {
                "runs/log-batch"
                | "runs/delete-tag"
                | "logged-models/tags"
                | "experiments/set-experiment-tag"
                | "experiments/delete" => "marks",
                _ => "reads and looks",
            };
            add(phase, *n, seconds);
        }
        for (op, n) in &self.store {
            let seconds = self.store_seconds.get(op).copied().unwrap_or(0.0);
            let phase = if op == "DeleteObjects" {
                "deletes"
            } else {
                "listing"
            };
            add(phase, *n, seconds);
        }
        phases
    }

    pub fn mlflow_total(&self) -> f64 {
        self.mlflow.values().sum()
    }

    pub fn store_total(&self) -> f64 {
        self.store.values().sum()
    }
}

/// One phase's requests and the seconds spent waiting for them ([`Requests::phases`]).
#[derive(Debug, Clone, Copy, Default, Serialize)]
pub struct Phase {
    pub requests: f64,
    pub seconds: f64,
}

#[derive(Debug, Clone, Serialize)]
pub struct SweepResult {
    pub runs: usize,
    pub files_per_run: usize,
    pub keep_top: usize,
    pub load_before: [f64; 3],
    pub seed_seconds: f64,
    pub raw_bulk: Timed,
    pub raw_per_run: Option<Timed>,
    pub worker: Timed,
    /// The machine's CPU by process group while the raw bulk baseline ran.
    pub raw_bulk_cpu: CpuUse,
    /// The machine's CPU by process group while the worker swept.
    pub worker_cpu: CpuUse,
    /// Worker rate over the raw bulk rate.
    pub ratio: f64,
    pub requests: Requests,
    pub phases: BTreeMap<&'static str, Phase>,
    pub worker_cpu_seconds: f64,
    /// The worker's peak RSS during the sweep (reset before it).
    pub peak_rss_kib: u64,
    pub worker_after: ProcStats,
}

/// Scenario 1 (and 4 at another size): one experiment of `runs` runs with `files` files each,
/// swept with `keep_top`; the same number of objects deleted by a plain client first.
pub async fn sweep(
    env: &Env,
    worker: &Worker,
    runs: usize,
    files: usize,
    keep_top: usize,
    raw_per_run: bool,
) -> anyhow::Result<SweepResult> {
    ensure!(runs > keep_top, "runs must exceed keep_top");
    let pruned = runs - keep_top;
    eprintln!("[bench] sweep {runs} runs x {files} files: seeding");
    let seeding = Instant::now();
    let exp = seed::experiment(
        &env.mlflow,
        &env.s3,
        &format!("bench-sweep-{runs}"),
        runs,
        files,
        env.upload_concurrency,
    )
    .await?;
    let raw_root = format!("bench-raw-{:08x}/", rand::random::<u32>());
    let bulk_root = format!("{raw_root}bulk/");
    let per_run_root = format!("{raw_root}per-run/");
    seed::raw_layout(&env.s3, &bulk_root, pruned, files, env.upload_concurrency).await?;
    let per_run_prefixes = if raw_per_run {
        Some(
            seed::raw_layout(
                &env.s3,
                &per_run_root,
                pruned,
                files,
                env.upload_concurrency,
            )
            .await?,
        )
    } else {
        None
    };
    let seed_seconds = seeding.elapsed().as_secs_f64();
    eprintln!("[bench] seeded in {seed_seconds:.1}s; measuring");
    let load_before = load_average();

    let cpu = CpuSnapshot::take();
    let raw_bulk = raw::bulk(&env.s3, &bulk_root).await?;
    let raw_bulk_cpu = cpu.until(&CpuSnapshot::take());
    let raw_per_run = match &per_run_prefixes {
        Some(prefixes) => Some(raw::per_prefix(&env.s3, prefixes).await?),
        None => None,
    };
    ensure!(
        raw_bulk.objects == (pruned * files) as u64,
        "raw bulk deleted {} objects, expected {}",
        raw_bulk.objects,
        pruned * files
    );

    worker.reset_peak()?;
    let before = worker.scrape().await?;
    let cpu_before = worker.proc_stats()?.cpu_seconds;
    let body = json!({
        "experiment_id": exp.experiment.id,
        "policy": { "keep_top": keep_top },
        "force": true,
    });
    let cpu = CpuSnapshot::take();
    let published = SystemTime::now();
    env.publish(&[("experiment.prune", body.to_string())])
        .await?;
    let key = format!("prune:{}", exp.experiment.id);
    let acked = worker
        .wait_handled(&[key], Duration::from_secs(3600))
        .await?[0];
    let worker_cpu = cpu.until(&CpuSnapshot::take());
    let seconds = acked
        .duration_since(published)
        .context("ack before publish")?
        .as_secs_f64();
    let after = worker.scrape().await?;
    let stats = worker.proc_stats()?;

    let left = raw::count(&env.s3, &exp.prefix).await?;
    ensure!(
        left == (keep_top * files) as u64,
        "{left} objects left in the experiment, expected {}",
        keep_top * files
    );
    let deleted = after.sum("model_pruner_objects_deleted_total", &[])
        - before.sum("model_pruner_objects_deleted_total", &[]);
    let worker_timed = Timed {
        objects: deleted as u64,
        seconds,
    };
    cleanup(env, &exp, &[&raw_root]).await?;
    let requests = Requests::between(&before, &after);
    Ok(SweepResult {
        runs,
        files_per_run: files,
        keep_top,
        load_before,
        seed_seconds,
        ratio: worker_timed.rate() / raw_bulk.rate(),
        raw_bulk,
        raw_per_run,
        raw_bulk_cpu,
        worker_cpu,
        worker: worker_timed,
        phases: requests.phases(),
        requests,
        worker_cpu_seconds: stats.cpu_seconds - cpu_before,
        peak_rss_kib: stats.vm_hwm_kib,
        worker_after: stats,
    })
}

/// Scenario 5: the sweep again, once `versions` versions of other models fill the registry.
#[derive(Debug, Clone, Serialize)]
pub struct RegistryResult {
    pub versions_elsewhere: usize,
    pub registry_seed_seconds: f64,
    pub sweep: SweepResult,
}

pub async fn registry(
    env: &Env,
    worker: &Worker,
    versions: usize,
    runs: usize,
    files: usize,
    keep_top: usize,
) -> anyhow::Result<RegistryResult> {
    eprintln!("[bench] registry: registering {versions} versions elsewhere");
    let seeding = Instant::now();
    let names = seed::registry(&env.mlflow, versions, 20).await?;
    let registry_seed_seconds = seeding.elapsed().as_secs_f64();
    let sweep = sweep(env, worker, runs, files, keep_top, false).await;
    for name in &names {
        env.mlflow.delete_registered_model(name).await?;
    }
    Ok(RegistryResult {
        versions_elsewhere: versions,
        registry_seed_seconds,
        sweep: sweep?,
    })
}

#[derive(Debug, Clone, Serialize)]
pub struct BurstResult {
    pub experiments: usize,
    pub runs_per_experiment: usize,
    pub files_per_run: usize,
    pub events: usize,
    pub load_before: [f64; 3],
    pub seed_seconds: f64,
    /// From the first publish to the last confirm.
    pub publish_seconds: f64,
    /// From the first publish to the last ack.
    pub drain_seconds: f64,
    pub events_per_second: f64,
    pub latency_ms: Percentiles,
    pub passes: f64,
    pub runs_pruned: f64,
    pub requests: Requests,
    pub mlflow_runs_search_per_event: f64,
    pub mlflow_requests_per_event: f64,
    pub store_requests_per_event: f64,
    pub worker_cpu_seconds: f64,
    /// The worker's peak RSS during the burst (reset before it).
    pub peak_rss_kib: u64,
    pub worker_after: ProcStats,
}

#[derive(Debug, Clone, Serialize)]
pub struct Percentiles {
    pub p50: f64,
    pub p95: f64,
    pub p99: f64,
    pub max: f64,
}

impl Percentiles {
    pub fn of(mut values: Vec<f64>) -> Self {
        values.sort_by(f64::total_cmp);
        // Nearest rank.
        let at = |q: f64| {
            let rank = ((q * values.len() as f64).ceil() as usize).clamp(1, values.len());
            values[rank - 1]
        };
        Percentiles {
            p50: at(0.50),
            p95: at(0.95),
            p99: at(0.99),
            max: at(1.0),
        }
    }
}

/// Scenario 2: `experiments` experiments of `runs` runs each, then one `run.finished` per run,
/// published round-robin over the experiments as fast as the broker confirms them.
pub async fn burst(
    env: &Env,
    worker: &Worker,
    experiments: usize,
    runs: usize,
    files: usize,
) -> anyhow::Result<BurstResult> {
    eprintln!("[bench] burst {experiments} experiments x {runs} runs: seeding");
    let seeding = Instant::now();
    let seeded = seed::experiments(env, "bench-burst", &[], experiments, runs, files).await?;
    let seed_seconds = seeding.elapsed().as_secs_f64();
    eprintln!("[bench] seeded in {seed_seconds:.1}s; publishing");
    let load_before = load_average();

    let (messages, keys) = run_finished_round_robin(&seeded, runs);
    worker.reset_peak()?;
    let before = worker.scrape().await?;
    let cpu_before = worker.proc_stats()?.cpu_seconds;
    let started = SystemTime::now();
    let published = env.publish(&messages).await?;
    let publish_seconds = started.elapsed()?.as_secs_f64();
    let acked = worker
        .wait_handled(&keys, Duration::from_secs(3600))
        .await?;
    let after = worker.scrape().await?;
    let stats = worker.proc_stats()?;

    let latencies: Vec<f64> = published
        .iter()
        .zip(&acked)
        .map(|(p, a)| a.duration_since(*p).unwrap_or_default().as_secs_f64() * 1e3)
        .collect();
    let last = acked.iter().max().copied().unwrap_or(started);
    let drain_seconds = last.duration_since(started)?.as_secs_f64();
    let events = messages.len();
    let requests = Requests::between(&before, &after);
    let per_event = |n: f64| n / events as f64;
    let result = BurstResult {
        experiments,
        runs_per_experiment: runs,
        files_per_run: files,
        events,
        load_before,
        seed_seconds,
        publish_seconds,
        drain_seconds,
        events_per_second: events as f64 / drain_seconds,
        latency_ms: Percentiles::of(latencies),
        passes: after.sum("model_pruner_passes_total", &[])
            - before.sum("model_pruner_passes_total", &[]),
        runs_pruned: after.sum("model_pruner_runs_total", &[("decision", "pruned")])
            - before.sum("model_pruner_runs_total", &[("decision", "pruned")]),
        mlflow_runs_search_per_event: per_event(
            requests.mlflow.get("runs/search").copied().unwrap_or(0.0),
        ),
        mlflow_requests_per_event: per_event(requests.mlflow_total()),
        store_requests_per_event: per_event(requests.store_total()),
        requests,
        worker_cpu_seconds: stats.cpu_seconds - cpu_before,
        peak_rss_kib: stats.vm_hwm_kib,
        worker_after: stats,
    };
    for exp in &seeded {
        cleanup(env, exp, &[]).await?;
    }
    Ok(result)
}

/// One `run.finished` per run, round-robin over the experiments (the first run of each, then
/// the second, ...), with the run ids the worker's log acks them by.
pub fn run_finished_round_robin(
    seeded: &[Seeded],
    runs: usize,
) -> (Vec<(&'static str, String)>, Vec<String>) {
    let mut messages = Vec::with_capacity(seeded.len() * runs);
    let mut keys = Vec::with_capacity(seeded.len() * runs);
    for i in 0..runs {
        for exp in seeded {
            let run_id = &exp.run_ids[i];
            let body = json!({ "experiment_id": exp.experiment.id, "run_id": run_id });
            messages.push(("run.finished", body.to_string()));
            keys.push(run_id.clone());
        }
    }
    (messages, keys)
}

/// Deletes the experiment (soft) and what is left of its objects and of `roots`.
pub async fn cleanup(env: &Env, exp: &Seeded, roots: &[&str]) -> anyhow::Result<()> {
    exp.experiment.delete().await?;
    raw::clean(&env.s3, &exp.prefix).await?;
    for root in roots {
        raw::clean(&env.s3, root).await?;
    }
    Ok(())
}

impl Env {
    /// Publishes every message to the bench exchange without waiting between them, then waits
    /// for all the broker's confirms. Returns when each was handed to the client library.
    pub async fn publish(&self, messages: &[(&str, String)]) -> anyhow::Result<Vec<SystemTime>> {
        let channel = self.broker.channel();
        let mut sent = Vec::with_capacity(messages.len());
        let mut confirms = Vec::with_capacity(messages.len());
        for (routing_key, body) in messages {
            let properties = BasicProperties::default()
                .with_content_type("application/json".into())
                .with_delivery_mode(model_pruner::broker::PERSISTENT);
            sent.push(SystemTime::now());
            let confirm = channel
                .basic_publish(
                    self.names.exchange.as_str().into(),
                    (*routing_key).into(),
                    BasicPublishOptions {
                        mandatory: true,
                        ..BasicPublishOptions::default()
                    },
                    body.as_bytes(),
                    properties,
                )
                .await
                .context("basic.publish")?;
            confirms.push(confirm);
        }
        for confirm in confirms {
            match confirm.await.context("publisher confirm")? {
                Confirmation::Ack(None) | Confirmation::NotRequested => {}
                other => bail!("the broker did not take a message: {other:?}"),
            }
        }
        Ok(sent)
    }
}
