//! One test's MLflow and S3 world: a uniquely named experiment, finished runs with model files
//! in either layout MLflow produces, and checks on what a pass left of them.

use std::time::Duration;

use model_pruner::domain::event::{Event, ExperimentPrune, RunFinished};
use model_pruner::domain::policy::PolicyOverrides;

use crate::support::mlflow_fixtures::{ExperimentFixture, Mlflow, RunFixture, RunSpec};
use crate::support::store_fixtures;

pub const BUCKET: &str = "mlflow";
pub const METRIC: &str = "accuracy";

/// Which of MLflow's layouts a model is stored in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Layout {
    /// `<experiment>/<run_id>/artifacts/model/...`, flagged by the param `model_uploaded = 1`.
    Classic,
    /// `<experiment>/models/<model_id>/artifacts/...`, linked by `outputs.model_outputs`.
    Logged,
}

pub struct World {
    pub mlflow: Mlflow,
    pub s3: aws_sdk_s3::Client,
    /// The prefix of the experiments' names.
    suite: &'static str,
}

/// A run with a stored model, and where its files are.
pub struct ModelRun {
    pub run: RunFixture,
    pub bucket: String,
    pub prefix: String,
}

impl World {
    /// A world whose experiments are named after `suite`.
    pub fn new(suite: &'static str) -> World {
        World::on(suite, Mlflow::from_env().expect("MLflow settings"))
    }

    /// A world on the stack's MLflow 2.x tracking server (`MODEL_PRUNER_TEST_MLFLOW2_URI`).
    pub fn mlflow2(suite: &'static str) -> World {
        World::on(suite, Mlflow::new(&mlflow2_uri()))
    }

    /// A world on the tracking server `mlflow`.
    pub fn on(suite: &'static str, mlflow: Mlflow) -> World {
        World {
            mlflow,
            s3: store_fixtures::client().expect("S3 settings"),
            suite,
        }
    }

    pub async fn experiment(&self) -> ExperimentFixture {
        self.mlflow
            .experiment(self.suite)
            .await
            .expect("create experiment")
    }

    /// A finished run with `files` model files in `layout`, built from `spec`.
    pub async fn model_run(
        &self,
        exp: &ExperimentFixture,
        layout: Layout,
        spec: RunSpec,
        files: usize,
    ) -> ModelRun {
        let spec = match layout {
            Layout::Classic => spec.param("model_uploaded", "1"),
            Layout::Logged => spec.logged_model(),
        };
        let run = exp.run(spec).await.expect("create run");
        let uri = match layout {
            Layout::Classic => format!("{}/model/", run.artifact_uri),
            Layout::Logged => format!(
                "{}/",
                run.model.as_ref().expect("logged model").artifact_uri
            ),
        };
        let uri = match uri.strip_prefix("mlflow-artifacts:") {
            Some(path) => format!("{}{path}", proxied_destination()),
            None => uri,
        };
        let (bucket, prefix) = uri
            .strip_prefix("s3://")
            .and_then(|r| r.split_once('/'))
            .expect("an s3:// artifact URI");
        if files > 0 {
            store_fixtures::upload_files(&self.s3, bucket, prefix, files)
                .await
                .expect("upload model files");
        }
        ModelRun {
            run,
            bucket: bucket.into(),
            prefix: prefix.into(),
        }
    }

    /// Finished runs with 3 model files each, one per metric value (None: metric not logged),
    /// ended in order: run `i` has metric `values[i]`.
    pub async fn ranked_runs<V>(
        &self,
        exp: &ExperimentFixture,
        layout: Layout,
        values: &[V],
    ) -> Vec<ModelRun>
    where
        V: Copy + Into<Option<f64>>,
    {
        self.ranked_runs_with_files(exp, layout, values, |_| 3)
            .await
    }

