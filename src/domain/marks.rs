//! The marking contract with MLflow, in one place: the tags and params model-pruner reads and
//! writes on runs and logged models, what counts as true, and where a run's models live. The
//! engine and the audit both read runs through it. Pure.

use std::collections::BTreeMap;

use crate::domain::location::{LocationError, LocationRules, ModelLocation, Owner};
use crate::domain::run::Fields;

/// Tag written on runs and logged models once their files are gone.
pub const TAG_DELETED: &str = "model_pruner.deleted";
/// RFC 3339 time a pass started deleting a run's files, written before the first key goes. On a
/// run without [`TAG_DELETED`] it says the deletion did not finish: the files may be partly
/// gone, and the next pass completes it.
pub const TAG_DELETING: &str = "model_pruner.deleting";
/// RFC 3339 time of the deletion.
pub const TAG_DELETED_AT: &str = "model_pruner.deleted_at";
/// Why the model was deleted: its rank, the policy and the rule.
pub const TAG_REASON: &str = "model_pruner.reason";
/// Run tag that protects a run's models.
pub const TAG_KEEP: &str = "model_pruner.keep";
/// Param EmbeddingStudio's trainer sets on pruned runs, honoured and written for compatibility.
/// MLflow params are immutable: it is written only on a run that does not carry it yet (a
/// trainer may log `model_deleted = 0` at upload); the tags mark the run either way.
pub const PARAM_DELETED: &str = "model_deleted";
/// The longest tag value model-pruner writes, in bytes: well under the limit of every MLflow
/// server (5,000 on older 2.x servers, 8,000 on newer ones), so a long reason (a long `group_by`
/// value) never makes MLflow refuse a mark.
pub const MAX_TAG_VALUE: usize = 1_000;
/// The folder of a classic model under its run's artifact root (`<run>/artifacts/model/`).
pub const CLASSIC_MODEL_FOLDER: &str = "model";

/// A flag value MLflow users write for true.
pub fn is_true(value: Option<&String>) -> bool {
    value.is_some_and(|v| matches!(v.trim(), "1" | "true" | "True" | "TRUE"))
}

/// A run marked pruned: tag [`TAG_DELETED`] or param [`PARAM_DELETED`].
pub fn is_marked(tags: &Fields<String>, params: &Fields<String>) -> bool {
    is_true(tags.get(TAG_DELETED)) || is_true(params.get(PARAM_DELETED))
}

/// When a pass started deleting the run's files, if one did and the run is not marked: the
/// deletion did not finish.
pub fn deletion_started(tags: &Fields<String>, params: &Fields<String>) -> Option<String> {
    let started = tags.get(TAG_DELETING).filter(|v| !v.trim().is_empty())?;
    (!is_marked(tags, params)).then(|| started.clone())
}

/// Whether to write [`PARAM_DELETED`] on a run whose params are `params`: only where it is not
/// set yet (params are immutable).
pub fn writes_deleted_param(params: &Fields<String>) -> bool {
    !params.contains_key(PARAM_DELETED)
}

/// `value` cut to at most [`MAX_TAG_VALUE`] bytes on a character boundary, with `…` at the end
/// when cut.
pub fn tag_value(value: &str) -> std::borrow::Cow<'_, str> {
    if value.len() <= MAX_TAG_VALUE {
        return value.into();
    }
    let mut end = MAX_TAG_VALUE - '…'.len_utf8();
    while !value.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}…", &value[..end]).into()
}

/// A logged model marked pruned (tag [`TAG_DELETED`]).
pub fn is_model_marked(tags: &BTreeMap<String, String>) -> bool {
    is_true(tags.get(TAG_DELETED))
}

/// A run its owner asked to keep (tag [`TAG_KEEP`]).
pub fn is_kept(tags: &Fields<String>) -> bool {
    is_true(tags.get(TAG_KEEP))
}

/// The run stores a classic model: its marker param (`mlflow.model_uploaded_param`) is true.
pub fn has_classic_model(params: &Fields<String>, marker_param: &str) -> bool {
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

    fn map(pairs: &[(&str, &str)]) -> Fields<String> {
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
        assert!(is_model_marked(&BTreeMap::from([(
            TAG_DELETED.to_string(),
            "true".to_string()
        )])));
        assert!(is_kept(&map(&[(TAG_KEEP, "True")])));
    }

    #[test]
    fn a_started_deletion_shows_until_the_run_is_marked() {
        let started = map(&[(TAG_DELETING, "2026-12-01T10:00:00Z")]);
        assert_eq!(
            deletion_started(&started, &map(&[])).as_deref(),
            Some("2026-12-01T10:00:00Z")
        );
        let mut done = started.clone();
        done.insert(TAG_DELETED.into(), "true".into());
        assert_eq!(deletion_started(&done, &map(&[])), None);
        assert_eq!(
            deletion_started(&started, &map(&[(PARAM_DELETED, "1")])),
            None
        );
        assert_eq!(
            deletion_started(&map(&[(TAG_DELETING, " ")]), &map(&[])),
            None
        );
    }

    #[test]
    fn the_deleted_param_is_written_only_where_it_is_not_set() {
        assert!(writes_deleted_param(&map(&[("model_uploaded", "1")])));
        assert!(!writes_deleted_param(&map(&[(PARAM_DELETED, "0")])));
        assert!(!writes_deleted_param(&map(&[(PARAM_DELETED, "1")])));
    }

    #[test]
    fn long_tag_values_are_cut_on_a_character_boundary() {
        assert_eq!(tag_value("short"), "short");
        let long = "é".repeat(MAX_TAG_VALUE);
        let cut = tag_value(&long);
        assert!(cut.len() <= MAX_TAG_VALUE, "{}", cut.len());
        assert!(cut.ends_with('…'));
        let exact = "a".repeat(MAX_TAG_VALUE);
        assert_eq!(tag_value(&exact), exact);
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
