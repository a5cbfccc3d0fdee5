//! Test data: MLflow experiments of finished runs with classic models (`model_uploaded = 1`,
//! files under `artifacts/model/`), the objects of those models, and object-only copies of the
//! same layout for the raw store baseline. Everything is created concurrently.

use anyhow::Context as _;
use aws_sdk_s3::Client;
use futures::{StreamExt as _, TryStreamExt as _};

use crate::mlflow_fixtures::{ExperimentFixture, Mlflow, ModelSource, RunSpec};
use crate::store_fixtures::put_object;

pub const BUCKET: &str = "mlflow";
/// MLflow requests in flight while seeding: 16 for the stack's tracking server on PostgreSQL
/// (4 server workers); 8 on sqlite, whose one server worker has a pool of 15 connections and
/// answers a request that waited 30 s for one with a 400.
fn mlflow_concurrency() -> usize {
    match std::env::var("MODEL_PRUNER_TEST_MLFLOW_BACKEND").as_deref() {
        Ok("postgresql") => 16,
        _ => 8,
    }
}

/// A seeded experiment: its runs, best first by `accuracy`.
pub struct Seeded {
    pub experiment: ExperimentFixture,
    pub run_ids: Vec<String>,
    /// `<experiment's root>/` (`<id>/`, or `pg/<id>/` on the PostgreSQL stack): everything the
    /// experiment stores in the bucket.
    pub prefix: String,
}

/// Creates an experiment with `runs` finished runs whose `accuracy` is distinct, each with a
/// classic model of `files` objects.
pub async fn experiment(
    mlflow: &Mlflow,
    s3: &Client,
    name: &str,
    runs: usize,
    files: usize,
    upload_concurrency: usize,
) -> anyhow::Result<Seeded> {
    experiment_tagged(mlflow, s3, name, &[], runs, files, upload_concurrency).await
}

/// `count` experiments of [`experiment_tagged`], one at a time: the tracking server's
/// connection pool (15 with the sqlite backend) is the limit, not the bench.
pub async fn experiments(
    env: &crate::Env,
    name: &str,
    tags: &[(&str, &str)],
    count: usize,
    runs: usize,
    files: usize,
) -> anyhow::Result<Vec<Seeded>> {
    let mut seeded = Vec::with_capacity(count);
    for _ in 0..count {
        seeded.push(
            experiment_tagged(
                &env.mlflow,
                &env.s3,
                name,
                tags,
                runs,
                files,
                env.upload_concurrency,
            )
            .await?,
        );
    }
    Ok(seeded)
}

/// [`experiment`] with experiment tags.
pub async fn experiment_tagged(
    mlflow: &Mlflow,
    s3: &Client,
    name: &str,
    tags: &[(&str, &str)],
    runs: usize,
    files: usize,
    upload_concurrency: usize,
) -> anyhow::Result<Seeded> {
    let experiment = mlflow.create_experiment(name, tags, None).await?;
    let specs = (0..runs).map(|i| {
        RunSpec::new(format!("run-{i:05}"))
            .metric("accuracy", 1.0 - i as f64 / runs as f64)
            .param("model_uploaded", "1")
    });
    let fixtures: Vec<_> = futures::stream::iter(specs)
        .map(|spec| experiment.run(spec))
        .buffered(mlflow_concurrency())
        .try_collect()
        .await
        .with_context(|| format!("seeding runs of {}", experiment.name))?;
    let mut keys = Vec::with_capacity(runs * files);
    for run in &fixtures {
        let prefix = model_prefix(&run.artifact_uri)?;
        keys.extend(file_keys(&prefix, files));
    }
    upload(s3, keys, upload_concurrency).await?;
    // The fixtures hold the runs' names and times too: only the ids are kept, so that a
    // 20,000-run seed costs the bench little memory.
    let run_ids = fixtures.into_iter().map(|r| r.run_id).collect();
    let root = experiment
        .artifact_location
        .strip_prefix(&format!("s3://{BUCKET}/"))
        .with_context(|| {
            format!(
                "experiment outside s3://{BUCKET}: {}",
                experiment.artifact_location
            )
        })?;
    Ok(Seeded {
        prefix: format!("{}/", root.trim_end_matches('/')),
        run_ids,
        experiment,
    })
}