    /// [`World::ranked_runs`] with `files(i)` model files for run `i`.
    pub async fn ranked_runs_with_files<V>(
        &self,
        exp: &ExperimentFixture,
        layout: Layout,
        values: &[V],
        files: impl Fn(usize) -> usize,
    ) -> Vec<ModelRun>
    where
        V: Copy + Into<Option<f64>>,
    {
        let mut runs = Vec::new();
        for (i, value) in values.iter().enumerate() {
            let mut spec =
                RunSpec::new(format!("run-{i}")).end_time(Some(1_700_000_000_000 + i as i64));
            if let Some(v) = (*value).into() {
                spec = spec.metric(METRIC, v);
            }
            runs.push(self.model_run(exp, layout, spec, files(i)).await);
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

    /// Whether the run carries the deletion tag (the rest of the mark may still be on its way).
    pub async fn tagged_deleted(&self, m: &ModelRun) -> bool {
        let tags = self.mlflow.run_tags(&m.run.run_id).await.expect("run tags");
        tags.get("model_pruner.deleted").map(String::as_str) == Some("true")
    }

    /// Whether the run was marked deleted in MLflow; if so, asserts the full mark (tags and
    /// the compatibility param). Call once the pass is over.
    pub async fn marked(&self, m: &ModelRun) -> bool {
        let tags = self.mlflow.run_tags(&m.run.run_id).await.expect("run tags");
        let deleted = tags.get("model_pruner.deleted").map(String::as_str) == Some("true");
        if deleted {
            assert!(tags.contains_key("model_pruner.deleted_at"), "{tags:?}");
            assert!(tags.contains_key("model_pruner.reason"), "{tags:?}");
            let params = self.mlflow.run_params(&m.run.run_id).await.expect("params");
            assert_eq!(params.get("model_deleted").map(String::as_str), Some("1"));
        }
        deleted
    }

    /// Whether exactly the runs at `kept` still have files and no deletion tag, and all others
    /// are emptied and tagged.
    pub async fn is_pruned(&self, runs: &[ModelRun], kept: &[usize]) -> bool {
        for (i, m) in runs.iter().enumerate() {
            let (objects, marked) = (self.objects(m).await, self.tagged_deleted(m).await);
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

    /// Asserts that exactly the runs at `kept` (indices) still have files and no mark, and all
    /// others are emptied and fully marked, naming the first run that differs.
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
            }
        }
    }

    /// Waits until [`World::is_pruned`] holds; after `timeout`, fails through
    /// [`World::assert_kept`].
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

/// Where the proxied tracking server of the stack keeps `mlflow-artifacts:/` (`s3://...`).
/// The stack's MLflow 2.x tracking server.
pub fn mlflow2_uri() -> String {
    std::env::var("MODEL_PRUNER_TEST_MLFLOW2_URI")
        .expect("MODEL_PRUNER_TEST_MLFLOW2_URI (eval \"$(scripts/stack.sh env)\")")
}

pub fn proxied_destination() -> String {
    std::env::var("MODEL_PRUNER_TEST_PROXIED_DESTINATION")
        .expect("MODEL_PRUNER_TEST_PROXIED_DESTINATION (eval \"$(scripts/stack.sh env)\")")
}

pub fn keep(n: i64) -> PolicyOverrides {
    PolicyOverrides {
        keep_top: Some(n),
        ..Default::default()
    }
}

pub fn run_finished(exp: &ExperimentFixture, run: &ModelRun, policy: PolicyOverrides) -> Event {
    Event::RunFinished(RunFinished {
        experiment_id: exp.id.clone(),
        run_id: run.run.run_id.clone(),
        policy,
    })
}

/// A prune of the whole experiment, keeping it, for real (not dry, not forced).
pub fn sweep(exp: &ExperimentFixture, policy: PolicyOverrides) -> ExperimentPrune {
    ExperimentPrune {
        experiment_id: exp.id.clone(),
        policy,
        delete_experiment: false,
        dry_run: false,
        force: false,
    }
}
