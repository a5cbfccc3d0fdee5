//! Top-N ranking of an experiment's runs: which models to keep, delete, protect or skip.
//!
//! The order is total and deterministic:
//! 1. the metric's latest value in the policy's direction (NaN after every number);
//! 2. on equal values, the run that ended earlier ranks better (a missing end time ranks last);
//! 3. then run ids in byte order.
//!
//! Only candidates are ranked: active runs in status `FINISHED` that still have a stored model
//! and a value for the metric. The first `keep_top` ranks are kept; protected runs below them are
//! kept in addition; the rest are deleted.
//!
//! Each run id is ranked once: a second row for an id (a paged read that repeated it) is
//! ignored and named in [`Ranking::repeated`], so it can never take a second rank and push a
//! keeper out of the top N.

use std::cmp::Ordering;
use std::fmt;

use serde::Serialize;

use crate::domain::policy::{Direction, RetentionPolicy};

/// What ranking needs to know about one run; built from MLflow data by the engine.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct RunFacts {
    pub run_id: String,
    pub run_name: String,
    /// MLflow run status: FINISHED, RUNNING, SCHEDULED, FAILED, KILLED.
    pub status: String,
    /// Lifecycle stage is `active` (not in MLflow's trash).
    pub active: bool,
    /// End time in milliseconds since the epoch.
    pub end_time: Option<i64>,
    /// Latest value of the policy's metric, if the run logged it.
    pub metric: Option<f64>,
    /// The run still has a model in the store (an MLflow 3 logged model or the upload marker).
    pub has_model: bool,
    /// The run was already pruned (tag `model_pruner.deleted` or param `model_deleted`).
    pub pruned: bool,
    /// Why the run must never be deleted, if it must not.
    pub protection: Option<Protection>,
}

/// Why a run's model is kept whatever its rank.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Protection {
    /// The model backs a model-registry version.
    Registered { name: String, version: String },
    /// The run is tagged `model_pruner.keep = true`.
    KeepTag,
}

impl fmt::Display for Protection {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Protection::Registered { name, version } => {
                write!(f, "backs registered model {name} version {version}")
            }
            Protection::KeepTag => f.write_str("tagged model_pruner.keep = true"),
        }
    }
}

/// Why a run is left out of the ranking.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum SkipReason {
    /// The run is in MLflow's trash.
    NotActive,
    /// The run is not FINISHED (running, scheduled, failed, killed): never touched.
    NotFinished { status: String },
    /// The run's model was already deleted.
    AlreadyPruned,
    /// The run has no stored model.
    NoModel,
    /// The run never logged the metric: kept and reported (the metric may be misnamed).
    MissingMetric,
    /// The run shares a logged model with another run that stays: kept this pass.
    SharedModelKept { model_id: String, run_id: String },
}

impl fmt::Display for SkipReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SkipReason::NotActive => f.write_str("run is deleted in MLflow"),
            SkipReason::NotFinished { status } => write!(f, "status {status}: never touched"),
            SkipReason::AlreadyPruned => f.write_str("model already pruned"),
            SkipReason::NoModel => f.write_str("no stored model"),
            SkipReason::MissingMetric => f.write_str("no value for the metric: kept"),
            SkipReason::SharedModelKept { model_id, run_id } => {
                write!(
                    f,
                    "shares logged model {model_id} with run {run_id}, which stays"
                )
            }
        }
    }
}

/// The decision for one run.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "decision", rename_all = "snake_case")]
pub enum Decision {
    Keep,
    Delete,
    Protected { protection: Protection },
    Skipped { reason: SkipReason },
}

impl Decision {
    /// Short label for tables and metrics.
    pub fn label(&self) -> &'static str {
        match self {
            Decision::Keep => "keep",
            Decision::Delete => "delete",
            Decision::Protected { .. } => "protected",
            Decision::Skipped { .. } => "skipped",
        }
    }
}

impl fmt::Display for Decision {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Decision::Keep => f.write_str("keep"),
            Decision::Delete => f.write_str("delete"),
            Decision::Protected { protection } => write!(f, "protected: {protection}"),
            Decision::Skipped { reason } => write!(f, "{reason}"),
        }
    }
}

