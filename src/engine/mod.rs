//! One ranking-and-pruning pass over an experiment: read MLflow, rank, delete the files of the
//! runs that fell out of the top N, then mark them. The worker, the CLI and tests all call
//! [`Engine::run_pass`] (or [`Engine::handle`] for a single event).
//!
//! Every step is idempotent: files already gone count as deleted, marks are only written after
//! all files of a run are gone, and marked runs are no longer candidates. A pass interrupted at
//! any point is completed by the next one.
//!
//! # Layout
//! - `mod.rs`: [`Engine::run_pass`]: read MLflow, rank, resolve every location, confirm, prune.
//! - `confirm.rs`, `guard.rs`: the last look before files go: the planned runs read again and
//!   the registry versions pointing at them looked up (I/O), and what still stands (pure).
//! - `prune.rs`: the deletion pipeline: list folders, delete keys in batches, mark runs.
//! - `walk.rs`, `batch.rs`: its pure parts: which keys each listing takes, how keys of several
//!   runs are packed into batches and when a run's files are all gone.
//! - `inventory.rs`: MLflow's answers turned into ranking facts and stored models.
//! - `retry.rs`, `report.rs`, `error.rs`: in-process retries, the pass report, [`PruneError`].

mod batch;
mod confirm;
mod error;
mod guard;
pub mod inventory;
mod prune;
mod report;
mod retry;
mod walk;

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};

use tracing::{info, instrument};

pub use error::PruneError;
pub use report::{PassReport, PlannedDeletion, PrunedRun};
pub use retry::RetryPolicy;

use crate::domain::event::Event;
use crate::domain::location::{LocationRules, Owner};
use crate::domain::policy::{self, PolicyDefaults, PolicyOverrides};
use crate::domain::ranking;
use crate::mlflow::{MlflowClient, MlflowError, RunFields};
use crate::settings::Settings;
use crate::store::ObjectStore;
use confirm::Depth;
use guard::Share;
use inventory::{InventoryOptions, StoredModel};

/// What kind of pass to run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PassKind {
    /// Triggered by finished runs; bounded by the safety valve.
    RunFinished,
    /// An explicit sweep of the experiment.
    Sweep {
        delete_experiment: bool,
        force: bool,
    },
}

/// One pass over one experiment, possibly covering several coalesced events.
#[derive(Debug, Clone)]
pub struct PassRequest {
    pub experiment_id: String,
    pub policy: PolicyOverrides,
    /// Runs named by the covered `run.finished` events; each must belong to the experiment.
    pub run_ids: Vec<String>,
    pub kind: PassKind,
    pub dry_run: bool,
}

impl From<&Event> for PassRequest {
    fn from(event: &Event) -> Self {
        match event {
            Event::RunFinished(e) => PassRequest {
                experiment_id: e.experiment_id.clone(),
                policy: e.policy.clone(),
                run_ids: vec![e.run_id.clone()],
                kind: PassKind::RunFinished,
                dry_run: false,
            },
            Event::ExperimentPrune(e) => PassRequest {
                experiment_id: e.experiment_id.clone(),
                policy: e.policy.clone(),
                run_ids: vec![],
                kind: PassKind::Sweep {
                    delete_experiment: e.delete_experiment,
                    force: e.force,
                },
                dry_run: e.dry_run,
            },
        }
    }
}

/// The pruning engine: clients plus the rules they are used under.
pub struct Engine {
    mlflow: MlflowClient,
    store: ObjectStore,
    rules: LocationRules,
    defaults: PolicyDefaults,
    model_uploaded_param: String,
    log_deleted_param: bool,
    parallel_deletions: usize,
    retry: RetryPolicy,
}

impl Engine {
    /// Builds the engine and its clients from settings.
    pub fn new(settings: &Settings) -> Result<Self, MlflowError> {
        Ok(Engine {
            mlflow: MlflowClient::new(&settings.mlflow)?,
            store: ObjectStore::new(&settings.store),
            rules: LocationRules {
                allowed_buckets: settings.store.allowed_buckets.clone(),
                artifacts_destination: settings.store.artifacts_destination.clone(),
            },
            defaults: settings.policy.clone(),
            model_uploaded_param: settings.mlflow.model_uploaded_param.clone(),
            log_deleted_param: settings.mlflow.log_deleted_param,
            parallel_deletions: settings.concurrency.parallel_deletions,
            retry: RetryPolicy::from(&settings.retry),
        })
    }

    /// The object store client, for measuring planned deletions.
    pub fn store(&self) -> &ObjectStore {
        &self.store
    }

    /// Handles one event on its own (no coalescing).
    pub async fn handle(&self, event: &Event) -> Result<PassReport, PruneError> {
        self.run_pass(&PassRequest::from(event)).await
    }

