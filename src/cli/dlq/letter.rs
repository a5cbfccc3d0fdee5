//! What a dead letter says about itself, which ones a command applies to, and the table
//! `dlq list` prints.

use std::str::FromStr;

use clap::Args;
use lapin::message::Delivery;
use serde::Serialize;
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

use lapin::types::FieldTable;

use crate::broker::{BINDINGS, Topology, headers};

/// Which dead letters a command applies to; all of them when empty.
#[derive(Debug, Clone, Default, Args)]
pub(crate) struct Filter {
    /// Only messages whose body names this experiment.
    #[arg(long)]
    pub experiment_id: Option<String>,
    /// Only messages whose error class (transient, permanent) or kind (mlflow,
    /// unknown_experiment, invalid_message...) is this.
    #[arg(long)]
    pub error_class: Option<String>,
}

impl Filter {
    pub(crate) fn matches(&self, letter: &DeadLetter) -> bool {
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
pub(crate) struct Rate(pub f64);

impl Rate {
    /// An interval ticking at this rate; a late tick is not made up for.
    pub(crate) fn ticker(self) -> tokio::time::Interval {
        let mut t = tokio::time::interval(std::time::Duration::from_secs_f64(1.0 / self.0));
        t.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        t
    }
}

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

/// Who put a dead letter in the queue, told by what only the broker writes (`x-death`, the
/// exchange a message was delivered from), never by a header a publisher could have written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub(crate) enum Source {
    /// A copy the worker published after a failure: its `model-pruner-*` headers are the
    /// worker's.
    Worker,
    /// RabbitMQ dead-lettered it out of the work queue by itself (over the delivery limit,
    /// expired, over a length limit, or rejected by the worker as unreadable): the worker never
    /// wrote its headers, so any `model-pruner-*` header is the publisher's and is ignored.
    Broker,
    /// Neither (published straight into the dead-letter queue, or dead-lettered from a queue
    /// that is not the worker's): nothing about it is believed and it cannot be replayed.
    Unknown,
}

/// What one dead letter says about itself: its headers (only those the worker or the broker
/// wrote) and the ids in its body.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct DeadLetter {
    /// 1-based position in the queue when the walk started.
    pub position: u64,
    pub source: Source,
    /// The routing key a replay publishes it with: the one the worker recorded, or for a letter
    /// RabbitMQ dead-lettered, the one it entered the work queue with (`x-death`). `None` when
    /// neither can be believed.
    pub routing_key: Option<String>,
    pub experiment_id: Option<String>,
    pub run_id: Option<String>,
    /// `transient` or `permanent` for the worker's letters, `broker` for RabbitMQ's.
    pub error_class: Option<String>,
    /// The worker's error kind, or RabbitMQ's reason (`delivery_limit`, `expired`, `maxlen`,
    /// `rejected`).
    pub error_kind: Option<String>,
    pub error_message: Option<String>,
    pub attempts: Option<u32>,
    pub first_failure: Option<String>,
    pub last_failure: Option<String>,
    /// Seconds since the last failure.
    pub age_seconds: Option<i64>,
    /// Its properties or header names were not valid UTF-8 (shown with U+FFFD): a replay would
    /// not send the same bytes, so it is never replayed.
    pub unreadable: bool,
    pub body: String,
}

impl DeadLetter {
    pub(crate) fn read(
        position: u64,
        delivery: &Delivery,
        topology: &Topology,
        now: OffsetDateTime,
    ) -> Self {
        let h = delivery.properties.headers().as_ref();
        let body: Option<serde_json::Value> = serde_json::from_slice(&delivery.data).ok();
        let id = |field: &str| {
            body.as_ref()
                .and_then(|b| b.get(field)?.as_str().map(str::to_owned))
        };
        let deaths = headers::deaths(h);
        let mut letter = DeadLetter {
            position,
            source: Source::Unknown,
            routing_key: None,
            experiment_id: id("experiment_id"),
            run_id: id("run_id"),
            error_class: None,
            error_kind: None,
            error_message: None,
            attempts: None,
            first_failure: None,
            last_failure: None,
            age_seconds: None,
            unreadable: headers::unreadable(&delivery.properties),
            body: String::from_utf8_lossy(&delivery.data).into_owned(),
        };
        let published_to_the_queue = delivery.exchange.as_str().is_empty()
            && delivery.routing_key.as_str() == topology.dead_letter_queue;
        match deaths.as_deref().map(|d| (d, d.first())) {
            Some((_, None)) if published_to_the_queue => letter.read_worker_headers(h, now),
            Some((deaths, Some(death))) if death.queue == topology.work_queue => {
                letter.source = Source::Broker;
                letter.routing_key = entered_with(deaths, h, topology);
                letter.error_class = Some("broker".into());
                letter.error_kind = Some(death.reason.clone());
                letter.error_message = Some(broker_reason(&death.reason, &death.queue));
                let at = death
                    .time
                    .and_then(|t| OffsetDateTime::from_unix_timestamp(t).ok());
                letter.last_failure = at.and_then(|t| t.format(&Rfc3339).ok());
                letter.age_seconds = at.map(|t| (now - t).whole_seconds());
            }
            _ => {
                letter.error_message = Some(
                    "neither the worker nor RabbitMQ's dead-lettering of the work queue put \
                     this message here: not replayed"
                        .into(),
                )
            }
        }
        letter
    }

