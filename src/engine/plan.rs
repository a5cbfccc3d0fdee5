//! The plan step of a pass, pure: from the request and what MLflow said, the policy, the
//! ranking and the deletions to make with every folder resolved; the safety valve; and what
//! stands in the way of retiring the experiment. `Engine::run_pass` reads, plans, then applies;
//! `plan`, `audit` and the worker all go through it.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};

use super::inventory::{self, Inventory, InventoryOptions, StoredModel};
use super::last_look::{self, Keeper, Share, Verdict, Verdicts};
use super::{PassKind, PassRequest, PlannedDeletion, PruneError, RankedOn};
use crate::domain::location::LocationRules;
use crate::domain::marks;
use crate::domain::policy::{self, PolicyDefaults, RetentionPolicy};
use crate::domain::ranking::{self, Decision, Ranking, Rule, SkipReason};
use crate::domain::time::EpochMs;
use crate::mlflow::{Experiment, LoggedModel, Run};

/// The rules a plan is made under.
pub(super) struct Planner<'a> {
    pub defaults: &'a PolicyDefaults,
    pub rules: &'a LocationRules,
    pub model_uploaded_param: &'a str,
}

/// What a pass means to do, before the last look at each run.
#[derive(Debug)]
pub(super) struct Plan {
    pub policy: RetentionPolicy,
    pub ranking: Ranking,
    /// The runs whose models go, in rank order, every folder resolved.
    pub planned: Vec<PlannedDeletion>,
    /// Runs named by the request that are not runs of the experiment.
    pub foreign_run_ids: Vec<String>,
    pub inventory: Inventory,
}

impl Planner<'_> {
    /// The policy of the pass: the request's fields, then the experiment's tags, then the
    /// settings.
    pub(super) fn policy(
        &self,
        req: &PassRequest,
        experiment: &Experiment,
    ) -> Result<RetentionPolicy, PruneError> {
        policy::resolve(&req.policy, &experiment.tags, self.defaults).map_err(|source| {
            PruneError::Policy {
                experiment_id: req.experiment_id.clone(),
                cause: source,
            }
        })
    }

    /// What reading the runs must ask MLflow for under `policy`.
    pub(super) fn options<'p>(&'p self, policy: &'p RetentionPolicy) -> InventoryOptions<'p> {
        InventoryOptions {
            metric: &policy.metric,
            model_uploaded_param: self.model_uploaded_param,
            group_by: policy.group_by.as_ref(),
        }
    }

    /// Ranks the runs at `now` and resolves every folder of the
    /// runs that fell out; `foreign_run_ids` come from [`foreign_runs`]. Fails, deleting
    /// nothing, when no candidate has the metric or is within the floor, or when a folder is
    /// refused.
    pub(super) fn plan(
        &self,
        req: &PassRequest,
        policy: RetentionPolicy,
        (runs, foreign_run_ids): (Vec<Run>, Vec<String>),
        logged_models: &[LoggedModel],
        now: EpochMs,
    ) -> Result<Plan, PruneError> {
        let experiment_id = req.experiment_id.as_str();
        let mut inventory = inventory::build(runs, logged_models, &self.options(&policy));
        let ranking = ranking::rank(std::mem::take(&mut inventory.facts), &policy, now).map_err(
            |source| PruneError::Ranking {
                experiment_id: experiment_id.to_owned(),
                cause: source,
                hint: String::new(),
            },
        )?;
        log_ranking(&ranking, &policy);
        let planned = self.deletions(experiment_id, &ranking, &inventory)?;
        Ok(Plan {
            policy,
            ranking,
            planned,
            foreign_run_ids,
            inventory,
        })
    }

    /// Resolves every location to delete before anything is deleted, so a refused location
    /// leaves the whole experiment untouched. A logged model linked to several runs is planned
    /// only when all of them are pruned, by the last of them in plan order.
    fn deletions(
        &self,
        experiment_id: &str,
        ranking: &Ranking,
        inventory: &Inventory,
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
                    let (location, model_id) = match model {
                        StoredModel::Logged {
                            model_id,
                            artifact_uri,
                        } => {
                            let linked = inventory.links.get(model_id).unwrap_or(&no_links);
                            match last_look::share(run_id, linked, &deleting, &pruned) {
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
                                marks::logged_location(self.rules, artifact_uri, model_id),
                                Some(model_id.clone()),
                            )
                        }
                        StoredModel::Classic { artifact_uri } => (
                            marks::classic_location(self.rules, artifact_uri, run_id),
                            None,
                        ),
                    };
                    let location = location.map_err(|source| PruneError::Location {
                        experiment_id: experiment_id.to_owned(),
                        run_id: run_id.clone(),
                        cause: source,
                    })?;
                    locations.push((location, model_id));
                }
                Ok(PlannedDeletion {
                    run_id: run_id.clone(),
                    run_name: r.run.run_name.clone(),
                    reason: r.reason.clone(),
                    ranked_on: RankedOn::of(&r.run),
                    resume: r.rule == Rule::Resume,
                    writes_deleted_param: !inventory.deleted_param_set.contains(run_id),
                    locations,
                    shared_with,
                })
            })
            .collect()
    }
}