    /// Ranks the experiment and prunes what fell out of the top N. Runs named in the request
    /// that do not belong to the experiment are reported in `foreign_run_ids`; if every named
    /// run is foreign the pass fails without deleting anything.
    #[instrument(skip_all, fields(experiment_id = %req.experiment_id, dry_run = req.dry_run), err)]
    pub async fn run_pass(&self, req: &PassRequest) -> Result<PassReport, PruneError> {
        let experiment_id = req.experiment_id.as_str();
        let mlflow_err = |source: MlflowError| {
            if source.is_not_found() {
                PruneError::UnknownExperiment {
                    experiment_id: experiment_id.to_owned(),
                }
            } else {
                PruneError::Mlflow {
                    experiment_id: experiment_id.to_owned(),
                    source,
                }
            }
        };
        let experiment = self
            .retry
            .run("mlflow", "experiments/get", || {
                self.mlflow.get_experiment(experiment_id)
            })
            .await
            .map_err(mlflow_err)?;
        let policy =
            policy::resolve(&req.policy, &experiment.tags, &self.defaults).map_err(|source| {
                PruneError::Policy {
                    experiment_id: experiment_id.to_owned(),
                    source,
                }
            })?;

        let mlflow_err = |source| PruneError::Mlflow {
            experiment_id: experiment_id.to_owned(),
            source,
        };
        let options = InventoryOptions {
            metric: &policy.metric,
            model_uploaded_param: &self.model_uploaded_param,
            group_by: policy.group_by.as_ref(),
        };
        let params = options.params();
        let tags = options.tags();
        let fields = RunFields {
            metrics: &[options.metric],
            params: &params,
            tags: &tags,
        };
        let runs = self
            .retry
            .run("mlflow", "runs/search", || {
                self.mlflow.search_runs(experiment_id, &fields)
            })
            .await
            .map_err(mlflow_err)?;
        let known: HashSet<&str> = runs.iter().map(|r| r.run_id.as_str()).collect();
        let foreign_run_ids: Vec<String> = req
            .run_ids
            .iter()
            .filter(|id| !known.contains(id.as_str()))
            .cloned()
            .collect();
        if !req.run_ids.is_empty() && foreign_run_ids.len() == req.run_ids.len() {
            return Err(PruneError::RunNotInExperiment {
                experiment_id: experiment_id.to_owned(),
                run_ids: foreign_run_ids,
            });
        }
        let logged_models = self
            .retry
            .run("mlflow", "logged-models/search", || {
                self.mlflow.search_logged_models(experiment_id)
            })
            .await
            .map_err(mlflow_err)?;

        let mut inventory = inventory::build(runs, &logged_models, &options);
        let mut ranking = ranking::rank(std::mem::take(&mut inventory.facts), &policy, now_ms())
            .map_err(|source| PruneError::Ranking {
                experiment_id: experiment_id.to_owned(),
                source,
            })?;
        if !ranking.ungrouped.is_empty() {
            tracing::warn!(
                run_ids = ?ranking.ungrouped,
                group_by = %policy.group_by.as_ref().map(ToString::to_string).unwrap_or_default(),
                "runs without the group_by key were ranked in a group of their own"
            );
        }
        if !ranking.repeated.is_empty() {
            tracing::warn!(run_ids = ?ranking.repeated, "runs listed twice were ranked once");
        }
        for run in ranking.missing_metric() {
            tracing::warn!(
                run_id = %run.run.run_id,
                metric = %policy.metric,
                "run has a model but no value for the metric: kept"
            );
        }

        let mut planned = self.plan_deletions(experiment_id, &ranking, &inventory)?;
        // A first look before the safety valve counts: registered runs are not deletions. A dry
        // run's look is as thorough as the one a real pass makes before each run's files go.
        let depth = if req.dry_run {
            Depth::Full
        } else {
            Depth::RunIds
        };
        let all: Vec<usize> = (0..planned.len()).collect();
        let verdicts = self
            .confirm(
                experiment_id,
                &planned,
                &all,
                &HashMap::new(),
                &inventory.sources,
                &options,
                depth,
            )
            .await?;
        // Verdicts come in plan order: removing from the end keeps the other indices valid.
        for (at, decision) in verdicts.into_iter().rev() {
            if let Some(decision) = decision {
                ranking.withdraw(&planned[at].run_id, decision);
                planned.remove(at);
            }
        }
        let forced = matches!(req.kind, PassKind::Sweep { force: true, .. });
        let max = self.defaults.max_deletions_per_pass;
        if !forced && planned.len() > max as usize {
            return Err(PruneError::SafetyValve {
                experiment_id: experiment_id.to_owned(),
                count: planned.len(),
                max,
            });
        }

        let mut report = PassReport {
            experiment_id: experiment_id.to_owned(),
            policy: policy.clone(),
            ranking,
            planned,
            pruned: Vec::new(),
            foreign_run_ids,
            experiment_deleted: false,
            dry_run: req.dry_run,
        };
        if req.dry_run {
            return Ok(report);
        }

        let pruned = self
            .prune(experiment_id, &report.planned, &inventory.sources, &options)
            .await?;
        for (run_id, decision) in pruned.withdrawn {
            report.ranking.withdraw(&run_id, decision);
            report.planned.retain(|p| p.run_id != run_id);
        }
        report.pruned = pruned.runs;

        if let PassKind::Sweep {
            delete_experiment: true,
            ..
        } = req.kind
        {
            // A redelivered retirement finds the experiment already deleted: nothing to redo.
            if experiment.lifecycle_stage != "deleted" {
                self.delete_experiment(&report).await?;
            }
            report.experiment_deleted = true;
        }
        info!(
            ranked = report.ranking.ranked,
            pruned = report.pruned.len(),
            objects = report.objects_deleted(),
            bytes = report.bytes_deleted(),
            "pass finished"
        );
        Ok(report)
    }

