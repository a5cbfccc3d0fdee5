//! MLflow and S3 fixtures for end-to-end worker tests (the engine suite's world, trimmed to
//! classic-layout runs), and a drain check on the broker's management API.

use std::time::Duration;

use model_pruner::domain::event::{Event, ExperimentPrune, RunFinished};
use model_pruner::domain::policy::PolicyOverrides;
use serde_json::Value;

use crate::helpers::TestApp;
use crate::support::mlflow_fixtures::{ExperimentFixture, Mlflow, RunFixture, RunSpec};
use crate::support::store_fixtures;

pub const METRIC: &str = "accuracy";

pub struct World {
    pub mlflow: Mlflow,
    pub s3: aws_sdk_s3::Client,
}

/// A run with a stored model, and where its files are.
pub struct ModelRun {
    pub run: RunFixture,
    pub bucket: String,
    pub prefix: String,
}

impl World {
    pub fn new() -> World {
        World {
            mlflow: Mlflow::from_env().expect("MLflow settings"),
            s3: store_fixtures::client().expect("S3 settings"),
        }
    }

    pub async fn experiment(&self) -> ExperimentFixture {
        self.mlflow
            .experiment("worker")
            .await
            .expect("create experiment")
    }

    /// Finished runs with `files` model files each (classic layout), one per metric value,
    /// ended in order. Run `i` has metric `values[i]`.
    pub async fn ranked_runs(
        &self,
        exp: &ExperimentFixture,
        values: &[f64],
        files: impl Fn(usize) -> usize,
    ) -> Vec<ModelRun> {
        let mut runs = Vec::new();
        for (i, value) in values.iter().enumerate() {
            let spec = RunSpec::new(format!("run-{i}"))
                .end_time(Some(1_700_000_000_000 + i as i64))
                .metric(METRIC, *value)
                .param("model_uploaded", "1");
            let run = exp.run(spec).await.expect("create run");
            let uri = format!("{}/model/", run.artifact_uri);
            let (bucket, prefix) = uri
                .strip_prefix("s3://")
                .and_then(|r| r.split_once('/'))
                .expect("an s3:// artifact URI");
            store_fixtures::upload_files(&self.s3, bucket, prefix, files(i))
                .await
                .expect("upload model files");
            runs.push(ModelRun {
                run,
                bucket: bucket.into(),
                prefix: prefix.into(),
            });
        }
        runs
    }

    pub async fn objects(&self, m: &ModelRun) -> u64 {
        store_fixtures::count_objects(&self.s3, &m.bucket, &m.prefix)
            .await
            .expect("count objects")
    }

    /// Whether the run was marked deleted in MLflow.
    pub async fn marked(&self, m: &ModelRun) -> bool {
        let tags = self.mlflow.run_tags(&m.run.run_id).await.expect("run tags");
        tags.get("model_pruner.deleted").map(String::as_str) == Some("true")
    }

    /// Whether exactly the runs at `kept` still have files and no mark, and all others are
    /// emptied and marked.
    pub async fn is_pruned(&self, runs: &[ModelRun], kept: &[usize]) -> bool {
        for (i, m) in runs.iter().enumerate() {
            let (objects, marked) = (self.objects(m).await, self.marked(m).await);
            let ok = if kept.contains(&i) {
                objects > 0 && !marked
            } else {
                objects == 0 && marked
            };
            if !ok {
                return false;
            }
        }
        true
    }

    /// Asserts [`World::is_pruned`], naming the first run that differs, and that pruned runs
    /// carry the full mark (tags and the compatibility param).
    pub async fn assert_kept(&self, runs: &[ModelRun], kept: &[usize]) {
        for (i, m) in runs.iter().enumerate() {
            let objects = self.objects(m).await;
            let marked = self.marked(m).await;
            if kept.contains(&i) {
                assert!(
                    objects > 0 && !marked,
                    "run {i} should be kept: {objects} objects, marked {marked}"
                );
            } else {
                let tags = self.mlflow.run_tags(&m.run.run_id).await.expect("tags");
                assert!(
                    objects == 0 && marked,
                    "run {i} should be pruned: {objects} objects, marked {marked}, tags {tags:?}"
                );
                let tags = self.mlflow.run_tags(&m.run.run_id).await.expect("tags");
                assert!(tags.contains_key("model_pruner.deleted_at"), "{tags:?}");
                let params = self.mlflow.run_params(&m.run.run_id).await.expect("params");
                assert_eq!(params.get("model_deleted").map(String::as_str), Some("1"));
            }
        }
    }

