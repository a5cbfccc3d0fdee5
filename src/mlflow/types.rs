//! Domain-facing MLflow entities: plain structs with maps instead of protobuf key/value lists,
//! empty strings turned into `None` and metric values already parsed to `f64`.

use std::collections::BTreeMap;

use crate::domain::run::{Fields, LifecycleStage, RunStatus};
use crate::domain::time::EpochMs;

/// An experiment, as `experiments/get` describes it.
#[derive(Debug, Clone, PartialEq)]
pub struct Experiment {
    /// MLflow's id of the experiment, a numeric string such as `12`.
    pub experiment_id: String,
    /// The experiment's name, unique on the tracking server; empty if the server sent none.
    pub name: String,
    /// `active`, or `deleted` while the experiment is in MLflow's trash.
    pub lifecycle_stage: LifecycleStage,
    /// Root of the experiment's artifacts, e.g. `s3://mlflow/12`.
    pub artifact_location: String,
    /// The experiment's tags by key; the `model_pruner.*` ones carry its retention policy.
    pub tags: BTreeMap<String, String>,
}

/// A run with its latest metric values, params and tags (those asked for, see [`RunFields`]) and
/// the logged models it output.
#[derive(Debug, Clone, PartialEq)]
pub struct Run {
    /// MLflow's id of the run (`info.run_id`, or `info.run_uuid` from older servers).
    pub run_id: String,
    /// `info.run_name`, else the `mlflow.runName` tag; empty when neither is set.
    pub run_name: String,
    /// The experiment the run belongs to (`info.experiment_id`).
    pub experiment_id: String,
    /// `info.status`; only `FINISHED` runs are candidates for pruning.
    pub status: RunStatus,
    /// `info.lifecycle_stage`; only `active` runs are candidates, `deleted` ones are in the trash.
    pub lifecycle_stage: LifecycleStage,
    /// When the run started. MLflow reports `0` for a run created without a start time.
    pub start_time: Option<EpochMs>,
    /// When the run ended; `None` while the run has not ended.
    pub end_time: Option<EpochMs>,
    /// e.g. `s3://mlflow/12/<run_id>/artifacts`.
    pub artifact_uri: String,
    /// Latest value of each metric. NaN stays NaN; MLflow stores ±infinity as ±`f64::MAX`.
    pub metrics: Fields<f64>,
    /// The params named in [`RunFields::params`], e.g. the model-uploaded marker.
    pub params: Fields<String>,
    /// The tags named in [`RunFields::tags`], e.g. `model_pruner.keep` and `model_pruner.deleted`.
    pub tags: Fields<String>,
    /// Ids of the MLflow 3 logged models this run output (`outputs.model_outputs`).
    pub model_output_ids: Vec<String>,
}

/// The metrics, params and tags of each run a caller keeps from `runs/search`. MLflow sends
/// them all; a run logging hundreds of hyperparameters would otherwise hold kilobytes each.
#[derive(Debug, Clone, Copy)]
pub struct RunFields<'a> {
    /// Names of the metrics to keep, usually just the policy's ranking metric.
    pub metrics: &'a [&'a str],
    /// Names of the params to keep, e.g. the model-uploaded marker and `model_deleted`.
    pub params: &'a [&'a str],
    /// Names of the tags to keep, e.g. `model_pruner.keep`, `model_pruner.deleting`.
    pub tags: &'a [&'a str],
}

/// An MLflow 3 logged model. Its artifacts live under the experiment, not under the run.
#[derive(Debug, Clone, PartialEq)]
pub struct LoggedModel {
    /// e.g. `m-4eba6cdcb657401d8e2a938d40dc2e3e`.
    pub model_id: String,
    /// The experiment the model was logged in; its files live under that experiment's location.
    pub experiment_id: String,
    /// The name the model was logged under (e.g. `model`); not unique, not an id.
    pub name: String,
    /// The run that logged the model; `None` when it was logged outside a run.
    pub source_run_id: Option<String>,
    /// e.g. `s3://mlflow/12/models/<model_id>/artifacts`.
    pub artifact_uri: String,
    /// `LOGGED_MODEL_PENDING`, `LOGGED_MODEL_READY` or `LOGGED_MODEL_UPLOAD_FAILED`.
    pub status: String,
    /// The model's tags by key, e.g. `model_pruner.deleted` once the pruner deleted its files.
    pub tags: BTreeMap<String, String>,
}

/// A version of a registered model: a model the registry still points to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ModelVersion {
    /// Name of the registered model this is a version of (names are unique in the registry).
    pub name: String,
    /// The version number within the registered model, as MLflow sends it: a string, e.g. `"3"`.
    pub version: String,
    /// `runs:/<run_id>/<path>`, `models:/<model_id>` or a plain artifact URI.
    pub source: String,
    /// The run the version was created from, when MLflow recorded one.
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