    /// Resolves every location to delete before anything is deleted, so a refused location
    /// leaves the whole experiment untouched. A logged model linked to several runs is planned
    /// only when all of them are pruned, by the last of them in plan order.
    fn plan_deletions(
        &self,
        experiment_id: &str,
        ranking: &ranking::Ranking,
        inventory: &inventory::Inventory,
    ) -> Result<Vec<PlannedDeletion>, PruneError> {
        let deleting: HashMap<&str, usize> = ranking
            .to_delete()
            .enumerate()
            .map(|(at, r)| (r.run.run_id.as_str(), at))
            .collect();
        let pruned: HashSet<&str> = ranking
            .runs
            .iter()
            .filter(|r| r.run.pruned)
            .map(|r| r.run.run_id.as_str())
            .collect();
        let no_links = BTreeSet::new();
        ranking
            .to_delete()
            .map(|r| {
                let run_id = &r.run.run_id;
                let mut shared_with = BTreeMap::new();
                let mut locations = Vec::new();
                for model in inventory.models.get(run_id).into_iter().flatten() {
                    let (uri, sub, owner, model_id) = match model {
                        StoredModel::Logged {
                            model_id,
                            artifact_uri,
                        } => {
                            let linked = inventory.links.get(model_id).unwrap_or(&no_links);
                            match guard::share(run_id, linked, &deleting, &pruned) {
                                Share::Carry { with } if !with.is_empty() => {
                                    shared_with.insert(model_id.clone(), with);
                                }
                                Share::Carry { .. } => {}
                                Share::CarriedBy(_) => continue,
                                Share::KeptFor(keeper) => {
                                    tracing::info!(%run_id, %model_id, %keeper, "shared logged model kept for another run");
                                    continue;
                                }
                            }
                            (
                                artifact_uri,
                                "",
                                Owner::LoggedModel(model_id),
                                Some(model_id.clone()),
                            )
                        }
                        StoredModel::Classic { artifact_uri } => {
                            (artifact_uri, "model", Owner::Run(run_id), None)
                        }
                    };
                    let location = self.rules.resolve(uri, sub, owner).map_err(|source| {
                        PruneError::Location {
                            experiment_id: experiment_id.to_owned(),
                            run_id: run_id.clone(),
                            source,
                        }
                    })?;
                    locations.push((location, model_id));
                }
                Ok(PlannedDeletion {
                    run_id: run_id.clone(),
                    run_name: r.run.run_name.clone(),
                    reason: r.reason.clone(),
                    locations,
                    shared_with,
                })
            })
            .collect()
    }

    /// Soft-deletes the experiment once no run holds an unprotected model or is unfinished.
    async fn delete_experiment(&self, report: &PassReport) -> Result<(), PruneError> {
        let remaining: Vec<String> = report
            .ranking
            .runs
            .iter()
            .filter_map(|r| {
                let blocking = match &r.decision {
                    ranking::Decision::Keep | ranking::Decision::Grace { .. } => true,
                    ranking::Decision::Skipped { reason } => matches!(
                        reason,
                        ranking::SkipReason::MissingMetric
                            | ranking::SkipReason::NotFinished { .. }
                    ),
                    ranking::Decision::Protected { .. } | ranking::Decision::Delete => false,
                };
                let unfinished = matches!(
                    &r.decision,
                    ranking::Decision::Skipped { reason: ranking::SkipReason::NotFinished { status } }
                        if matches!(status.as_str(), "RUNNING" | "SCHEDULED")
                );
                let stored = r.run.has_model || unfinished;
                (blocking && stored).then(|| format!("{} ({})", r.run.run_id, r.reason))
            })
            .collect();
        if !remaining.is_empty() {
            return Err(PruneError::ExperimentNotEmpty {
                experiment_id: report.experiment_id.clone(),
                remaining,
            });
        }
        match self
            .retry
            .run("mlflow", "experiments/delete", || {
                self.mlflow.delete_experiment(&report.experiment_id)
            })
            .await
        {
            // Another worker retired it between our read and this call.
            Err(e) if e.is_not_found() => {}
            other => other.map_err(|source| PruneError::Mlflow {
                experiment_id: report.experiment_id.clone(),
                source,
            })?,
        }
        info!("experiment deleted");
        Ok(())
    }
}

/// The time a pass decides `grace` and `older_than` by, in milliseconds since the epoch (the
/// unit of MLflow's end times).
pub fn now_ms() -> i64 {
    let since_epoch = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    i64::try_from(since_epoch.as_millis()).unwrap_or(i64::MAX)
}
