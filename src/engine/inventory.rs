//! Turns what MLflow says about an experiment (runs, logged models, registry versions) into the
//! facts ranking needs and the models each run still stores. Pure: no I/O.

use std::collections::{BTreeMap, HashMap};

use crate::domain::ranking::{Protection, RunFacts};
use crate::mlflow::{LoggedModel, ModelVersion, Run};

/// Tag written on runs and logged models once their files are gone.
pub const TAG_DELETED: &str = "model_pruner.deleted";
/// RFC 3339 time of the deletion.
pub const TAG_DELETED_AT: &str = "model_pruner.deleted_at";
/// Why the model was deleted (its rank and the policy).
pub const TAG_REASON: &str = "model_pruner.reason";
/// Run tag that protects a run's models.
pub const TAG_KEEP: &str = "model_pruner.keep";
/// Param EmbeddingStudio's trainer sets on pruned runs, honoured and written for compatibility.
pub const PARAM_DELETED: &str = "model_deleted";

/// One stored model of a run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StoredModel {
    /// An MLflow 3 logged model with its own artifact folder.
    Logged {
        model_id: String,
        artifact_uri: String,
    },
    /// A classic model under the run's `artifacts/model/` folder.
    Classic { artifact_uri: String },
}

/// Everything known about the experiment's runs.
#[derive(Debug, Default)]
pub struct Inventory {
    pub facts: Vec<RunFacts>,
    /// Models still stored, per run id.
    pub models: HashMap<String, Vec<StoredModel>>,
}

/// Options that shape how runs are read.
pub struct InventoryOptions<'a> {
    pub metric: &'a str,
    pub model_uploaded_param: &'a str,
}

/// The run tags the inventory reads.
pub const RUN_TAGS: [&str; 2] = [TAG_DELETED, TAG_KEEP];

impl InventoryOptions<'_> {
    /// The run params the inventory reads.
    pub fn params(&self) -> [&str; 2] {
        [self.model_uploaded_param, PARAM_DELETED]
    }
}

fn is_true(value: Option<&String>) -> bool {
    value.is_some_and(|v| matches!(v.trim(), "1" | "true" | "True" | "TRUE"))
}

/// Builds the inventory of `runs`, linking logged models by `outputs.model_outputs` and by
/// `source_run_id`, and protecting runs whose models back a registry version.
pub fn build(
    runs: Vec<Run>,
    logged_models: &[LoggedModel],
    versions: &[ModelVersion],
    options: &InventoryOptions<'_>,
) -> Inventory {
    let models_by_id: HashMap<&str, &LoggedModel> = logged_models
        .iter()
        .map(|m| (m.model_id.as_str(), m))
        .collect();
    let mut models_by_run: HashMap<&str, BTreeMap<&str, &LoggedModel>> = HashMap::new();
    for m in logged_models {
        if let Some(run_id) = m.source_run_id.as_deref() {
            models_by_run
                .entry(run_id)
                .or_default()
                .insert(&m.model_id, m);
        }
    }
    for run in &runs {
        for id in &run.model_output_ids {
            if let Some(m) = models_by_id.get(id.as_str()) {
                models_by_run
                    .entry(&run.run_id)
                    .or_default()
                    .insert(&m.model_id, m);
            }
        }
    }

    let mut inventory = Inventory::default();
    for run in &runs {
        let logged = models_by_run.get(run.run_id.as_str());
        let mut models: Vec<StoredModel> = logged
            .into_iter()
            .flat_map(|m| m.values())
            .filter(|m| !is_true(m.tags.get(TAG_DELETED)))
            .map(|m| StoredModel::Logged {
                model_id: m.model_id.clone(),
                artifact_uri: m.artifact_uri.clone(),
            })
            .collect();
        if is_true(run.params.get(options.model_uploaded_param)) {
            models.push(StoredModel::Classic {
                artifact_uri: run.artifact_uri.clone(),
            });
        }
        let protection = registered_version(run, logged, versions)
            .map(|v| Protection::Registered {
                name: v.name.clone(),
                version: v.version.clone(),
            })
            .or_else(|| is_true(run.tags.get(TAG_KEEP)).then_some(Protection::KeepTag));
        inventory.facts.push(RunFacts {
            run_id: run.run_id.clone(),
            run_name: run.run_name.clone(),
            status: run.status.clone(),
            active: run.lifecycle_stage == "active",
            end_time: run.end_time,
            metric: run.metrics.get(options.metric).copied(),
            has_model: !models.is_empty(),
            pruned: is_true(run.tags.get(TAG_DELETED)) || is_true(run.params.get(PARAM_DELETED)),
            protection,
        });
        if !models.is_empty() {
            inventory.models.insert(run.run_id.clone(), models);
        }
    }
    inventory
}

