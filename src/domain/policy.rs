//! The retention policy of an experiment and how it is resolved: the event's fields first,
//! then the experiment's `model_pruner.*` tags, then the settings.

use std::collections::BTreeMap;
use std::fmt;
use std::str::FromStr;
use std::time::Duration;

use humantime_serde::re::humantime;
use serde::{Deserialize, Serialize};

/// Experiment tag naming the main metric.
pub const TAG_METRIC: &str = "model_pruner.metric";
/// Experiment tag naming the direction (`max` or `min`).
pub const TAG_DIRECTION: &str = "model_pruner.direction";
/// Experiment tag naming how many models to keep.
pub const TAG_KEEP_TOP: &str = "model_pruner.keep_top";
/// Experiment tag naming how many of the latest finished runs to keep besides the top N.
pub const TAG_KEEP_LATEST: &str = "model_pruner.keep_latest";
/// Experiment tag naming how long a finished run is left alone (`20s`, `2h`).
pub const TAG_GRACE: &str = "model_pruner.grace";
/// Experiment tag naming the param or tag the runs are grouped by (`params.base_model`).
pub const TAG_GROUP_BY: &str = "model_pruner.group_by";
/// Experiment tag naming the lowest metric value that counts towards the top N.
pub const TAG_MIN_METRIC: &str = "model_pruner.min_metric";
/// Experiment tag naming the highest metric value that counts towards the top N.
pub const TAG_MAX_METRIC: &str = "model_pruner.max_metric";
/// Experiment tag naming the age a run must have reached to be a candidate at all (`30d`).
pub const TAG_OLDER_THAN: &str = "model_pruner.older_than";

/// The longest `grace`: a follow-up pass waits at most this long (plus a second).
pub const MAX_GRACE: Duration = Duration::from_secs(90 * 86_400);

/// Which end of the metric is best.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Direction {
    /// Higher is better (accuracy).
    Max,
    /// Lower is better (a loss).
    Min,
}

impl FromStr for Direction {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.trim().to_ascii_lowercase().as_str() {
            "max" => Ok(Direction::Max),
            "min" => Ok(Direction::Min),
            _ => Err("must be \"max\" or \"min\"".to_owned()),
        }
    }
}

impl fmt::Display for Direction {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Direction::Max => "max",
            Direction::Min => "min",
        })
    }
}

/// What runs are grouped by before ranking: a param or a tag, written as MLflow's search
/// syntax writes it (`params.base_model`, ``tags.`data set` ``).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum GroupKey {
    /// A run param, by name (`params.base_model`).
    Param(String),
    /// A run tag, by name (`tags.dataset`).
    Tag(String),
}

impl GroupKey {
    /// The name of the param or tag.
    pub fn name(&self) -> &str {
        match self {
            GroupKey::Param(name) | GroupKey::Tag(name) => name,
        }
    }
}

impl FromStr for GroupKey {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        const EXPECTED: &str = "must be params.<name> or tags.<name>";
        let (kind, name) = s.trim().split_once('.').ok_or(EXPECTED)?;
        let name = name
            .strip_prefix('`')
            .and_then(|n| n.strip_suffix('`'))
            .unwrap_or(name);
        if name.trim().is_empty() {
            return Err(format!("{EXPECTED}: the name is empty"));
        }
        match kind {
            "params" | "param" => Ok(GroupKey::Param(name.to_owned())),
            "tags" | "tag" => Ok(GroupKey::Tag(name.to_owned())),
            _ => Err(EXPECTED.to_owned()),
        }
    }
}

impl fmt::Display for GroupKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let (kind, name) = match self {
            GroupKey::Param(name) => ("params", name),
            GroupKey::Tag(name) => ("tags", name),
        };
        if name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
            write!(f, "{kind}.{name}")
        } else {
            write!(f, "{kind}.`{name}`")
        }
    }
}

