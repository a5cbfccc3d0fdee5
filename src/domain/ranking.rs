//! Top-N ranking of an experiment's runs: which models to keep, delete, protect or skip.
//!
//! The order is total and deterministic:
//! 1. the metric's latest value in the policy's direction (NaN after every number);
//! 2. on equal values, the run that ended earlier ranks better (a missing end time ranks last);
//! 3. then run ids in byte order.
//!
//! Only candidates are ranked: active runs in status `FINISHED` that still have a stored model
//! and a value for the metric (and, with `older_than`, that finished at least that long ago).
//! With `group_by`, each group of runs sharing the param or tag value is ranked on its own; runs
//! without the key form a group of their own.
//!
//! In each group, the first `keep_top` runs whose metric is within the floor (`min_metric`,
//! `max_metric`) are kept by their rank. Below them a run is kept, in this order, when it is
//! protected, among the `keep_latest` most recently finished of its group, or finished less than
//! `grace` ago (kept until its grace ends, then deleted by a later pass). The rest are deleted.
//! Every decision names the [`Rule`] that made it.
//!
//! A run whose deletion started and did not finish (tag `model_pruner.deleting` without the
//! deleted mark: a pass stopped between its first and last key) is never a candidate: its
//! files may be partly gone, so it must not hold a slot of the top N. Unless protected, its
//! deletion is completed ([`Rule::Resume`]).
//!
//! Each run id is ranked once: a second row for an id (a paged read that repeated it) is
//! ignored and named in [`Ranking::repeated`], so it can never take a second rank and push a
//! keeper out of the top N.

use std::cmp::{Ordering, Reverse};
use std::collections::{BTreeMap, HashSet};
use std::fmt;

use serde::Serialize;
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

use crate::domain::policy::{Direction, GroupKey, RetentionPolicy};
use crate::domain::run::RunStatus;

/// What ranking needs to know about one run; built from MLflow data by the engine.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct RunFacts {
    pub run_id: String,
    pub run_name: String,
    pub status: RunStatus,
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
    /// When a pass started deleting the run's files without finishing (tag
    /// `model_pruner.deleting`, RFC 3339), if one did.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub deletion_started: Option<String>,
    /// Why the run must never be deleted, if it must not.
    pub protection: Option<Protection>,
    /// The run's value of the policy's `group_by` param or tag, if it has one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub group: Option<String>,
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
    NotFinished { status: RunStatus },
    /// The run's model was already deleted.
    AlreadyPruned,
    /// The run has no stored model.
    NoModel,
    /// The run never logged the metric: kept and reported (the metric may be misnamed).
    MissingMetric,
    /// The run shares a logged model with another run that stays: kept this pass.
    SharedModelKept { model_id: String, run_id: String },
    /// The run finished less than `older_than` ago (or has no end time): not a candidate yet.
    /// `candidate_at`: when it becomes one (milliseconds since the epoch; none without an end
    /// time), the time a later pass should look again.
    TooRecent {
        older_than: String,
        #[serde(skip_serializing_if = "Option::is_none")]
        candidate_at: Option<i64>,
    },
    /// The planned folders held no file when listed: nothing deleted, the run not marked (the
    /// model lives elsewhere: another artifact path, or a wrong `store.artifacts_destination`).
    EmptyFolder { folder: String },
    /// MLflow refused the tag that records the start of the run's deletion: nothing of it was
    /// deleted.
    NotRecorded { error: String },
    /// What the ranking used changed while the pass ran (the metric, the group, the end time,
    /// the experiment's policy): kept, the next pass decides.
    Changed { what: String },
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
            SkipReason::EmptyFolder { folder } => write!(
                f,
                "model folder {folder} holds no file: nothing deleted, not marked (is the model \
                 logged under another artifact path, or store.artifacts_destination wrong?)"
            ),
            SkipReason::NotRecorded { error } => write!(
                f,
                "MLflow refused the tag that records the start of its deletion ({error}): kept"
            ),
            SkipReason::Changed { what } => {
                write!(
                    f,
                    "changed while the pass ran ({what}): kept, the next pass decides"
                )
            }
            SkipReason::TooRecent {
                older_than,
                candidate_at,
            } => {
                write!(
                    f,
                    "finished less than {older_than} ago (older_than): not a candidate"
                )?;
                match candidate_at {
                    Some(at) => write!(f, " until {}", rfc3339(*at)),
                    None => f.write_str(" (no end time)"),
                }
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
    Protected {
        protection: Protection,
    },
    Skipped {
        /// `skip_reason` beside a run's own `reason` in JSON.
        #[serde(rename = "skip_reason")]
        reason: SkipReason,
    },
    /// Out of the top N but finished less than `grace` ago: kept until `until` (milliseconds
    /// since the epoch; none when the run has no end time, so its grace never runs out).
    Grace {
        until: Option<i64>,
    },
}

impl Decision {
    /// Short label for tables and metrics.
    pub fn label(&self) -> &'static str {
        match self {
            Decision::Keep => "keep",
            Decision::Delete => "delete",
            Decision::Protected { .. } => "protected",
            Decision::Skipped { .. } => "skipped",
            Decision::Grace { .. } => "grace",
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
            Decision::Grace { until: Some(until) } => write!(f, "grace until {}", rfc3339(*until)),
            Decision::Grace { until: None } => f.write_str("grace: no end time, kept"),
        }
    }
}

