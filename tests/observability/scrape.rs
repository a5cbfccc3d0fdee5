//! A worker's HTTP endpoint seen from a test: polling with a deadline, and `/metrics` parsed
//! into samples to compare. Each worker binds a port of its own and counts into a registry of
//! its own, so tests in one process do not see each other's counts.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::Duration;

use model_pruner::settings::Settings;

use crate::support::app;
use crate::support::eventually::eventually_every;

/// Settings with unique names and a loopback port of the worker's own for `/metrics`;
/// `MODEL_PRUNER__*` from the environment apply.
pub fn settings() -> Settings {
    app::settings("mp-obs", Duration::from_secs(1))
}

/// How long a test waits for a metric or a readiness change.
pub const DEADLINE: Duration = Duration::from_secs(30);

/// The `/metrics`, `/healthz` and `/readyz` of the worker started with `settings`.
pub struct Endpoint {
    base: String,
    http: reqwest::Client,
}

impl Endpoint {
    pub fn at(address: SocketAddr) -> Endpoint {
        Endpoint {
            base: format!("http://{address}"),
            http: reqwest::Client::builder()
                .timeout(Duration::from_secs(5))
                .build()
                .unwrap(),
        }
    }

    /// Status and body of `path`; `None` while nothing listens.
    pub async fn get(&self, path: &str) -> Option<(u16, String)> {
        let response = self.http.get(format!("{}{path}", self.base)).send().await;
        let response = response.ok()?;
        let status = response.status().as_u16();
        Some((status, response.text().await.ok()?))
    }

    /// Polls `path` until `done` holds for its status and body; panics after [`DEADLINE`].
    pub async fn wait(&self, path: &str, what: &str, done: impl Fn(u16, &str) -> bool) -> String {
        let mut last: Option<(u16, String)> = None;
        eventually_every(DEADLINE, Duration::from_millis(20), what, async || {
            if let Some((status, body)) = self.get(path).await {
                if done(status, &body) {
                    return Ok(body);
                }
                last = Some((status, body));
            }
            Err(format!("{path} answered {last:?}"))
        })
        .await
    }

    pub async fn metrics(&self) -> Samples {
        let (status, body) = self.get("/metrics").await.expect("/metrics answers");
        assert_eq!(status, 200);
        Samples::parse(&body)
    }

    /// Scrapes until `done` holds; panics after [`DEADLINE`] with the last scrape.
    pub async fn metrics_until(&self, what: &str, done: impl Fn(&Samples) -> bool) -> Samples {
        let body = self
            .wait("/metrics", what, |status, body| {
                status == 200 && done(&Samples::parse(body))
            })
            .await;
        Samples::parse(&body)
    }
}

/// The samples of one scrape: series name, its labels, its value.
#[derive(Debug, Default)]
pub struct Samples(Vec<(String, BTreeMap<String, String>, f64)>);

impl Samples {
    /// Parses the text format as the prometheus crate writes it (no escaped quotes in values).
    pub fn parse(text: &str) -> Samples {
        let mut samples = Vec::new();
        for line in text
            .lines()
            .filter(|l| !l.starts_with('#') && !l.is_empty())
        {
            let (series, value) = line.rsplit_once(' ').expect("`series value`");
            let value: f64 = value.parse().expect("a number");
            let (name, labels) = match series.split_once('{') {
                None => (series, BTreeMap::new()),
                Some((name, rest)) => {
                    let inner = rest.strip_suffix('}').expect("closing brace");
                    let labels = inner
                        .split("\",")
                        .filter(|p| !p.is_empty())
                        .map(|pair| {
                            let (k, v) = pair.split_once("=\"").expect("label=\"value\"");
                            (k.to_owned(), v.trim_end_matches('"').to_owned())
                        })
                        .collect();
                    (name, labels)
                }
            };
            samples.push((name.to_owned(), labels, value));
        }
        Samples(samples)
    }

    /// The sum of the series of `name` whose labels include `labels` (0 when there is none).
    pub fn value(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        self.0
            .iter()
            .filter(|(n, l, _)| {
                n == name
                    && labels
                        .iter()
                        .all(|(k, v)| l.get(*k).map(String::as_str) == Some(v))
            })
            .map(|(_, _, v)| v)
            .sum()
    }

    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.0.iter().map(|(n, _, _)| n.as_str())
    }
}

/// What changed between two scrapes, for one series selection.
pub fn delta(before: &Samples, after: &Samples, name: &str, labels: &[(&str, &str)]) -> f64 {
    after.value(name, labels) - before.value(name, labels)
}
