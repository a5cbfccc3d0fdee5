//! What a pass decided and did, for logs, metrics, the CLI and tests.

use std::collections::BTreeMap;

use serde::Serialize;

use crate::domain::location::ModelLocation;
use crate::domain::policy::{PolicySource, RetentionPolicy};
use crate::domain::ranking::{Ranking, RunFacts};
use crate::domain::size::Bytes;
use crate::domain::time::EpochMs;

/// A run whose models are to be deleted, with every folder resolved.
#[derive(Debug, Clone, Serialize)]
pub struct PlannedDeletion {
    /// MLflow id of the run whose model files are to go.
    pub run_id: String,
    /// The run's name in MLflow, for people reading the plan; may be empty.
    pub run_name: String,
    /// Why the run goes, naming the rule (e.g. `rank 3 of 6 by accuracy max, keep_top 2`).
    pub reason: String,
    /// What the run was ranked on, compared with a fresh read at the last look.
    pub ranked_on: RankedOn,
    /// The completion of a deletion an earlier pass started (rule `resume`): the run was not
    /// ranked, its folders may be partly or wholly empty already.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub resume: bool,
    /// The mark writes the param `model_deleted = 1` (the run does not carry it yet).
    #[serde(skip)]
    pub writes_deleted_param: bool,
    /// Folders to empty, each with the logged model id it belongs to (none for classic models).
    #[serde(serialize_with = "locations")]
    pub locations: Vec<(ModelLocation, Option<String>)>,
    /// Logged models of `locations` also linked to other runs, with those runs (each pruned in
    /// this pass or before: a model another run keeps is not planned at all).
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub shared_with: BTreeMap<String, Vec<String>>,
}

/// Writes `locations` as `[{"location": "s3://b/p/", "logged_model_id": "m-1"}]` (the id only
/// for a logged model).
fn locations<S: serde::Serializer>(
    locations: &[(ModelLocation, Option<String>)],
    serializer: S,
) -> Result<S::Ok, S::Error> {
    #[derive(Serialize)]
    struct Folder<'a> {
        location: String,
        #[serde(skip_serializing_if = "Option::is_none")]
        logged_model_id: Option<&'a str>,
    }
    serializer.collect_seq(locations.iter().map(|(l, id)| Folder {
        location: l.to_string(),
        logged_model_id: id.as_deref(),
    }))
}

/// The inputs of the ranking that can change while a pass runs, as the pass ranked them.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct RankedOn {
    /// The run's latest value of the policy's metric; `None` when it had none.
    pub metric: Option<f64>,
    /// The run's value of the policy's `group_by` key, if the policy groups and the run has one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub group: Option<String>,
    /// When the run ended (milliseconds since the epoch in JSON); `None` when MLflow has no end
    /// time.
    pub end_time: Option<EpochMs>,
}

impl RankedOn {
    /// What `run` is ranked on.
    pub fn of(run: &RunFacts) -> Self {
        RankedOn {
            metric: run.metric,
            group: run.group.clone(),
            end_time: run.end_time,
        }
    }
}

/// A run whose files are gone but which MLflow refused to mark: reported, and completed by the
/// next pass (its `model_pruner.deleting` tag makes it a run to resume).
#[derive(Debug, Clone, Serialize)]
pub struct UnmarkedRun {
    /// MLflow id of the run whose files were deleted.
    pub run_id: String,
    /// The MLflow error that refused the mark.
    pub error: String,
}

/// A run whose models were deleted and marked.
#[derive(Debug, Clone, Serialize)]
pub struct PrunedRun {
    /// MLflow id of the run whose models were deleted.
    pub run_id: String,
    /// Objects this pass deleted from the run's model folders.
    pub objects: u64,
    /// Their total size, as the store listed them.
    pub bytes: Bytes,
}

/// The outcome of one pass.
#[derive(Debug, Clone, Serialize)]
pub struct PassReport {
    /// MLflow id of the experiment the pass ranked.
    pub experiment_id: String,
    /// The experiment's name in MLflow, for people reading the report.
    pub experiment_name: String,
    /// The retention policy the pass applied, every field resolved.
    pub policy: RetentionPolicy,
    /// The policy fields each source set (the event, the experiment's tags, the settings).
    pub policy_sources: BTreeMap<PolicySource, Vec<&'static str>>,
    /// Every run of the experiment with its decision and the rule that made it.
    pub ranking: Ranking,
    /// The runs to delete, less any the last look withdrew; with `dry_run`, what it would delete.
    pub planned: Vec<PlannedDeletion>,
    /// The runs whose models this pass deleted and marked.
    pub pruned: Vec<PrunedRun>,
    /// Runs whose files are gone but whose mark MLflow refused.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub unmarked: Vec<UnmarkedRun>,
    /// Run ids named by events that are not runs of this experiment.
    pub foreign_run_ids: Vec<String>,
    /// The sweep retired the experiment (or found it already deleted in MLflow).
    pub experiment_deleted: bool,
    /// The pass only planned: nothing was deleted or marked.
    pub dry_run: bool,
}

impl PassReport {
    /// Objects deleted over all pruned runs.
    pub fn objects_deleted(&self) -> u64 {
        self.pruned.iter().map(|p| p.objects).sum()
    }

    /// Bytes deleted over all pruned runs.
    pub fn bytes_deleted(&self) -> Bytes {
        self.pruned.iter().map(|p| p.bytes).sum()
    }
}
