//! The Grafana dashboard and the alert rules, checked as an SRE would see them: a real
//! Prometheus (Debian's `prometheus`) scrapes a real worker and RabbitMQ's own metrics
//! (`rabbitmq_prometheus`, enabled by `scripts/stack.sh`) with the rules of
//! `deploy/prometheus/alerts.yml`, while real traffic goes through the worker: a sweep, a burst
//! of `run.finished`, a poison message and a store failure retried through a fault-injecting
//! proxy, and a `model-pruner report --textfile` served as node_exporter's textfile collector
//! would. Every query of every panel must return a series; the dead-letter alert must be
//! pending or firing and no other alert active. The panels are then drawn from Prometheus's
//! answers by `scripts/render-dashboard.py` into `target/dashboard/model-pruner.png` (and into
//! `$DASHBOARD_PNG` if set, which is how README's picture is made).
//!
//! The worker uses the default queue names: the alert rules name them.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use model_pruner::settings::Settings;
use serde_json::{Value, json};
use tokio::process::{Child, Command};

use crate::scrape::settings;
use crate::support::app::{self, TestApp};
use crate::support::eventually::eventually_every;
use crate::support::proxy::{Action, DELETE_OBJECTS, Proxy};
use crate::support::world::{Layout, World, keep, run_finished, sweep};

const DASHBOARD: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/deploy/grafana/dashboards/model-pruner.json"
);
const ALERTS: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/deploy/prometheus/alerts.yml");
const RENDER: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/scripts/render-dashboard.py");
const OUT: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/target/dashboard");

/// What Grafana would put for the dashboard's variables, for a dashboard showing the last hour
/// of a Prometheus that scrapes every second.
const VARIABLES: [(&str, &str); 5] = [
    ("$__rate_interval", "30s"),
    ("$__interval", "15s"),
    ("$__range", "1h"),
    ("$queue_prefix", "model-pruner"),
    ("$job", "model-pruner"),
];

/// The one alert the traffic must set off: the dead letter it leaves.
const EXPECTED_ALERT: &str = "ModelPrunerDeadLettersGrowing";

fn now() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs_f64()
}

/// A Prometheus server of its own, on a free port, with its data in a temporary folder.
struct Prometheus {
    child: Child,
    dir: PathBuf,
    base: String,
    http: reqwest::Client,
}