    fn read_worker_headers(&mut self, h: Option<&FieldTable>, now: OffsetDateTime) {
        let s = |name| headers::get_str(h, name);
        self.source = Source::Worker;
        self.routing_key = s(headers::ROUTING_KEY);
        self.error_class = s(headers::ERROR_CLASS);
        self.error_kind = s(headers::ERROR_KIND);
        self.error_message = s(headers::ERROR_MESSAGE);
        self.attempts = headers::get_u32(h, headers::ATTEMPTS);
        self.first_failure = s(headers::FIRST_FAILURE);
        self.last_failure = s(headers::LAST_FAILURE);
        self.age_seconds = self
            .last_failure
            .as_deref()
            .and_then(|t| OffsetDateTime::parse(t, &Rfc3339).ok())
            .map(|t| (now - t).whole_seconds());
    }
}

impl DeadLetter {
    /// The headers of a copy of this letter moved into another dead-letter queue (by
    /// `migrate-queues`), where it arrives as the worker's own letter without `x-death`: a
    /// worker letter keeps its headers; any other keeps only what the broker said about it,
    /// written the way the worker writes it, and none a publisher wrote in the worker's name.
    pub(crate) fn moved_headers(&self, original: Option<&FieldTable>) -> FieldTable {
        let h = headers::republished(original);
        if self.source == Source::Worker {
            return h;
        }
        let mut h = headers::without_worker_headers(h);
        for (name, value) in [
            (headers::ROUTING_KEY, &self.routing_key),
            (headers::ERROR_CLASS, &self.error_class),
            (headers::ERROR_KIND, &self.error_kind),
            (headers::ERROR_MESSAGE, &self.error_message),
            (headers::LAST_FAILURE, &self.last_failure),
        ] {
            if let Some(value) = value {
                headers::set_str(&mut h, name, headers::truncate_message(value));
            }
        }
        h
    }
}

/// The routing key a message RabbitMQ dead-lettered out of the work queue had entered it with:
/// its first routing key (the one the worker parses by; later ones are CC keys) if it is one of
/// the work queue's bindings on the exchange, as the broker recorded it in `x-death`;
/// or, for a message that came back into the work queue from one of the worker's delay queues
/// (through the default exchange, after expiring there), the routing key the worker recorded.
/// Any other way in names no key that can be believed.
fn entered_with(
    deaths: &[headers::Death],
    h: Option<&FieldTable>,
    topology: &Topology,
) -> Option<String> {
    let entered = deaths.first()?;
    let bound = |k: &str| BINDINGS.contains(&k);
    match entered.exchange.as_deref() {
        Some(e) if e == topology.exchange => {
            entered.routing_keys.first().filter(|k| bound(k)).cloned()
        }
        Some("")
            if entered.routing_keys == [topology.work_queue.as_str()]
                && deaths.get(1).is_some_and(|d| {
                    d.reason == "expired" && topology.delay_queues.iter().any(|q| q.name == d.queue)
                }) =>
        {
            headers::get_str(h, headers::ROUTING_KEY).filter(|k| bound(k))
        }
        _ => None,
    }
}

fn broker_reason(reason: &str, queue: &str) -> String {
    let why = match reason {
        "delivery_limit" => {
            "it was delivered more times than the delivery limit (a worker crashed or lost its \
             connection on it each time, or could not dead-letter it while this queue was full)"
        }
        "expired" => "it expired (the publisher set an expiration)",
        "maxlen" => "the queue was over its length limit",
        "rejected" => {
            "the worker rejected it unread: its properties or header names are not valid UTF-8"
        }
        _ => "an unknown reason",
    };
    format!("RabbitMQ dead-lettered it out of {queue:?}: {why}")
}

pub(super) fn table(letters: &[DeadLetter]) -> String {
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
mod tests;
