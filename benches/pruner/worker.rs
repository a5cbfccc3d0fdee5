//! The worker under test as a separate process (`model-pruner worker`) with isolated broker
//! names: its JSON log lines are parsed as they arrive (when each event was acked, failures),
//! its `/metrics` are scraped, and `/proc/<pid>` gives its peak RSS and CPU time.

use std::collections::{BTreeMap, HashMap};
use std::path::Path;
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use anyhow::{Context as _, bail};
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;
use tokio::io::{AsyncBufReadExt as _, AsyncWriteExt as _, BufReader};
use tokio::process::{Child, Command};

/// Broker names of one bench run, none of them the defaults.
#[derive(Debug, Clone)]
pub struct Names {
    pub exchange: String,
    pub work_queue: String,
    pub dead_letter_queue: String,
    pub delay_queue_prefix: String,
}

impl Names {
    pub fn unique() -> Self {
        let id = format!("mp-bench-{:08x}", rand::random::<u32>());
        Names {
            work_queue: format!("{id}.work"),
            dead_letter_queue: format!("{id}.dead-letter"),
            delay_queue_prefix: format!("{id}.delay"),
            exchange: id,
        }
    }
}

/// What the worker's log said so far.
#[derive(Debug, Default)]
struct LogState {
    metrics_addr: Option<String>,
    consuming: bool,
    /// Ack time of each handled event, keyed by run id (`run.finished`) or
    /// `prune:<experiment id>` (`experiment.prune`).
    handled: HashMap<String, SystemTime>,
    /// "event delayed" lines, verbatim (a transient failure: the event comes back later).
    delayed: Vec<String>,
    /// "event dead-lettered" lines, verbatim.
    dead_lettered: Vec<String>,
}

pub struct Worker {
    child: Child,
    pid: u32,
    state: Arc<Mutex<LogState>>,
    http: reqwest::Client,
    metrics_url: String,
    clk_tck: f64,
}

/// Peak and current memory and CPU time of the process, from `/proc`.
#[derive(Debug, Clone, Copy, serde::Serialize)]
pub struct ProcStats {
    pub vm_hwm_kib: u64,
    pub vm_rss_kib: u64,
    pub cpu_seconds: f64,
}

