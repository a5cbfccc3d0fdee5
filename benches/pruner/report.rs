//! The machine and service versions the figures were taken on, the printed table and the JSON
//! written under `target/bench/`.

use serde::Serialize;

use crate::scenarios::{BurstResult, RegistryResult, SweepResult};
use crate::worker::ProcStats;

#[derive(Debug, Serialize)]
pub struct Machine {
    pub date_utc: String,
    pub cores: usize,
    pub memory_mib: u64,
    pub kernel: String,
    pub load_at_start: [f64; 3],
    pub git_revision: String,
    pub mlflow_version: String,
    /// The tracking server's store: `postgresql` or `sqlite` (`scripts/stack.sh env`).
    pub mlflow_backend: String,
    pub rabbitmq_version: String,
    pub erlang_version: String,
    pub garage_version: String,
}

impl Machine {
    pub async fn collect() -> Machine {
        let http = reqwest::Client::new();
        let mlflow = std::env::var("MLFLOW_TRACKING_URI")
            .or_else(|_| std::env::var("MODEL_PRUNER__MLFLOW__TRACKING_URI"))
            .unwrap_or_else(|_| "http://127.0.0.1:5000".into());
        let mlflow_version = match http.get(format!("{mlflow}/version")).send().await {
            Ok(r) => r.text().await.unwrap_or_default(),
            Err(e) => format!("unknown ({e})"),
        };
        let (rabbitmq_version, erlang_version) = rabbitmq_versions(&http).await;
        let meminfo = std::fs::read_to_string("/proc/meminfo").unwrap_or_default();
        let memory_kib: u64 = meminfo
            .lines()
            .find_map(|l| l.strip_prefix("MemTotal:"))
            .and_then(|v| v.split_whitespace().next()?.parse().ok())
            .unwrap_or(0);
        Machine {
            date_utc: time::OffsetDateTime::now_utc()
                .format(&time::format_description::well_known::Rfc3339)
                .unwrap_or_default(),
            cores: std::thread::available_parallelism().map_or(0, usize::from),
            memory_mib: memory_kib / 1024,
            kernel: command("uname", &["-r"]),
            load_at_start: crate::load_average(),
            git_revision: command("git", &["rev-parse", "--short", "HEAD"]),
            mlflow_version,
            mlflow_backend: std::env::var("MODEL_PRUNER_TEST_MLFLOW_BACKEND")
                .unwrap_or_else(|_| "unknown".into()),
            rabbitmq_version,
            erlang_version,
            garage_version: garage_version(),
        }
    }
}

async fn rabbitmq_versions(http: &reqwest::Client) -> (String, String) {
    let base = std::env::var("RABBITMQ_MANAGEMENT_URL")
        .unwrap_or_else(|_| "http://guest:guest@127.0.0.1:15672".into());
    let Ok(mut url) = url::Url::parse(&base) else {
        return ("unknown".into(), "unknown".into());
    };
    let (user, password) = (url.username().to_owned(), url.password().map(str::to_owned));
    let _ = url.set_username("");
    let _ = url.set_password(None);
    let overview = async {
        http.get(url.join("api/overview").ok()?)
            .basic_auth(user, password)
            .send()
            .await
            .ok()?
            .json::<serde_json::Value>()
            .await
            .ok()
    }
    .await
    .unwrap_or_default();
    let field = |k: &str| overview[k].as_str().unwrap_or("unknown").to_owned();
    (field("rabbitmq_version"), field("erlang_version"))
}

fn garage_version() -> String {
    let home = std::env::var("CARGO_HOME")
        .or_else(|_| std::env::var("HOME").map(|h| format!("{h}/.cargo")))
        .unwrap_or_default();
    for bin in ["garage".to_owned(), format!("{home}/bin/garage")] {
        let out = command(&bin, &["--version"]);
        if !out.is_empty() {
            return out;
        }
    }
    "unknown".into()
}

fn command(program: &str, args: &[&str]) -> String {
    std::process::Command::new(program)
        .args(args)
        .output()
        .ok()
        .filter(|o| o.status.success())
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .map(|s| s.trim().to_owned())
        .unwrap_or_default()
}

