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

use crate::domain::policy::{Direction, GroupKey, RetentionPolicy};
use crate::domain::run::RunStatus;
use crate::domain::time::EpochMs;

/// What ranking needs to know about one run; built from MLflow data by the engine.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct RunFacts {
    /// MLflow's id of the run.
    pub run_id: String,
    /// The run's name in MLflow (`info.run_name` or the `mlflow.runName` tag); empty when it
    /// has none.
    pub run_name: String,
    /// The run's MLflow status; only `FINISHED` runs are candidates.
    pub status: RunStatus,
    /// Lifecycle stage is `active` (not in MLflow's trash).
    pub active: bool,
    /// End time in milliseconds since the epoch.
    pub end_time: Option<EpochMs>,
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
    Registered {
        /// The registered model's name.
        name: String,
        /// The version's number, as MLflow writes it (a string).
        version: String,
    },
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
    NotFinished {
        /// The run's status in MLflow.
        status: RunStatus,
    },
    /// The run's model was already deleted.
    AlreadyPruned,
    /// The run has no stored model.
    NoModel,
    /// The run never logged the metric: kept and reported (the metric may be misnamed).
    MissingMetric,
    /// The run shares a logged model with another run that stays: kept this pass.
    SharedModelKept {
        /// The logged model both runs carry.
        model_id: String,
        /// The other run, which stays.
        run_id: String,
    },
    /// The run finished less than `older_than` ago (or has no end time): not a candidate yet.
    /// `candidate_at`: when it becomes one (none without an end time), the time a later pass
    /// should look again.
    TooRecent {
        /// The policy's `older_than`, formatted for people (`30days`).
        older_than: String,
        /// When the run becomes a candidate (its end time plus `older_than`); none without an
        /// end time.
        #[serde(skip_serializing_if = "Option::is_none")]
        candidate_at: Option<EpochMs>,
    },
    /// The planned folders held no file when listed: nothing deleted, the run not marked (the
    /// model lives elsewhere: another artifact path, or a wrong `store.artifacts_destination`).
    EmptyFolder {
        /// The run's first planned model folder, as `s3://<bucket>/<prefix>`.
        folder: String,
    },
    /// MLflow refused the tag that records the start of the run's deletion: nothing of it was
    /// deleted.
    NotRecorded {
        /// MLflow's error, as text.
        error: String,
    },
    /// What the ranking used changed while the pass ran (the metric, the group, the end time,
    /// the experiment's policy): kept, the next pass decides.
    Changed {
        /// What changed (`accuracy 0.8 -> 0.9`, `end time ... -> ...`, `policy ... -> ...`, or a
        /// keeper's change such as `kept run <id>: gone`).
        what: String,
    },
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
                    Some(at) => write!(f, " until {at}"),
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
    /// Kept by its rank (within `keep_top` and the floor), or among the `keep_latest` most
    /// recently finished.
    Keep,
    /// Kept by no rule: its model files are to be deleted and the run marked (not in a dry run).
    Delete,
    /// Kept whatever its rank: its model backs a registry version, or it has the keep tag.
    Protected {
        /// What protects it.
        protection: Protection,
    },
    /// Not ranked (not a candidate), or taken out of the deletions by the pass's last look:
    /// nothing is done to it.
    Skipped {
        /// `skip_reason` beside a run's own `reason` in JSON.
        #[serde(rename = "skip_reason")]
        reason: SkipReason,
    },
    /// Out of the top N but finished less than `grace` ago: kept until `until` (none when the
    /// run has no end time, so its grace never runs out).
    Grace {
        /// The run's end time plus `grace`; none without an end time.
        until: Option<EpochMs>,
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
            Decision::Grace { until: Some(until) } => write!(f, "grace until {until}"),
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
    /// What the run was ranked on, as read at the start of the pass.
    pub run: RunFacts,
    /// 1-based rank among the ranked candidates of its group; none for a run that was not
    /// ranked (skipped, or a deletion being resumed).
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
    /// Every run read (a repeated row left out): the ranked ones group by group in rank order,
    /// then the deletions being resumed, then the skipped ones, each of those two by run id.
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

    /// When the earliest grace window among the runs kept by it ends.
    pub fn grace_ends(&self) -> Option<EpochMs> {
        self.runs
            .iter()
            .filter_map(|r| match r.decision {
                Decision::Grace { until } => until,
                _ => None,
            })
            .min()
    }

    /// When the earliest run held back by time changes its fate: a grace window ends, or a run
    /// too recent for `older_than` becomes a candidate. The time a pass should look again;
    /// none when nothing waits on time.
    pub fn next_look(&self) -> Option<EpochMs> {
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
    /// Runs have a stored model but no run of the experiment logged the metric: probably a
    /// misnamed metric.
    #[error(
        "none of the {candidates} runs with a stored model has a value for metric {metric:?}, \
         nor has any other run of the experiment: nothing deleted (is the metric name right?)"
    )]
    NoMetric {
        /// The policy's metric.
        metric: String,
        /// Finished runs with a stored model, none with a value for the metric.
        candidates: usize,
    },
    /// No candidate's metric is within `min_metric`/`max_metric`: probably a floor on the wrong
    /// scale.
    #[error(
        "none of the {candidates} candidates has a value of {metric:?} within the floor \
         ({floor}): nothing deleted (is the floor on the metric's scale?)"
    )]
    NothingWithinFloor {
        /// The policy's metric.
        metric: String,
        /// Candidates ranked, none within the floor.
        candidates: usize,
        /// The floor as set (`min_metric 0.5, max_metric 1`).
        floor: String,
    },
}

/// Ranks the runs under the policy at `now` (for `grace` and `older_than`). Pure and deterministic: the input order does not matter.
pub fn rank(
    runs: Vec<RunFacts>,
    policy: &RetentionPolicy,
    now: EpochMs,
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
    now: EpochMs,
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
        let grace_until = policy
            .grace
            .map(|grace| run.end_time.map(|end| end.saturating_add(grace)));
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
    by_end.sort_by_key(|r| {
        (
            Reverse(r.end_time.unwrap_or(EpochMs::MAX)),
            r.run_id.as_str(),
        )
    });
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

fn skip_reason(run: &RunFacts, policy: &RetentionPolicy, now: EpochMs) -> Option<SkipReason> {
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
        let candidate_at = run.end_time.map(|end| end.saturating_add(age));
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
mod tests;
