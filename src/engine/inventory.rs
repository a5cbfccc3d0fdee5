//! Turns what MLflow says about an experiment (runs, logged models, registry versions) into the
//! facts ranking needs and the models each run still stores. Pure: no I/O.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};

use crate::domain::marks::{self, PARAM_DELETED, TAG_DELETED, TAG_DELETING, TAG_KEEP};
use crate::domain::policy::GroupKey;
use crate::domain::ranking::{Protection, RunFacts};
use crate::domain::run::LifecycleStage;
use crate::mlflow::{LoggedModel, Run};

/// One stored model of a run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StoredModel {
    /// An MLflow 3 logged model with its own artifact folder.
    Logged {
        /// MLflow's id of the logged model (`m-...`).
        model_id: String,
        /// The logged model's own artifact root, e.g. `s3://mlflow/12/models/<model_id>/artifacts`.
        artifact_uri: String,
    },
    /// A classic model under the run's `artifacts/model/` folder.
    Classic {
        /// The run's artifact root (`info.artifact_uri`); the model is its `model/` folder.
        artifact_uri: String,
    },
}

/// Everything known about the experiment's runs.
#[derive(Debug, Default)]
pub struct Inventory {
    /// What ranking needs of each run (status, metric, end time, marks, group), one per run read.
    pub facts: Vec<RunFacts>,
    /// Models still stored, per run id.
    pub models: HashMap<String, Vec<StoredModel>>,
    /// Every run each logged model is linked to: its source run and the runs that output it.
    pub links: HashMap<String, BTreeSet<String>>,
    /// What a registry version may point at, per run with a stored model.
    pub sources: HashMap<String, ModelSources>,
    /// Runs that already carry the param `model_deleted` (any value): it is immutable.
    pub deleted_param_set: HashSet<String>,
}

/// Where a run's models live, for matching registry versions against: the run's artifact root
/// and every logged model linked to the run (stored or already pruned).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ModelSources {
    /// The run's artifact root: a registry version whose source overlaps it uses the run.
    pub artifact_uri: String,
    /// `(model_id, artifact_uri)`.
    pub logged_models: Vec<(String, String)>,
}

/// Options that shape how runs are read.
pub struct InventoryOptions<'a> {
    /// The policy's ranking metric: the only metric read of each run.
    pub metric: &'a str,
    /// The param marking a run's classic model as uploaded (`mlflow.model_uploaded_param`).
    pub model_uploaded_param: &'a str,
    /// The param or tag runs are grouped by, read as [`RunFacts::group`].
    pub group_by: Option<&'a GroupKey>,
}

impl InventoryOptions<'_> {
    /// The run params the inventory reads.
    pub fn params(&self) -> Vec<&str> {
        let mut params = vec![self.model_uploaded_param, PARAM_DELETED];
        if let Some(GroupKey::Param(name)) = self.group_by {
            params.push(name);
        }
        params
    }

    /// The run tags the inventory reads.
    pub fn tags(&self) -> Vec<&str> {
        let mut tags = vec![TAG_DELETED, TAG_DELETING, TAG_KEEP];
        if let Some(GroupKey::Tag(name)) = self.group_by {
            tags.push(name);
        }
        tags
    }

    /// The run's value of the grouping key.
    pub fn group(&self, run: &Run) -> Option<String> {
        match self.group_by? {
            GroupKey::Param(name) => run.params.get(name).cloned(),
            GroupKey::Tag(name) => run.tags.get(name).cloned(),
        }
    }
}

/// The run is marked pruned (tag `model_pruner.deleted` or param `model_deleted`).
pub fn is_pruned(run: &Run) -> bool {
    marks::is_marked(&run.tags, &run.params)
}