impl Serialize for GroupKey {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

/// The policy a ranking pass applies.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct RetentionPolicy {
    /// The metric runs are ranked by, as logged in MLflow (e.g. `accuracy`); its latest value
    /// counts.
    pub metric: String,
    /// Which end of the metric is best: `max` keeps the highest values, `min` the lowest.
    pub direction: Direction,
    /// Models kept by rank (per group with `group_by`).
    pub keep_top: u32,
    /// The most recently finished candidates kept besides the top N (per group).
    pub keep_latest: u32,
    /// A run that finished less than this ago is not deleted yet.
    #[serde(with = "humantime_serde", skip_serializing_if = "Option::is_none")]
    pub grace: Option<Duration>,
    /// Ranking and `keep_top` apply within each group of runs sharing this param or tag.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub group_by: Option<GroupKey>,
    /// A run whose metric is below this does not count towards the top N.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub min_metric: Option<f64>,
    /// A run whose metric is above this does not count towards the top N.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_metric: Option<f64>,
    /// Only runs that finished at least this long ago are candidates.
    #[serde(with = "humantime_serde", skip_serializing_if = "Option::is_none")]
    pub older_than: Option<Duration>,
}

impl RetentionPolicy {
    /// The policy of earlier versions: rank by `metric`, keep the best `keep_top`.
    pub fn top(metric: &str, direction: Direction, keep_top: u32) -> Self {
        RetentionPolicy {
            metric: metric.to_owned(),
            direction,
            keep_top,
            keep_latest: 0,
            grace: None,
            group_by: None,
            min_metric: None,
            max_metric: None,
            older_than: None,
        }
    }

    /// The metric value is within `min_metric` and `max_metric` (a NaN never is, once a floor
    /// is set).
    pub fn within_floor(&self, value: f64) -> bool {
        let above = self.min_metric.is_none_or(|min| value >= min);
        let below = self.max_metric.is_none_or(|max| value <= max);
        above && below
    }
}

impl fmt::Display for RetentionPolicy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} {}, keep_top {}",
            self.metric, self.direction, self.keep_top
        )?;
        if let Some(group_by) = &self.group_by {
            write!(f, " per {group_by}")?;
        }
        if self.keep_latest > 0 {
            write!(f, ", keep_latest {}", self.keep_latest)?;
        }
        if let Some(min) = self.min_metric {
            write!(f, ", min_metric {min}")?;
        }
        if let Some(max) = self.max_metric {
            write!(f, ", max_metric {max}")?;
        }
        if let Some(grace) = self.grace {
            write!(f, ", grace {}", humantime::format_duration(grace))?;
        }
        if let Some(age) = self.older_than {
            write!(f, ", older_than {}", humantime::format_duration(age))?;
        }
        Ok(())
    }
}

/// The settings' policy: what applies when neither the event nor the experiment's tags say.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct PolicyDefaults {
    /// The metric runs are ranked by, as logged in MLflow (`accuracy` by default).
    pub metric: String,
    /// Which end of the metric is best (`max` by default).
    pub direction: Direction,
    /// Models kept by rank, per group with `group_by` (10 by default; 0 keeps none).
    pub keep_top: u32,
    /// A run.finished pass that would delete more models than this deletes nothing and fails.
    pub max_deletions_per_pass: u32,
    /// The most recently finished candidates kept besides the top N, per group (0 by default).
    #[serde(default)]
    pub keep_latest: u32,
    /// A run that finished less than this ago is not deleted yet; off when unset (at most 90d,
    /// checked when the worker starts).
    #[serde(
        default,
        with = "humantime_serde",
        skip_serializing_if = "Option::is_none"
    )]
    pub grace: Option<Duration>,
    /// `params.<name>` or `tags.<name>` the runs are grouped by, as written in the settings
    /// (parsed when the policy is resolved); no grouping when unset.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub group_by: Option<String>,
    /// A run whose metric is below this does not count towards the top N; no floor when unset.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub min_metric: Option<f64>,
    /// A run whose metric is above this does not count towards the top N; no ceiling when
    /// unset.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_metric: Option<f64>,
    /// Only runs that finished at least this long ago are candidates; off when unset.
    #[serde(
        default,
        with = "humantime_serde",
        skip_serializing_if = "Option::is_none"
    )]
    pub older_than: Option<Duration>,
}