/// One run in the ranking, with its rank (1-based, among ranked candidates) when it has one.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct RankedRun {
    pub run: RunFacts,
    pub rank: Option<usize>,
    pub decision: Decision,
    /// Human-readable reason, also written to MLflow as `model_pruner.reason` on deletion.
    pub reason: String,
}

/// The outcome of ranking one experiment: ranked runs in rank order, then the skipped ones.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Ranking {
    pub policy: RetentionPolicy,
    pub runs: Vec<RankedRun>,
    /// Number of ranked candidates.
    pub ranked: usize,
    /// Run ids that came more than once; only their first row was ranked.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub repeated: Vec<String>,
}

impl Ranking {
    /// Runs whose models are to be deleted, best rank first.
    pub fn to_delete(&self) -> impl Iterator<Item = &RankedRun> {
        self.runs
            .iter()
            .filter(|r| matches!(r.decision, Decision::Delete))
    }

    /// Runs that had a model but no value for the metric.
    pub fn missing_metric(&self) -> impl Iterator<Item = &RankedRun> {
        self.runs.iter().filter(|r| {
            matches!(
                r.decision,
                Decision::Skipped {
                    reason: SkipReason::MissingMetric
                }
            )
        })
    }

    /// Takes a run out of the deletions after a fresh look found it must stay (`decision` is
    /// `Protected` or `Skipped`); its rank stays in the reason. Returns false for a run that was
    /// not to be deleted.
    pub fn withdraw(&mut self, run_id: &str, decision: Decision) -> bool {
        let Some(run) = self
            .runs
            .iter_mut()
            .find(|r| r.run.run_id == run_id && r.decision == Decision::Delete)
        else {
            return false;
        };
        if matches!(decision, Decision::Keep | Decision::Delete) {
            return false;
        }
        run.reason = format!("{}; {decision}", run.reason);
        run.decision = decision;
        true
    }

    /// Number of runs with the given decision label.
    pub fn count(&self, label: &str) -> usize {
        self.runs
            .iter()
            .filter(|r| r.decision.label() == label)
            .count()
    }
}

/// Ranking is impossible.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RankingError {
    #[error(
        "none of the {candidates} runs with a stored model has a value for metric {metric:?}: \
         nothing deleted (is the metric name right?)"
    )]
    NoMetric { metric: String, candidates: usize },
}

/// Ranks the runs under the policy. Pure and deterministic: the input order does not matter.
pub fn rank(runs: Vec<RunFacts>, policy: &RetentionPolicy) -> Result<Ranking, RankingError> {
    let mut ranked = Vec::new();
    let mut skipped = Vec::new();
    let mut seen = std::collections::HashSet::new();
    let mut repeated = Vec::new();
    for run in runs {
        if !seen.insert(run.run_id.clone()) {
            repeated.push(run.run_id);
            continue;
        }
        match skip_reason(&run) {
            Some(reason) => skipped.push((run, reason)),
            None => ranked.push(run),
        }
    }
    let missing = skipped
        .iter()
        .filter(|(_, r)| *r == SkipReason::MissingMetric)
        .count();
    if ranked.is_empty() && missing > 0 {
        return Err(RankingError::NoMetric {
            metric: policy.metric.clone(),
            candidates: missing,
        });
    }

    ranked.sort_by(|a, b| compare(a, b, policy.direction));
    skipped.sort_by(|(a, _), (b, _)| a.run_id.cmp(&b.run_id));

    let total = ranked.len();
    let keep_top = usize::try_from(policy.keep_top).unwrap_or(usize::MAX);
    let mut out = Vec::with_capacity(total + skipped.len());
    for (i, run) in ranked.into_iter().enumerate() {
        let rank = i + 1;
        let position = format!("rank {rank} of {total} by {policy}");
        let (decision, reason) = if rank <= keep_top {
            (Decision::Keep, position)
        } else if let Some(protection) = run.protection.clone() {
            let reason = format!("{position}; protected: {protection}");
            (Decision::Protected { protection }, reason)
        } else {
            (Decision::Delete, position)
        };
        out.push(RankedRun {
            run,
            rank: Some(rank),
            decision,
            reason,
        });
    }
    for (run, reason) in skipped {
        out.push(RankedRun {
            run,
            rank: None,
            reason: reason.to_string(),
            decision: Decision::Skipped { reason },
        });
    }
    Ok(Ranking {
        policy: policy.clone(),
        runs: out,
        ranked: total,
        repeated,
    })
}

