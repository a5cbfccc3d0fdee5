//! MLflow runs with classic-layout model files in S3, and checks on them (a trimmed copy of
//! the worker suite's world).

use std::time::Duration;

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

    /// A run with 2 model files under `artifacts/model/`, adjusted by `spec`.
    pub async fn model_run(&self, exp: &ExperimentFixture, spec: RunSpec) -> ModelRun {
        let run = exp
            .run(spec.param("model_uploaded", "1"))
            .await
            .expect("create run");
        let uri = format!("{}/model/", run.artifact_uri);
        let (bucket, prefix) = uri
            .strip_prefix("s3://")
            .and_then(|r| r.split_once('/'))
            .expect("an s3:// artifact URI");
        store_fixtures::upload_files(&self.s3, bucket, prefix, 2)
            .await
            .expect("upload model files");
        ModelRun {
            bucket: bucket.into(),
            prefix: prefix.into(),
            run,
        }
    }

    /// Finished runs with model files; run `i` has metric `values[i]` and ended `i`-th.
    pub async fn ranked_runs(&self, exp: &ExperimentFixture, values: &[f64]) -> Vec<ModelRun> {
        let mut runs = Vec::new();
        for (i, value) in values.iter().enumerate() {
            let spec = RunSpec::new(format!("run-{i}"))
                .end_time(Some(1_700_000_000_000 + i as i64))
                .metric(METRIC, *value);
            runs.push(self.model_run(exp, spec).await);
        }
        runs
    }

    pub async fn objects(&self, m: &ModelRun) -> u64 {
        store_fixtures::count_objects(&self.s3, &m.bucket, &m.prefix)
            .await
            .expect("count objects")
    }

    /// Deletes every object under `prefix` (a key works too), one by one.
    pub async fn delete_prefix(&self, bucket: &str, prefix: &str) {
        let listed = self
            .s3
            .list_objects_v2()
            .bucket(bucket)
            .prefix(prefix)
            .send()
            .await
            .expect("ListObjectsV2");
        for o in listed.contents() {
            self.s3
                .delete_object()
                .bucket(bucket)
                .key(o.key().unwrap())
                .send()
                .await
                .expect("DeleteObject");
        }
    }

    /// Whether the run was marked deleted in MLflow.
    pub async fn marked(&self, m: &ModelRun) -> bool {
        let tags = self.mlflow.run_tags(&m.run.run_id).await.expect("run tags");
        tags.get("model_pruner.deleted").map(String::as_str) == Some("true")
    }

    /// Waits until exactly the runs at `kept` still have files and every other one is emptied
    /// and marked.
    pub async fn wait_pruned(&self, runs: &[ModelRun], kept: &[usize], timeout: Duration) {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let mut state = Vec::new();
            for m in runs {
                state.push((self.objects(m).await > 0, self.marked(m).await));
            }
            let done = state
                .iter()
                .enumerate()
                .all(|(i, &(files, marked))| (files && !marked) == kept.contains(&i));
            if done && state.iter().all(|&(files, marked)| files != marked) {
                return;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "runs (files, marked) {state:?}, expected only {kept:?} kept"
            );
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    }
}