impl Prometheus {
    /// Scrapes the worker at `worker`, RabbitMQ's per-queue metrics and the report's textfile
    /// (served at `textfile`, as node_exporter's textfile collector would) every second and
    /// evaluates `alerts.yml` every second.
    async fn start(worker: &str, textfile: &str) -> Prometheus {
        let rabbit = std::env::var("RABBITMQ_PROMETHEUS_URL")
            .unwrap_or_else(|_| "http://127.0.0.1:15692".to_owned());
        let rabbit = rabbit.trim_start_matches("http://").to_owned();
        let dir = std::env::temp_dir().join(format!("mp-prometheus-{:08x}", rand::random::<u32>()));
        std::fs::create_dir_all(&dir).unwrap();
        let config = format!(
            "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\n\
             rule_files: [{ALERTS:?}]\n\
             scrape_configs:\n\
             \x20 - job_name: model-pruner\n    static_configs: [{{targets: [{worker:?}]}}]\n\
             \x20 - job_name: rabbitmq-queues\n    metrics_path: /metrics/detailed\n\
             \x20   params: {{family: [queue_coarse_metrics, queue_consumer_count]}}\n\
             \x20   static_configs: [{{targets: [{rabbit:?}]}}]\n\
             \x20 - job_name: node\n    static_configs: [{{targets: [{textfile:?}]}}]\n"
        );
        std::fs::write(dir.join("prometheus.yml"), config).unwrap();
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let child = Command::new("prometheus")
            .arg(format!(
                "--config.file={}",
                dir.join("prometheus.yml").display()
            ))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.join("data").display()
            ))
            .arg(format!("--web.listen-address=127.0.0.1:{port}"))
            .arg("--log.level=warn")
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .kill_on_drop(true)
            .spawn()
            .expect(
                "prometheus (Debian's prometheus package, as scripts/check-monitoring.sh installs)",
            );
        let prometheus = Prometheus {
            child,
            dir,
            base: format!("http://127.0.0.1:{port}"),
            http: reqwest::Client::new(),
        };
        eventually_every(
            Duration::from_secs(30),
            Duration::from_millis(200),
            "Prometheus did not start",
            async || {
                let ready = prometheus
                    .http
                    .get(format!("{}/-/ready", prometheus.base))
                    .send()
                    .await;
                ready.is_ok_and(|r| r.status().is_success())
            },
        )
        .await;
        prometheus
    }

    async fn api(&self, path: &str, query: &[(&str, String)]) -> Value {
        let answer: Value = self
            .http
            .get(format!("{}/api/v1/{path}", self.base))
            .query(query)
            .send()
            .await
            .expect("Prometheus answers")
            .json()
            .await
            .expect("JSON");
        assert_eq!(answer["status"], "success", "{path} {query:?}: {answer}");
        answer["data"].clone()
    }

    /// The series `expr` returns now.
    async fn query(&self, expr: &str) -> Vec<Value> {
        let data = self.api("query", &[("query", expr.to_owned())]).await;
        data["result"].as_array().cloned().unwrap_or_default()
    }

    /// The series `expr` returns from `start` to now, a point a second.
    async fn query_range(&self, expr: &str, start: f64) -> Vec<Value> {
        let query = [
            ("query", expr.to_owned()),
            ("start", format!("{start:.3}")),
            ("end", format!("{:.3}", now())),
            ("step", "1".to_owned()),
        ];
        let data = self.api("query_range", &query).await;
        data["result"].as_array().cloned().unwrap_or_default()
    }

    /// The alerts pending or firing, by name and state.
    async fn active_alerts(&self) -> BTreeSet<(String, String)> {
        let data = self.api("alerts", &[]).await;
        data["alerts"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|a| {
                let name = a["labels"]["alertname"].as_str().unwrap_or("").to_owned();
                (name, a["state"].as_str().unwrap_or("").to_owned())
            })
            .collect()
    }

    /// Waits until the target of `job` has been scraped successfully.
    async fn wait_scraped(&self, job: &str) {
        eventually_every(
            Duration::from_secs(30),
            Duration::from_millis(250),
            &format!("{job} never scraped"),
            async || {
                let up = self.query(&format!("up{{job=\"{job}\"}} == 1")).await;
                !up.is_empty()
            },
        )
        .await;
    }
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.start_kill();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// A panel: title, type, unit and its queries with their legends, the variables substituted.
type Panel = (String, String, String, Vec<(String, String)>);

/// Every panel of the dashboard but the rows.
fn panels() -> Vec<Panel> {
    let dashboard: Value =
        serde_json::from_str(&std::fs::read_to_string(DASHBOARD).unwrap()).unwrap();
    let mut panels = Vec::new();
    for panel in dashboard["panels"].as_array().unwrap() {
        let Some(targets) = panel["targets"].as_array() else {
            continue;
        };
        let queries = targets
            .iter()
            .filter_map(|t| {
                let mut expr = t["expr"].as_str()?.to_owned();
                for (name, value) in VARIABLES {
                    expr = expr.replace(name, value);
                }
                let legend = t["legendFormat"].as_str().unwrap_or("").to_owned();
                Some((expr, legend))
            })
            .collect();
        panels.push((
            panel["title"].as_str().unwrap_or("").to_owned(),
            panel["type"].as_str().unwrap_or("").to_owned(),
            panel["fieldConfig"]["defaults"]["unit"]
                .as_str()
                .unwrap_or("")
                .to_owned(),
            queries,
        ));
    }
    assert!(panels.len() > 10, "the dashboard has its panels");
    panels
}

/// Serves the file at `path` as `/metrics` on a free port, read at every scrape (what
/// node_exporter's textfile collector does with `model-pruner report --textfile`).
async fn serve_textfile(path: PathBuf) -> String {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap().to_string();
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            let mut request = [0u8; 4096];
            let _ = stream.read(&mut request).await;
            let body = std::fs::read_to_string(&path).unwrap_or_default();
            let response = format!(
                "HTTP/1.1 200 OK\r\ncontent-type: text/plain; version=0.0.4\r\n\
                 content-length: {}\r\nconnection: close\r\n\r\n{body}",
                body.len()
            );
            let _ = stream.write_all(response.as_bytes()).await;
        }
    });
    address
}

