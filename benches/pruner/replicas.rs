//! Replicas: one burst of `run.finished` over many experiments, drained by 1, 2 and 4 worker
//! processes on the same queue (a new burst each time). What KEDA does under a backlog: more
//! replicas must not drain it slower, nor multiply what each event costs MLflow.

use std::time::{Duration, SystemTime};

use anyhow::Context as _;
use serde::Serialize;

use crate::scenarios::{Requests, cleanup, run_finished_round_robin};
use crate::seed;
use crate::worker::{Scrape, Worker, wait_handled_by};
use crate::{Env, load_average};

#[derive(Debug, Clone, Serialize)]
pub struct ReplicasRow {
    pub workers: usize,
    pub events: usize,
    pub load_before: [f64; 3],
    pub drain_seconds: f64,
    pub passes: f64,
    pub passes_per_experiment: f64,
    pub mlflow_requests_per_event: f64,
    pub store_requests_per_event: f64,
    /// MLflow requests that got no answer (timeouts, broken connections).
    pub mlflow_unanswered: f64,
    /// Requests the tracking server or the store answered as overloaded, or timed out.
    pub overloads: f64,
    /// Events that went round a delay queue.
    pub delayed: usize,
    /// The adaptive MLflow limit of each worker at the end.
    pub mlflow_limits: Vec<f64>,
    pub requests: Requests,
}

/// Runs the burst once per entry of `replicas`, with that many worker processes: `first` and
/// workers started for the round.
pub async fn replicas(
    env: &Env,
    first: &Worker,
    start: impl AsyncFn(usize) -> anyhow::Result<Worker>,
    replicas: &[usize],
    experiments: usize,
    runs: usize,
    keep_top: usize,
) -> anyhow::Result<Vec<ReplicasRow>> {
    let mut rows = Vec::with_capacity(replicas.len());
    for &n in replicas.iter().filter(|n| **n > 0) {
        eprintln!("[bench] replicas: {n} worker(s), {experiments} experiments x {runs} runs");
        let mut extra = Vec::with_capacity(n.saturating_sub(1));
        for i in 1..n {
            extra.push(start(i).await?);
        }
        let mut workers: Vec<&Worker> = vec![first];
        workers.extend(extra.iter());
        let row = round(env, &workers, experiments, runs, keep_top).await;
        for w in extra {
            w.stop().await?;
        }
        let row = row?;
        eprintln!(
            "[bench] replicas: {n} worker(s) drained {} events in {:.1}s; {:.2} MLflow requests \
             per event, {:.1} passes per experiment, {} delayed, {:.0} overloads",
            row.events,
            row.drain_seconds,
            row.mlflow_requests_per_event,
            row.passes_per_experiment,
            row.delayed,
            row.overloads
        );
        rows.push(row);
    }
    Ok(rows)
}

async fn round(
    env: &Env,
    workers: &[&Worker],
    experiments: usize,
    runs: usize,
    keep_top: usize,
) -> anyhow::Result<ReplicasRow> {
    let keep = keep_top.to_string();
    let tags = [("model_pruner.keep_top", keep.as_str())];
    let seeded = seed::experiments(env, "bench-replicas", &tags, experiments, runs, 1).await?;
    let (messages, keys) = run_finished_round_robin(&seeded, runs);
    let load_before = load_average();
    let before = scrape_all(workers).await?;
    let delayed_before: usize = workers.iter().map(|w| w.delayed()).sum();
    let started = SystemTime::now();
    env.publish(&messages).await?;
    let acked = wait_handled_by(workers, &keys, Duration::from_secs(3600), true).await?;
    let after = scrape_all(workers).await?;
    let last = acked.iter().max().copied().unwrap_or(started);
    let drain_seconds = last.duration_since(started)?.as_secs_f64();
    let sum = |scrapes: &[Scrape], name: &str, filter: &[(&str, &str)]| -> f64 {
        scrapes.iter().map(|s| s.sum(name, filter)).sum()
    };
    let delta = |name: &str, filter: &[(&str, &str)]| {
        sum(&after, name, filter) - sum(&before, name, filter)
    };
    let requests = before
        .iter()
        .zip(&after)
        .map(|(b, a)| Requests::between(b, a))
        .reduce(Requests::add)
        .context("at least one worker")?;
    let events = messages.len();
    let passes = delta("model_pruner_passes_total", &[]);
    let row = ReplicasRow {
        workers: workers.len(),
        events,
        load_before,
        drain_seconds,
        passes,
        passes_per_experiment: passes / experiments as f64,
        mlflow_requests_per_event: requests.mlflow_total() / events as f64,
        store_requests_per_event: requests.store_total() / events as f64,
        mlflow_unanswered: delta(
            "model_pruner_requests_total",
            &[("target", "mlflow"), ("status", "error")],
        ),
        overloads: delta("model_pruner_overloads_total", &[]),
        delayed: workers.iter().map(|w| w.delayed()).sum::<usize>() - delayed_before,
        mlflow_limits: after
            .iter()
            .map(|s| {
                s.sum(
                    "model_pruner_requests_allowed_in_flight",
                    &[("target", "mlflow")],
                )
            })
            .collect(),
        requests,
    };
    for exp in &seeded {
        cleanup(env, exp, &[]).await?;
    }
    Ok(row)
}

async fn scrape_all(workers: &[&Worker]) -> anyhow::Result<Vec<Scrape>> {
    let mut scrapes = Vec::with_capacity(workers.len());
    for w in workers {
        scrapes.push(w.scrape().await?);
    }
    Ok(scrapes)
}
