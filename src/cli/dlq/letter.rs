//! What a dead letter says about itself, which ones a command applies to, and the table
//! `dlq list` prints.

use std::str::FromStr;

use clap::Args;
use lapin::message::Delivery;
use serde::Serialize;
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

use crate::broker::headers;

/// Which dead letters a command applies to; all of them when empty.
#[derive(Debug, Clone, Default, Args)]
pub struct Filter {
    /// Only messages whose body names this experiment.
    #[arg(long)]
    pub experiment_id: Option<String>,
    /// Only messages whose error class (transient, permanent) or kind (mlflow,
    /// unknown_experiment, invalid_message...) is this.
    #[arg(long)]
    pub error_class: Option<String>,
}

impl Filter {
    pub fn matches(&self, letter: &DeadLetter) -> bool {
        let experiment = self
            .experiment_id
            .as_ref()
            .is_none_or(|id| letter.experiment_id.as_ref() == Some(id));
        let class = self.error_class.as_ref().is_none_or(|c| {
            letter.error_class.as_ref() == Some(c) || letter.error_kind.as_ref() == Some(c)
        });
        experiment && class
    }
}

/// A rate limit in messages per second.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Rate(pub f64);

impl FromStr for Rate {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let n = s.trim().trim_end_matches("/s");
        match n.parse::<f64>() {
            Ok(v) if v.is_finite() && v > 0.0 => Ok(Rate(v)),
            _ => Err(format!("{s:?} is not a positive rate like 5 or 5/s")),
        }
    }
}

/// What one dead letter says about itself: its headers and the ids in its body.
#[derive(Debug, Clone, Serialize)]
pub struct DeadLetter {
    /// 1-based position in the queue when the walk started.
    pub position: u64,
    pub routing_key: Option<String>,
    pub experiment_id: Option<String>,
    pub run_id: Option<String>,
    pub error_class: Option<String>,
    pub error_kind: Option<String>,
    pub error_message: Option<String>,
    pub attempts: Option<u32>,
    pub first_failure: Option<String>,
    pub last_failure: Option<String>,
    /// Seconds since the last failure.
    pub age_seconds: Option<i64>,
    pub body: String,
}

impl DeadLetter {
    pub fn read(position: u64, delivery: &Delivery, now: OffsetDateTime) -> Self {
        let h = delivery.properties.headers().as_ref();
        let s = |name| headers::get_str(h, name);
        let body: Option<serde_json::Value> = serde_json::from_slice(&delivery.data).ok();
        let id = |field: &str| {
            body.as_ref()
                .and_then(|b| b.get(field)?.as_str().map(str::to_owned))
        };
        let last_failure = s(headers::LAST_FAILURE);
        let age_seconds = last_failure
            .as_deref()
            .and_then(|t| OffsetDateTime::parse(t, &Rfc3339).ok())
            .map(|t| (now - t).whole_seconds());
        DeadLetter {
            position,
            routing_key: s(headers::ROUTING_KEY),
            experiment_id: id("experiment_id"),
            run_id: id("run_id"),
            error_class: s(headers::ERROR_CLASS),
            error_kind: s(headers::ERROR_KIND),
            error_message: s(headers::ERROR_MESSAGE),
            attempts: headers::get_u32(h, headers::ATTEMPTS),
            first_failure: s(headers::FIRST_FAILURE),
            last_failure,
            age_seconds,
            body: String::from_utf8_lossy(&delivery.data).into_owned(),
        }
    }
}

pub fn table(letters: &[DeadLetter]) -> String {
    let dash = || "-".to_owned();
    let mut rows = vec![
        [
            "#",
            "AGE",
            "ROUTING KEY",
            "EXPERIMENT",
            "RUN",
            "ERROR",
            "ATTEMPTS",
            "MESSAGE",
        ]
        .map(str::to_owned),
    ];
    for l in letters {
        let error = match (&l.error_class, &l.error_kind) {
            (Some(c), Some(k)) => format!("{c}/{k}"),
            (Some(c), None) => c.clone(),
            (None, _) => dash(),
        };
        rows.push([
            l.position.to_string(),
            l.age_seconds.map(age).unwrap_or_else(dash),
            l.routing_key.clone().unwrap_or_else(dash),
            l.experiment_id.clone().unwrap_or_else(dash),
            l.run_id.clone().unwrap_or_else(dash),
            error,
            l.attempts.map(|a| a.to_string()).unwrap_or_else(dash),
            l.error_message
                .as_deref()
                .map(|m| m.replace(['\n', '\r'], " "))
                .unwrap_or_else(dash),
        ]);
    }
    let widths: Vec<usize> = (0..7)
        .map(|i| rows.iter().map(|r| r[i].chars().count()).max().unwrap_or(0))
        .collect();
    let mut s = String::new();
    for row in rows {
        for (cell, w) in row.iter().zip(&widths) {
            s.push_str(&format!("{cell:<w$}  "));
        }
        s.push_str(&row[7]);
        s.push('\n');
    }
    s
}