/// The rule that decided a run's fate.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Rule {
    /// Its rank among the experiment's candidates, against `keep_top`.
    Rank,
    /// Its rank within its group (`group_by`), against `keep_top`.
    Group,
    /// Among the `keep_latest` most recently finished candidates of its group.
    Latest,
    /// It finished less than `grace` ago.
    Grace,
    /// Its metric is outside `min_metric`/`max_metric`: it does not count towards the top N.
    Floor,
    /// A registry version or the keep tag.
    Protected,
    /// It finished less than `older_than` ago: not a candidate.
    Age,
    /// Not a candidate: its status, the trash, no model, already pruned, no metric value, or a
    /// logged model shared with a run that stays.
    Candidacy,
    /// A pass started deleting its files and did not finish: the deletion is completed.
    Resume,
    /// Its planned folders held no file: reported, not marked.
    Empty,
    /// What it was ranked on changed while the pass ran: kept this pass.
    Changed,
}

/// One run in the ranking, with its rank (1-based, among ranked candidates of its group) when it
/// has one.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct RankedRun {
    pub run: RunFacts,
    pub rank: Option<usize>,
    /// Written beside the other fields: `"decision": "protected", "protection": {...}`.
    #[serde(flatten)]
    pub decision: Decision,
    /// The rule that made the decision.
    pub rule: Rule,
    /// Human-readable reason naming the rule, also written to MLflow as `model_pruner.reason`
    /// on deletion.
    pub reason: String,
}

/// The outcome of ranking one experiment: ranked runs in rank order, then the skipped ones.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Ranking {
    /// Left out of JSON: the pass report beside it has it.
    #[serde(skip)]
    pub policy: RetentionPolicy,
    pub runs: Vec<RankedRun>,
    /// Number of ranked candidates.
    pub ranked: usize,
    /// Run ids that came more than once; only their first row was ranked.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub repeated: Vec<String>,
    /// With `group_by`: candidates without the key, ranked in a group of their own.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub ungrouped: Vec<String>,
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
        let rule = match &decision {
            Decision::Protected { .. } => Rule::Protected,
            Decision::Skipped {
                reason: SkipReason::EmptyFolder { .. },
            } => Rule::Empty,
            Decision::Skipped {
                reason: SkipReason::Changed { .. },
            } => Rule::Changed,
            Decision::Skipped { .. } => Rule::Candidacy,
            Decision::Keep | Decision::Delete | Decision::Grace { .. } => return false,
        };
        run.reason = format!("{}; {decision}", run.reason);
        run.decision = decision;
        run.rule = rule;
        true
    }

    /// When the earliest grace window among the runs kept by it ends, in milliseconds since
    /// the epoch.
    pub fn grace_ends(&self) -> Option<i64> {
        self.runs
            .iter()
            .filter_map(|r| match r.decision {
                Decision::Grace { until } => until,
                _ => None,
            })
            .min()
    }

    /// When the earliest run held back by time changes its fate: a grace window ends, or a run
    /// too recent for `older_than` becomes a candidate. The time a pass should look again, in
    /// milliseconds since the epoch; none when nothing waits on time.
    pub fn next_look(&self) -> Option<i64> {
        let candidates = self.runs.iter().filter_map(|r| match &r.decision {
            Decision::Skipped {
                reason: SkipReason::TooRecent { candidate_at, .. },
            } => *candidate_at,
            _ => None,
        });
        self.grace_ends().into_iter().chain(candidates).min()
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
        "none of the {candidates} runs with a stored model has a value for metric {metric:?}, \
         nor has any other run of the experiment: nothing deleted (is the metric name right?)"
    )]
    NoMetric { metric: String, candidates: usize },
    #[error(
        "none of the {candidates} candidates has a value of {metric:?} within the floor \
         ({floor}): nothing deleted (is the floor on the metric's scale?)"
    )]
    NothingWithinFloor {
        metric: String,
        candidates: usize,
        floor: String,
    },
}

