//! The plan step of a pass, pure: from the request and what MLflow said, the policy, the
//! ranking and the deletions to make with every folder resolved; the safety valve; and what
//! stands in the way of retiring the experiment. `Engine::run_pass` reads, plans, then applies;
//! `plan`, `audit` and the worker all go through it.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};

use super::guard::{self, Keeper, Share};
use super::inventory::{self, Inventory, InventoryOptions, StoredModel};
use super::{PassKind, PassRequest, PlannedDeletion, PruneError, RankedOn};
use crate::domain::location::LocationRules;
use crate::domain::marks;
use crate::domain::policy::{self, PolicyDefaults, RetentionPolicy};
use crate::domain::ranking::{self, Decision, Ranking, Rule, SkipReason};
use crate::mlflow::{Experiment, LoggedModel, Run};

/// The rules a plan is made under.
pub struct Planner<'a> {
    pub defaults: &'a PolicyDefaults,
    pub rules: &'a LocationRules,
    pub model_uploaded_param: &'a str,
}

/// What a pass means to do, before the last look at each run.
#[derive(Debug)]
pub struct Plan {
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
    pub fn policy(
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
    pub fn options<'p>(&'p self, policy: &'p RetentionPolicy) -> InventoryOptions<'p> {
        InventoryOptions {
            metric: &policy.metric,
            model_uploaded_param: self.model_uploaded_param,
            group_by: policy.group_by.as_ref(),
        }
    }

    /// Ranks the runs at `now` (milliseconds since the epoch) and resolves every folder of the
    /// runs that fell out; `foreign_run_ids` come from [`foreign_runs`]. Fails, deleting
    /// nothing, when no candidate has the metric or is within the floor, or when a folder is
    /// refused.
    pub fn plan(
        &self,
        req: &PassRequest,
        policy: RetentionPolicy,
        (runs, foreign_run_ids): (Vec<Run>, Vec<String>),
        logged_models: &[LoggedModel],
        now: i64,
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
    pub fn pruned_before(&self) -> bool {
        self.ranking.runs.iter().any(|r| r.run.pruned)
    }

    /// The runs kept by rank or as latest, with what they were ranked on.
    pub fn keepers(&self) -> Vec<Keeper> {
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
    pub fn withdraw(&mut self, verdicts: Vec<(usize, Option<Decision>)>) {
        // Removing from the end keeps the other indices valid.
        for (at, decision) in verdicts.into_iter().rev() {
            if let Some(decision) = decision {
                self.ranking.withdraw(&self.planned[at].run_id, decision);
                self.planned.remove(at);
            }
        }
    }

    /// The safety valve: a pass other than a forced sweep deletes nothing when it would delete
    /// more than `max` models.
    pub fn check_valve(
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
pub fn foreign_runs(req: &PassRequest, runs: &[Run]) -> Result<Vec<String>, PruneError> {
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
pub fn retirement_blockers(ranking: &Ranking) -> Vec<String> {
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
mod tests {
    use std::collections::BTreeMap;

    use crate::domain::run::Fields;

    use super::*;
    use crate::domain::policy::{Direction, PolicyOverrides};
    use crate::domain::run::{LifecycleStage, RunStatus};

    const NOW: i64 = 1_800_000_000_000;

    fn defaults() -> PolicyDefaults {
        PolicyDefaults {
            metric: "acc".into(),
            direction: Direction::Max,
            keep_top: 1,
            max_deletions_per_pass: 2,
            keep_latest: 0,
            grace: None,
            group_by: None,
            min_metric: None,
            max_metric: None,
            older_than: None,
        }
    }

    fn rules() -> LocationRules {
        LocationRules {
            allowed_buckets: vec!["mlflow".into()],
            artifacts_destination: "s3://mlflow".parse().unwrap(),
        }
    }

    /// A finished run with a classic model and `acc`, ended in the order of `acc`.
    fn run(id: &str, acc: f64) -> Run {
        Run {
            run_id: id.into(),
            run_name: id.into(),
            experiment_id: "1".into(),
            status: RunStatus::Finished,
            lifecycle_stage: LifecycleStage::Active,
            start_time: Some(1),
            end_time: Some(1_000 + (acc * 100.0) as i64),
            artifact_uri: format!("s3://mlflow/1/{id}/artifacts"),
            metrics: [("acc".to_string(), acc)].into_iter().collect(),
            params: [("model_uploaded".to_string(), "1".to_string())]
                .into_iter()
                .collect(),
            tags: Fields::default(),
            model_output_ids: vec![],
        }
    }

    fn logged(id: &str, source: &str) -> LoggedModel {
        LoggedModel {
            model_id: id.into(),
            experiment_id: "1".into(),
            name: "model".into(),
            source_run_id: Some(source.into()),
            artifact_uri: format!("s3://mlflow/1/models/{id}/artifacts"),
            status: "LOGGED_MODEL_READY".into(),
            tags: BTreeMap::new(),
        }
    }

    fn request(run_ids: &[&str], kind: PassKind) -> PassRequest {
        PassRequest {
            experiment_id: "1".into(),
            policy: PolicyOverrides::default(),
            run_ids: run_ids.iter().map(|s| s.to_string()).collect(),
            kind,
            dry_run: false,
        }
    }

    fn plan_of(
        req: &PassRequest,
        runs: Vec<Run>,
        models: &[LoggedModel],
    ) -> Result<Plan, PruneError> {
        let (defaults, rules) = (defaults(), rules());
        let planner = Planner {
            defaults: &defaults,
            rules: &rules,
            model_uploaded_param: "model_uploaded",
        };
        let experiment = Experiment {
            experiment_id: "1".into(),
            name: "e".into(),
            lifecycle_stage: LifecycleStage::Active,
            artifact_location: "s3://mlflow/1".into(),
            tags: BTreeMap::new(),
        };
        let policy = planner.policy(req, &experiment)?;
        let foreign = foreign_runs(req, &runs)?;
        planner.plan(req, policy, (runs, foreign), models, NOW)
    }

    fn planned(plan: &Plan) -> Vec<(&str, Vec<&str>)> {
        plan.planned
            .iter()
            .map(|p| {
                let prefixes = p.locations.iter().map(|(l, _)| l.prefix.as_str()).collect();
                (p.run_id.as_str(), prefixes)
            })
            .collect()
    }

    #[test]
    fn the_runs_out_of_the_top_are_planned_with_every_folder_resolved() {
        let mut b = run("b", 0.5);
        b.params.clear();
        b.model_output_ids = vec!["m-b".into()];
        let plan = plan_of(
            &request(
                &[],
                PassKind::Sweep {
                    delete_experiment: false,
                    force: false,
                },
            ),
            vec![run("a", 0.9), b, run("c", 0.1)],
            &[logged("m-b", "b")],
        )
        .unwrap();
        assert_eq!(
            planned(&plan),
            [
                ("b", vec!["1/models/m-b/artifacts/"]),
                ("c", vec!["1/c/artifacts/model/"])
            ]
        );
        assert_eq!(plan.planned[1].reason, "rank 3 of 3 by acc max, keep_top 1");
    }

    #[test]
    fn a_pass_for_runs_of_another_experiment_only_fails_and_plans_nothing() {
        let runs = || vec![run("a", 0.9), run("b", 0.1)];
        let err = foreign_runs(&request(&["x", "y"], PassKind::RunFinished), &runs()).unwrap_err();
        assert!(
            matches!(err, PruneError::RunNotInExperiment { ref run_ids, .. } if run_ids == &["x", "y"])
        );
        // One of ours among them: the pass goes on and names the other.
        let plan = plan_of(&request(&["x", "b"], PassKind::RunFinished), runs(), &[]).unwrap();
        assert_eq!(plan.foreign_run_ids, ["x"]);
        assert_eq!(planned(&plan).len(), 1);
    }

    #[test]
    fn a_refused_folder_fails_the_whole_plan() {
        let mut foreign = run("f", 0.1);
        foreign.artifact_uri = "s3://elsewhere/1/f/artifacts".into();
        let err = plan_of(
            &request(&[], PassKind::RunFinished),
            vec![run("a", 0.9), run("b", 0.5), foreign],
            &[],
        )
        .unwrap_err();
        assert!(
            matches!(err, PruneError::Location { ref run_id, .. } if run_id == "f"),
            "{err}"
        );
    }

    #[test]
    fn a_logged_model_another_run_keeps_is_not_planned() {
        let mut keeper = run("keeper", 0.9);
        keeper.params.clear();
        let mut loser = run("loser", 0.1);
        loser.params.clear();
        loser.model_output_ids = vec!["m-1".into()];
        let plan = plan_of(
            &request(&[], PassKind::RunFinished),
            vec![keeper, loser],
            &[logged("m-1", "keeper")],
        )
        .unwrap();
        // The loser is out of the top but its only model stays with the keeper.
        assert_eq!(planned(&plan), [("loser", vec![])]);
    }

    #[test]
    fn the_valve_stops_a_large_pass_unless_it_is_a_forced_sweep() {
        let runs = || {
            (0..4)
                .map(|i| run(&format!("r{i}"), f64::from(i) / 10.0))
                .collect()
        };
        let plan = plan_of(&request(&[], PassKind::RunFinished), runs(), &[]).unwrap();
        let err = plan.check_valve("1", PassKind::RunFinished, 2).unwrap_err();
        assert!(matches!(
            err,
            PruneError::SafetyValve {
                count: 3,
                max: 2,
                ..
            }
        ));
        let sweep = PassKind::Sweep {
            delete_experiment: false,
            force: false,
        };
        assert!(plan.check_valve("1", sweep, 2).is_err());
        let forced = PassKind::Sweep {
            delete_experiment: false,
            force: true,
        };
        assert!(plan.check_valve("1", forced, 2).is_ok());
        assert!(plan.check_valve("1", PassKind::RunFinished, 3).is_ok());
    }

    #[test]
    fn a_withdrawn_run_leaves_the_plan_and_keeps_its_rank_in_the_reason() {
        let runs = vec![run("a", 0.9), run("b", 0.5), run("c", 0.1)];
        let mut plan = plan_of(&request(&[], PassKind::RunFinished), runs, &[]).unwrap();
        let protected = Decision::Protected {
            protection: crate::domain::ranking::Protection::KeepTag,
        };
        plan.withdraw(vec![(0, Some(protected)), (1, None)]);
        assert_eq!(planned(&plan), [("c", vec!["1/c/artifacts/model/"])]);
        let b = plan
            .ranking
            .runs
            .iter()
            .find(|r| r.run.run_id == "b")
            .unwrap();
        assert_eq!(b.decision.label(), "protected");
        assert!(b.reason.starts_with("rank 2 of 3"), "{}", b.reason);
    }

    #[test]
    fn retirement_waits_for_kept_graced_young_and_unfinished_runs() {
        let mut running = run("running", 0.2);
        running.status = RunStatus::Running;
        // Unfinished without a model yet: it may still write one.
        let mut starting = run("starting", 0.2);
        starting.status = RunStatus::Other("PAUSED".into());
        starting.params.clear();
        // Failed without a model: nothing stored, nothing to wait for.
        let mut failed = run("failed", 0.2);
        failed.status = RunStatus::Failed;
        failed.params.clear();
        let mut young = run("young", 0.3);
        young.end_time = Some(NOW - 1_000);
        let sweep = PassKind::Sweep {
            delete_experiment: true,
            force: true,
        };
        let mut req = request(&[], sweep);
        req.policy.keep_top = Some(1);
        req.policy.older_than = Some("1h".into());
        let runs = vec![
            run("best", 0.9),
            run("gone", 0.1),
            running,
            starting,
            failed,
            young,
        ];
        let plan = plan_of(&req, runs, &[]).unwrap();
        let blockers = retirement_blockers(&plan.ranking);
        let ids: Vec<&str> = blockers
            .iter()
            .map(|b| b.split(' ').next().unwrap())
            .collect();
        assert_eq!(ids, ["best", "running", "starting", "young"]);

        // A run in its grace window stays, and so does the experiment.
        let mut req = request(&[], sweep);
        req.policy.keep_top = Some(0);
        req.policy.grace = Some("1h".into());
        let mut fresh = run("fresh", 0.5);
        fresh.end_time = Some(NOW - 1_000);
        let plan = plan_of(&req, vec![fresh, run("old", 0.1)], &[]).unwrap();
        let blockers = retirement_blockers(&plan.ranking);
        assert_eq!(blockers.len(), 1, "{blockers:?}");
        assert!(
            blockers[0].starts_with("fresh (rank 1 of 2"),
            "{blockers:?}"
        );
        assert!(blockers[0].contains("grace until"), "{blockers:?}");

        let mut req = request(
            &[],
            PassKind::Sweep {
                delete_experiment: true,
                force: true,
            },
        );
        req.policy.keep_top = Some(0);
        let plan = plan_of(&req, vec![run("a", 0.9), run("b", 0.1)], &[]).unwrap();
        assert!(retirement_blockers(&plan.ranking).is_empty());
    }
}