/// The worker's settings on the default queue names, which the alert rules name.
fn default_queues() -> Settings {
    let defaults = Settings::load(None).expect("settings load");
    let mut s = app::same_queues(settings(), &defaults);
    s.retry.in_process_attempts = 2;
    s
}

#[tokio::test]
async fn every_panel_draws_and_only_the_dead_letter_alert_fires_under_real_traffic() {
    let started = now();
    let world = World::new("observability");
    let proxy = Proxy::store().await;
    let mut s = default_queues();
    s.store.endpoint = Some(proxy.url().into());
    // The default names: queues an interrupted earlier run left go first.
    TestApp::without_worker(&s).await.cleanup().await;
    let app = TestApp::spawn(s).await;
    let textfile = std::env::temp_dir().join(format!("mp-report-{}.prom", std::process::id()));
    std::fs::write(&textfile, "").unwrap();
    let node = serve_textfile(textfile.clone()).await;
    let prometheus = Prometheus::start(&app.address().to_string(), &node).await;
    prometheus.wait_scraped("model-pruner").await;
    prometheus.wait_scraped("rabbitmq-queues").await;
    prometheus.wait_scraped("node").await;

    // A store failure that outlasts the in-process retry, then done: each of the two attempts
    // is sent twice (an overload answer is re-sent once at a lower limit, counted as a retry),
    // then the event is delayed once; few enough retries among the store's requests not to be
    // a surge.
    let failing = world.experiment().await;
    let failing_runs = world
        .ranked_runs(&failing, Layout::Classic, &[0.1, 0.2, 0.3])
        .await;
    proxy.rule(DELETE_OBJECTS, Action::Fail(503, "SlowDown"), Some(4));
    app.publish("experiment.prune", &sweep_body(&failing, 1))
        .await;
    // A sweep, and a burst of run.finished (several per run, as retrying pipelines send).
    let swept = world.experiment().await;
    let swept_runs = world
        .ranked_runs(&swept, Layout::Classic, &[0.1, 0.2, 0.3, 0.4])
        .await;
    let burst = world.experiment().await;
    let burst_runs = world
        .ranked_runs(
            &burst,
            Layout::Classic,
            &[0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8],
        )
        .await;
    app.publish("experiment.prune", &sweep_body(&swept, 2))
        .await;
    for i in 0..30 {
        let run = &burst_runs[i % burst_runs.len()];
        app.publish(
            "run.finished",
            &run_finished(&burst, run, keep(3)).to_body(),
        )
        .await;
    }
    // A poison message: dead-lettered at once.
    app.publish("run.finished", b"{not json").await;

    let settled = Duration::from_secs(90);
    world.wait_pruned(&failing_runs, &[2], settled).await;
    world.wait_pruned(&swept_runs, &[2, 3], settled).await;
    world.wait_pruned(&burst_runs, &[5, 6, 7], settled).await;
    app.wait_len(&app.topology.dead_letter_queue, 1, settled)
        .await;
    app.wait_len(&app.topology.work_queue, 0, settled).await;
    assert_eq!(proxy.injected(), 4, "the store failures were hit");

    // The storage report of the swept experiment, left for the textfile collector.
    let report = Command::new(env!("CARGO_BIN_EXE_model-pruner"))
        .args(["report", "--filter", &format!("name = '{}'", swept.name)])
        .arg("--textfile")
        .arg(&textfile)
        .env("RUST_LOG", "off")
        .output()
        .await
        .expect("model-pruner report runs");
    assert!(report.status.success(), "{report:?}");
    eventually_every(
        Duration::from_secs(30),
        Duration::from_millis(250),
        "the report's gauges were never scraped",
        async || {
            !prometheus
                .query("model_pruner_report_stored_bytes > 0")
                .await
                .is_empty()
        },
    )
    .await;

    // The dead-letter alert goes pending within a few evaluations; the others must not.
    eventually_every(
        Duration::from_secs(30),
        Duration::from_millis(500),
        &format!("{EXPECTED_ALERT} never went pending"),
        async || {
            let alerts = prometheus.active_alerts().await;
            if alerts.iter().any(|(name, _)| name == EXPECTED_ALERT) {
                Ok(())
            } else {
                Err(format!("{alerts:?}"))
            }
        },
    )
    .await;
    // A few more evaluations with everything in.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let alerts = prometheus.active_alerts().await;
    let names: BTreeSet<&str> = alerts.iter().map(|(name, _)| name.as_str()).collect();
    if names != BTreeSet::from([EXPECTED_ALERT]) {
        let mut counts = Vec::new();
        for family in ["retries", "requests", "messages_finished"] {
            for expr in [
                format!("sum by (target, outcome) (model_pruner_{family}_total)"),
                format!("sum by (target, outcome) (rate(model_pruner_{family}_total[10m]))"),
            ] {
                let values: Vec<String> = prometheus
                    .query(&expr)
                    .await
                    .iter()
                    .map(|s| format!("{} {}", s["metric"], s["value"][1]))
                    .collect();
                counts.push(format!("{expr}: {values:?}"));
            }
        }
        panic!(
            "active alerts {alerts:?}, only {EXPECTED_ALERT} expected\n{}",
            counts.join("\n")
        );
    }

    // Every query returns a series now, and every graph draws something above zero over the
    // traffic (a stat may rightly read 0, e.g. events in flight).
    let mut blank = Vec::new();
    let mut drawn = Vec::new();
    for (title, kind, unit, queries) in panels() {
        let mut series = Vec::new();
        for (expr, legend) in &queries {
            if prometheus.query(expr).await.is_empty() {
                blank.push(format!("{title}: no series now: {expr}"));
            }
            for s in prometheus.query_range(expr, started).await {
                series
                    .push(json!({"metric": s["metric"], "legend": legend, "values": s["values"]}));
            }
        }
        if kind != "stat" && !series.iter().any(above_zero) {
            blank.push(format!("{title}: nothing above zero over the traffic"));
        }
        drawn.push(json!({"title": title, "type": kind, "unit": unit, "series": series}));
    }
    assert!(
        blank.is_empty(),
        "panels that show nothing:\n{}",
        blank.join("\n")
    );

    render(&json!({"title": "model-pruner (scripts/test.sh traffic)", "panels": drawn})).await;
    app.cleanup().await;
    let _ = std::fs::remove_file(&textfile);
    for exp in [failing, swept, burst] {
        exp.delete().await.expect("delete experiment");
    }
}