    /// Waits until [`World::is_pruned`] holds, failing after `timeout`.
    pub async fn wait_pruned(&self, runs: &[ModelRun], kept: &[usize], timeout: Duration) {
        let deadline = tokio::time::Instant::now() + timeout;
        while !self.is_pruned(runs, kept).await {
            if tokio::time::Instant::now() >= deadline {
                self.assert_kept(runs, kept).await;
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    }
}

pub fn keep(n: i64) -> PolicyOverrides {
    PolicyOverrides {
        keep_top: Some(n),
        ..Default::default()
    }
}

pub fn run_finished(exp: &ExperimentFixture, run: &ModelRun, keep_top: i64) -> Vec<u8> {
    Event::RunFinished(RunFinished {
        experiment_id: exp.id.clone(),
        run_id: run.run.run_id.clone(),
        policy: keep(keep_top),
    })
    .to_body()
}

pub fn prune(exp: &ExperimentFixture, keep_top: i64, force: bool) -> Vec<u8> {
    Event::ExperimentPrune(ExperimentPrune {
        experiment_id: exp.id.clone(),
        policy: keep(keep_top),
        delete_experiment: false,
        dry_run: false,
        force,
    })
    .to_body()
}

/// The management API, from `RABBITMQ_MANAGEMENT_URL` (as `scripts/stack.sh env` prints it),
/// split into a URL for `segments` under `/api` and the credentials.
pub fn management(segments: &[&str]) -> (url::Url, String, String) {
    let raw = std::env::var("RABBITMQ_MANAGEMENT_URL")
        .unwrap_or_else(|_| "http://guest:guest@127.0.0.1:15672".to_owned());
    let mut url: url::Url = raw.parse().expect("RABBITMQ_MANAGEMENT_URL is a URL");
    let (user, pass) = (
        url.username().to_owned(),
        url.password().unwrap_or("").to_owned(),
    );
    let _ = url.set_username("");
    let _ = url.set_password(None);
    url.path_segments_mut()
        .expect("an http URL")
        .clear()
        .push("api")
        .extend(segments);
    (url, user, pass)
}

/// `messages` (ready + unacked) of `queue` per the management API.
async fn management_messages(http: &reqwest::Client, queue: &str) -> Option<u64> {
    let (url, user, pass) = management(&["queues", "/", queue]);
    let v: Value = http
        .get(url)
        .basic_auth(user, Some(pass))
        .send()
        .await
        .ok()?
        .error_for_status()
        .ok()?
        .json()
        .await
        .ok()?;
    Some(v["messages"].as_u64()? + v["messages_unacknowledged"].as_u64().unwrap_or(0))
}

/// The statistics the management API shows are refreshed every 5 s by default.
const STATS_INTERVAL: Duration = Duration::from_secs(6);

/// Waits until the work queue has no ready messages (checked live over AMQP) and then no
/// ready or unacked ones in a management sample taken at least one statistics interval later.
pub async fn wait_drained(app: &TestApp, timeout: Duration) {
    let http = reqwest::Client::new();
    let work = app.topology.work_queue.clone();
    let deadline = tokio::time::Instant::now() + timeout;
    let mut empty_since = None;
    loop {
        let now = tokio::time::Instant::now();
        assert!(
            now < deadline,
            "work queue {work} not drained in {timeout:?}"
        );
        if app.queue_len(&work).await > 0 {
            empty_since = None;
        } else {
            let since = *empty_since.get_or_insert(now);
            if now - since >= STATS_INTERVAL && management_messages(&http, &work).await == Some(0) {
                return;
            }
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}
