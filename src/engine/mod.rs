//! One ranking-and-pruning pass over an experiment: read MLflow, rank, delete the files of the
//! runs that fell out of the top N, then mark them. The worker, the CLI and tests all call
//! [`Engine::run_pass`] (or [`Engine::handle`] for a single event).
//!
//! Every step is idempotent: files already gone count as deleted, marks are only written after
//! all files of a run are gone, and marked runs are no longer candidates. A pass interrupted at
//! any point is completed by the next one.
//!
//! # Layout
//! - `mod.rs`: [`Engine::run_pass`]: read MLflow, plan, take a first look, then apply (prune,
//!   and retire the experiment when asked).
//! - `plan.rs`: the plan step, pure: policy, foreign runs, ranking, every folder resolved, the
//!   safety valve and what keeps an experiment from being retired.
//! - `last_look/`: the last look before files go: the planned runs read again and the registry
//!   versions pointing at them looked up (`mod.rs`, I/O), and the [`Verdict`] on each planned
//!   deletion (`rules.rs`, pure).
//! - `prune.rs`: the deletion pipeline: list folders, delete keys in batches, mark runs.
//! - `walk.rs`, `batch.rs`, `run_index.rs`: its pure parts (with `RunIndex`, a
//!   planned run's key in every stage): which keys each listing takes, how keys of several
//!   runs are packed into batches and when a run's files are all gone.
//! - `inventory.rs`: MLflow's answers turned into ranking facts and stored models.
//! - `retry.rs`, `report.rs`, `error.rs`: in-process retries, the pass report, [`PruneError`].
//! - `check.rs`: whether MLflow and the store answer as the engine will use them.

mod batch;
mod check;
mod error;
pub mod inventory;
mod last_look;
mod plan;
mod prune;
mod report;
mod retry;
mod run_index;
mod walk;

use std::collections::HashMap;

use tracing::{info, instrument};

pub use check::Check;
pub use error::PruneError;
pub use report::{PassReport, PlannedDeletion, PrunedRun, RankedOn, UnmarkedRun};
pub use retry::RetryPolicy;

use crate::domain::event::Event;
use crate::domain::location::LocationRules;
use crate::domain::policy::{self, PolicyDefaults, PolicyOverrides};
use crate::domain::ranking::RankingError;
use crate::domain::run::LifecycleStage;
use crate::domain::time::EpochMs;
use crate::metrics::Metrics;
use crate::mlflow::{
    Experiment, LoggedModel, MlflowClient, MlflowError, Run, RunFields, VersionFilter,
};
use crate::settings::Settings;
use crate::store::ObjectStore;
use inventory::InventoryOptions;
use last_look::{Depth, Planned};

/// What kind of pass to run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PassKind {
    /// Triggered by finished runs; bounded by the safety valve.
    RunFinished,
    /// An explicit sweep of the experiment.
    Sweep {
        /// Soft-delete the experiment in MLflow after pruning; fails if a run or version needs it.
        delete_experiment: bool,
        /// Go past the safety valve (`policy.max_deletions_per_pass`).
        force: bool,
    },
}

/// One pass over one experiment, possibly covering several coalesced events.
#[derive(Debug, Clone)]
pub struct PassRequest {
    /// MLflow id of the experiment to rank and prune.
    pub experiment_id: String,
    /// The events' policy fields (coalesced events share them); they win over tags and settings.
    pub policy: PolicyOverrides,
    /// Runs named by the covered `run.finished` events; each must belong to the experiment.
    pub run_ids: Vec<String>,
    /// What asked for the pass: it decides the safety valve and whether to retire the experiment.
    pub kind: PassKind,
    /// Plan and report only, deleting and marking nothing; always false for `run.finished`.
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
    metrics: Metrics,
}

