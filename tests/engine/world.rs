//! One test's world: the engine built from the stack's settings, MLflow and S3 fixtures, and
//! helpers that create runs with model files in both layouts MLflow produces.

use std::time::Duration;

use model_pruner::domain::event::{Event, ExperimentPrune, RunFinished};
use model_pruner::domain::policy::PolicyOverrides;
use model_pruner::engine::{Engine, PassReport, PruneError};
use model_pruner::settings::Settings;

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
    pub settings: Settings,
}

/// A run with a stored model, and where its files are.
pub struct ModelRun {
    pub run: RunFixture,
    pub bucket: String,
    pub prefix: String,
}

pub fn settings() -> Settings {
    if std::env::var_os("TEST_LOG").is_some() {
        model_pruner::telemetry::init(model_pruner::settings::LogFormat::Pretty);
    }
    let mut s =
        Settings::load(None).expect("settings load (run: eval \"$(scripts/stack.sh env)\")");
    s.policy.metric = METRIC.into();
    s.policy.keep_top = 2;
    s.store.allowed_buckets = vec![BUCKET.into()];
    s.retry.in_process_attempts = 2;
    s.retry.initial_backoff = Duration::from_millis(10);
    s.retry.max_backoff = Duration::from_millis(50);
    s
}

impl World {
    pub fn new() -> World {
        World {
            mlflow: Mlflow::from_env().expect("MLflow settings"),
            s3: store_fixtures::client().expect("S3 settings"),
            settings: settings(),
        }
    }

    pub fn engine(&self) -> Engine {
        Engine::new(&self.settings).expect("engine builds")
    }

    pub async fn experiment(&self) -> ExperimentFixture {
        self.mlflow
            .experiment("engine")
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

    /// Finished runs, one per metric value (None: metric not logged), ended in order.
    pub async fn ranked_runs(
        &self,
        exp: &ExperimentFixture,
        layout: Layout,
        values: &[Option<f64>],
    ) -> Vec<ModelRun> {
        let mut runs = Vec::new();
        for (i, value) in values.iter().enumerate() {
            let mut spec =
                RunSpec::new(format!("run-{i}")).end_time(Some(1_700_000_000_000 + i as i64));
            if let Some(v) = value {
                spec = spec.metric(METRIC, *v);
            }
            runs.push(self.model_run(exp, layout, spec, 3).await);
        }
        runs
    }

    pub async fn objects(&self, m: &ModelRun) -> u64 {
        store_fixtures::count_objects(&self.s3, &m.bucket, &m.prefix)
            .await
            .expect("count objects")
    }

    /// Whether the run was marked deleted in MLflow (tag and compatibility param).
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

    /// Asserts that exactly the runs at `kept` (indices) still have files and no mark, and all
    /// others are emptied and marked.
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
                assert!(
                    objects == 0 && marked,
                    "run {i} should be pruned: {objects} objects, marked {marked}"
                );
            }
        }
    }
}

pub fn run_finished(exp: &ExperimentFixture, run: &ModelRun, policy: PolicyOverrides) -> Event {
    Event::RunFinished(RunFinished {
        experiment_id: exp.id.clone(),
        run_id: run.run.run_id.clone(),
        policy,
    })
}

pub fn sweep(exp: &ExperimentFixture, policy: PolicyOverrides) -> ExperimentPrune {
    ExperimentPrune {
        experiment_id: exp.id.clone(),
        policy,
        delete_experiment: false,
        dry_run: false,
        force: false,
    }
}

pub fn keep(n: i64) -> PolicyOverrides {
    PolicyOverrides {
        keep_top: Some(n),
        ..Default::default()
    }
}

pub async fn handle(engine: &Engine, event: Event) -> Result<PassReport, PruneError> {
    engine.handle(&event).await
}