/// Whether a `query_range` series has a point above zero.
fn above_zero(series: &Value) -> bool {
    series["values"]
        .as_array()
        .into_iter()
        .flatten()
        .any(|point| {
            point[1]
                .as_str()
                .and_then(|v| v.parse::<f64>().ok())
                .is_some_and(|v| v > 0.0)
        })
}

fn sweep_body(exp: &crate::support::mlflow_fixtures::ExperimentFixture, keep_top: i64) -> Vec<u8> {
    model_pruner::domain::event::Event::ExperimentPrune(sweep(exp, keep(keep_top))).to_body()
}

/// Draws the panels with `scripts/render-dashboard.py` (the MLflow virtualenv's matplotlib).
async fn render(panels: &Value) {
    let out = Path::new(OUT);
    std::fs::create_dir_all(out).unwrap();
    let data = out.join("panels.json");
    std::fs::write(&data, serde_json::to_vec_pretty(panels).unwrap()).unwrap();
    let mut pictures = vec![out.join("model-pruner.png")];
    pictures.extend(std::env::var_os("DASHBOARD_PNG").map(PathBuf::from));
    let python = std::env::var("MODEL_PRUNER_PYTHON")
        .expect("MODEL_PRUNER_PYTHON (set by scripts/stack.sh env)");
    for png in pictures {
        let status = Command::new(&python)
            .arg(RENDER)
            .arg(&data)
            .arg(&png)
            .status()
            .await
            .expect("the renderer runs");
        assert!(status.success(), "render-dashboard.py failed");
        let size = std::fs::metadata(&png).expect("a picture").len();
        assert!(size > 10_000, "{} is {size} bytes", png.display());
    }
}