impl Engine {
    /// Builds the engine and its clients from settings, counting into `metrics`.
    pub fn new(settings: &Settings, metrics: &Metrics) -> Result<Self, MlflowError> {
        Ok(Engine {
            mlflow: MlflowClient::new(&settings.mlflow, metrics)?,
            store: ObjectStore::new(&settings.store, metrics),
            metrics: metrics.clone(),
            rules: settings.store.location_rules(),
            defaults: settings.policy.clone(),
            model_uploaded_param: settings.mlflow.model_uploaded_param.clone(),
            log_deleted_param: settings.mlflow.log_deleted_param,
            parallel_deletions: settings.concurrency.parallel_deletions,
            retry: RetryPolicy::new(&settings.retry, metrics),
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
    #[instrument(skip_all, fields(experiment_id = %req.experiment_id, dry_run = req.dry_run))]
    pub async fn run_pass(&self, req: &PassRequest) -> Result<PassReport, PruneError> {
        let experiment_id = req.experiment_id.as_str();
        let planner = plan::Planner {
            defaults: &self.defaults,
            rules: &self.rules,
            model_uploaded_param: &self.model_uploaded_param,
        };
        // Read.
        let experiment = self.read_experiment(experiment_id).await?;
        let policy = planner.policy(req, &experiment)?;
        let options = planner.options(&policy);
        // Independent reads, side by side.
        let (runs, logged_models) = tokio::try_join!(
            self.read_runs(experiment_id, &options),
            self.read_logged_models(experiment_id)
        )?;
        let foreign = plan::foreign_runs(req, &runs)?;

        // Plan.
        let runs = (runs, foreign);
        let mut plan = match planner.plan(req, policy.clone(), runs, &logged_models, now()) {
            Err(PruneError::Ranking {
                experiment_id,
                cause: source @ RankingError::NoMetric { .. },
                ..
            }) => {
                let hint = self.logged_metrics(&experiment_id).await;
                return Err(PruneError::Ranking {
                    experiment_id,
                    cause: source,
                    hint,
                });
            }
            plan => plan?,
        };
        // A first look before the safety valve counts: registered runs are not deletions. A dry
        // run's look is as thorough as the one a real pass makes before each run's files go. A
        // real pass whose plan the valve lets through as it stands skips it: every planned run
        // gets that thorough look (`prune`) before its files go, and the first look could only
        // make the plan smaller.
        let keepers = plan.keepers();
        let pruned_before = plan.pruned_before();
        let valve = |plan: &plan::Plan| {
            plan.check_valve(
                experiment_id,
                req.kind,
                self.defaults.max_deletions_per_pass,
            )
        };
        if req.dry_run || valve(&plan).is_err() {
            let depth = if req.dry_run {
                Depth::Full
            } else {
                Depth::RunIds
            };
            let all: Vec<run_index::RunIndex> =
                run_index::RunIndex::all(plan.planned.len()).collect();
            let first = Planned {
                keepers: &keepers,
                pruned_before,
                experiment_id,
                runs: &plan.planned,
                sources: &plan.inventory.sources,
                options: &options,
                overrides: &req.policy,
                policy: &policy,
            };
            let verdicts = self.last_look(&first, &all, &HashMap::new(), depth).await?;
            plan.withdraw(verdicts);
            valve(&plan)?;
        }

        let mut report = PassReport {
            experiment_id: experiment_id.to_owned(),
            experiment_name: experiment.name.clone(),
            policy: plan.policy,
            policy_sources: policy::origins(&req.policy, &experiment.tags),
            ranking: plan.ranking,
            planned: plan.planned,
            pruned: Vec::new(),
            unmarked: Vec::new(),
            foreign_run_ids: plan.foreign_run_ids,
            experiment_deleted: false,
            dry_run: req.dry_run,
        };
        if req.dry_run {
            return Ok(report);
        }

        // Apply.
        let pruned = self
            .prune(&Planned {
                keepers: &keepers,
                pruned_before,
                experiment_id,
                runs: &report.planned,
                sources: &plan.inventory.sources,
                options: &options,
                overrides: &req.policy,
                policy: &policy,
            })
            .await?;
        for (run_id, decision) in pruned.withdrawn {
            report.ranking.withdraw(&run_id, decision);
            report.planned.retain(|p| p.run_id != run_id);
        }
        report.pruned = pruned.runs;
        report.unmarked = pruned.unmarked;
        if let PassKind::Sweep {
            delete_experiment: true,
            ..
        } = req.kind
        {
            // A redelivered retirement finds the experiment already deleted: nothing to redo.
            if experiment.lifecycle_stage != LifecycleStage::Deleted {
                self.delete_experiment(&report, &experiment, &logged_models)
                    .await?;
            }
            report.experiment_deleted = true;
        }
        info!(
            ranked = report.ranking.ranked,
            pruned = report.pruned.len(),
            objects = report.objects_deleted(),
            bytes = report.bytes_deleted().0,
            "pass finished"
        );
        Ok(report)
    }

    /// `; the latest runs log: a, b` for an error about a metric no run has (best effort: empty
    /// when MLflow does not answer).
    async fn logged_metrics(&self, experiment_id: &str) -> String {
        match self.mlflow.metric_names(experiment_id, 100).await {
            Ok(names) if names.is_empty() => "; the latest runs log no metric at all".to_owned(),
            Ok(names) => format!(
                "; the latest runs log: {}",
                names.into_iter().collect::<Vec<_>>().join(", ")
            ),
            Err(_) => String::new(),
        }
    }

    /// The experiment, or [`PruneError::UnknownExperiment`].
    async fn read_experiment(&self, experiment_id: &str) -> Result<Experiment, PruneError> {
        self.retry
            .run("mlflow", "experiments/get", || {
                self.mlflow.get_experiment(experiment_id)
            })
            .await
            .map_err(|source| {
                if source.is_not_found() {
                    PruneError::UnknownExperiment {
                        experiment_id: experiment_id.to_owned(),
                    }
                } else {
                    PruneError::Mlflow {
                        experiment_id: experiment_id.to_owned(),
                        cause: source,
                    }
                }
            })
    }

    /// The experiment's runs with what `options` needs of them.
    async fn read_runs(
        &self,
        experiment_id: &str,
        options: &InventoryOptions<'_>,
    ) -> Result<Vec<Run>, PruneError> {
        let params = options.params();
        let tags = options.tags();
        let fields = RunFields {
            metrics: &[options.metric],
            params: &params,
            tags: &tags,
        };
        self.retry
            .run("mlflow", "runs/search", || {
                self.mlflow.search_runs(experiment_id, &fields)
            })
            .await
            .map_err(|source| PruneError::Mlflow {
                experiment_id: experiment_id.to_owned(),
                cause: source,
            })
    }

    /// The experiment's logged models.
    async fn read_logged_models(
        &self,
        experiment_id: &str,
    ) -> Result<Vec<LoggedModel>, PruneError> {
        self.retry
            .run("mlflow", "logged-models/search", || {
                self.mlflow.search_logged_models(experiment_id)
            })
            .await
            .map_err(|source| PruneError::Mlflow {
                experiment_id: experiment_id.to_owned(),
                cause: source,
            })
    }

    /// Soft-deletes the experiment once no run holds a model, is protected or is unfinished,
    /// and no registry version points into it (MLflow counts a retired experiment's runs as
    /// deleted, and its garbage collection takes their files whatever the registry says).
    async fn delete_experiment(
        &self,
        report: &PassReport,
        experiment: &Experiment,
        logged_models: &[LoggedModel],
    ) -> Result<(), PruneError> {
        let mut remaining = plan::retirement_blockers(&report.ranking);
        remaining.extend(
            self.registry_blockers(report, experiment, logged_models)
                .await
                .map_err(|source| PruneError::Mlflow {
                    experiment_id: report.experiment_id.clone(),
                    cause: source,
                })?,
        );
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
                cause: source,
            })?,
        }
        info!("experiment deleted");
        Ok(())
    }
}