/// Policy fields carried by an event; each is optional. Kept loosely typed so that a bad value
/// is reported with its source instead of as an unreadable message.
#[derive(Debug, Clone, Default, PartialEq, Deserialize, Serialize)]
pub struct PolicyOverrides {
    /// The metric runs are ranked by, as logged in MLflow; must not be empty.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub metric: Option<String>,
    /// `max` or `min` (any case); anything else is a policy error.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub direction: Option<String>,
    /// Models kept by rank, per group; a negative value is a policy error, not a parse error.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub keep_top: Option<i64>,
    /// The most recently finished candidates kept besides the top N, per group; a negative
    /// value is a policy error.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub keep_latest: Option<i64>,
    /// A duration (`20s`, `2h`); `0s` turns a tag's or the settings' grace off.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub grace: Option<String>,
    /// `params.<name>` or `tags.<name>`; `""` turns a tag's or the settings' grouping off.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub group_by: Option<String>,
    /// The lowest metric value that counts towards the top N.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub min_metric: Option<f64>,
    /// The highest metric value that counts towards the top N.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_metric: Option<f64>,
    /// A duration (`30d`); `0s` turns a tag's or the settings' age limit off.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub older_than: Option<String>,
}

/// Where a policy value came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum PolicySource {
    /// The event's `policy` field (for a command, its policy options).
    Event,
    /// One of the experiment's `model_pruner.*` tags.
    ExperimentTag,
    /// The settings' `[policy]` section.
    Settings,
}

impl fmt::Display for PolicySource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            PolicySource::Event => "the event's policy",
            PolicySource::ExperimentTag => "the experiment's tags",
            PolicySource::Settings => "the settings",
        })
    }
}

/// A policy value that cannot be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid retention policy: {field} = {value:?} from {origin}: {reason}")]
pub struct PolicyError {
    /// The policy field's name (`keep_top`, `grace`...).
    pub field: &'static str,
    /// The refused value, as text.
    pub value: String,
    /// Where the value came from.
    pub origin: PolicySource,
    /// What is wrong with it (`must be at most 90d`).
    pub reason: String,
}

/// Checks overrides on their own, with the rules a pass applies: each field must read, and a
/// floor pair given together must hold. What they combine with (an experiment's tags, the
/// settings' floors) is checked when a pass resolves the policy, so nothing is refused here that
/// an experiment's tags could make valid.
pub fn check_overrides(
    overrides: &PolicyOverrides,
    defaults: &PolicyDefaults,
) -> Result<(), PolicyError> {
    let without_floors = PolicyDefaults {
        min_metric: None,
        max_metric: None,
        ..defaults.clone()
    };
    resolve(overrides, &BTreeMap::new(), &without_floors).map(drop)
}

/// Each policy field with the experiment tag that sets it, in the policy's order.
const FIELDS: [(&str, &str); 9] = [
    ("metric", TAG_METRIC),
    ("direction", TAG_DIRECTION),
    ("keep_top", TAG_KEEP_TOP),
    ("keep_latest", TAG_KEEP_LATEST),
    ("grace", TAG_GRACE),
    ("group_by", TAG_GROUP_BY),
    ("min_metric", TAG_MIN_METRIC),
    ("max_metric", TAG_MAX_METRIC),
    ("older_than", TAG_OLDER_THAN),
];

/// Whether an experiment opted in to sweeps over the fleet: one of its tags sets a policy field.
pub fn opted_in(experiment_tags: &BTreeMap<String, String>) -> bool {
    FIELDS
        .iter()
        .any(|(_, tag)| experiment_tags.contains_key(*tag))
}

/// Where [`resolve`] takes each field from (same order: event, experiment tags, settings), as
/// the fields of each source.
pub fn origins(
    event: &PolicyOverrides,
    experiment_tags: &BTreeMap<String, String>,
) -> BTreeMap<PolicySource, Vec<&'static str>> {
    let given = serde_json::to_value(event).unwrap_or_default();
    let mut out: BTreeMap<PolicySource, Vec<&'static str>> = BTreeMap::new();
    for (field, tag) in FIELDS {
        let source = if given.get(field).is_some() {
            PolicySource::Event
        } else if experiment_tags.contains_key(tag) {
            PolicySource::ExperimentTag
        } else {
            PolicySource::Settings
        };
        out.entry(source).or_default().push(field);
    }
    out
}