/// The first registry version whose source is this run or one of its logged models.
fn registered_version<'v>(
    run: &Run,
    logged: Option<&BTreeMap<&str, &LoggedModel>>,
    versions: &'v [ModelVersion],
) -> Option<&'v ModelVersion> {
    let run_source = format!("runs:/{}/", run.run_id);
    let owns_model = |id: &str| logged.is_some_and(|m| m.contains_key(id));
    let under = |source: &str, root: &str| {
        !root.is_empty()
            && (source == root
                || source
                    .strip_prefix(root)
                    .is_some_and(|rest| rest.starts_with('/') || root.ends_with('/')))
    };
    versions.iter().find(|v| {
        v.run_id.as_deref() == Some(run.run_id.as_str())
            || v.source.starts_with(&run_source)
            || v.source == run_source.trim_end_matches('/')
            || v.model_id.as_deref().is_some_and(owns_model)
            || v.source
                .strip_prefix("models:/")
                .is_some_and(|id| owns_model(id.trim_end_matches('/')))
            || under(&v.source, &run.artifact_uri)
            || logged.is_some_and(|m| m.values().any(|m| under(&v.source, &m.artifact_uri)))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(id: &str) -> Run {
        Run {
            run_id: id.into(),
            run_name: format!("name-{id}"),
            experiment_id: "1".into(),
            status: "FINISHED".into(),
            lifecycle_stage: "active".into(),
            start_time: Some(1),
            end_time: Some(2),
            artifact_uri: format!("s3://mlflow/1/{id}/artifacts"),
            metrics: BTreeMap::from([("acc".to_string(), 0.5)]),
            params: BTreeMap::new(),
            tags: BTreeMap::new(),
            model_output_ids: vec![],
        }
    }

    fn logged(id: &str, run: Option<&str>) -> LoggedModel {
        LoggedModel {
            model_id: id.into(),
            experiment_id: "1".into(),
            name: "model".into(),
            source_run_id: run.map(str::to_owned),
            artifact_uri: format!("s3://mlflow/1/models/{id}/artifacts"),
            status: "LOGGED_MODEL_READY".into(),
            tags: BTreeMap::new(),
        }
    }

    fn version(source: &str, run_id: Option<&str>, model_id: Option<&str>) -> ModelVersion {
        ModelVersion {
            name: "reg".into(),
            version: "1".into(),
            source: source.into(),
            run_id: run_id.map(str::to_owned),
            model_id: model_id.map(str::to_owned),
        }
    }

    const OPTS: InventoryOptions<'static> = InventoryOptions {
        metric: "acc",
        model_uploaded_param: "model_uploaded",
    };

    fn classic(id: &str) -> Run {
        let mut r = run(id);
        r.params.insert("model_uploaded".into(), "1".into());
        r
    }

    #[test]
    fn classic_marker_param_gives_a_classic_model() {
        let inv = build(vec![classic("a"), run("b")], &[], &[], &OPTS);
        assert_eq!(
            inv.models["a"],
            [StoredModel::Classic {
                artifact_uri: "s3://mlflow/1/a/artifacts".into()
            }]
        );
        assert!(inv.facts[0].has_model);
        assert!(!inv.facts[1].has_model);
        assert_eq!(inv.facts[0].metric, Some(0.5));
    }

    #[test]
    fn logged_models_link_by_outputs_and_by_source_run() {
        let mut a = run("a");
        a.model_output_ids = vec!["m-1".into()];
        let models = [
            logged("m-1", None),
            logged("m-2", Some("a")),
            logged("m-3", Some("z")),
        ];
        let inv = build(vec![a], &models, &[], &OPTS);
        let ids: Vec<_> = inv.models["a"]
            .iter()
            .map(|m| match m {
                StoredModel::Logged { model_id, .. } => model_id.as_str(),
                StoredModel::Classic { .. } => "classic",
            })
            .collect();
        assert_eq!(ids, ["m-1", "m-2"]);
    }

    #[test]
    fn logged_models_already_marked_deleted_are_not_stored() {
        let mut m = logged("m-1", Some("a"));
        m.tags.insert(TAG_DELETED.into(), "true".into());
        let inv = build(vec![run("a")], &[m], &[], &OPTS);
        assert!(!inv.facts[0].has_model);
    }

    #[test]
    fn pruned_by_tag_or_compat_param() {
        let mut a = classic("a");
        a.tags.insert(TAG_DELETED.into(), "true".into());
        let mut b = classic("b");
        b.params.insert(PARAM_DELETED.into(), "1".into());
        let inv = build(vec![a, b, classic("c")], &[], &[], &OPTS);
        let pruned: Vec<_> = inv.facts.iter().map(|f| f.pruned).collect();
        assert_eq!(pruned, [true, true, false]);
    }

    #[test]
    fn keep_tag_protects() {
        let mut a = classic("a");
        a.tags.insert(TAG_KEEP.into(), "true".into());
        let inv = build(vec![a], &[], &[], &OPTS);
        assert_eq!(inv.facts[0].protection, Some(Protection::KeepTag));
    }

    #[test]
    fn registry_versions_protect_by_every_kind_of_source() {
        let cases = [
            version("runs:/a/model", None, None),
            version("runs:/a", None, None),
            version("s3://elsewhere/x", Some("a"), None),
            version("models:/m-1", None, None),
            version("s3://x/y", None, Some("m-1")),
            version("s3://mlflow/1/a/artifacts/model", None, None),
            version("s3://mlflow/1/models/m-1/artifacts", None, None),
            version("mlflow-artifacts:/1/models/m-1/artifacts/", None, None),
        ];
        for v in cases {
            let mut a = classic("a");
            a.model_output_ids = vec!["m-1".into()];
            let mut models = vec![logged("m-1", Some("a"))];
            if v.source.starts_with("mlflow-artifacts") {
                models[0].artifact_uri = "mlflow-artifacts:/1/models/m-1/artifacts".into();
            }
            let inv = build(vec![a], &models, std::slice::from_ref(&v), &OPTS);
            assert!(
                matches!(inv.facts[0].protection, Some(Protection::Registered { .. })),
                "{v:?}"
            );
        }
    }

    #[test]
    fn registry_versions_of_other_runs_do_not_protect() {
        let cases = [
            version("runs:/ab/model", Some("ab"), None),
            version("models:/m-10", None, Some("m-10")),
            version("s3://mlflow/1/ab/artifacts/model", None, None),
            version("s3://mlflow/1/a/artifactsX", None, None),
        ];
        for v in cases {
            let mut a = classic("a");
            a.model_output_ids = vec!["m-1".into()];
            let inv = build(
                vec![a],
                &[logged("m-1", Some("a"))],
                std::slice::from_ref(&v),
                &OPTS,
            );
            assert_eq!(inv.facts[0].protection, None, "{v:?}");
        }
    }

    #[test]
    fn lifecycle_and_status_are_carried_over() {
        let mut a = classic("a");
        a.lifecycle_stage = "deleted".into();
        a.status = "RUNNING".into();
        let inv = build(vec![a], &[], &[], &OPTS);
        assert!(!inv.facts[0].active);
        assert_eq!(inv.facts[0].status, "RUNNING");
    }
}