/// Ranks the runs under the policy at `now` (milliseconds since the epoch, for `grace` and
/// `older_than`). Pure and deterministic: the input order does not matter.
pub fn rank(
    runs: Vec<RunFacts>,
    policy: &RetentionPolicy,
    now: i64,
) -> Result<Ranking, RankingError> {
    let mut candidates = Vec::new();
    let mut skipped = Vec::new();
    let mut seen = HashSet::new();
    let mut repeated = Vec::new();
    // Some run, candidate or not (pruned, too recent), logged the metric: its name is right,
    // and the runs without it are kept and reported rather than failing the pass.
    let mut metric_known = false;
    let mut resumed = Vec::new();
    for run in runs {
        if !seen.insert(run.run_id.clone()) {
            repeated.push(run.run_id);
            continue;
        }
        metric_known |= run.metric.is_some();
        let settled = !run.active || run.status != RunStatus::Finished || run.pruned;
        if run.deletion_started.is_some() && !settled {
            resumed.push(run);
            continue;
        }
        match skip_reason(&run, policy, now) {
            Some(reason) => skipped.push((run, reason)),
            None => candidates.push(run),
        }
    }
    let missing = skipped
        .iter()
        .filter(|(_, r)| *r == SkipReason::MissingMetric)
        .count();
    if candidates.is_empty() && missing > 0 && !metric_known {
        return Err(RankingError::NoMetric {
            metric: policy.metric.clone(),
            candidates: missing,
        });
    }

    let floored = policy.min_metric.is_some() || policy.max_metric.is_some();
    if floored
        && !candidates.is_empty()
        && !candidates
            .iter()
            .any(|r| policy.within_floor(r.metric.unwrap_or(f64::NAN)))
    {
        let floor = [
            ("min_metric", policy.min_metric),
            ("max_metric", policy.max_metric),
        ]
        .into_iter()
        .filter_map(|(name, v)| Some(format!("{name} {}", v?)))
        .collect::<Vec<_>>()
        .join(", ");
        return Err(RankingError::NothingWithinFloor {
            metric: policy.metric.clone(),
            candidates: candidates.len(),
            floor,
        });
    }

    // Groups in key order, the runs without the key last.
    let mut groups: BTreeMap<(bool, Option<String>), Vec<RunFacts>> = BTreeMap::new();
    let mut ungrouped = Vec::new();
    for run in candidates {
        let key = match &policy.group_by {
            Some(_) => run.group.clone(),
            None => None,
        };
        if policy.group_by.is_some() && key.is_none() {
            ungrouped.push(run.run_id.clone());
        }
        groups.entry((key.is_none(), key)).or_default().push(run);
    }
    ungrouped.sort();

    let total: usize = groups.values().map(Vec::len).sum();
    let mut out = Vec::with_capacity(total + resumed.len() + skipped.len());
    for ((_, value), runs) in groups {
        let group = policy.group_by.as_ref().map(|key| (key, value.as_deref()));
        out.extend(rank_group(runs, policy, group, now));
    }
    resumed.sort_by(|a, b| a.run_id.cmp(&b.run_id));
    out.extend(resumed.into_iter().map(resume));
    skipped.sort_by(|(a, _), (b, _)| a.run_id.cmp(&b.run_id));
    for (run, reason) in skipped {
        let rule = match reason {
            SkipReason::TooRecent { .. } => Rule::Age,
            _ => Rule::Candidacy,
        };
        out.push(RankedRun {
            run,
            rank: None,
            reason: reason.to_string(),
            decision: Decision::Skipped { reason },
            rule,
        });
    }
    Ok(Ranking {
        policy: policy.clone(),
        runs: out,
        ranked: total,
        repeated,
        ungrouped,
    })
}

/// Decides the runs of one group (all candidates when the policy has no `group_by`).
fn rank_group(
    mut runs: Vec<RunFacts>,
    policy: &RetentionPolicy,
    group: Option<(&GroupKey, Option<&str>)>,
    now: i64,
) -> Vec<RankedRun> {
    runs.sort_by(|a, b| compare(a, b, policy.direction));
    let latest = latest(&runs, policy.keep_latest);
    let total = runs.len();
    let keep_top = usize::try_from(policy.keep_top).unwrap_or(usize::MAX);
    let (rank_rule, scope) = match group {
        None => (Rule::Rank, String::new()),
        Some((key, Some(value))) => (Rule::Group, format!(" in group {key} = {value:?}")),
        Some((key, None)) => (Rule::Group, format!(" among the runs without {key}")),
    };
    let mut counted = 0;
    let mut out = Vec::with_capacity(total);
    for (i, run) in runs.into_iter().enumerate() {
        let rank = i + 1;
        let position = format!("rank {rank} of {total}{scope} by {policy}");
        let value = run.metric.unwrap_or(f64::NAN);
        let within = policy.within_floor(value);
        let grace_until = policy.grace.map(|grace| {
            run.end_time
                .map(|end| end.saturating_add(i64::try_from(grace.as_millis()).unwrap_or(i64::MAX)))
        });
        let (decision, rule, reason) = if within && counted < keep_top {
            counted += 1;
            (Decision::Keep, rank_rule, position)
        } else if let Some(protection) = run.protection.clone() {
            let reason = format!("{position}; protected: {protection}");
            (Decision::Protected { protection }, Rule::Protected, reason)
        } else if latest.contains(&run.run_id) {
            let reason = format!(
                "{position}; kept: among the {} latest finished (keep_latest)",
                policy.keep_latest
            );
            (Decision::Keep, Rule::Latest, reason)
        } else if let Some(until) = grace_until.filter(|u| u.is_none_or(|u| now < u)) {
            let decision = Decision::Grace { until };
            let reason = format!("{position}; {decision}");
            (decision, Rule::Grace, reason)
        } else if !within {
            let reason = format!("{position}; {}", floor_miss(policy, value));
            (Decision::Delete, Rule::Floor, reason)
        } else {
            (Decision::Delete, rank_rule, position)
        };
        out.push(RankedRun {
            run,
            rank: Some(rank),
            decision,
            rule,
            reason,
        });
    }
    out
}

/// The decision for a run whose deletion started and did not finish: completed, unless the run
/// is protected now (kept and reported: its files may be partly gone).
fn resume(run: RunFacts) -> RankedRun {
    let started = run.deletion_started.as_deref().unwrap_or_default();
    let what = format!("deletion started at {started} and did not finish");
    let (decision, rule, reason) = match run.protection.clone() {
        Some(protection) => {
            let reason = format!("{what}: files may be partly gone; protected: {protection}");
            (Decision::Protected { protection }, Rule::Protected, reason)
        }
        None => (
            Decision::Delete,
            Rule::Resume,
            format!("{what}: completing it"),
        ),
    };
    RankedRun {
        run,
        rank: None,
        decision,
        rule,
        reason,
    }
}

/// The ids of the `k` most recently finished runs; a run without an end time counts as the
/// most recent (it is kept rather than guessed at).
fn latest(runs: &[RunFacts], k: u32) -> HashSet<String> {
    let mut by_end: Vec<&RunFacts> = runs.iter().collect();
    by_end.sort_by_key(|r| (Reverse(r.end_time.unwrap_or(i64::MAX)), r.run_id.as_str()));
    by_end
        .into_iter()
        .take(usize::try_from(k).unwrap_or(usize::MAX))
        .map(|r| r.run_id.clone())
        .collect()
}

