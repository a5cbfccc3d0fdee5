//! Where the machine's CPU goes during a measured phase: CPU seconds of every process, summed by
//! what it is (the tracking server, PostgreSQL, the store, the worker, the bench, the rest), from
//! `/proc/<pid>/stat`. On a small machine the stack shares the cores with the worker, and these
//! figures say when they, not the worker, bound a scenario.

use std::collections::BTreeMap;

/// CPU seconds consumed so far, by process group.
#[derive(Debug, Clone, Default)]
pub struct CpuSnapshot {
    by_group: BTreeMap<&'static str, f64>,
    at: Option<std::time::Instant>,
}

/// CPU seconds by process group between two snapshots, and the wall time between them.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct CpuUse {
    pub wall_seconds: f64,
    pub seconds: BTreeMap<&'static str, f64>,
}

impl CpuUse {
    /// Average cores busy over the phase.
    pub fn cores_busy(&self) -> f64 {
        self.seconds.values().sum::<f64>() / self.wall_seconds.max(1e-9)
    }

    /// `mlflow 2.1s, garage 1.0s, ... (1.9 cores busy)`.
    pub fn summary(&self) -> String {
        let parts: Vec<String> = self
            .seconds
            .iter()
            .filter(|(_, s)| **s >= 0.05)
            .map(|(g, s)| format!("{g} {s:.1}s"))
            .collect();
        format!("{} ({:.1} cores busy)", parts.join(", "), self.cores_busy())
    }
}

fn group(comm: &str, cmdline: &str) -> &'static str {
    match comm {
        "model-pruner" => "worker",
        "garage" => "garage",
        c if c.starts_with("postgres") => "postgresql",
        c if c.starts_with("beam") || c.starts_with("erl") => "rabbitmq",
        c if c.starts_with("pruner-") => "bench",
        // The tracking servers and their uvicorn workers (spawned by multiprocessing, so named
        // by the virtualenv's path only).
        _ if cmdline.contains("mlflow") || cmdline.contains("model-pruner/venv") => "mlflow",
        _ => "other",
    }
}

impl CpuSnapshot {
    pub fn take() -> Self {
        let ticks = clock_ticks();
        let mut by_group: BTreeMap<&'static str, f64> = BTreeMap::new();
        let Ok(dir) = std::fs::read_dir("/proc") else {
            return CpuSnapshot::default();
        };
        for entry in dir.flatten() {
            let name = entry.file_name();
            let Some(pid) = name
                .to_str()
                .filter(|n| n.bytes().all(|b| b.is_ascii_digit()))
            else {
                continue;
            };
            let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
                continue;
            };
            let (Some(open), Some(close)) = (stat.find('('), stat.rfind(')')) else {
                continue;
            };
            let comm = &stat[open + 1..close];
            let fields: Vec<&str> = stat[close + 1..].split_whitespace().collect();
            let tick = |i: usize| {
                fields
                    .get(i)
                    .and_then(|v| v.parse::<f64>().ok())
                    .unwrap_or(0.0)
            };
            let cmdline = std::fs::read(format!("/proc/{pid}/cmdline"))
                .map(|b| String::from_utf8_lossy(&b).into_owned())
                .unwrap_or_default();
            *by_group.entry(group(comm, &cmdline)).or_default() += (tick(11) + tick(12)) / ticks;
        }
        CpuSnapshot {
            by_group,
            at: Some(std::time::Instant::now()),
        }
    }

    /// What was used from `self` to `later` (processes that ended in between are not counted).
    pub fn until(&self, later: &CpuSnapshot) -> CpuUse {
        let wall_seconds = match (self.at, later.at) {
            (Some(a), Some(b)) => b.duration_since(a).as_secs_f64(),
            _ => 0.0,
        };
        let seconds = later
            .by_group
            .iter()
            .map(|(g, s)| {
                (
                    *g,
                    (s - self.by_group.get(g).copied().unwrap_or(0.0)).max(0.0),
                )
            })
            .collect();
        CpuUse {
            wall_seconds,
            seconds,
        }
    }
}

fn clock_ticks() -> f64 {
    std::process::Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(100.0)
}