impl Worker {
    /// Starts `bin worker` with `names`, the stack's `MODEL_PRUNER__*` settings from the
    /// environment and `extra_env` on top; returns once it consumes. Its log goes to `log_path`.
    pub async fn start(
        bin: &Path,
        names: &Names,
        extra_env: &[(String, String)],
        log_path: &Path,
    ) -> anyhow::Result<Worker> {
        let mut child = Command::new(bin)
            .arg("worker")
            .env("MODEL_PRUNER__BROKER__EXCHANGE", &names.exchange)
            .env("MODEL_PRUNER__BROKER__WORK_QUEUE", &names.work_queue)
            .env(
                "MODEL_PRUNER__BROKER__DEAD_LETTER_QUEUE",
                &names.dead_letter_queue,
            )
            .env(
                "MODEL_PRUNER__BROKER__DELAY_QUEUE_PREFIX",
                &names.delay_queue_prefix,
            )
            .env("MODEL_PRUNER__METRICS__LISTEN", "127.0.0.1:0")
            .env("MODEL_PRUNER__LOG__FORMAT", "json")
            .env("RUST_LOG", "info")
            .envs(extra_env.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .with_context(|| format!("starting {}", bin.display()))?;
        let pid = child.id().context("worker pid")?;
        let stderr = child.stderr.take().context("worker stderr")?;
        let state = Arc::new(Mutex::new(LogState::default()));
        let mut log = tokio::fs::File::create(log_path)
            .await
            .with_context(|| format!("creating {}", log_path.display()))?;
        let reader_state = state.clone();
        tokio::spawn(async move {
            let mut lines = BufReader::new(stderr).lines();
            while let Ok(Some(line)) = lines.next_line().await {
                let _ = log.write_all(line.as_bytes()).await;
                let _ = log.write_all(b"\n").await;
                record(&reader_state, &line);
            }
            let _ = log.flush().await;
        });
        let clk_tck = std::process::Command::new("getconf")
            .arg("CLK_TCK")
            .output()
            .ok()
            .and_then(|o| String::from_utf8(o.stdout).ok())
            .and_then(|s| s.trim().parse().ok())
            .unwrap_or(100.0);
        let deadline = Instant::now() + Duration::from_secs(60);
        let addr = loop {
            {
                let s = state.lock().unwrap();
                if let (Some(addr), true) = (&s.metrics_addr, s.consuming) {
                    break addr.clone();
                }
            }
            if let Some(status) = child.try_wait()? {
                bail!(
                    "the worker exited with {status} before consuming; see {}",
                    log_path.display()
                );
            }
            if Instant::now() > deadline {
                bail!(
                    "the worker did not start consuming in 60 s; see {}",
                    log_path.display()
                );
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        };
        Ok(Worker {
            child,
            pid,
            state,
            http: reqwest::Client::new(),
            metrics_url: format!("http://{addr}/metrics"),
            clk_tck,
        })
    }

    pub fn pid(&self) -> u32 {
        self.pid
    }

    /// Waits until every key in `keys` was acked; returns their ack times in order. Fails at
    /// once if the worker delays or dead-letters anything, or after `timeout`.
    /// Waits until every event of `keys` is acked; fails at the first delay or dead letter.
    pub async fn wait_handled(
        &self,
        keys: &[String],
        timeout: Duration,
    ) -> anyhow::Result<Vec<SystemTime>> {
        wait_handled_by(&[self], keys, timeout, false).await
    }

    /// Events sent to a delay queue so far.
    pub fn delayed(&self) -> usize {
        self.state.lock().unwrap().delayed.len()
    }

    /// Starts a new peak: the kernel's `VmHWM` is reset to the current RSS (`clear_refs` 5).
    pub fn reset_peak(&self) -> anyhow::Result<()> {
        std::fs::write(format!("/proc/{}/clear_refs", self.pid), "5")
            .context("resetting the worker's peak RSS (/proc/<pid>/clear_refs)")
    }

    pub async fn scrape(&self) -> anyhow::Result<Scrape> {
        let text = self
            .http
            .get(&self.metrics_url)
            .send()
            .await?
            .error_for_status()?
            .text()
            .await?;
        Ok(Scrape::parse(&text))
    }

    pub fn proc_stats(&self) -> anyhow::Result<ProcStats> {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.pid))?;
        let kib = |field: &str| {
            status
                .lines()
                .find_map(|l| l.strip_prefix(field))
                .and_then(|rest| rest.split_whitespace().next())
                .and_then(|n| n.parse().ok())
                .unwrap_or(0)
        };
        let stat = std::fs::read_to_string(format!("/proc/{}/stat", self.pid))?;
        // Fields after the command name (which may hold spaces): state is field 3, utime 14,
        // stime 15 (proc(5)).
        let rest: Vec<&str> = stat
            .rsplit_once(')')
            .context("malformed /proc/<pid>/stat")?
            .1
            .split_whitespace()
            .collect();
        let ticks = |i: usize| {
            rest.get(i)
                .and_then(|v| v.parse::<f64>().ok())
                .unwrap_or(0.0)
        };
        Ok(ProcStats {
            vm_hwm_kib: kib("VmHWM:"),
            vm_rss_kib: kib("VmRSS:"),
            cpu_seconds: (ticks(11) + ticks(12)) / self.clk_tck,
        })
    }

    /// SIGTERM (graceful shutdown), then wait up to 30 s.
    pub async fn stop(mut self) -> anyhow::Result<()> {
        std::process::Command::new("kill")
            .args(["-TERM", &self.pid.to_string()])
            .status()?;
        match tokio::time::timeout(Duration::from_secs(30), self.child.wait()).await {
            Ok(status) => {
                status?;
            }
            Err(_) => self.child.kill().await?,
        }
        Ok(())
    }
}