impl Plan {
    /// Whether a run of the experiment was pruned before: its layout and the settings have
    /// worked for it once.
    pub(super) fn pruned_before(&self) -> bool {
        self.ranking.runs.iter().any(|r| r.run.pruned)
    }

    /// The runs kept by rank or as latest, with what they were ranked on.
    pub(super) fn keepers(&self) -> Vec<Keeper> {
        self.ranking
            .runs
            .iter()
            .filter(|r| r.decision == Decision::Keep)
            .map(|r| Keeper {
                run_id: r.run.run_id.clone(),
                ranked_on: RankedOn::of(&r.run),
            })
            .collect()
    }

    /// Takes the runs a look found must stay out of the deletions (`verdicts` in plan order).
    pub(super) fn withdraw(&mut self, verdicts: Verdicts) {
        // Removing from the end keeps the other indices valid.
        for (at, verdict) in verdicts.into_iter().rev() {
            if let Verdict::Withdrawn(decision) = verdict {
                self.ranking
                    .withdraw(&at.of(&self.planned).run_id, decision);
                self.planned.remove(at.get());
            }
        }
    }

    /// The safety valve: a pass other than a forced sweep deletes nothing when it would delete
    /// more than `max` models.
    pub(super) fn check_valve(
        &self,
        experiment_id: &str,
        kind: PassKind,
        max: u32,
    ) -> Result<(), PruneError> {
        let forced = matches!(kind, PassKind::Sweep { force: true, .. });
        if !forced && self.planned.len() > max as usize {
            return Err(PruneError::SafetyValve {
                experiment_id: experiment_id.to_owned(),
                count: self.planned.len(),
                max,
            });
        }
        Ok(())
    }
}

/// The runs the request names that are not among `runs`. Fails when the request names runs and
/// every one of them belongs to another experiment: nothing is to be done for it.
pub(super) fn foreign_runs(req: &PassRequest, runs: &[Run]) -> Result<Vec<String>, PruneError> {
    let known: HashSet<&str> = runs.iter().map(|r| r.run_id.as_str()).collect();
    let foreign: Vec<String> = req
        .run_ids
        .iter()
        .filter(|id| !known.contains(id.as_str()))
        .cloned()
        .collect();
    if !req.run_ids.is_empty() && foreign.len() == req.run_ids.len() {
        return Err(PruneError::RunNotInExperiment {
            experiment_id: req.experiment_id.clone(),
            run_ids: foreign,
        });
    }
    Ok(foreign)
}

/// Logs what the ranking leaves to report: runs without the group key, rows read twice, runs
/// without the metric. Before anything can fail the pass, so they are seen either way.
fn log_ranking(ranking: &Ranking, policy: &RetentionPolicy) {
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
}

/// The runs that keep an experiment from being retired, with their reasons: runs still storing
/// a model that stays (kept, in grace, without the metric, protected, left by a last look),
/// runs that have not ended, and every protected run whatever it stores: a retired experiment's
/// runs count as deleted, and MLflow's garbage collection would take the files a registry
/// version or a keep tag stands for.
pub(super) fn retirement_blockers(ranking: &Ranking) -> Vec<String> {
    ranking
        .runs
        .iter()
        .filter_map(|r| {
            let blocking = match &r.decision {
                Decision::Keep | Decision::Grace { .. } | Decision::Protected { .. } => true,
                Decision::Skipped { reason } => !matches!(
                    reason,
                    SkipReason::NotActive | SkipReason::AlreadyPruned | SkipReason::NoModel
                ),
                Decision::Delete => false,
            };
            let unfinished = matches!(
                &r.decision,
                Decision::Skipped { reason: SkipReason::NotFinished { status } } if status.is_active()
            );
            let stored = r.run.has_model || unfinished;
            let protected = r.run.protection.is_some() && r.run.active;
            ((blocking && stored) || protected)
                .then(|| format!("{} ({})", r.run.run_id, r.reason))
        })
        .collect()
}

#[cfg(test)]
mod tests;
