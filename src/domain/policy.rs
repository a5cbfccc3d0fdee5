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
    Param(String),
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
    pub metric: String,
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
    pub metric: String,
    pub direction: Direction,
    pub keep_top: u32,
    /// A run.finished pass that would delete more models than this deletes nothing and fails.
    pub max_deletions_per_pass: u32,
    #[serde(default)]
    pub keep_latest: u32,
    #[serde(
        default,
        with = "humantime_serde",
        skip_serializing_if = "Option::is_none"
    )]
    pub grace: Option<Duration>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub group_by: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub min_metric: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_metric: Option<f64>,
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
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub metric: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub direction: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub keep_top: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub keep_latest: Option<i64>,
    /// A duration (`20s`, `2h`); `0s` turns a tag's or the settings' grace off.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub grace: Option<String>,
    /// `params.<name>` or `tags.<name>`; `""` turns a tag's or the settings' grouping off.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub group_by: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub min_metric: Option<f64>,
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
    Event,
    ExperimentTag,
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
    pub field: &'static str,
    pub value: String,
    pub origin: PolicySource,
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
mod tests {
    use super::*;

    fn defaults() -> PolicyDefaults {
        PolicyDefaults {
            metric: "accuracy".into(),
            direction: Direction::Max,
            keep_top: 10,
            max_deletions_per_pass: 50,
            keep_latest: 0,
            grace: None,
            group_by: None,
            min_metric: None,
            max_metric: None,
            older_than: None,
        }
    }