/// Waits until every event of `keys` is acked by one of `workers`; fails at the first dead
/// letter, and at the first delay unless `delays_allowed` (an event delayed is acked later).
pub async fn wait_handled_by(
    workers: &[&Worker],
    keys: &[String],
    timeout: Duration,
    delays_allowed: bool,
) -> anyhow::Result<Vec<SystemTime>> {
    let deadline = Instant::now() + timeout;
    loop {
        let mut acked = vec![None; keys.len()];
        for worker in workers {
            let s = worker.state.lock().unwrap();
            let failures = if delays_allowed {
                &s.dead_lettered
            } else if s.dead_lettered.is_empty() {
                &s.delayed
            } else {
                &s.dead_lettered
            };
            if let Some(first) = failures.first() {
                bail!(
                    "a worker failed {} event(s); first: {first}",
                    failures.len()
                );
            }
            for (slot, key) in acked.iter_mut().zip(keys) {
                if let Some(at) = s.handled.get(key) {
                    *slot = Some((*slot).map_or(*at, |t: SystemTime| t.max(*at)));
                }
            }
        }
        let done = acked.iter().filter(|a| a.is_some()).count();
        if done == keys.len() {
            return Ok(acked.into_iter().flatten().collect());
        }
        if Instant::now() > deadline {
            bail!(
                "only {done} of {} events acked after {timeout:?}",
                keys.len()
            );
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn record(state: &Mutex<LogState>, line: &str) {
    let Ok(v) = serde_json::from_str::<serde_json::Value>(line) else {
        return;
    };
    let field = |name: &str| v.get(name).and_then(|f| f.as_str()).unwrap_or("");
    let mut s = state.lock().unwrap();
    match field("message") {
        "serving /metrics, /healthz and /readyz" => {
            s.metrics_addr = Some(field("address").to_owned());
        }
        "consuming" => s.consuming = true,
        "event handled" => {
            let key = match field("routing_key") {
                "experiment.prune" => format!("prune:{}", field("experiment_id")),
                _ => field("run_id").to_owned(),
            };
            if let Ok(at) = OffsetDateTime::parse(field("timestamp"), &Rfc3339) {
                s.handled.insert(key, at.into());
            }
        }
        "event delayed" => s.delayed.push(line.to_owned()),
        "event dead-lettered" => s.dead_lettered.push(line.to_owned()),
        _ => {}
    }
}

/// One scrape of `/metrics`: series (name with labels) and values.
#[derive(Debug, Clone, Default)]
pub struct Scrape {
    series: Vec<(String, BTreeMap<String, String>, f64)>,
}

impl Scrape {
    fn parse(text: &str) -> Self {
        let series = text
            .lines()
            .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
            .filter_map(|l| {
                let (head, value) = l.rsplit_once(' ')?;
                let value: f64 = value.parse().ok()?;
                let (name, labels) = match head.split_once('{') {
                    Some((name, rest)) => (name, parse_labels(rest.trim_end_matches('}'))),
                    None => (head, BTreeMap::new()),
                };
                Some((name.to_owned(), labels, value))
            })
            .collect();
        Scrape { series }
    }

    /// Sum of the series `name` whose labels include `filter`, grouped by label `by`.
    pub fn by(&self, name: &str, filter: &[(&str, &str)], by: &str) -> BTreeMap<String, f64> {
        let mut out = BTreeMap::new();
        for (n, labels, value) in &self.series {
            if n == name
                && filter
                    .iter()
                    .all(|(k, v)| labels.get(*k).map(String::as_str) == Some(*v))
            {
                let key = labels.get(by).cloned().unwrap_or_default();
                *out.entry(key).or_insert(0.0) += value;
            }
        }
        out
    }

    /// Sum of the series `name` whose labels include `filter`.
    pub fn sum(&self, name: &str, filter: &[(&str, &str)]) -> f64 {
        self.by(name, filter, "").values().sum()
    }
}

fn parse_labels(text: &str) -> BTreeMap<String, String> {
    // Label values of this worker hold no commas or quotes (operations, targets, classes).
    text.split(',')
        .filter_map(|kv| {
            let (k, v) = kv.split_once('=')?;
            Some((k.trim().to_owned(), v.trim().trim_matches('"').to_owned()))
        })
        .collect()
}

/// `after - before` per key.
pub fn delta(
    after: &BTreeMap<String, f64>,
    before: &BTreeMap<String, f64>,
) -> BTreeMap<String, f64> {
    after
        .iter()
        .map(|(k, v)| (k.clone(), v - before.get(k).copied().unwrap_or(0.0)))
        .filter(|(_, v)| *v != 0.0)
        .collect()
}