/// Resolves each field independently, first match wins: event, experiment tags, settings.
pub fn resolve(
    event: &PolicyOverrides,
    experiment_tags: &BTreeMap<String, String>,
    defaults: &PolicyDefaults,
) -> Result<RetentionPolicy, PolicyError> {
    let field = |field: &'static str, event: Option<String>, tag: &str, default: String| {
        let (value, origin) = pick(event, experiment_tags.get(tag).cloned(), default);
        Value {
            field,
            value,
            origin,
        }
    };
    let number = |n: f64| n.to_string();
    let optional = |v: Option<String>| v.unwrap_or_default();
    let duration =
        |d: Option<Duration>| optional(d.map(|d| humantime::format_duration(d).to_string()));

    let metric = field(
        "metric",
        event.metric.clone(),
        TAG_METRIC,
        defaults.metric.clone(),
    );
    if metric.value.trim().is_empty() {
        return Err(metric.error("must not be empty"));
    }
    let direction = field(
        "direction",
        event.direction.clone(),
        TAG_DIRECTION,
        defaults.direction.to_string(),
    );
    let keep_top = field(
        "keep_top",
        event.keep_top.map(|n| n.to_string()),
        TAG_KEEP_TOP,
        defaults.keep_top.to_string(),
    );
    let keep_latest = field(
        "keep_latest",
        event.keep_latest.map(|n| n.to_string()),
        TAG_KEEP_LATEST,
        defaults.keep_latest.to_string(),
    );
    let grace = field(
        "grace",
        event.grace.clone(),
        TAG_GRACE,
        duration(defaults.grace),
    );
    let group_by = field(
        "group_by",
        event.group_by.clone(),
        TAG_GROUP_BY,
        optional(defaults.group_by.clone()),
    );
    let min_metric = field(
        "min_metric",
        event.min_metric.map(number),
        TAG_MIN_METRIC,
        optional(defaults.min_metric.map(number)),
    );
    let max_metric = field(
        "max_metric",
        event.max_metric.map(number),
        TAG_MAX_METRIC,
        optional(defaults.max_metric.map(number)),
    );
    let older_than = field(
        "older_than",
        event.older_than.clone(),
        TAG_OLDER_THAN,
        duration(defaults.older_than),
    );

    let policy = RetentionPolicy {
        metric: metric.value.clone(),
        direction: direction.value.parse().map_err(|e| direction.error(e))?,
        keep_top: keep_top.count()?,
        keep_latest: keep_latest.count()?,
        grace: match grace.duration()? {
            Some(d) if d > MAX_GRACE => return Err(grace.error("must be at most 90d")),
            d => d,
        },
        group_by: group_by
            .optional()
            .map(|v| v.parse().map_err(|e| group_by.error(e)))
            .transpose()?,
        min_metric: min_metric.floor()?,
        max_metric: max_metric.floor()?,
        older_than: older_than.duration()?,
    };
    if let (Some(min), Some(max)) = (policy.min_metric, policy.max_metric)
        && min > max
    {
        return Err(max_metric.error(format!("must not be below min_metric {min}")));
    }
    Ok(policy)
}

/// One resolved field before parsing, with where it came from.
struct Value {
    field: &'static str,
    value: String,
    origin: PolicySource,
}

impl Value {
    fn error(&self, reason: impl Into<String>) -> PolicyError {
        PolicyError {
            field: self.field,
            value: self.value.clone(),
            origin: self.origin,
            reason: reason.into(),
        }
    }

    /// The value, or `None` for an empty one (a field turned off).
    fn optional(&self) -> Option<&str> {
        let v = self.value.trim();
        (!v.is_empty()).then_some(v)
    }

    fn count(&self) -> Result<u32, PolicyError> {
        self.value
            .trim()
            .parse::<u32>()
            .map_err(|_| self.error("must be a whole number of at least 0"))
    }

    /// A duration; empty or zero means off.
    fn duration(&self) -> Result<Option<Duration>, PolicyError> {
        let Some(v) = self.optional() else {
            return Ok(None);
        };
        let d = if v == "0" {
            Duration::ZERO
        } else {
            humantime::parse_duration(v)
                .map_err(|e| self.error(format!("must be a duration such as 20s or 2h: {e}")))?
        };
        Ok((!d.is_zero()).then_some(d))
    }

    fn floor(&self) -> Result<Option<f64>, PolicyError> {
        let Some(v) = self.optional() else {
            return Ok(None);
        };
        match v.parse::<f64>() {
            Ok(n) if n.is_finite() => Ok(Some(n)),
            _ => Err(self.error("must be a finite number")),
        }
    }
}

fn pick(event: Option<String>, tag: Option<String>, default: String) -> (String, PolicySource) {
    match (event, tag) {
        (Some(v), _) => (v, PolicySource::Event),
        (None, Some(v)) => (v, PolicySource::ExperimentTag),
        (None, None) => (default, PolicySource::Settings),
    }
}

#[cfg(test)]
mod tests;