    fn tags(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn an_experiment_opts_in_with_any_policy_tag_and_only_those() {
        assert!(opted_in(&tags(&[(TAG_KEEP_TOP, "3")])));
        assert!(opted_in(&tags(&[(TAG_GRACE, "2h"), ("team", "nlp")])));
        assert!(!opted_in(&tags(&[
            ("team", "nlp"),
            ("model_pruner.other", "x")
        ])));
        assert!(!opted_in(&BTreeMap::new()));
    }

    #[test]
    fn origins_name_the_source_of_each_field_in_resolve_order() {
        let event = PolicyOverrides {
            keep_top: Some(3),
            metric: Some("loss".into()),
            ..Default::default()
        };
        let tags = tags(&[(TAG_METRIC, "f1"), (TAG_DIRECTION, "min")]);
        let found = origins(&event, &tags);
        assert_eq!(found[&PolicySource::Event], ["metric", "keep_top"]);
        assert_eq!(found[&PolicySource::ExperimentTag], ["direction"]);
        assert_eq!(found[&PolicySource::Settings].len(), 6);
        let none = origins(&PolicyOverrides::default(), &BTreeMap::new());
        assert_eq!(none.keys().collect::<Vec<_>>(), [&PolicySource::Settings]);
    }

    #[test]
    fn settings_apply_when_nothing_overrides() {
        let p = resolve(&PolicyOverrides::default(), &tags(&[]), &defaults()).unwrap();
        assert_eq!(p, RetentionPolicy::top("accuracy", Direction::Max, 10));
    }

    #[test]
    fn tags_override_settings_and_event_overrides_tags_field_by_field() {
        let t = tags(&[
            (TAG_METRIC, "loss"),
            (TAG_DIRECTION, "min"),
            (TAG_KEEP_TOP, "3"),
        ]);
        let event = PolicyOverrides {
            keep_top: Some(1),
            ..Default::default()
        };
        let p = resolve(&event, &t, &defaults()).unwrap();
        assert_eq!(p.metric, "loss");
        assert_eq!(p.direction, Direction::Min);
        assert_eq!(p.keep_top, 1);
    }

    #[test]
    fn keep_top_zero_is_valid() {
        let event = PolicyOverrides {
            keep_top: Some(0),
            ..Default::default()
        };
        assert_eq!(
            resolve(&event, &tags(&[]), &defaults()).unwrap().keep_top,
            0
        );
    }

    #[test]
    fn direction_is_case_insensitive() {
        let p = resolve(
            &PolicyOverrides::default(),
            &tags(&[(TAG_DIRECTION, " MIN ")]),
            &defaults(),
        )
        .unwrap();
        assert_eq!(p.direction, Direction::Min);
    }

    #[test]
    fn negative_keep_top_in_event_names_the_event() {
        let event = PolicyOverrides {
            keep_top: Some(-1),
            ..Default::default()
        };
        let err = resolve(&event, &tags(&[]), &defaults()).unwrap_err();
        assert_eq!(err.field, "keep_top");
        assert_eq!(err.origin, PolicySource::Event);
        assert!(err.to_string().contains("the event's policy"), "{err}");
    }

    #[test]
    fn unknown_direction_in_tag_names_the_tag() {
        let err = resolve(
            &PolicyOverrides::default(),
            &tags(&[(TAG_DIRECTION, "up")]),
            &defaults(),
        )
        .unwrap_err();
        assert_eq!(err.field, "direction");
        assert_eq!(err.origin, PolicySource::ExperimentTag);
        assert!(err.to_string().contains("\"up\""), "{err}");
    }

    #[test]
    fn non_numeric_keep_top_tag_is_rejected() {
        let err = resolve(
            &PolicyOverrides::default(),
            &tags(&[(TAG_KEEP_TOP, "ten")]),
            &defaults(),
        )
        .unwrap_err();
        assert_eq!(err.origin, PolicySource::ExperimentTag);
    }

    #[test]
    fn empty_metric_from_event_is_rejected_even_if_tag_is_fine() {
        let event = PolicyOverrides {
            metric: Some("  ".into()),
            ..Default::default()
        };
        let err = resolve(&event, &tags(&[(TAG_METRIC, "loss")]), &defaults()).unwrap_err();
        assert_eq!(err.field, "metric");
        assert_eq!(err.origin, PolicySource::Event);
    }

    #[test]
    fn the_new_rules_are_off_unless_set() {
        let p = resolve(&PolicyOverrides::default(), &tags(&[]), &defaults()).unwrap();
        assert_eq!(p.to_string(), "accuracy max, keep_top 10");
        assert_eq!(
            serde_json::to_value(&p).unwrap(),
            serde_json::json!({"metric": "accuracy", "direction": "max", "keep_top": 10, "keep_latest": 0})
        );
    }

    #[test]
    fn every_rule_resolves_from_tags_and_shows_in_the_policy() {
        let t = tags(&[
            (TAG_KEEP_LATEST, "2"),
            (TAG_GRACE, "20s"),
            (TAG_GROUP_BY, "params.base_model"),
            (TAG_MIN_METRIC, "0.5"),
            (TAG_MAX_METRIC, "0.99"),
            (TAG_OLDER_THAN, "30days"),
        ]);
        let p = resolve(&PolicyOverrides::default(), &t, &defaults()).unwrap();
        assert_eq!(p.keep_latest, 2);
        assert_eq!(p.grace, Some(Duration::from_secs(20)));
        assert_eq!(p.group_by, Some(GroupKey::Param("base_model".into())));
        assert_eq!((p.min_metric, p.max_metric), (Some(0.5), Some(0.99)));
        assert_eq!(p.older_than, Some(Duration::from_secs(30 * 86_400)));
        assert_eq!(
            p.to_string(),
            "accuracy max, keep_top 10 per params.base_model, keep_latest 2, min_metric 0.5, \
             max_metric 0.99, grace 20s, older_than 30days"
        );
        let json = serde_json::to_value(&p).unwrap();
        assert_eq!(json["grace"], "20s");
        assert_eq!(json["group_by"], "params.base_model");
    }

    #[test]
    fn the_event_overrides_the_rules_and_can_turn_them_off() {
        let t = tags(&[
            (TAG_GRACE, "1h"),
            (TAG_GROUP_BY, "tags.dataset"),
            (TAG_OLDER_THAN, "7d"),
            (TAG_MIN_METRIC, "0.5"),
        ]);
        let event = PolicyOverrides {
            grace: Some("0s".into()),
            group_by: Some(String::new()),
            older_than: Some("0".into()),
            keep_latest: Some(3),
            ..Default::default()
        };
        let p = resolve(&event, &t, &defaults()).unwrap();
        assert_eq!((p.grace, p.group_by, p.older_than), (None, None, None));
        assert_eq!(p.keep_latest, 3);
        assert_eq!(p.min_metric, Some(0.5));
    }

    #[test]
    fn the_settings_rules_apply_when_nothing_overrides() {
        let d = PolicyDefaults {
            grace: Some(Duration::from_secs(120)),
            group_by: Some("tags.`data set`".into()),
            keep_latest: 1,
            ..defaults()
        };
        let p = resolve(&PolicyOverrides::default(), &tags(&[]), &d).unwrap();
        assert_eq!(p.grace, Some(Duration::from_secs(120)));
        assert_eq!(p.group_by, Some(GroupKey::Tag("data set".into())));
        assert_eq!(p.group_by.unwrap().to_string(), "tags.`data set`");
        assert_eq!(p.keep_latest, 1);
    }

    #[test]
    fn bad_rule_values_name_the_field_value_and_source() {
        let cases: [(&str, &str, &str); 8] = [
            (TAG_GRACE, "soon", "grace"),
            (TAG_GRACE, "91d", "grace"),
            (TAG_OLDER_THAN, "-1d", "older_than"),
            (TAG_GROUP_BY, "base_model", "group_by"),
            (TAG_GROUP_BY, "metrics.loss", "group_by"),
            (TAG_GROUP_BY, "params.", "group_by"),
            (TAG_MIN_METRIC, "NaN", "min_metric"),
            (TAG_KEEP_LATEST, "-2", "keep_latest"),
        ];
        for (tag, value, field) in cases {
            let err = resolve(
                &PolicyOverrides::default(),
                &tags(&[(tag, value)]),
                &defaults(),
            )
            .unwrap_err();
            assert_eq!(
                (err.field, err.origin),
                (field, PolicySource::ExperimentTag),
                "{err}"
            );
            assert!(err.to_string().contains(&format!("{value:?}")), "{err}");
        }
        let event = PolicyOverrides {
            keep_latest: Some(-1),
            ..Default::default()
        };
        let err = resolve(&event, &tags(&[]), &defaults()).unwrap_err();
        assert_eq!(
            (err.field, err.origin),
            ("keep_latest", PolicySource::Event)
        );
    }

    #[test]
    fn a_floor_whose_min_is_above_its_max_is_rejected() {
        let event = PolicyOverrides {
            min_metric: Some(0.9),
            ..Default::default()
        };
        let err = resolve(&event, &tags(&[(TAG_MAX_METRIC, "0.5")]), &defaults()).unwrap_err();
        assert_eq!(err.field, "max_metric");
        assert!(err.to_string().contains("min_metric 0.9"), "{err}");
    }

    #[test]
    fn group_keys_read_like_mlflow_search() {
        let parse = |s: &str| s.parse::<GroupKey>();
        assert_eq!(parse("params.lr"), Ok(GroupKey::Param("lr".into())));
        assert_eq!(parse("param.lr"), Ok(GroupKey::Param("lr".into())));
        assert_eq!(parse("tags.`my tag`"), Ok(GroupKey::Tag("my tag".into())));
        assert_eq!(parse(" tag.x.y "), Ok(GroupKey::Tag("x.y".into())));
        assert!(parse("attributes.status").is_err());
        assert!(parse("lr").is_err());
    }

    #[test]
    fn overrides_are_checked_on_their_own() {
        let defaults = defaults();
        let with = |o: PolicyOverrides| check_overrides(&o, &defaults);
        assert!(with(PolicyOverrides::default()).is_ok());
        let grace = with(PolicyOverrides {
            grace: Some("2".into()),
            ..Default::default()
        })
        .unwrap_err();
        assert_eq!((grace.field, grace.origin), ("grace", PolicySource::Event));
        let group = with(PolicyOverrides {
            group_by: Some("base_model".into()),
            ..Default::default()
        })
        .unwrap_err();
        assert_eq!(group.field, "group_by");
        assert!(
            with(PolicyOverrides {
                min_metric: Some(0.9),
                max_metric: Some(0.1),
                ..Default::default()
            })
            .is_err()
        );
        // A floor the settings set does not count against the event's: tags may replace it.
        let strict = PolicyDefaults {
            max_metric: Some(0.1),
            ..defaults.clone()
        };
        let o = PolicyOverrides {
            min_metric: Some(0.5),
            ..Default::default()
        };
        assert!(check_overrides(&o, &strict).is_ok());
    }
}
