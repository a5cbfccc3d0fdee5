//! The fleet report: `model-pruner report` over many experiments as a separate process (wall
//! time, peak RSS from GNU time, requests per experiment from its JSON), beside the raw cost
//! of listing the same experiments' objects with a plain S3 client.

use std::time::Instant;

use anyhow::Context as _;
use futures::{StreamExt as _, TryStreamExt as _};
use serde::Serialize;

use crate::Env;
use crate::raw::RAW_CONCURRENCY;
use crate::seed;

#[derive(Debug, Serialize)]
pub struct ReportResult {
    pub experiments: usize,
    pub runs_per_experiment: usize,
    pub files_per_run: usize,
    pub keep_top: usize,
    pub seed_seconds: f64,
    pub report_seconds: f64,
    pub peak_rss_kib: u64,
    pub mlflow_requests: u64,
    pub store_requests: u64,
    /// Objects and bytes the report found stored, and what it would reclaim.
    pub objects_stored: u64,
    pub bytes_stored: u64,
    pub models_reclaimable: u64,
    /// Listing every experiment's root with a plain S3 client, [`RAW_CONCURRENCY`] at a time.
    pub raw_list_seconds: f64,
    pub raw_objects_listed: u64,
}

impl ReportResult {
    pub fn print(&self) {
        let per = |n: u64| n as f64 / self.experiments.max(1) as f64;
        eprintln!(
            "[bench] report: {} experiments x {} runs x {} files in {:.1}s (seeding {:.0}s), peak \
             RSS {:.1} MiB, {:.1} MLflow and {:.1} store requests per experiment; raw listing of \
             the same {} objects {:.1}s",
            self.experiments,
            self.runs_per_experiment,
            self.files_per_run,
            self.report_seconds,
            self.seed_seconds,
            self.peak_rss_kib as f64 / 1024.0,
            per(self.mlflow_requests),
            per(self.store_requests),
            self.raw_objects_listed,
            self.raw_list_seconds,
        );
    }
}

/// Seeds `experiments` experiments of `runs` runs (`files` objects each) tagged for this run,
/// reports on them with `bin`, and lists the same roots raw.
pub async fn report(
    env: &Env,
    bin: &std::path::Path,
    experiments: usize,
    runs: usize,
    files: usize,
    keep_top: usize,
) -> anyhow::Result<ReportResult> {
    let tag = format!("{:08x}", rand::random::<u32>());
    let seeding = Instant::now();
    let mut prefixes = Vec::with_capacity(experiments);
    for i in 0..experiments {
        let seeded = seed::experiment_tagged(
            &env.mlflow,
            &env.s3,
            &format!("bench-report-{i:04}"),
            &[("bench_report", tag.as_str())],
            runs,
            files,
            env.upload_concurrency,
        )
        .await?;
        prefixes.push(seeded.prefix);
    }
    let seed_seconds = seeding.elapsed().as_secs_f64();
    eprintln!("[bench] report: seeded {experiments} experiments in {seed_seconds:.0}s");

    let started = Instant::now();
    let output = tokio::process::Command::new("/usr/bin/time")
        .arg("-f")
        .arg("peak-rss-kib %M")
        .arg(bin)
        .args(["report", "--json", "--keep-top", &keep_top.to_string()])
        .arg("--filter")
        .arg(format!("tags.bench_report = '{tag}'"))
        .env("RUST_LOG", "off")
        .output()
        .await
        .context("running /usr/bin/time model-pruner report (GNU time: apt install time)")?;
    let report_seconds = started.elapsed().as_secs_f64();
    let stderr = String::from_utf8_lossy(&output.stderr);
    anyhow::ensure!(
        output.status.success(),
        "model-pruner report failed: {stderr}"
    );
    let peak_rss_kib = stderr
        .lines()
        .rev()
        .find_map(|l| l.strip_prefix("peak-rss-kib ")?.trim().parse().ok())
        .context("GNU time's peak RSS")?;
    let json: serde_json::Value = serde_json::from_slice(&output.stdout)?;
    let number = |v: &serde_json::Value| v.as_u64().unwrap_or_default();
    let totals = &json["totals"];
    anyhow::ensure!(
        number(&totals["experiments"]) == experiments as u64 && number(&totals["skipped"]) == 0,
        "the report covers every seeded experiment: {totals}"
    );

    let listing = Instant::now();
    let raw_objects_listed: u64 = futures::stream::iter(&prefixes)
        .map(|prefix| crate::raw::count(&env.s3, prefix))
        .buffer_unordered(RAW_CONCURRENCY)
        .try_fold(0, |sum, n| async move { Ok(sum + n) })
        .await?;
    let raw_list_seconds = listing.elapsed().as_secs_f64();
    for prefix in &prefixes {
        crate::raw::clean(&env.s3, prefix).await?;
    }
    Ok(ReportResult {
        experiments,
        runs_per_experiment: runs,
        files_per_run: files,
        keep_top,
        seed_seconds,
        report_seconds,
        peak_rss_kib,
        mlflow_requests: number(&json["requests"]["mlflow"]),
        store_requests: number(&json["requests"]["store"]),
        objects_stored: number(&totals["stored"]["objects"]),
        bytes_stored: number(&totals["stored"]["bytes"]),
        models_reclaimable: number(&totals["reclaimable"]["models"]),
        raw_list_seconds,
        raw_objects_listed,
    })
}
