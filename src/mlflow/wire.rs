//! The JSON MLflow sends, and its conversion into [`types`](super::types).
//!
//! MLflow serialises protobuf messages to JSON, which brings quirks the structs here absorb:
//! - int64 fields (timestamps) may arrive as numbers or as strings (`"1712345678901"`);
//! - metric values NaN and ±infinity arrive as the strings `"NaN"`, `"Infinity"`, `"-Infinity"`;
//! - empty repeated fields are omitted entirely, and unset strings may be omitted or `""`;
//! - tags and params are lists of `{key, value}`.

use std::collections::BTreeMap;

use serde::{Deserialize, Deserializer};

use super::types::{Experiment, LoggedModel, ModelVersion, Run, RunFields};
use crate::domain::run::{Fields, LifecycleStage, RunStatus};
use crate::domain::time::EpochMs;

/// The tag older servers keep the run name in, before `info.run_name` existed.
const RUN_NAME_TAG: &str = "mlflow.runName";

/// MLflow's error body: `{"error_code": "RESOURCE_DOES_NOT_EXIST", "message": "..."}`.
#[derive(Debug, Default, Deserialize)]
pub(crate) struct ErrorBody {
    #[serde(default)]
    pub error_code: Option<String>,
    #[serde(default)]
    pub message: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
pub(crate) struct KeyValue {
    #[serde(default)]
    pub key: String,
    #[serde(default)]
    pub value: String,
}

fn to_map(pairs: Vec<KeyValue>) -> BTreeMap<String, String> {
    pairs.into_iter().map(|kv| (kv.key, kv.value)).collect()
}

fn non_empty(value: Option<String>) -> Option<String> {
    value.filter(|v| !v.is_empty())
}

// ---- experiments ----

#[derive(Debug, Deserialize)]
pub(crate) struct GetExperimentResponse {
    pub experiment: WireExperiment,
}

#[derive(Debug, Deserialize)]
pub(crate) struct SearchExperimentsResponse {
    #[serde(default)]
    pub experiments: Vec<WireExperiment>,
    #[serde(default)]
    pub next_page_token: Option<String>,
}

#[derive(Debug, Deserialize)]
pub(crate) struct WireExperiment {
    pub experiment_id: String,
    #[serde(default)]
    pub name: String,
    #[serde(default)]
    pub lifecycle_stage: String,
    #[serde(default)]
    pub artifact_location: String,
    #[serde(default)]
    pub tags: Vec<KeyValue>,
}

impl From<WireExperiment> for Experiment {
    fn from(e: WireExperiment) -> Self {
        Experiment {
            experiment_id: e.experiment_id,
            name: e.name,
            lifecycle_stage: LifecycleStage::parse(&e.lifecycle_stage),
            artifact_location: e.artifact_location,
            tags: to_map(e.tags),
        }
    }
}

// ---- runs ----

#[derive(Debug, Deserialize)]
pub(crate) struct SearchRunsResponse {
    #[serde(default)]
    pub runs: Vec<WireRun>,
    #[serde(default)]
    pub next_page_token: Option<String>,
}

#[derive(Debug, Deserialize)]
pub(crate) struct WireRun {
    pub info: RunInfo,
    #[serde(default)]
    pub data: RunData,
    #[serde(default)]
    pub outputs: RunOutputs,
}

#[derive(Debug, Deserialize)]
pub(crate) struct RunInfo {
    #[serde(default)]
    pub run_id: Option<String>,
    /// The deprecated spelling: MLflow sends both, older servers only this one.
    #[serde(default)]
    pub run_uuid: Option<String>,
    #[serde(default)]
    pub run_name: Option<String>,
    #[serde(default)]
    pub experiment_id: String,
    #[serde(default)]
    pub status: String,
    #[serde(default)]
    pub lifecycle_stage: String,
    #[serde(default, deserialize_with = "lenient_i64")]
    pub start_time: Option<i64>,
    #[serde(default, deserialize_with = "lenient_i64")]
    pub end_time: Option<i64>,
    #[serde(default)]
    pub artifact_uri: String,
}

#[derive(Debug, Default, Deserialize)]
pub(crate) struct RunData {
    #[serde(default)]
    pub metrics: Vec<WireMetric>,
    #[serde(default)]
    pub params: Vec<KeyValue>,
    #[serde(default)]
    pub tags: Vec<KeyValue>,
}

#[derive(Debug, Deserialize)]
pub(crate) struct WireMetric {
    pub key: String,
    /// `None` when the entry carries no value at all: a missing metric, not NaN.
    #[serde(default, deserialize_with = "lenient_f64")]
    pub value: Option<f64>,
}

#[derive(Debug, Default, Deserialize)]
pub(crate) struct RunOutputs {
    #[serde(default)]
    pub model_outputs: Vec<ModelOutput>,
}

#[derive(Debug, Deserialize)]
pub(crate) struct ModelOutput {
    pub model_id: String,
}

impl WireRun {
    /// The run, with only the metrics, params and tags named in `fields`.
    pub(super) fn into_run(self, fields: &RunFields) -> Run {
        let r = self;
        let run_name = non_empty(r.info.run_name)
            .or_else(|| {
                let tag = r.data.tags.iter().find(|t| t.key == RUN_NAME_TAG);
                tag.map(|t| t.value.clone())
            })
            .unwrap_or_default();
        Run {
            run_id: non_empty(r.info.run_id)
                .or(r.info.run_uuid)
                .unwrap_or_default(),
            run_name,
            experiment_id: r.info.experiment_id,
            status: RunStatus::parse(&r.info.status),
            lifecycle_stage: LifecycleStage::parse(&r.info.lifecycle_stage),
            start_time: r.info.start_time.map(EpochMs::from_millis),
            end_time: r.info.end_time.map(EpochMs::from_millis),
            artifact_uri: r.info.artifact_uri,
            metrics: r
                .data
                .metrics
                .into_iter()
                .filter(|m| fields.metrics.contains(&m.key.as_str()))
                .filter_map(|m| Some((m.key, m.value?)))
                .collect(),
            params: only(r.data.params, fields.params),
            tags: only(r.data.tags, fields.tags),
            model_output_ids: r
                .outputs
                .model_outputs
                .into_iter()
                .map(|o| o.model_id)
                .collect(),
        }
    }
}

/// The pairs whose key is one of `keys`.
fn only(pairs: Vec<KeyValue>, keys: &[&str]) -> Fields<String> {
    pairs
        .into_iter()
        .filter(|kv| keys.contains(&kv.key.as_str()))
        .map(|kv| (kv.key, kv.value))
        .collect()
}

// ---- logged models ----

#[derive(Debug, Deserialize)]
pub(crate) struct SearchLoggedModelsResponse {
    #[serde(default)]
    pub models: Vec<WireLoggedModel>,
    #[serde(default)]
    pub next_page_token: Option<String>,
}

#[derive(Debug, Deserialize)]
pub(crate) struct WireLoggedModel {
    pub info: LoggedModelInfo,
}

#[derive(Debug, Deserialize)]
pub(crate) struct LoggedModelInfo {
    pub model_id: String,
    #[serde(default)]
    pub experiment_id: String,
    #[serde(default)]
    pub name: String,
    #[serde(default)]
    pub source_run_id: Option<String>,
    #[serde(default)]
    pub artifact_uri: String,
    #[serde(default)]
    pub status: String,
    #[serde(default)]
    pub tags: Vec<KeyValue>,
}

impl From<WireLoggedModel> for LoggedModel {
    fn from(m: WireLoggedModel) -> Self {
        let i = m.info;
        LoggedModel {
            model_id: i.model_id,
            experiment_id: i.experiment_id,
            name: i.name,
            source_run_id: non_empty(i.source_run_id),
            artifact_uri: i.artifact_uri,
            status: i.status,
            tags: to_map(i.tags),
        }
    }
}

// ---- model registry ----

#[derive(Debug, Deserialize)]
pub(crate) struct SearchModelVersionsResponse {
    #[serde(default)]
    pub model_versions: Vec<WireModelVersion>,
    #[serde(default)]
    pub next_page_token: Option<String>,
}

#[derive(Debug, Deserialize)]
pub(crate) struct WireModelVersion {
    #[serde(default)]
    pub name: String,
    #[serde(default)]
    pub version: String,
    #[serde(default)]
    pub source: String,
    #[serde(default)]
    pub run_id: Option<String>,
    #[serde(default)]
    pub model_id: Option<String>,
}

impl From<WireModelVersion> for ModelVersion {
    fn from(v: WireModelVersion) -> Self {
        let model_id = non_empty(v.model_id).or_else(|| model_id_from_source(&v.source));
        ModelVersion {
            name: v.name,
            version: v.version,
            source: v.source,
            run_id: non_empty(v.run_id),
            model_id,
        }
    }
}

/// `models:/m-<hex>` names a logged model; `models:/<name>/<version>` and `models:/<name>@alias`
/// name registered models and are not logged model ids.
fn model_id_from_source(source: &str) -> Option<String> {
    let rest = source.strip_prefix("models:/")?;
    let id = rest.trim_end_matches('/');
    let is_model_id = id.starts_with("m-") && !id.contains(['/', '@']);
    is_model_id.then(|| id.to_owned())
}

// ---- lenient scalars ----

#[derive(Deserialize)]
#[serde(untagged)]
enum Scalar {
    Int(i64),
    Float(f64),
    Text(String),
}

/// An int64 sent as a number or as a decimal string; `null` and `""` are `None`.
fn lenient_i64<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Option<i64>, D::Error> {
    use serde::de::Error;
    match Option::<Scalar>::deserialize(deserializer)? {
        None => Ok(None),
        Some(Scalar::Int(n)) => Ok(Some(n)),
        Some(Scalar::Float(f)) if f.fract() == 0.0 && f.abs() < 9.0e18 => Ok(Some(f as i64)),
        Some(Scalar::Float(f)) => Err(D::Error::custom(format!("expected an int64, got {f}"))),
        Some(Scalar::Text(s)) if s.is_empty() => Ok(None),
        Some(Scalar::Text(s)) => s
            .parse()
            .map(Some)
            .map_err(|_| D::Error::custom(format!("expected an int64, got {s:?}"))),
    }
}

/// A double sent as a number, as `"NaN"`/`"Infinity"`/`"-Infinity"` or as a decimal string;
/// `null` (no value) is `None`: a metric without a value is missing, never NaN (NaN ranks and
/// can be deleted; a missing metric keeps the run).
fn lenient_f64<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Option<f64>, D::Error> {
    use serde::de::Error;
    match Option::<Scalar>::deserialize(deserializer)? {
        None => Ok(None),
        Some(Scalar::Int(n)) => Ok(Some(n as f64)),
        Some(Scalar::Float(f)) => Ok(Some(f)),
        Some(Scalar::Text(s)) => match s.as_str() {
            "NaN" | "nan" => Ok(Some(f64::NAN)),
            "Infinity" | "inf" => Ok(Some(f64::INFINITY)),
            "-Infinity" | "-inf" => Ok(Some(f64::NEG_INFINITY)),
            other => other
                .parse()
                .map(Some)
                .map_err(|_| D::Error::custom(format!("expected a double, got {s:?}"))),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `runs/get`'s shape: one run, as MLflow serialises it.
    #[derive(Debug, Deserialize)]
    struct GetRunResponse {
        run: WireRun,
    }

    const FIELDS: RunFields = RunFields {
        metrics: &["nan", "inf", "ninf", "text", "int", "max", "acc"],
        params: &["p"],
        tags: &["mlflow.runName"],
    };

    fn run(json: &str) -> Run {
        serde_json::from_str::<GetRunResponse>(json)
            .unwrap()
            .run
            .into_run(&FIELDS)
    }

    #[test]
    fn int64_timestamps_decode_from_numbers_and_strings() {
        let run = run(
            r#"{"run": {"info": {"run_id": "r", "start_time": "1712345678901",
            "end_time": 1712345679901}}}"#,
        );
        assert_eq!(
            run.start_time,
            Some(EpochMs::from_millis(1_712_345_678_901))
        );
        assert_eq!(run.end_time, Some(EpochMs::from_millis(1_712_345_679_901)));
    }