/// Why a value is outside the policy's floor.
fn floor_miss(policy: &RetentionPolicy, value: f64) -> String {
    let metric = &policy.metric;
    match (policy.min_metric, policy.max_metric) {
        (Some(min), _) if value.is_nan() || value < min => {
            format!("outside the floor: {metric} {value} < min_metric {min}")
        }
        (_, Some(max)) if value.is_nan() || value > max => {
            format!("outside the floor: {metric} {value} > max_metric {max}")
        }
        _ => format!("outside the floor: {metric} {value}"),
    }
}

/// Milliseconds since the epoch as RFC 3339, for reasons and tables.
pub fn rfc3339(ms: i64) -> String {
    OffsetDateTime::from_unix_timestamp_nanos(i128::from(ms) * 1_000_000)
        .ok()
        .and_then(|t| t.format(&Rfc3339).ok())
        .unwrap_or_else(|| format!("{ms} ms after the epoch"))
}

fn skip_reason(run: &RunFacts, policy: &RetentionPolicy, now: i64) -> Option<SkipReason> {
    if !run.active {
        Some(SkipReason::NotActive)
    } else if run.status != RunStatus::Finished {
        Some(SkipReason::NotFinished {
            status: run.status.clone(),
        })
    } else if run.pruned {
        Some(SkipReason::AlreadyPruned)
    } else if !run.has_model {
        Some(SkipReason::NoModel)
    } else if run.metric.is_none() {
        Some(SkipReason::MissingMetric)
    } else if let Some(age) = policy.older_than {
        let age_ms = i64::try_from(age.as_millis()).unwrap_or(i64::MAX);
        let candidate_at = run.end_time.map(|end| end.saturating_add(age_ms));
        let old_enough = candidate_at.is_some_and(|at| now >= at);
        (!old_enough).then(|| SkipReason::TooRecent {
            older_than: humantime_serde::re::humantime::format_duration(age).to_string(),
            candidate_at,
        })
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
    use std::time::Duration;

    fn run(id: &str, metric: Option<f64>, end: i64) -> RunFacts {
        RunFacts {
            run_id: id.into(),
            run_name: format!("name-{id}"),
            status: RunStatus::Finished,
            active: true,
            end_time: Some(end),
            metric,
            has_model: true,
            pruned: false,
            deletion_started: None,
            protection: None,
            group: None,
        }
    }

    /// "Now" in the tests: well after every end time they use.
    const NOW: i64 = 1_000_000;

    fn policy(direction: Direction, keep_top: u32) -> RetentionPolicy {
        RetentionPolicy::top("accuracy", direction, keep_top)
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
        let r = rank(runs, &policy(Direction::Max, 2), NOW).unwrap();
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
        let r = rank(runs, &policy(Direction::Min, 1), NOW).unwrap();
        assert_eq!(
            decisions(&r),
            [("a", "keep"), ("c", "delete"), ("b", "delete")]
        );
    }

    #[test]
    fn nan_metric_ranks_last_when_maximising() {
        let runs = vec![run("nan", Some(f64::NAN), 1), run("low", Some(-1e9), 2)];
        let r = rank(runs, &policy(Direction::Max, 1), NOW).unwrap();
        assert_eq!(decisions(&r), [("low", "keep"), ("nan", "delete")]);
    }

    #[test]
    fn nan_metric_ranks_last_when_minimising() {
        let runs = vec![run("nan", Some(f64::NAN), 1), run("high", Some(1e9), 2)];
        let r = rank(runs, &policy(Direction::Min, 1), NOW).unwrap();
        assert_eq!(decisions(&r), [("high", "keep"), ("nan", "delete")]);
    }

    #[test]
    fn infinities_are_ordinary_extremes() {
        let runs = vec![
            run("neg", Some(f64::NEG_INFINITY), 1),
            run("pos", Some(f64::INFINITY), 2),
            run("zero", Some(0.0), 3),
        ];
        let r = rank(runs, &policy(Direction::Max, 3), NOW).unwrap();
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
        let r = rank(runs, &policy(Direction::Max, 1), NOW).unwrap();
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
            NOW,
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
        let r = rank(runs, &policy(Direction::Max, 1), NOW).unwrap();
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
            NOW,
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
        running.status = RunStatus::Running;
        let r = rank(vec![running], &policy(Direction::Max, 0), NOW).unwrap();
        assert_eq!(decisions(&r), [("a", "skipped")]);
    }

    #[test]
    fn non_finished_runs_are_never_touched_even_with_a_bad_metric() {
        let mut runs = Vec::new();
        for status in ["RUNNING", "SCHEDULED", "FAILED", "KILLED"] {
            let mut r = run(status, Some(-100.0), 1);
            r.status = RunStatus::parse(status);
            runs.push(r);
        }
        runs.push(run("ok", Some(1.0), 1));
        let r = rank(runs, &policy(Direction::Max, 0), NOW).unwrap();
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
            NOW,
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
        let r = rank(runs, &policy(Direction::Max, 1), NOW).unwrap();
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
            NOW,
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
        let r = rank(runs, &policy(Direction::Max, 2), NOW).unwrap();
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
        let mut r = rank(runs, &policy(Direction::Max, 1), NOW).unwrap();
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

    fn with(policy: RetentionPolicy, f: impl FnOnce(&mut RetentionPolicy)) -> RetentionPolicy {
        let mut policy = policy;
        f(&mut policy);
        policy
    }

    fn rules(r: &Ranking) -> Vec<(&str, &'static str, Rule)> {
        r.runs
            .iter()
            .map(|x| (x.run.run_id.as_str(), x.decision.label(), x.rule))
            .collect()
    }

    #[test]
    fn keep_latest_keeps_the_most_recently_finished_besides_the_top() {
        let runs = vec![
            run("best", Some(0.9), 10),
            run("old", Some(0.5), 20),
            run("newest", Some(0.1), 40),
            run("newer", Some(0.2), 30),
        ];
        let p = with(policy(Direction::Max, 1), |p| p.keep_latest = 2);
        let r = rank(runs, &p, NOW).unwrap();
        assert_eq!(
            rules(&r),
            [
                ("best", "keep", Rule::Rank),
                ("old", "delete", Rule::Rank),
                ("newer", "keep", Rule::Latest),
                ("newest", "keep", Rule::Latest),
            ]
        );
        assert!(
            r.runs[2].reason.contains("keep_latest"),
            "{}",
            r.runs[2].reason
        );
    }

    #[test]
    fn keep_latest_counts_a_run_without_end_time_as_the_latest() {
        let mut no_end = run("no-end", Some(0.1), 0);
        no_end.end_time = None;
        let runs = vec![
            run("best", Some(0.9), 10),
            run("recent", Some(0.2), 50),
            no_end,
        ];
        let p = with(policy(Direction::Max, 1), |p| p.keep_latest = 1);
        let r = rank(runs, &p, NOW).unwrap();
        assert_eq!(
            decisions(&r),
            [("best", "keep"), ("recent", "delete"), ("no-end", "keep")]
        );
    }

    #[test]
    fn grace_keeps_a_recent_run_out_of_the_top_until_its_window_ends() {
        let runs = vec![
            run("best", Some(0.9), 1_000),
            run("recent", Some(0.1), NOW - 5_000),
            run("later", Some(0.2), NOW - 2_000),
            run("old", Some(0.3), NOW - 60_000),
        ];
        let p = with(policy(Direction::Max, 1), |p| {
            p.grace = Some(Duration::from_secs(20))
        });
        let r = rank(runs.clone(), &p, NOW).unwrap();
        assert_eq!(
            rules(&r),
            [
                ("best", "keep", Rule::Rank),
                ("old", "delete", Rule::Rank),
                ("later", "grace", Rule::Grace),
                ("recent", "grace", Rule::Grace),
            ]
        );
        assert_eq!(
            r.runs[3].decision,
            Decision::Grace {
                until: Some(NOW + 15_000)
            }
        );
        assert!(
            r.runs[3]
                .reason
                .contains("grace until 1970-01-01T00:16:55Z"),
            "{}",
            r.runs[3].reason
        );
        assert_eq!(r.grace_ends(), Some(NOW + 15_000));

        // Once the window has passed, the same run is deleted by its rank.
        let r = rank(runs, &p, NOW + 15_000).unwrap();
        assert_eq!(r.runs[3].decision, Decision::Delete);
        assert_eq!(r.grace_ends(), Some(NOW + 18_000));
    }

    #[test]
    fn grace_never_ends_for_a_run_without_end_time() {
        let mut no_end = run("no-end", Some(0.1), 0);
        no_end.end_time = None;
        let p = with(policy(Direction::Max, 0), |p| {
            p.grace = Some(Duration::from_secs(1))
        });
        let r = rank(vec![no_end], &p, NOW).unwrap();
        assert_eq!(r.runs[0].decision, Decision::Grace { until: None });
        assert_eq!(r.grace_ends(), None);
    }

    #[test]
    fn group_by_keeps_the_top_of_each_group_and_ranks_runs_without_the_key_apart() {
        let grouped = |id: &str, metric: f64, group: Option<&str>| RunFacts {
            group: group.map(str::to_owned),
            ..run(id, Some(metric), 1)
        };
        let runs = vec![
            grouped("b1", 0.9, Some("bert")),
            grouped("b2", 0.8, Some("bert")),
            grouped("r1", 0.3, Some("roberta")),
            grouped("r2", 0.2, Some("roberta")),
            grouped("n1", 0.5, None),
            grouped("n2", 0.4, None),
        ];
        let p = with(policy(Direction::Max, 1), |p| {
            p.group_by = Some(GroupKey::Param("base_model".into()))
        });
        let r = rank(runs, &p, NOW).unwrap();
        assert_eq!(
            rules(&r),
            [
                ("b1", "keep", Rule::Group),
                ("b2", "delete", Rule::Group),
                ("r1", "keep", Rule::Group),
                ("r2", "delete", Rule::Group),
                ("n1", "keep", Rule::Group),
                ("n2", "delete", Rule::Group),
            ]
        );
        assert_eq!(
            r.runs[1].reason,
            "rank 2 of 2 in group params.base_model = \"bert\" by accuracy max, keep_top 1 per \
             params.base_model"
        );
        assert!(
            r.runs[5]
                .reason
                .contains("among the runs without params.base_model")
        );
        assert_eq!(r.ungrouped, ["n1", "n2"]);
    }

    #[test]
    fn without_group_by_the_group_values_are_ignored() {
        let runs = vec![
            RunFacts {
                group: Some("a".into()),
                ..run("a", Some(0.9), 1)
            },
            RunFacts {
                group: Some("b".into()),
                ..run("b", Some(0.1), 1)
            },
        ];
        let r = rank(runs, &policy(Direction::Max, 1), NOW).unwrap();
        assert_eq!(decisions(&r), [("a", "keep"), ("b", "delete")]);
        assert!(r.ungrouped.is_empty());
    }

    #[test]
    fn a_run_below_the_floor_does_not_count_towards_the_top() {
        let runs = vec![
            run("good", Some(0.8), 1),
            run("poor", Some(0.3), 2),
            run("worse", Some(0.2), 3),
        ];
        let p = with(policy(Direction::Max, 3), |p| p.min_metric = Some(0.5));
        let r = rank(runs.clone(), &p, NOW).unwrap();
        assert_eq!(
            rules(&r),
            [
                ("good", "keep", Rule::Rank),
                ("poor", "delete", Rule::Floor),
                ("worse", "delete", Rule::Floor),
            ]
        );
        assert!(
            r.runs[1]
                .reason
                .ends_with("outside the floor: accuracy 0.3 < min_metric 0.5"),
            "{}",
            r.runs[1].reason
        );
        // keep_latest still keeps the latest, within the floor or not.
        let p = with(p, |p| p.keep_latest = 1);
        let r = rank(runs, &p, NOW).unwrap();
        assert_eq!(r.runs[2].rule, Rule::Latest);
    }

    #[test]
    fn a_floor_nothing_is_within_deletes_nothing_and_says_so() {
        let runs = vec![run("a", Some(0.8), 1), run("b", Some(0.3), 2)];
        let p = with(policy(Direction::Max, 1), |p| p.min_metric = Some(80.0));
        let err = rank(runs, &p, NOW).unwrap_err();
        assert_eq!(
            err.to_string(),
            "none of the 2 candidates has a value of \"accuracy\" within the floor (min_metric \
             80): nothing deleted (is the floor on the metric's scale?)"
        );
    }

    #[test]
    fn max_metric_is_the_floor_of_a_loss_and_nan_is_never_within_it() {
        let runs = vec![
            run("low", Some(0.1), 1),
            run("high", Some(2.0), 2),
            run("nan", Some(f64::NAN), 3),
        ];
        let p = with(policy(Direction::Min, 3), |p| p.max_metric = Some(1.0));
        let r = rank(runs, &p, NOW).unwrap();
        assert_eq!(
            rules(&r),
            [
                ("low", "keep", Rule::Rank),
                ("high", "delete", Rule::Floor),
                ("nan", "delete", Rule::Floor),
            ]
        );
        assert!(r.runs[1].reason.ends_with("accuracy 2 > max_metric 1"));
    }

    #[test]
    fn a_floor_above_the_best_runs_keeps_the_ones_within_it() {
        // max_metric on a maximised metric: the best values are outside the floor.
        let runs = vec![run("suspicious", Some(1.0), 1), run("fine", Some(0.7), 2)];
        let p = with(policy(Direction::Max, 1), |p| p.max_metric = Some(0.99));
        let r = rank(runs, &p, NOW).unwrap();
        assert_eq!(
            rules(&r),
            [
                ("suspicious", "delete", Rule::Floor),
                ("fine", "keep", Rule::Rank),
            ]
        );
    }

    #[test]
    fn older_than_leaves_recent_runs_out_of_the_candidates() {
        let mut no_end = run("no-end", Some(0.0), 0);
        no_end.end_time = None;
        let runs = vec![
            run("old-good", Some(0.9), NOW - 100_000),
            run("old-poor", Some(0.1), NOW - 100_000),
            run("young", Some(0.0), NOW - 1_000),
            no_end,
        ];
        let p = with(policy(Direction::Max, 1), |p| {
            p.older_than = Some(Duration::from_secs(60))
        });
        let r = rank(runs, &p, NOW).unwrap();
        assert_eq!(
            rules(&r),
            [
                ("old-good", "keep", Rule::Rank),
                ("old-poor", "delete", Rule::Rank),
                ("no-end", "skipped", Rule::Age),
                ("young", "skipped", Rule::Age),
            ]
        );
        assert_eq!(r.ranked, 2);
        assert_eq!(
            r.runs[3].reason,
            "finished less than 1m ago (older_than): not a candidate until 1970-01-01T00:17:39Z"
        );
        assert_eq!(
            r.runs[2].reason,
            "finished less than 1m ago (older_than): not a candidate (no end time)"
        );
        // The young run becomes a candidate 59 s from now: a pass should look again then.
        assert_eq!(r.next_look(), Some(NOW + 59_000));
        assert_eq!(r.grace_ends(), None);
    }

    #[test]
    fn the_next_look_is_the_earlier_of_a_grace_end_and_a_run_coming_of_age() {
        let runs = vec![
            run("best", Some(0.9), NOW - 100_000),
            run("in-grace", Some(0.1), NOW - 5_000),
            run("young", Some(0.0), NOW - 1_000),
        ];
        let p = with(policy(Direction::Max, 1), |p| {
            p.older_than = Some(Duration::from_secs(2));
            p.grace = Some(Duration::from_secs(10));
        });
        let r = rank(runs, &p, NOW).unwrap();
        assert_eq!(r.grace_ends(), Some(NOW + 5_000));
        assert_eq!(r.next_look(), Some(NOW + 1_000));
    }

    #[test]
    fn a_run_without_the_metric_fails_nothing_when_other_runs_have_it() {
        // Every candidate is too young or already pruned; one run lacks the metric. The metric's
        // name is right (other runs logged it): the run is kept and reported, the pass goes on.
        let mut pruned = run("pruned", Some(0.5), NOW - 100_000);
        pruned.pruned = true;
        let runs = vec![
            pruned,
            run("young", Some(0.2), NOW - 1_000),
            run("no-metric", None, NOW - 100_000),
        ];
        let p = with(policy(Direction::Max, 1), |p| {
            p.older_than = Some(Duration::from_secs(60))
        });
        let r = rank(runs, &p, NOW).unwrap();
        assert_eq!(r.missing_metric().count(), 1);
        assert_eq!(r.ranked, 0);
        assert_eq!(r.count("delete"), 0);
    }

    #[test]
    fn a_run_whose_deletion_did_not_finish_is_completed_and_never_takes_a_slot() {
        let started = |id: &str, metric: f64| RunFacts {
            deletion_started: Some("2026-12-01T10:00:00Z".into()),
            ..run(id, Some(metric), 1)
        };
        let mut registered = started("registered", 0.95);
        registered.protection = Some(Protection::KeepTag);
        let mut trashed = started("trashed", 0.97);
        trashed.active = false;
        // The best value of all, but its files may be partly gone: it is not ranked, and the
        // two whole models keep their slots.
        let runs = vec![
            started("half-gone", 0.99),
            registered,
            trashed,
            run("a", Some(0.5), 1),
            run("b", Some(0.4), 1),
        ];
        let r = rank(runs, &policy(Direction::Max, 2), NOW).unwrap();
        assert_eq!(
            rules(&r),
            [
                ("a", "keep", Rule::Rank),
                ("b", "keep", Rule::Rank),
                ("half-gone", "delete", Rule::Resume),
                ("registered", "protected", Rule::Protected),
                ("trashed", "skipped", Rule::Candidacy),
            ]
        );
        assert_eq!(r.ranked, 2);
        assert_eq!(
            r.runs[2].reason,
            "deletion started at 2026-12-01T10:00:00Z and did not finish: completing it"
        );
        assert!(
            r.runs[3].reason.contains("files may be partly gone"),
            "{}",
            r.runs[3].reason
        );
    }

    #[test]
    fn withdrawals_for_an_empty_folder_or_a_change_name_their_own_rule() {
        let mut r = rank(
            vec![
                run("a", Some(0.5), 1),
                run("b", Some(0.4), 1),
                run("c", Some(0.3), 1),
            ],
            &policy(Direction::Max, 1),
            NOW,
        )
        .unwrap();
        let empty = SkipReason::EmptyFolder {
            folder: "s3://mlflow/1/b/artifacts/model/".into(),
        };
        assert!(r.withdraw("b", Decision::Skipped { reason: empty }));
        let changed = SkipReason::Changed {
            what: "accuracy 0.3 -> 0.99".into(),
        };
        assert!(r.withdraw("c", Decision::Skipped { reason: changed }));
        assert_eq!(
            rules(&r),
            [
                ("a", "keep", Rule::Rank),
                ("b", "skipped", Rule::Empty),
                ("c", "skipped", Rule::Changed),
            ]
        );
        assert!(
            r.runs[1].reason.contains("holds no file"),
            "{}",
            r.runs[1].reason
        );
    }

    #[test]
    fn protection_is_named_before_latest_and_grace() {
        let mut kept = run("kept", Some(0.1), NOW - 1);
        kept.protection = Some(Protection::KeepTag);
        let p = with(policy(Direction::Max, 0), |p| {
            p.keep_latest = 1;
            p.grace = Some(Duration::from_secs(60));
        });
        let r = rank(vec![kept], &p, NOW).unwrap();
        assert_eq!(rules(&r), [("kept", "protected", Rule::Protected)]);
    }

    fn arb_run() -> impl Strategy<Value = RunFacts> {
        (
            "[a-f0-9]{4}",
            prop_oneof![
                Just(RunStatus::Finished),
                Just(RunStatus::Running),
                Just(RunStatus::Failed)
            ],
            any::<bool>(),
            proptest::option::of(0i64..5),
            proptest::option::of(prop_oneof![
                (-3i32..3).prop_map(f64::from),
                Just(f64::NAN),
                Just(f64::INFINITY)
            ]),
            any::<(bool, bool, bool, u8)>(),
            proptest::option::of(prop_oneof![Just("x".to_string()), Just("y".to_string())]),
        )
            .prop_map(
                |(id, status, active, end, metric, (model, pruned, keep, started), group)| {
                    RunFacts {
                        run_name: id.clone(),
                        run_id: id,
                        status,
                        active: active || model,
                        end_time: end,
                        metric,
                        has_model: model,
                        pruned,
                        // One run in eight was left half deleted by an earlier pass.
                        deletion_started: (started % 8 == 0).then(|| "2026-01-01T00:00:00Z".into()),
                        protection: keep.then_some(Protection::KeepTag),
                        group,
                    }
                },
            )
    }

    /// Any policy the new rules allow, around the end times `arb_run` draws (0..5 ms).
    fn arb_policy() -> impl Strategy<Value = RetentionPolicy> {
        (
            0u32..4,
            any::<bool>(),
            0u32..3,
            proptest::option::of(0u64..6),
            any::<bool>(),
            proptest::option::of(-2i32..2),
            proptest::option::of(-1i32..3),
            proptest::option::of(0u64..6),
        )
            .prop_map(
                |(keep_top, max, keep_latest, grace, grouped, min, max_metric, older_than)| {
                    let direction = if max { Direction::Max } else { Direction::Min };
                    RetentionPolicy {
                        keep_latest,
                        grace: grace.map(Duration::from_millis),
                        group_by: grouped.then(|| GroupKey::Param("base".into())),
                        min_metric: min.map(f64::from),
                        max_metric: max_metric.map(f64::from),
                        older_than: older_than.map(Duration::from_millis),
                        ..RetentionPolicy::top("accuracy", direction, keep_top)
                    }
                },
            )
    }

    /// What the rules promise to keep, computed from the policy's definition without the
    /// ranking code: per group (or all), the best `keep_top` within the floor, the
    /// `keep_latest` most recently finished, runs within grace, protected or not finished. A
    /// run whose deletion started is never a candidate.
    fn must_keep(runs: &[RunFacts], p: &RetentionPolicy, now: i64) -> HashSet<String> {
        let mut keep = HashSet::new();
        let candidates: Vec<&RunFacts> = runs
            .iter()
            .filter(|r| r.deletion_started.is_none() && skip_reason(r, p, now).is_none())
            .collect();
        let group_of = |r: &RunFacts| p.group_by.as_ref().and(r.group.clone());
        for run in &candidates {
            let peers: Vec<&&RunFacts> = candidates
                .iter()
                .filter(|o| group_of(o) == group_of(run))
                .collect();
            let better_within = peers
                .iter()
                .filter(|o| {
                    p.within_floor(o.metric.unwrap_or(f64::NAN))
                        && compare(o, run, p.direction) == Ordering::Less
                })
                .count();
            let later = peers
                .iter()
                .filter(|o| {
                    let end = |r: &RunFacts| r.end_time.unwrap_or(i64::MAX);
                    (Reverse(end(o)), &o.run_id) < (Reverse(end(run)), &run.run_id)
                })
                .count();
            let top = p.within_floor(run.metric.unwrap_or(f64::NAN))
                && better_within < p.keep_top as usize;
            let latest = later < p.keep_latest as usize;
            let in_grace = p.grace.is_some_and(|g| {
                run.end_time
                    .is_none_or(|end| now < end + g.as_millis() as i64)
            });
            if top || latest || in_grace || run.protection.is_some() {
                keep.insert(run.run_id.clone());
            }
        }
        for run in runs {
            if run.status != RunStatus::Finished || !run.active || run.protection.is_some() {
                keep.insert(run.run_id.clone());
            }
        }
        keep
    }

    /// A run whose deletion did not finish: completed unless settled or protected.
    fn resumable(run: &RunFacts) -> bool {
        run.deletion_started.is_some()
            && run.active
            && run.status == RunStatus::Finished
            && !run.pruned
            && run.protection.is_none()
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
            let Ok(r) = rank(runs.clone(), &p, NOW) else {
                // Only possible when nothing is rankable but some candidate lacks the metric.
                prop_assert!(runs.iter().all(|x| skip_reason(x, &p, NOW).is_some()));
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
            prop_assert_eq!(project(&rank(shuffled, &p, NOW).unwrap()), project(&r));

            // Nothing outside the candidates, nothing protected, is ever deleted, but for the
            // completion of an unfinished deletion.
            for x in r.to_delete() {
                prop_assert!(x.run.protection.is_none());
                if x.rule == Rule::Resume {
                    prop_assert!(resumable(&x.run) && x.rank.is_none());
                    continue;
                }
                prop_assert!(skip_reason(&x.run, &p, NOW).is_none());
                prop_assert!(x.run.deletion_started.is_none());
                prop_assert!(x.rank.unwrap() > keep_top as usize);
            }
            // Every resumable run is completed.
            for x in r.runs.iter().filter(|x| resumable(&x.run)) {
                prop_assert_eq!(x.rule, Rule::Resume);
            }
            // Exactly min(keep_top, ranked) runs are kept by rank.
            prop_assert_eq!(r.count("keep"), r.ranked.min(keep_top as usize));
            // Every kept run is at least as good as every deleted one.
            for k in r.runs.iter().filter(|x| x.decision == Decision::Keep) {
                for d in r.to_delete().filter(|d| d.rule != Rule::Resume) {
                    prop_assert_ne!(compare(&k.run, &d.run, direction), Ordering::Greater);
                }
            }
            // Every input run appears exactly once.
            prop_assert_eq!(r.runs.len(), runs.len());
        }

        /// Whatever the policy, a run that is in the top N of its group, among its latest K,
        /// within grace, protected or unfinished is never deleted; and a deletion always names
        /// the rule that made it.
        #[test]
        fn no_policy_deletes_a_run_any_rule_keeps(
            runs in proptest::collection::vec(arb_run(), 0..40).prop_map(unique),
            p in arb_policy(),
            now in 0i64..10,
        ) {
            let Ok(r) = rank(runs.clone(), &p, now) else {
                return Ok(());
            };
            let keep = must_keep(&runs, &p, now);
            for x in r.to_delete() {
                prop_assert!(!keep.contains(&x.run.run_id), "{} deleted: {}", x.run.run_id, x.reason);
                if x.rule == Rule::Resume {
                    prop_assert!(resumable(&x.run), "{}", x.reason);
                    continue;
                }
                prop_assert!(matches!(x.rule, Rule::Rank | Rule::Group | Rule::Floor));
                prop_assert!(x.reason.starts_with("rank "), "{}", x.reason);
            }
            // And the rest is deleted: nothing kept that no rule keeps.
            for x in &r.runs {
                if x.rank.is_some() && !keep.contains(&x.run.run_id) {
                    prop_assert_eq!(&x.decision, &Decision::Delete, "{}", x.reason);
                }
            }
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
            let ranked = rank(paged, &p, NOW);
            if let Ok(r) = &ranked {
                prop_assert_eq!(r.repeated.len(), repeats.len());
            }
            prop_assert_eq!(project(ranked), project(rank(runs, &p, NOW)));
        }
    }
}