/// Uploads the `files` objects of a classic model for the run of `artifact_uri`; returns the
/// model's key prefix.
pub async fn model(
    s3: &Client,
    artifact_uri: &str,
    files: usize,
    upload_concurrency: usize,
) -> anyhow::Result<String> {
    let prefix = model_prefix(artifact_uri)?;
    upload(s3, file_keys(&prefix, files).collect(), upload_concurrency).await?;
    Ok(prefix)
}

/// The key prefix of a seeded run's model, from its run id.
pub fn run_model_prefix(seeded: &Seeded, run_id: &str) -> String {
    format!("{}{run_id}/artifacts/model/", seeded.prefix)
}

/// `runs` run folders of `files` objects each under `root` (`{root}{run}/artifacts/model/...`,
/// the layout of an experiment's classic models), objects only.
pub async fn raw_layout(
    s3: &Client,
    root: &str,
    runs: usize,
    files: usize,
    upload_concurrency: usize,
) -> anyhow::Result<Vec<String>> {
    let prefixes: Vec<String> = (0..runs)
        .map(|_| format!("{root}{:032x}/artifacts/model/", rand::random::<u128>()))
        .collect();
    let keys = prefixes.iter().flat_map(|p| file_keys(p, files)).collect();
    upload(s3, keys, upload_concurrency).await?;
    Ok(prefixes)
}

/// The key prefix of a run's classic model: `s3://mlflow/<exp>/<run>/artifacts` to
/// `<exp>/<run>/artifacts/model/`.
fn model_prefix(artifact_uri: &str) -> anyhow::Result<String> {
    let path = artifact_uri
        .strip_prefix(&format!("s3://{BUCKET}/"))
        .with_context(|| format!("artifact URI outside s3://{BUCKET}: {artifact_uri}"))?;
    Ok(format!("{}/model/", path.trim_end_matches('/')))
}

/// The files of one model, as `store_fixtures::upload_files` names them.
fn file_keys(prefix: &str, files: usize) -> impl Iterator<Item = String> + '_ {
    (0..files).map(move |i| format!("{prefix}data/part-{i:05}.bin"))
}

async fn upload(s3: &Client, keys: Vec<String>, concurrency: usize) -> anyhow::Result<()> {
    futures::stream::iter(keys)
        .map(|key| async move {
            let body = format!("model file {key}\n").into_bytes();
            put_object(s3, BUCKET, &key, body).await
        })
        .buffer_unordered(concurrency)
        .try_collect::<()>()
        .await
}

/// Registers `versions` model versions in `registries` registered models of their own, each
/// version naming an S3 path outside every seeded experiment: the rest of a shared registry,
/// which a pass must not pay for. Returns the registered model names, for cleanup.
pub async fn registry(
    mlflow: &Mlflow,
    versions: usize,
    registries: usize,
) -> anyhow::Result<Vec<String>> {
    let tag = format!("{:08x}", rand::random::<u32>());
    let names: Vec<String> = (0..registries.max(1))
        .map(|i| format!("bench-elsewhere-{tag}-{i}"))
        .collect();
    let sources: Vec<(String, String)> = (0..versions)
        .map(|i| {
            let name = names[i % names.len()].clone();
            (
                name,
                format!("s3://{BUCKET}/elsewhere-{tag}/{i:05}/artifacts/model"),
            )
        })
        .collect();
    futures::stream::iter(sources)
        .map(|(name, source)| async move {
            mlflow
                .register_model_version(&name, ModelSource::Uri(&source))
                .await
        })
        .buffer_unordered(mlflow_concurrency())
        .try_collect::<Vec<_>>()
        .await
        .context("seeding registry versions")?;
    Ok(names)
}
