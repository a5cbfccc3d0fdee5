//! Steady state: an experiment already at its top N gets one `run.finished` at a time, each for
//! a new best run that pushes the worst kept one out. Measured per event: publish to the pruned
//! run's files gone (polled in the store) and publish to ack (the worker's log).

use std::time::{Duration, Instant, SystemTime};

use anyhow::{Context as _, ensure};
use serde::Serialize;
use serde_json::json;

use crate::mlflow_fixtures::RunSpec;
use crate::raw;
use crate::scenarios::{Percentiles, Requests};
use crate::seed;
use crate::worker::{ProcStats, Worker};
use crate::{Env, load_average};

/// How often the store is asked whether the pruned run's files are gone.
const POLL: Duration = Duration::from_millis(5);

#[derive(Debug, Clone, Serialize)]
pub struct SteadyResult {
    pub keep_top: usize,
    pub files_per_run: usize,
    pub events: usize,
    pub load_before: [f64; 3],
    pub publish_to_deleted_ms: Percentiles,
    pub publish_to_ack_ms: Percentiles,
    pub requests: Requests,
    pub mlflow_requests_per_event: f64,
    pub store_requests_per_event: f64,
    pub worker_after: ProcStats,
}

pub async fn steady(
    env: &Env,
    worker: &Worker,
    keep_top: usize,
    files: usize,
    events: usize,
) -> anyhow::Result<SteadyResult> {
    eprintln!("[bench] steady state: {events} events, keep {keep_top}");
    let keep = keep_top.to_string();
    let exp = seed::experiment_tagged(
        &env.mlflow,
        &env.s3,
        "bench-steady",
        &[("model_pruner.keep_top", &keep)],
        keep_top,
        files,
        env.upload_concurrency,
    )
    .await?;
    // Kept runs, worst last: the seed's accuracies fall with the index.
    let mut kept: Vec<String> = exp
        .run_ids
        .iter()
        .map(|id| seed::run_model_prefix(&exp, id))
        .collect();
    let load_before = load_average();
    worker.reset_peak()?;
    let before = worker.scrape().await?;
    let mut deleted_ms = Vec::with_capacity(events);
    let mut acked_ms = Vec::with_capacity(events);
    for i in 0..events {
        let run = exp
            .experiment
            .run(
                RunSpec::new(format!("steady-{i:03}"))
                    .metric("accuracy", 2.0 + i as f64)
                    .param("model_uploaded", "1"),
            )
            .await?;
        let prefix = seed::model(&env.s3, &run.artifact_uri, files, env.upload_concurrency).await?;
        let victim = kept.pop().context("a kept run to push out")?;
        kept.insert(0, prefix);
        let body = json!({ "experiment_id": exp.experiment.id, "run_id": run.run_id });
        let published = SystemTime::now();
        let started = Instant::now();
        env.publish(&[("run.finished", body.to_string())]).await?;
        loop {
            if raw::count(&env.s3, &victim).await? == 0 {
                deleted_ms.push(started.elapsed().as_secs_f64() * 1e3);
                break;
            }
            ensure!(
                started.elapsed() < Duration::from_secs(120),
                "event {i}: the pushed-out run's files are still there after 120 s"
            );
            tokio::time::sleep(POLL).await;
        }
        let acked = worker
            .wait_handled(std::slice::from_ref(&run.run_id), Duration::from_secs(120))
            .await?[0];
        acked_ms.push(acked.duration_since(published)?.as_secs_f64() * 1e3);
    }
    let after = worker.scrape().await?;
    let worker_after = worker.proc_stats()?;
    for prefix in &kept {
        ensure!(
            raw::count(&env.s3, prefix).await? == files as u64,
            "a kept run lost files: {prefix}"
        );
    }
    exp.experiment.delete().await?;
    raw::clean(&env.s3, &exp.prefix).await?;
    let requests = Requests::between(&before, &after);
    Ok(SteadyResult {
        keep_top,
        files_per_run: files,
        events,
        load_before,
        publish_to_deleted_ms: Percentiles::of(deleted_ms),
        publish_to_ack_ms: Percentiles::of(acked_ms),
        mlflow_requests_per_event: requests.mlflow_total() / events as f64,
        store_requests_per_event: requests.store_total() / events as f64,
        requests,
        worker_after,
    })
}
