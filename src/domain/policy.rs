//! The retention policy of an experiment and how it is resolved: the event's fields first,
//! then the experiment's `model_pruner.*` tags, then the settings.

use std::collections::BTreeMap;
use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use crate::settings::PolicySettings;

/// Experiment tag naming the main metric.
pub const TAG_METRIC: &str = "model_pruner.metric";
/// Experiment tag naming the direction (`max` or `min`).
pub const TAG_DIRECTION: &str = "model_pruner.direction";
/// Experiment tag naming how many models to keep.
pub const TAG_KEEP_TOP: &str = "model_pruner.keep_top";

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

/// The policy a ranking pass applies.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct RetentionPolicy {
    pub metric: String,
    pub direction: Direction,
    pub keep_top: u32,
}

impl fmt::Display for RetentionPolicy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} {}, keep_top {}",
            self.metric, self.direction, self.keep_top
        )
    }
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
}

/// Where a policy value came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
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

/// Resolves each field independently, first match wins: event, experiment tags, settings.
pub fn resolve(
    event: &PolicyOverrides,
    experiment_tags: &BTreeMap<String, String>,
    defaults: &PolicySettings,
) -> Result<RetentionPolicy, PolicyError> {
    let tag = |key: &str| experiment_tags.get(key).cloned();

    let (metric, source) = pick(
        event.metric.clone(),
        tag(TAG_METRIC),
        defaults.metric.clone(),
    );
    if metric.trim().is_empty() {
        return Err(PolicyError {
            field: "metric",
            value: metric,
            origin: source,
            reason: "must not be empty".into(),
        });
    }

    let (direction, source) = pick(
        event.direction.clone(),
        tag(TAG_DIRECTION),
        defaults.direction.to_string(),
    );
    let direction = direction.parse().map_err(|reason| PolicyError {
        field: "direction",
        value: direction.clone(),
        origin: source,
        reason,
    })?;

    let (keep_top, source) = pick(
        event.keep_top.map(|n| n.to_string()),
        tag(TAG_KEEP_TOP),
        defaults.keep_top.to_string(),
    );
    let keep_top = keep_top.trim().parse::<u32>().map_err(|_| PolicyError {
        field: "keep_top",
        value: keep_top.clone(),
        origin: source,
        reason: "must be a whole number of at least 0".into(),
    })?;

    Ok(RetentionPolicy {
        metric,
        direction,
        keep_top,
    })
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

    fn defaults() -> PolicySettings {
        PolicySettings {
            metric: "accuracy".into(),
            direction: Direction::Max,
            keep_top: 10,
            max_deletions_per_pass: 50,
        }
    }

    fn tags(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn settings_apply_when_nothing_overrides() {
        let p = resolve(&PolicyOverrides::default(), &tags(&[]), &defaults()).unwrap();
        assert_eq!(
            p,
            RetentionPolicy {
                metric: "accuracy".into(),
                direction: Direction::Max,
                keep_top: 10
            }
        );
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
}