/// `42s`, `3m12s`, `5h03m`, `2d04h`.
fn age(seconds: i64) -> String {
    let s = seconds.max(0);
    match s {
        0..60 => format!("{s}s"),
        60..3600 => format!("{}m{:02}s", s / 60, s % 60),
        3600..86400 => format!("{}h{:02}m", s / 3600, s % 3600 / 60),
        _ => format!("{}d{:02}h", s / 86400, s % 86400 / 3600),
    }
}

#[cfg(test)]
mod tests {
    use lapin::BasicProperties;
    use lapin::types::FieldTable;

    use super::*;

    fn letter(experiment: &str, class: &str, kind: &str) -> DeadLetter {
        DeadLetter {
            position: 1,
            routing_key: Some("run.finished".into()),
            experiment_id: Some(experiment.into()),
            run_id: None,
            error_class: Some(class.into()),
            error_kind: Some(kind.into()),
            error_message: None,
            attempts: Some(3),
            first_failure: None,
            last_failure: None,
            age_seconds: None,
            body: "{}".into(),
        }
    }

    #[test]
    fn filter_matches_experiment_and_class_or_kind() {
        let l = letter("12", "transient", "mlflow");
        assert!(Filter::default().matches(&l));
        let f = |e: Option<&str>, c: Option<&str>| Filter {
            experiment_id: e.map(str::to_owned),
            error_class: c.map(str::to_owned),
        };
        assert!(f(Some("12"), None).matches(&l));
        assert!(!f(Some("13"), None).matches(&l));
        assert!(f(None, Some("transient")).matches(&l));
        assert!(f(Some("12"), Some("mlflow")).matches(&l));
        assert!(!f(Some("12"), Some("permanent")).matches(&l));
    }

    #[test]
    fn rates_parse_with_or_without_per_second() {
        assert_eq!("5".parse::<Rate>(), Ok(Rate(5.0)));
        assert_eq!("0.5/s".parse::<Rate>(), Ok(Rate(0.5)));
        assert!("0".parse::<Rate>().is_err());
        assert!("fast".parse::<Rate>().is_err());
    }

    #[test]
    fn ages_read_at_a_glance() {
        assert_eq!(age(-3), "0s");
        assert_eq!(age(42), "42s");
        assert_eq!(age(192), "3m12s");
        assert_eq!(age(5 * 3600 + 180), "5h03m");
        assert_eq!(age(2 * 86400 + 4 * 3600), "2d04h");
    }

    #[test]
    fn dead_letters_read_headers_and_body_ids() {
        let mut h = FieldTable::default();
        headers::set_str(&mut h, headers::ROUTING_KEY, "run.finished");
        headers::set_str(&mut h, headers::ERROR_CLASS, "permanent");
        headers::set_str(&mut h, headers::LAST_FAILURE, "2025-01-01T10:00:00Z");
        headers::set_u32(&mut h, headers::ATTEMPTS, 2);
        let mut d = Delivery::mock(
            1,
            "".into(),
            "dlq".into(),
            false,
            br#"{"experiment_id":"7","run_id":"r1"}"#.to_vec(),
        );
        d.properties = BasicProperties::default().with_headers(h);
        let now = OffsetDateTime::parse("2025-01-01T10:01:00Z", &Rfc3339).unwrap();
        let l = DeadLetter::read(4, &d, now);
        assert_eq!(l.position, 4);
        assert_eq!(l.experiment_id.as_deref(), Some("7"));
        assert_eq!(l.run_id.as_deref(), Some("r1"));
        assert_eq!(l.error_class.as_deref(), Some("permanent"));
        assert_eq!(l.attempts, Some(2));
        assert_eq!(l.age_seconds, Some(60));
    }
}
