//! What a pass decided and did, for logs, metrics, the CLI and tests.

use std::collections::BTreeMap;

use serde::Serialize;

use crate::domain::location::ModelLocation;
use crate::domain::policy::RetentionPolicy;
use crate::domain::ranking::Ranking;

/// A run whose models are to be deleted, with every folder resolved.
#[derive(Debug, Clone, Serialize)]
pub struct PlannedDeletion {
    pub run_id: String,
    pub run_name: String,
    pub reason: String,
    /// Folders to empty, each with the logged model id it belongs to (none for classic models).
    pub locations: Vec<(ModelLocation, Option<String>)>,
    /// Logged models of `locations` also linked to other runs, with those runs (each pruned in
    /// this pass or before: a model another run keeps is not planned at all).
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub shared_with: BTreeMap<String, Vec<String>>,
}

/// A run whose models were deleted and marked.
#[derive(Debug, Clone, Serialize)]
pub struct PrunedRun {
    pub run_id: String,
    pub objects: u64,
    pub bytes: u64,
}

/// The outcome of one pass.
#[derive(Debug, Clone, Serialize)]
pub struct PassReport {
    pub experiment_id: String,
    pub policy: RetentionPolicy,
    pub ranking: Ranking,
    pub planned: Vec<PlannedDeletion>,
    pub pruned: Vec<PrunedRun>,
    /// Run ids named by events that are not runs of this experiment.
    pub foreign_run_ids: Vec<String>,
    pub experiment_deleted: bool,
    pub dry_run: bool,
}

impl PassReport {
    pub fn objects_deleted(&self) -> u64 {
        self.pruned.iter().map(|p| p.objects).sum()
    }

    pub fn bytes_deleted(&self) -> u64 {
        self.pruned.iter().map(|p| p.bytes).sum()
    }
}