impl Engine {
    /// The experiment's tag `key`, read with in-process retries.
    pub async fn experiment_tag(
        &self,
        experiment_id: &str,
        key: &str,
    ) -> Result<Option<String>, MlflowError> {
        let experiment = self
            .retry
            .run("mlflow", "experiments/get", || {
                self.mlflow.get_experiment(experiment_id)
            })
            .await?;
        Ok(experiment.tags.get(key).cloned())
    }

    /// Sets the experiment's tag `key` to `value`, with in-process retries.
    pub async fn set_experiment_tag(
        &self,
        experiment_id: &str,
        key: &str,
        value: &str,
    ) -> Result<(), MlflowError> {
        self.retry
            .run("mlflow", "experiments/set-experiment-tag", || {
                self.mlflow.set_experiment_tag(experiment_id, key, value)
            })
            .await
    }
}

impl Engine {
    /// Every registry version pointing into the experiment: by the run ids of all its runs, by
    /// sources under its artifact location, and by `models:/<id>` of its logged models. An
    /// artifact location that cannot be resolved blocks on its own (when unsure, keep).
    async fn registry_blockers(
        &self,
        report: &PassReport,
        experiment: &Experiment,
        logged_models: &[LoggedModel],
    ) -> Result<Vec<String>, MlflowError> {
        let ids: Vec<&str> = report
            .ranking
            .runs
            .iter()
            .map(|r| r.run.run_id.as_str())
            .collect();
        let mut blockers = Vec::new();
        let mut patterns =
            match last_look::folder_patterns(&experiment.artifact_location, &self.rules) {
                Some(patterns) => patterns,
                None => {
                    blockers.push(format!(
                        "artifact location {} (cannot be matched against registry sources)",
                        experiment.artifact_location
                    ));
                    Default::default()
                }
            };
        patterns.extend(
            logged_models
                .iter()
                .map(|m| format!("models:/{}%", m.model_id)),
        );
        let mut searches: Vec<VersionFilter> = ids
            .chunks(last_look::RUN_IDS_PER_VERSION_SEARCH)
            .map(VersionFilter::RunIds)
            .collect();
        searches.extend(patterns.iter().map(|p| VersionFilter::SourceLike(p)));
        let versions = self.registry_versions(searches).await?;
        let mut seen = std::collections::BTreeSet::new();
        for v in versions {
            if seen.insert((v.name.clone(), v.version.clone())) {
                let of = v.run_id.as_deref().unwrap_or(v.source.as_str());
                blockers.push(format!(
                    "{of} (backs registered model {} version {})",
                    v.name, v.version
                ));
            }
        }
        Ok(blockers)
    }
}

/// The time a pass decides `grace` and `older_than` by, as MLflow's end times are written.
pub fn now() -> EpochMs {
    let since_epoch = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    EpochMs::from_millis(i64::try_from(since_epoch.as_millis()).unwrap_or(i64::MAX))
}