    #[test]
    fn nan_and_infinite_metrics_decode_from_strings() {
        let run = run(r#"{"run": {"info": {"run_id": "r"}, "data": {"metrics": [
            {"key": "nan", "value": "NaN", "timestamp": 1, "step": 0},
            {"key": "inf", "value": "Infinity"},
            {"key": "ninf", "value": "-Infinity"},
            {"key": "text", "value": "0.25"},
            {"key": "int", "value": 3},
            {"key": "max", "value": 1.7976931348623157e+308}]}}}"#);
        assert!(run.metrics["nan"].is_nan());
        assert_eq!(run.metrics["inf"], f64::INFINITY);
        assert_eq!(run.metrics["ninf"], f64::NEG_INFINITY);
        assert_eq!(run.metrics["text"], 0.25);
        assert_eq!(run.metrics["int"], 3.0);
        assert_eq!(run.metrics["max"], f64::MAX);
    }

    #[test]
    fn a_metric_without_a_value_is_missing_not_nan() {
        let run = run(r#"{"run": {"info": {"run_id": "r"}, "data": {"metrics": [
            {"key": "acc", "timestamp": 1, "step": 0},
            {"key": "nan", "value": null}]}}}"#);
        assert!(run.metrics.is_empty(), "{:?}", run.metrics);
    }

    #[test]
    fn a_garbage_metric_value_is_a_decode_error() {
        let err = serde_json::from_str::<GetRunResponse>(
            r#"{"run": {"info": {"run_id": "r"}, "data": {"metrics": [{"key": "m", "value": "high"}]}}}"#,
        )
        .unwrap_err();
        assert!(err.to_string().contains("high"), "{err}");
    }

    #[test]
    fn omitted_repeated_fields_and_unended_runs_decode_to_empty() {
        let run = run(r#"{"run": {"info": {"run_uuid": "r", "experiment_id": "1",
            "status": "RUNNING", "start_time": 0}, "inputs": {}}}"#);
        assert_eq!(run.run_id, "r");
        assert_eq!(run.start_time, Some(EpochMs::from_millis(0)));
        assert_eq!(run.end_time, None);
        assert!(run.metrics.is_empty() && run.params.is_empty() && run.tags.is_empty());
        assert!(run.model_output_ids.is_empty());
    }

    #[test]
    fn a_real_mlflow_3_run_decodes_with_params_tags_and_model_outputs() {
        // Shape copied from MLflow 3.17 `runs/get`.
        let run = run(r#"{"run": {
            "info": {"run_uuid": "0400b9", "experiment_id": "1", "run_name": "r1",
                "user_id": "", "status": "FINISHED", "start_time": 1712345678901,
                "end_time": 1712345679901, "artifact_uri": "s3://mlflow/1/0400b9/artifacts",
                "lifecycle_stage": "active", "run_id": "0400b9"},
            "data": {"metrics": [{"key": "acc", "value": 0.5, "timestamp": 1, "step": 0}],
                "params": [{"key": "p", "value": "1"}],
                "tags": [{"key": "mlflow.runName", "value": "r1"}]},
            "inputs": {},
            "outputs": {"model_outputs": [{"model_id": "m-a4b9", "step": 0}]}}}"#);
        assert_eq!(run.run_name, "r1");
        assert_eq!(run.status, RunStatus::Finished);
        assert_eq!(run.lifecycle_stage, LifecycleStage::Active);
        assert_eq!(run.artifact_uri, "s3://mlflow/1/0400b9/artifacts");
        assert_eq!(run.metric("acc"), Some(0.5));
        assert_eq!(run.params["p"], "1");
        assert_eq!(run.model_output_ids, ["m-a4b9"]);
    }

    #[test]
    fn only_the_named_metrics_params_and_tags_are_kept() {
        let run = serde_json::from_str::<GetRunResponse>(
            r#"{"run": {"info": {"run_id": "r"}, "data": {
                "metrics": [{"key": "acc", "value": 0.5}, {"key": "lr", "value": 0.1}],
                "params": [{"key": "p", "value": "1"}, {"key": "batch", "value": "32"}],
                "tags": [{"key": "mlflow.runName", "value": "named"},
                    {"key": "mlflow.user", "value": "u"}]}}}"#,
        )
        .unwrap()
        .run;
        let fields = RunFields {
            metrics: &["acc"],
            params: &[],
            tags: &["mlflow.user"],
        };
        let run = run.into_run(&fields);
        assert_eq!(run.metrics.keys().collect::<Vec<_>>(), ["acc"]);
        assert!(run.params.is_empty());
        assert_eq!(run.tags.keys().collect::<Vec<_>>(), ["mlflow.user"]);
        assert_eq!(
            run.run_name, "named",
            "the name tag is read before filtering"
        );
    }

    #[test]
    fn run_name_falls_back_to_the_run_name_tag() {
        let run = run(r#"{"run": {"info": {"run_id": "r"},
            "data": {"tags": [{"key": "mlflow.runName", "value": "old-style"}]}}}"#);
        assert_eq!(run.run_name, "old-style");
    }

    #[test]
    fn logged_model_without_source_run_has_none() {
        let page: SearchLoggedModelsResponse = serde_json::from_str(
            r#"{"models": [{"info": {"model_id": "m-1", "experiment_id": "1", "name": "m",
                "creation_timestamp_ms": "1795787055589",
                "artifact_uri": "s3://mlflow/1/models/m-1/artifacts",
                "status": "LOGGED_MODEL_PENDING", "model_type": "", "source_run_id": ""},
                "data": {}}],
              "next_page_token": "abc"}"#,
        )
        .unwrap();
        assert_eq!(page.next_page_token.as_deref(), Some("abc"));
        let model: LoggedModel = page.models.into_iter().next().unwrap().into();
        assert_eq!(model.source_run_id, None);
        assert_eq!(model.artifact_uri, "s3://mlflow/1/models/m-1/artifacts");
        assert!(model.tags.is_empty());
    }

    #[test]
    fn model_version_model_id_comes_from_the_field_or_a_models_uri() {
        let page: SearchModelVersionsResponse = serde_json::from_str(
            r#"{"model_versions": [
                {"name": "a", "version": "1", "source": "models:/m-abc", "run_id": "r"},
                {"name": "a", "version": "2", "source": "s3://x", "model_id": "m-def", "run_id": ""},
                {"name": "a", "version": "3", "source": "models:/other/2"},
                {"name": "a", "version": "4", "source": "runs:/r/model"}]}"#,
        )
        .unwrap();
        let ids: Vec<_> = page
            .model_versions
            .into_iter()
            .map(ModelVersion::from)
            .map(|v| (v.model_id, v.run_id))
            .collect();
        assert_eq!(
            ids,
            [
                (Some("m-abc".to_owned()), Some("r".to_owned())),
                (Some("m-def".to_owned()), None),
                (None, None),
                (None, None),
            ]
        );
    }

    #[test]
    fn experiment_tags_become_a_map() {
        let response: GetExperimentResponse = serde_json::from_str(
            r#"{"experiment": {"experiment_id": "1", "name": "e", "artifact_location": "s3://mlflow/1",
                "lifecycle_stage": "active", "last_update_time": 1, "creation_time": "1",
                "tags": [{"key": "team", "value": "a"}], "workspace": "default"}}"#,
        )
        .unwrap();
        let experiment = Experiment::from(response.experiment);
        assert_eq!(experiment.tags["team"], "a");
        assert_eq!(experiment.artifact_location, "s3://mlflow/1");
    }
}