#[derive(Debug, Serialize)]
pub struct Report {
    pub machine: Machine,
    pub args: String,
    pub smoke: bool,
    pub worker_bin: String,
    pub worker_at_start: ProcStats,
    pub worker_at_end: ProcStats,
    pub sweep: Option<SweepResult>,
    pub burst: Option<BurstResult>,
    pub scale: Option<SweepResult>,
    pub registry: Option<RegistryResult>,
    pub steady: Option<crate::steady::SteadyResult>,
    pub replicas: Vec<crate::replicas::ReplicasRow>,
    pub fleet_report: Option<crate::fleet::ReportResult>,
}

fn mib(kib: u64) -> f64 {
    kib as f64 / 1024.0
}

pub fn print_sweep(name: &str, r: &SweepResult) {
    eprintln!(
        "[bench] {name}: worker {:.0} obj/s, raw {:.0} obj/s, ratio {:.0}%",
        r.worker.rate(),
        r.raw_bulk.rate(),
        r.ratio * 100.0
    );
    let ops = |counts: &std::collections::BTreeMap<String, f64>,
               secs: &std::collections::BTreeMap<String, f64>| {
        counts
            .iter()
            .map(|(op, n)| format!("{op} {n:.0} ({:.1}s)", secs.get(op).unwrap_or(&0.0)))
            .collect::<Vec<_>>()
            .join(", ")
    };
    eprintln!(
        "[bench] {name}: MLflow requests {}; store requests {}",
        ops(&r.requests.mlflow, &r.requests.mlflow_seconds),
        ops(&r.requests.store, &r.requests.store_seconds)
    );
    eprintln!(
        "[bench] {name}: CPU while the worker swept: {}; while raw bulk ran: {}",
        r.worker_cpu.summary(),
        r.raw_bulk_cpu.summary()
    );
    eprintln!(
        "[bench] {name}: phases over {:.2}s: {}; peak RSS {:.1} MiB",
        r.worker.seconds,
        phases(r),
        mib(r.peak_rss_kib)
    );
}

/// `reads and looks 12 rq 1.2s (0.5x), ...`: requests, seconds waited, and those seconds over
/// the sweep's wall time (how many of the phase's requests were in flight on average).
fn phases(r: &SweepResult) -> String {
    r.phases
        .iter()
        .map(|(name, p)| {
            format!(
                "{name} {:.0} rq {:.1}s ({:.1}x)",
                p.requests,
                p.seconds,
                p.seconds / r.worker.seconds
            )
        })
        .collect::<Vec<_>>()
        .join(", ")
}

