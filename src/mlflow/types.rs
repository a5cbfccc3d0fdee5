//! Domain-facing MLflow entities: plain structs with maps instead of protobuf key/value lists,
//! empty strings turned into `None` and metric values already parsed to `f64`.

use std::collections::BTreeMap;

use crate::domain::run::{Fields, LifecycleStage, RunStatus};

/// An experiment, as `experiments/get` describes it.
#[derive(Debug, Clone, PartialEq)]
pub struct Experiment {
    pub experiment_id: String,
    pub name: String,
    pub lifecycle_stage: LifecycleStage,
    /// Root of the experiment's artifacts, e.g. `s3://mlflow/12`.
    pub artifact_location: String,
    pub tags: BTreeMap<String, String>,
}

/// A run with its latest metric values, params and tags (those asked for, see [`RunFields`]) and
/// the logged models it output.
#[derive(Debug, Clone, PartialEq)]
pub struct Run {
    pub run_id: String,
    pub run_name: String,
    pub experiment_id: String,
    pub status: RunStatus,
    pub lifecycle_stage: LifecycleStage,
    /// Milliseconds since the epoch. MLflow reports `0` for a run created without a start time.
    pub start_time: Option<i64>,
    /// Milliseconds since the epoch; `None` while the run has not ended.
    pub end_time: Option<i64>,
    /// e.g. `s3://mlflow/12/<run_id>/artifacts`.
    pub artifact_uri: String,
    /// Latest value of each metric. NaN stays NaN; MLflow stores ±infinity as ±`f64::MAX`.
    pub metrics: Fields<f64>,
    pub params: Fields<String>,
    pub tags: Fields<String>,
    /// Ids of the MLflow 3 logged models this run output (`outputs.model_outputs`).
    pub model_output_ids: Vec<String>,
}

/// The metrics, params and tags of each run a caller keeps from `runs/search`. MLflow sends
/// them all; a run logging hundreds of hyperparameters would otherwise hold kilobytes each.
#[derive(Debug, Clone, Copy)]
pub struct RunFields<'a> {
    pub metrics: &'a [&'a str],
    pub params: &'a [&'a str],
    pub tags: &'a [&'a str],
}

/// An MLflow 3 logged model. Its artifacts live under the experiment, not under the run.
#[derive(Debug, Clone, PartialEq)]
pub struct LoggedModel {
    /// e.g. `m-4eba6cdcb657401d8e2a938d40dc2e3e`.
    pub model_id: String,
    pub experiment_id: String,
    pub name: String,
    pub source_run_id: Option<String>,
    /// e.g. `s3://mlflow/12/models/<model_id>/artifacts`.
    pub artifact_uri: String,
    /// `LOGGED_MODEL_PENDING`, `LOGGED_MODEL_READY` or `LOGGED_MODEL_UPLOAD_FAILED`.
    pub status: String,
    pub tags: BTreeMap<String, String>,
}

/// A version of a registered model: a model the registry still points to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ModelVersion {
    pub name: String,
    pub version: String,
    /// `runs:/<run_id>/<path>`, `models:/<model_id>` or a plain artifact URI.
    pub source: String,
    pub run_id: Option<String>,
    /// The logged model behind the version: MLflow's `model_id` field when the server fills it,
    /// else parsed from a `models:/m-...` source (the open-source registry does not store it).
    pub model_id: Option<String>,
}

impl Run {
    /// Latest value of `metric`, if the run logged it.
    pub fn metric(&self, metric: &str) -> Option<f64> {
        self.metrics.get(metric).copied()
    }
}
