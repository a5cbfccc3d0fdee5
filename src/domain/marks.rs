//! The marking contract with MLflow, in one place: the tags and params model-pruner reads and
//! writes on runs and logged models, what counts as true, and where a run's models live. The
//! engine and the audit both read runs through it. Pure.

use std::collections::BTreeMap;

use crate::domain::location::{LocationError, LocationRules, ModelLocation, Owner};

/// Tag written on runs and logged models once their files are gone.
pub const TAG_DELETED: &str = "model_pruner.deleted";
/// RFC 3339 time of the deletion.
pub const TAG_DELETED_AT: &str = "model_pruner.deleted_at";
/// Why the model was deleted: its rank, the policy and the rule.
pub const TAG_REASON: &str = "model_pruner.reason";
/// Run tag that protects a run's models.
pub const TAG_KEEP: &str = "model_pruner.keep";
/// Param EmbeddingStudio's trainer sets on pruned runs, honoured and written for compatibility.
pub const PARAM_DELETED: &str = "model_deleted";
/// The folder of a classic model under its run's artifact root (`<run>/artifacts/model/`).
pub const CLASSIC_MODEL_FOLDER: &str = "model";

/// A flag value MLflow users write for true.
pub fn is_true(value: Option<&String>) -> bool {
    value.is_some_and(|v| matches!(v.trim(), "1" | "true" | "True" | "TRUE"))
}

/// A run marked pruned: tag [`TAG_DELETED`] or param [`PARAM_DELETED`].
pub fn is_marked(tags: &BTreeMap<String, String>, params: &BTreeMap<String, String>) -> bool {
    is_true(tags.get(TAG_DELETED)) || is_true(params.get(PARAM_DELETED))
}

/// A logged model marked pruned (tag [`TAG_DELETED`]).
pub fn is_model_marked(tags: &BTreeMap<String, String>) -> bool {
    is_true(tags.get(TAG_DELETED))
}

/// A run its owner asked to keep (tag [`TAG_KEEP`]).
pub fn is_kept(tags: &BTreeMap<String, String>) -> bool {
    is_true(tags.get(TAG_KEEP))
}

/// The run stores a classic model: its marker param (`mlflow.model_uploaded_param`) is true.
pub fn has_classic_model(params: &BTreeMap<String, String>, marker_param: &str) -> bool {
    is_true(params.get(marker_param))
}

/// The folder of a run's classic model, below its artifact root.
pub fn classic_location(
    rules: &LocationRules,
    run_artifact_uri: &str,
    run_id: &str,
) -> Result<ModelLocation, LocationError> {
    rules.resolve(run_artifact_uri, CLASSIC_MODEL_FOLDER, Owner::Run(run_id))
}

/// The folder of a logged model: its own artifact root.
pub fn logged_location(
    rules: &LocationRules,
    model_artifact_uri: &str,
    model_id: &str,
) -> Result<ModelLocation, LocationError> {
    rules.resolve(model_artifact_uri, "", Owner::LoggedModel(model_id))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn map(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn true_is_written_in_the_ways_mlflow_users_write_it() {
        for v in ["1", "true", "True", "TRUE", " true "] {
            assert!(is_true(Some(&v.to_string())), "{v:?}");
        }
        for v in ["0", "false", "yes", "", "tRuE"] {
            assert!(!is_true(Some(&v.to_string())), "{v:?}");
        }
        assert!(!is_true(None));
    }

    #[test]
    fn a_run_is_marked_by_the_tag_or_the_compatibility_param() {
        assert!(is_marked(&map(&[(TAG_DELETED, "TRUE")]), &map(&[])));
        assert!(is_marked(&map(&[]), &map(&[(PARAM_DELETED, "1")])));
        assert!(!is_marked(&map(&[(TAG_KEEP, "true")]), &map(&[])));
        assert!(is_model_marked(&map(&[(TAG_DELETED, "true")])));
        assert!(is_kept(&map(&[(TAG_KEEP, "True")])));
    }

    #[test]
    fn a_classic_model_lives_in_the_model_folder_of_its_run() {
        let rules = LocationRules {
            allowed_buckets: vec!["mlflow".into()],
            artifacts_destination: "s3://mlflow".parse().unwrap(),
        };
        let classic = classic_location(&rules, "s3://mlflow/1/r1/artifacts", "r1").unwrap();
        assert_eq!(
            (classic.bucket.as_str(), classic.prefix.as_str()),
            ("mlflow", "1/r1/artifacts/model/")
        );
        let logged =
            logged_location(&rules, "mlflow-artifacts:/1/models/m-1/artifacts", "m-1").unwrap();
        assert_eq!(logged.prefix, "1/models/m-1/artifacts/");
        assert!(classic_location(&rules, "s3://mlflow/1/other/artifacts", "r1").is_err());
        assert!(has_classic_model(
            &map(&[("model_uploaded", "1")]),
            "model_uploaded"
        ));
    }
}