impl Report {
    pub fn print(&self) {
        let m = &self.machine;
        println!(
            "\nmodel-pruner bench{} - {} - {} cores, {} MiB, load at start {:.2} {:.2} {:.2}",
            if self.smoke { " (smoke)" } else { "" },
            m.date_utc,
            m.cores,
            m.memory_mib,
            m.load_at_start[0],
            m.load_at_start[1],
            m.load_at_start[2]
        );
        println!(
            "MLflow {} on {}, RabbitMQ {} (Erlang {}), {}, git {}",
            m.mlflow_version,
            m.mlflow_backend,
            m.rabbitmq_version,
            m.erlang_version,
            m.garage_version,
            m.git_revision
        );
        let registry = self.registry.as_ref().map(|r| &r.sweep);
        let sweeps: Vec<(&str, &SweepResult)> = [
            ("sweep", self.sweep.as_ref()),
            ("scale", self.scale.as_ref()),
            ("reg", registry),
        ]
        .into_iter()
        .filter_map(|(n, r)| Some((n, r?)))
        .collect();
        if !sweeps.is_empty() {
            println!(
                "\n{:<6} {:>6} {:>8} {:>8} {:>10} {:>10} {:>10} {:>6} {:>9} {:>7} {:>7} {:>8}",
                "sweep",
                "runs",
                "objects",
                "worker s",
                "worker/s",
                "raw bulk/s",
                "raw run/s",
                "ratio",
                "MLflow rq",
                "S3 rq",
                "cpu s",
                "peak MiB"
            );
            for (name, r) in &sweeps {
                println!(
                    "{:<6} {:>6} {:>8} {:>8.2} {:>10.0} {:>10.0} {:>10} {:>5.0}% {:>9.0} {:>7.0} {:>7.2} {:>8.1}",
                    name,
                    r.runs,
                    r.worker.objects,
                    r.worker.seconds,
                    r.worker.rate(),
                    r.raw_bulk.rate(),
                    r.raw_per_run
                        .map_or("-".into(), |t| format!("{:.0}", t.rate())),
                    r.ratio * 100.0,
                    r.requests.mlflow_total(),
                    r.requests.store_total(),
                    r.worker_cpu_seconds,
                    mib(r.peak_rss_kib)
                );
            }
            for (name, r) in &sweeps {
                println!("{name:<6} phases: {}", phases(r));
                println!("{name:<6} CPU, worker: {}", r.worker_cpu.summary());
                println!("{name:<6} CPU, raw bulk: {}", r.raw_bulk_cpu.summary());
            }
        }
        let lookups = |r: &SweepResult| {
            r.requests
                .mlflow
                .get("model-versions/search")
                .copied()
                .unwrap_or(0.0)
        };
        if let Some(r) = &self.registry {
            println!(
                "\nregistry: with {} versions of other models registered, the sweep made {:.0} \
                 model-versions/search requests ({:.0} without them) and took {:.2}s ({:.2}s \
                 without them)",
                r.versions_elsewhere,
                lookups(&r.sweep),
                self.sweep.as_ref().map_or(f64::NAN, lookups),
                r.sweep.worker.seconds,
                self.sweep.as_ref().map_or(f64::NAN, |s| s.worker.seconds),
            );
        }
        if let Some(b) = &self.burst {
            println!(
                "\nburst: {} events over {} experiments ({} runs each): {:.1} events/s \
                 (drained in {:.2}s, published in {:.2}s), publish-to-ack p50 {:.0} ms, \
                 p95 {:.0} ms, p99 {:.0} ms, max {:.0} ms",
                b.events,
                b.experiments,
                b.runs_per_experiment,
                b.events_per_second,
                b.drain_seconds,
                b.publish_seconds,
                b.latency_ms.p50,
                b.latency_ms.p95,
                b.latency_ms.p99,
                b.latency_ms.max
            );
            println!(
                "       {} passes, {} runs pruned; per event: {:.3} runs/search, {:.2} MLflow \
                 requests, {:.2} store requests; worker CPU {:.2}s; peak RSS {:.1} MiB",
                b.passes,
                b.runs_pruned,
                b.mlflow_runs_search_per_event,
                b.mlflow_requests_per_event,
                b.store_requests_per_event,
                b.worker_cpu_seconds,
                mib(b.peak_rss_kib)
            );
        }
        if let Some(s) = &self.steady {
            println!(
                "\nsteady state: {} events one at a time (keep {}): publish-to-deleted p50 {:.0} \
                 ms, p99 {:.0} ms, max {:.0} ms; publish-to-ack p50 {:.0} ms, p99 {:.0} ms, max \
                 {:.0} ms; per event {:.1} MLflow and {:.1} store requests",
                s.events,
                s.keep_top,
                s.publish_to_deleted_ms.p50,
                s.publish_to_deleted_ms.p99,
                s.publish_to_deleted_ms.max,
                s.publish_to_ack_ms.p50,
                s.publish_to_ack_ms.p99,
                s.publish_to_ack_ms.max,
                s.mlflow_requests_per_event,
                s.store_requests_per_event
            );
        }
        if !self.replicas.is_empty() {
            println!(
                "\n{:<8} {:>6} {:>8} {:>11} {:>10} {:>9} {:>10} {:>9} {:>7} {:>12}",
                "workers",
                "events",
                "drain s",
                "passes/exp",
                "MLflow/ev",
                "S3/ev",
                "unanswer.",
                "overloads",
                "delayed",
                "MLflow limit"
            );
            for r in &self.replicas {
                let limits: Vec<String> =
                    r.mlflow_limits.iter().map(|l| format!("{l:.0}")).collect();
                println!(
                    "{:<8} {:>6} {:>8.2} {:>11.2} {:>10.2} {:>9.2} {:>10.0} {:>9.0} {:>7} {:>12}",
                    r.workers,
                    r.events,
                    r.drain_seconds,
                    r.passes_per_experiment,
                    r.mlflow_requests_per_event,
                    r.store_requests_per_event,
                    r.mlflow_unanswered,
                    r.overloads,
                    r.delayed,
                    limits.join(",")
                );
            }
        }
        println!(
            "\nworker process: peak RSS (VmHWM) {:.1} MiB, RSS at end {:.1} MiB, CPU {:.2}s \
             in total ({:.2}s at start)",
            mib(self.worker_at_end.vm_hwm_kib),
            mib(self.worker_at_end.vm_rss_kib),
            self.worker_at_end.cpu_seconds,
            self.worker_at_start.cpu_seconds
        );
    }
}