fn skip_reason(run: &RunFacts) -> Option<SkipReason> {
    if !run.active {
        Some(SkipReason::NotActive)
    } else if run.status != "FINISHED" {
        Some(SkipReason::NotFinished {
            status: run.status.clone(),
        })
    } else if run.pruned {
        Some(SkipReason::AlreadyPruned)
    } else if !run.has_model {
        Some(SkipReason::NoModel)
    } else if run.metric.is_none() {
        Some(SkipReason::MissingMetric)
    } else {
        None
    }
}

/// Better runs first; see the module docs for the order.
fn compare(a: &RunFacts, b: &RunFacts, direction: Direction) -> Ordering {
    compare_values(a.metric, b.metric, direction)
        .then_with(|| match (a.end_time, b.end_time) {
            (Some(x), Some(y)) => x.cmp(&y),
            (Some(_), None) => Ordering::Less,
            (None, Some(_)) => Ordering::Greater,
            (None, None) => Ordering::Equal,
        })
        .then_with(|| a.run_id.cmp(&b.run_id))
}

fn compare_values(a: Option<f64>, b: Option<f64>, direction: Direction) -> Ordering {
    let (a, b) = (a.unwrap_or(f64::NAN), b.unwrap_or(f64::NAN));
    match (a.is_nan(), b.is_nan()) {
        (true, true) => Ordering::Equal,
        (true, false) => Ordering::Greater,
        (false, true) => Ordering::Less,
        (false, false) => match direction {
            Direction::Max => b.total_cmp(&a),
            Direction::Min => a.total_cmp(&b),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn run(id: &str, metric: Option<f64>, end: i64) -> RunFacts {
        RunFacts {
            run_id: id.into(),
            run_name: format!("name-{id}"),
            status: "FINISHED".into(),
            active: true,
            end_time: Some(end),
            metric,
            has_model: true,
            pruned: false,
            protection: None,
        }
    }

    fn policy(direction: Direction, keep_top: u32) -> RetentionPolicy {
        RetentionPolicy {
            metric: "accuracy".into(),
            direction,
            keep_top,
        }
    }

    fn decisions(r: &Ranking) -> Vec<(&str, &'static str)> {
        r.runs
            .iter()
            .map(|x| (x.run.run_id.as_str(), x.decision.label()))
            .collect()
    }

    #[test]
    fn max_keeps_the_highest_values() {
        let runs = vec![
            run("a", Some(0.1), 1),
            run("b", Some(0.9), 2),
            run("c", Some(0.5), 3),
        ];
        let r = rank(runs, &policy(Direction::Max, 2)).unwrap();
        assert_eq!(
            decisions(&r),
            [("b", "keep"), ("c", "keep"), ("a", "delete")]
        );
        assert_eq!(r.runs[2].reason, "rank 3 of 3 by accuracy max, keep_top 2");
    }

    #[test]
    fn min_keeps_the_lowest_values() {
        let runs = vec![
            run("a", Some(0.1), 1),
            run("b", Some(0.9), 2),
            run("c", Some(0.5), 3),
        ];
        let r = rank(runs, &policy(Direction::Min, 1)).unwrap();
        assert_eq!(
            decisions(&r),
            [("a", "keep"), ("c", "delete"), ("b", "delete")]
        );
    }

    #[test]
    fn nan_metric_ranks_last_when_maximising() {
        let runs = vec![run("nan", Some(f64::NAN), 1), run("low", Some(-1e9), 2)];
        let r = rank(runs, &policy(Direction::Max, 1)).unwrap();
        assert_eq!(decisions(&r), [("low", "keep"), ("nan", "delete")]);
    }

    #[test]
    fn nan_metric_ranks_last_when_minimising() {
        let runs = vec![run("nan", Some(f64::NAN), 1), run("high", Some(1e9), 2)];
        let r = rank(runs, &policy(Direction::Min, 1)).unwrap();
        assert_eq!(decisions(&r), [("high", "keep"), ("nan", "delete")]);
    }

    #[test]
    fn infinities_are_ordinary_extremes() {
        let runs = vec![
            run("neg", Some(f64::NEG_INFINITY), 1),
            run("pos", Some(f64::INFINITY), 2),
            run("zero", Some(0.0), 3),
        ];
        let r = rank(runs, &policy(Direction::Max, 3)).unwrap();
        let order: Vec<_> = r.runs.iter().map(|x| x.run.run_id.as_str()).collect();
        assert_eq!(order, ["pos", "zero", "neg"]);
    }

    #[test]
    fn ties_go_to_the_run_that_ended_earlier_then_to_run_id() {
        let runs = vec![
            run("late", Some(0.5), 30),
            run("b-early", Some(0.5), 10),
            run("a-early", Some(0.5), 10),
        ];
        let r = rank(runs, &policy(Direction::Max, 1)).unwrap();
        assert_eq!(
            decisions(&r),
            [
                ("a-early", "keep"),
                ("b-early", "delete"),
                ("late", "delete")
            ]
        );
    }

    #[test]
    fn missing_end_time_ranks_after_known_end_times_on_a_tie() {
        let mut no_end = run("a", Some(0.5), 0);
        no_end.end_time = None;
        let r = rank(
            vec![no_end, run("b", Some(0.5), 99)],
            &policy(Direction::Max, 1),
        )
        .unwrap();
        assert_eq!(decisions(&r), [("b", "keep"), ("a", "delete")]);
    }

    #[test]
    fn missing_metric_is_kept_and_reported_not_ranked() {
        let runs = vec![
            run("a", Some(0.1), 1),
            run("b", Some(0.2), 2),
            run("none", None, 3),
        ];
        let r = rank(runs, &policy(Direction::Max, 1)).unwrap();
        assert_eq!(
            decisions(&r),
            [("b", "keep"), ("a", "delete"), ("none", "skipped")]
        );
        assert_eq!(r.missing_metric().count(), 1);
        assert_eq!(r.ranked, 2);
    }

    #[test]
    fn no_candidate_with_the_metric_is_an_error_naming_it() {
        let err = rank(
            vec![run("a", None, 1), run("b", None, 2)],
            &policy(Direction::Max, 0),
        )
        .unwrap_err();
        assert_eq!(
            err,
            RankingError::NoMetric {
                metric: "accuracy".into(),
                candidates: 2
            }
        );
        assert!(err.to_string().contains("\"accuracy\""));
    }

    #[test]
    fn an_experiment_without_candidates_ranks_to_nothing() {
        let mut running = run("a", None, 1);
        running.status = "RUNNING".into();
        let r = rank(vec![running], &policy(Direction::Max, 0)).unwrap();
        assert_eq!(decisions(&r), [("a", "skipped")]);
    }

    #[test]
    fn non_finished_runs_are_never_touched_even_with_a_bad_metric() {
        let mut runs = Vec::new();
        for status in ["RUNNING", "SCHEDULED", "FAILED", "KILLED"] {
            let mut r = run(status, Some(-100.0), 1);
            r.status = status.into();
            runs.push(r);
        }
        runs.push(run("ok", Some(1.0), 1));
        let r = rank(runs, &policy(Direction::Max, 0)).unwrap();
        assert_eq!(r.to_delete().count(), 1);
        assert_eq!(r.count("skipped"), 4);
    }

    #[test]
    fn deleted_lifecycle_pruned_and_modelless_runs_are_skipped() {
        let mut trashed = run("trashed", Some(0.0), 1);
        trashed.active = false;
        let mut pruned = run("pruned", Some(0.0), 1);
        pruned.pruned = true;
        let mut bare = run("bare", Some(0.0), 1);
        bare.has_model = false;
        let r = rank(
            vec![trashed, pruned, bare, run("x", Some(1.0), 1)],
            &policy(Direction::Max, 0),
        )
        .unwrap();
        assert_eq!(
            r.to_delete()
                .map(|x| x.run.run_id.as_str())
                .collect::<Vec<_>>(),
            ["x"]
        );
        assert_eq!(r.ranked, 1);
    }

    #[test]
    fn protected_runs_inside_top_n_count_toward_it_and_outside_are_kept_in_addition() {
        let mut reg = run("reg", Some(0.1), 1);
        reg.protection = Some(Protection::Registered {
            name: "m".into(),
            version: "3".into(),
        });
        let mut pinned = run("pinned", Some(0.99), 1);
        pinned.protection = Some(Protection::KeepTag);
        let runs = vec![
            reg,
            pinned,
            run("mid", Some(0.5), 1),
            run("low", Some(0.2), 1),
        ];
        let r = rank(runs, &policy(Direction::Max, 1)).unwrap();
        assert_eq!(
            decisions(&r),
            [
                ("pinned", "keep"),
                ("mid", "delete"),
                ("low", "delete"),
                ("reg", "protected")
            ]
        );
        assert!(r.runs[3].reason.contains("registered model m version 3"));
    }

    #[test]
    fn keep_top_zero_deletes_every_unprotected_candidate() {
        let r = rank(
            vec![run("a", Some(1.0), 1), run("b", Some(2.0), 1)],
            &policy(Direction::Max, 0),
        )
        .unwrap();
        assert_eq!(r.to_delete().count(), 2);
    }

    #[test]
    fn a_repeated_row_is_ranked_once_and_cannot_push_a_keeper_out() {
        let best = run("best", Some(0.9), 1);
        let runs = vec![
            best.clone(),
            run("second", Some(0.8), 2),
            best,
            run("third", Some(0.1), 3),
        ];
        let r = rank(runs, &policy(Direction::Max, 2)).unwrap();
        assert_eq!(
            decisions(&r),
            [("best", "keep"), ("second", "keep"), ("third", "delete")]
        );
        assert_eq!(r.ranked, 3);
        assert_eq!(r.repeated, ["best"]);
        assert_eq!(r.runs[2].reason, "rank 3 of 3 by accuracy max, keep_top 2");
    }

    #[test]
    fn withdrawing_a_deletion_keeps_the_rank_in_the_reason() {
        let runs = vec![run("a", Some(0.9), 1), run("b", Some(0.1), 2)];
        let mut r = rank(runs, &policy(Direction::Max, 1)).unwrap();
        let protected = Decision::Protected {
            protection: Protection::KeepTag,
        };
        assert!(
            !r.withdraw("a", protected.clone()),
            "a kept run is not withdrawn"
        );
        assert!(r.withdraw("b", protected.clone()));
        assert_eq!(r.runs[1].decision, protected);
        assert_eq!(
            r.runs[1].reason,
            "rank 2 of 2 by accuracy max, keep_top 1; protected: tagged model_pruner.keep = true"
        );
        assert_eq!(r.to_delete().count(), 0);
        let skipped = Decision::Skipped {
            reason: SkipReason::NotActive,
        };
        assert!(!r.withdraw("b", skipped), "withdrawn once");
    }

    fn arb_run() -> impl Strategy<Value = RunFacts> {
        (
            "[a-f0-9]{4}",
            prop_oneof![
                Just("FINISHED".to_string()),
                Just("RUNNING".to_string()),
                Just("FAILED".to_string())
            ],
            any::<bool>(),
            proptest::option::of(0i64..5),
            proptest::option::of(prop_oneof![
                (-3i32..3).prop_map(f64::from),
                Just(f64::NAN),
                Just(f64::INFINITY)
            ]),
            any::<(bool, bool, bool, bool)>(),
        )
            .prop_map(
                |(id, status, active, end, metric, (model, pruned, keep, _))| RunFacts {
                    run_name: id.clone(),
                    run_id: id,
                    status,
                    active: active || model,
                    end_time: end,
                    metric,
                    has_model: model,
                    pruned,
                    protection: keep.then_some(Protection::KeepTag),
                },
            )
    }

    fn unique(mut runs: Vec<RunFacts>) -> Vec<RunFacts> {
        runs.sort_by(|a, b| a.run_id.cmp(&b.run_id));
        runs.dedup_by(|a, b| a.run_id == b.run_id);
        runs
    }

    proptest! {
        #[test]
        fn ranking_invariants_hold(
            runs in proptest::collection::vec(arb_run(), 0..40).prop_map(unique),
            keep_top in 0u32..8,
            max in any::<bool>(),
            seed in any::<u64>(),
        ) {
            let direction = if max { Direction::Max } else { Direction::Min };
            let p = policy(direction, keep_top);
            let Ok(r) = rank(runs.clone(), &p) else {
                // Only possible when nothing is rankable but some candidate lacks the metric.
                prop_assert!(runs.iter().all(|x| skip_reason(x).is_some()));
                return Ok(());
            };

            // Deterministic whatever the input order.
            let mut shuffled = runs.clone();
            let n = shuffled.len();
            for i in 0..n {
                let j = (seed as usize).wrapping_mul(i + 7) % n;
                shuffled.swap(i, j);
            }
            // (Compared by projection: NaN metrics make whole-struct equality fail.)
            let project = |r: &Ranking| -> Vec<(String, Option<usize>, Decision, String)> {
                r.runs
                    .iter()
                    .map(|x| (x.run.run_id.clone(), x.rank, x.decision.clone(), x.reason.clone()))
                    .collect()
            };
            prop_assert_eq!(project(&rank(shuffled, &p).unwrap()), project(&r));

            // Nothing outside the candidates, nothing protected, is ever deleted.
            for x in r.to_delete() {
                prop_assert!(skip_reason(&x.run).is_none());
                prop_assert!(x.run.protection.is_none());
                prop_assert!(x.rank.unwrap() > keep_top as usize);
            }
            // Exactly min(keep_top, ranked) runs are kept by rank.
            prop_assert_eq!(r.count("keep"), r.ranked.min(keep_top as usize));
            // Every kept run is at least as good as every deleted one.
            for k in r.runs.iter().filter(|x| x.decision == Decision::Keep) {
                for d in r.to_delete() {
                    prop_assert_ne!(compare(&k.run, &d.run, direction), Ordering::Greater);
                }
            }
            // Every input run appears exactly once.
            prop_assert_eq!(r.runs.len(), runs.len());
        }

        /// Pages read while MLflow is written to may repeat rows and come in any order: the
        /// ranking of such a read is the ranking of the distinct runs.
        #[test]
        fn repeated_and_reordered_pages_rank_like_the_distinct_runs(
            runs in proptest::collection::vec(arb_run(), 1..40).prop_map(unique),
            repeats in proptest::collection::vec(any::<prop::sample::Index>(), 0..20),
            keep_top in 0u32..8,
            seed in any::<u64>(),
        ) {
            let p = policy(Direction::Max, keep_top);
            let mut paged = runs.clone();
            paged.extend(repeats.iter().map(|i| runs[i.index(runs.len())].clone()));
            let n = paged.len();
            for i in 0..n {
                let j = (seed as usize).wrapping_mul(i + 3) % n;
                paged.swap(i, j);
            }
            let project = |r: Result<Ranking, RankingError>| {
                r.map(|r| {
                    r.runs
                        .iter()
                        .map(|x| (x.run.run_id.clone(), x.rank, x.decision.clone(), x.reason.clone()))
                        .collect::<Vec<_>>()
                })
            };
            let ranked = rank(paged, &p);
            if let Ok(r) = &ranked {
                prop_assert_eq!(r.repeated.len(), repeats.len());
            }
            prop_assert_eq!(project(ranked), project(rank(runs, &p)));
        }
    }
}