/// Builds the inventory of `runs`, linking logged models by `outputs.model_outputs` and by
/// `source_run_id`. Registry versions are not read here: they are looked up for the runs about
/// to be deleted, just before their files go (see `last_look`).
pub fn build(
    runs: Vec<Run>,
    logged_models: &[LoggedModel],
    options: &InventoryOptions<'_>,
) -> Inventory {
    let models_by_id: HashMap<&str, &LoggedModel> = logged_models
        .iter()
        .map(|m| (m.model_id.as_str(), m))
        .collect();
    let mut models_by_run: HashMap<&str, BTreeMap<&str, &LoggedModel>> = HashMap::new();
    let mut links: HashMap<String, BTreeSet<String>> = HashMap::new();
    for m in logged_models {
        if let Some(run_id) = m.source_run_id.as_deref() {
            models_by_run
                .entry(run_id)
                .or_default()
                .insert(&m.model_id, m);
            links
                .entry(m.model_id.clone())
                .or_default()
                .insert(run_id.to_owned());
        }
    }
    for run in &runs {
        for id in &run.model_output_ids {
            if let Some(m) = models_by_id.get(id.as_str()) {
                models_by_run
                    .entry(&run.run_id)
                    .or_default()
                    .insert(&m.model_id, m);
                links
                    .entry(m.model_id.clone())
                    .or_default()
                    .insert(run.run_id.clone());
            }
        }
    }

    let mut inventory = Inventory {
        links,
        ..Inventory::default()
    };
    for run in &runs {
        if !marks::writes_deleted_param(&run.params) {
            inventory.deleted_param_set.insert(run.run_id.clone());
        }
        let logged = models_by_run.get(run.run_id.as_str());
        let mut models: Vec<StoredModel> = logged
            .into_iter()
            .flat_map(|m| m.values())
            .filter(|m| !marks::is_model_marked(&m.tags))
            .map(|m| StoredModel::Logged {
                model_id: m.model_id.clone(),
                artifact_uri: m.artifact_uri.clone(),
            })
            .collect();
        if marks::has_classic_model(&run.params, options.model_uploaded_param) {
            models.push(StoredModel::Classic {
                artifact_uri: run.artifact_uri.clone(),
            });
        }
        inventory.facts.push(RunFacts {
            run_id: run.run_id.clone(),
            run_name: run.run_name.clone(),
            status: run.status.clone(),
            active: run.lifecycle_stage == LifecycleStage::Active,
            end_time: run.end_time,
            metric: run.metrics.get(options.metric).copied(),
            has_model: !models.is_empty(),
            pruned: is_pruned(run),
            deletion_started: marks::deletion_started(&run.tags, &run.params),
            protection: marks::is_kept(&run.tags).then_some(Protection::KeepTag),
            group: options.group(run),
        });
        if !models.is_empty() {
            inventory.models.insert(run.run_id.clone(), models);
            let logged_models = logged
                .into_iter()
                .flat_map(|m| m.values())
                .map(|m| (m.model_id.clone(), m.artifact_uri.clone()))
                .collect();
            let sources = ModelSources {
                artifact_uri: run.artifact_uri.clone(),
                logged_models,
            };
            inventory.sources.insert(run.run_id.clone(), sources);
        }
    }
    inventory
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::run::Fields;
    use crate::domain::run::RunStatus;
    use crate::domain::time::EpochMs;

    fn run(id: &str) -> Run {
        Run {
            run_id: id.into(),
            run_name: format!("name-{id}"),
            experiment_id: "1".into(),
            status: RunStatus::Finished,
            lifecycle_stage: LifecycleStage::Active,
            start_time: Some(EpochMs::from_millis(1)),
            end_time: Some(EpochMs::from_millis(2)),
            artifact_uri: format!("s3://mlflow/1/{id}/artifacts"),
            metrics: [("acc".to_string(), 0.5)].into_iter().collect(),
            params: Fields::default(),
            tags: Fields::default(),
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

    const OPTS: InventoryOptions<'static> = InventoryOptions {
        metric: "acc",
        model_uploaded_param: "model_uploaded",
        group_by: None,
    };

    fn classic(id: &str) -> Run {
        let mut r = run(id);
        r.params.insert("model_uploaded".into(), "1".into());
        r
    }

    #[test]
    fn classic_marker_param_gives_a_classic_model() {
        let inv = build(vec![classic("a"), run("b")], &[], &OPTS);
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
        let inv = build(vec![a], &models, &OPTS);
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
        let inv = build(vec![run("a")], &[m], &OPTS);
        assert!(!inv.facts[0].has_model);
    }

    #[test]
    fn pruned_by_tag_or_compat_param() {
        let mut a = classic("a");
        a.tags.insert(TAG_DELETED.into(), "true".into());
        let mut b = classic("b");
        b.params.insert(PARAM_DELETED.into(), "1".into());
        let inv = build(vec![a, b, classic("c")], &[], &OPTS);
        let pruned: Vec<_> = inv.facts.iter().map(|f| f.pruned).collect();
        assert_eq!(pruned, [true, true, false]);
    }

    #[test]
    fn keep_tag_protects() {
        let mut a = classic("a");
        a.tags.insert(TAG_KEEP.into(), "true".into());
        let inv = build(vec![a], &[], &OPTS);
        assert_eq!(inv.facts[0].protection, Some(Protection::KeepTag));
    }

    #[test]
    fn links_name_every_run_of_a_shared_logged_model() {
        let mut a = run("a");
        a.model_output_ids = vec!["m-1".into()];
        let mut b = run("b");
        b.model_output_ids = vec!["m-1".into()];
        let inv = build(vec![a, b], &[logged("m-1", Some("z"))], &OPTS);
        let linked: Vec<_> = inv.links["m-1"].iter().map(String::as_str).collect();
        assert_eq!(linked, ["a", "b", "z"]);
        assert_eq!(
            inv.sources["a"],
            ModelSources {
                artifact_uri: "s3://mlflow/1/a/artifacts".into(),
                logged_models: vec![("m-1".into(), "s3://mlflow/1/models/m-1/artifacts".into())],
            }
        );
    }

    #[test]
    fn lifecycle_and_status_are_carried_over() {
        let mut a = classic("a");
        a.lifecycle_stage = LifecycleStage::Deleted;
        a.status = RunStatus::Running;
        let inv = build(vec![a], &[], &OPTS);
        assert!(!inv.facts[0].active);
        assert_eq!(inv.facts[0].status, RunStatus::Running);
    }
}
