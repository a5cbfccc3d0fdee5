//! What `/healthz` and `/readyz` answer. Alive means: the worker's loop (connecting,
//! consuming, reconnecting) has run within its stall limit, so a worker stuck on a hung call
//! gets restarted. Ready means: consuming the work queue, and neither MLflow nor the store has
//! gone [`UNANSWERED_FOR`] failing without one answer.
//!
//! A dependency not asked yet counts as ready ("unknown"), and so does one that answered the
//! last time it was asked, however long ago: an idle worker is a healthy worker. A short run of
//! failures is reported as "degraded" but keeps the worker ready, so one timeout does not flap
//! the probe.

use std::fmt::Write as _;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use super::Target;

/// How long MLflow or the store may fail without one answer before the worker is unready.
pub const UNANSWERED_FOR: Duration = Duration::from_secs(300);

/// When a dependency last answered and since when it has been failing, in Unix milliseconds;
/// 0 for never / not failing. Every client counting into the same metrics updates it.
#[derive(Debug, Default)]
struct Dependency {
    last_answer: AtomicU64,
    failing_since: AtomicU64,
}

impl Dependency {
    fn seen(&self) -> Seen {
        Seen {
            last_answer: self.last_answer.load(Ordering::Relaxed),
            failing_since: self.failing_since.load(Ordering::Relaxed),
        }
    }

    fn record(&self, answered: bool, now: Duration) {
        let now = now.as_millis().max(1) as u64;
        if answered {
            self.last_answer.store(now, Ordering::Relaxed);
            self.failing_since.store(0, Ordering::Relaxed);
        } else {
            // Only the first failure of a run of failures sets its start.
            let _ =
                self.failing_since
                    .compare_exchange(0, now, Ordering::Relaxed, Ordering::Relaxed);
        }
    }
}

/// MLflow and the store, as the requests of one [`super::Metrics`] saw them.
#[derive(Debug, Default)]
pub(super) struct Upstream {
    mlflow: Dependency,
    store: Dependency,
}

impl Upstream {
    /// Records a request's result: `answered` when the system answered below 500.
    pub(super) fn record(&self, target: Target, answered: bool, now: Duration) {
        match target {
            Target::Mlflow => self.mlflow.record(answered, now),
            Target::Store => self.store.record(answered, now),
        }
    }
}

/// One dependency as `/readyz` sees it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
struct Seen {
    last_answer: u64,
    failing_since: u64,
}

/// The worker's own part of health: whether its broker session is consuming, and when its
/// loop last ran.
#[derive(Debug)]
pub struct Health {
    consuming: AtomicBool,
    /// What RabbitMQ last refused the worker's user (ACCESS_REFUSED), by [`Refused`] kind,
    /// until an operation of the same kind succeeds.
    refused: Mutex<[Option<String>; 2]>,
    /// Unix milliseconds of the last [`Health::beat`]; 0 before the first.
    last_beat: AtomicU64,
    /// How long the loop may go without a beat before the worker counts as stalled.
    stalled_after: Duration,
    upstream: Arc<Upstream>,
}

/// What RabbitMQ can refuse the worker's user, each cleared by its own next success.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refused {
    /// Connecting, declaring the topology or consuming.
    Session = 0,
    /// Publishing a copy (delay, dead letter, hand-back, follow-up) into the worker's queues.
    Copy = 1,
}

/// How long a worker's loop may go without a beat when nothing says otherwise.
pub const STALLED_AFTER: Duration = Duration::from_secs(120);

/// What a probe answers: 200 when `ok`, else 503, with `body` saying what is wrong.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProbeReport {
    /// Healthy or ready: the endpoint answers 200 when set, 503 otherwise.
    pub ok: bool,
    /// Plain text for people: `ok`, `ready` or what is wrong; `/readyz` adds a line per dependency.
    pub body: String,
}

impl Health {
    /// `stalled_after` must exceed the longest step of the loop between two beats; MLflow and
    /// the store count as `metrics`' requests saw them.
    pub fn new(stalled_after: Duration, metrics: &super::Metrics) -> Self {
        Health {
            consuming: AtomicBool::new(false),
            refused: Mutex::new([None, None]),
            last_beat: AtomicU64::new(0),
            stalled_after,
            upstream: metrics.0.upstream.clone(),
        }
    }

    /// Set when the session starts consuming, cleared when it stops (shutdown or lost connection).
    pub fn set_consuming(&self, consuming: bool) {
        self.consuming.store(consuming, Ordering::Relaxed);
    }

    /// RabbitMQ refused the worker's user a permission for `kind` (`what` names it), or, with
    /// `None`, an operation of that kind succeeded: `/readyz` names a refusal until then.
    pub fn set_refused(&self, kind: Refused, what: Option<String>) {
        self.refused.lock().unwrap_or_else(PoisonError::into_inner)[kind as usize] = what;
    }

    /// The worker's loop ran: called at every connection attempt and every second of a session.
    pub fn beat(&self) {
        let now = super::unix_now().as_millis().max(1) as u64;
        self.last_beat.store(now, Ordering::Relaxed);
    }

    /// What `/healthz` answers.
    pub fn liveness(&self) -> ProbeReport {
        liveness(
            self.last_beat.load(Ordering::Relaxed),
            self.stalled_after,
            super::unix_now(),
        )
    }

    /// What `/readyz` answers.
    pub fn readiness(&self) -> ProbeReport {
        let refused = self
            .refused
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .iter()
            .flatten()
            .next()
            .cloned();
        report(
            self.consuming.load(Ordering::Relaxed),
            refused.as_deref(),
            [
                ("mlflow", self.upstream.mlflow.seen()),
                ("store", self.upstream.store.seen()),
            ],
            super::unix_now(),
        )
    }
}

fn liveness(last_beat: u64, stalled_after: Duration, now: Duration) -> ProbeReport {
    let since = (now.as_millis() as u64).saturating_sub(last_beat);
    if last_beat == 0 || since < stalled_after.as_millis() as u64 {
        return ProbeReport {
            ok: true,
            body: "ok\n".to_owned(),
        };
    }
    ProbeReport {
        ok: false,
        body: format!(
            "stalled: the worker's loop last ran {}s ago (limit {}s)\n",
            since / 1000,
            stalled_after.as_secs()
        ),
    }
}

fn report(
    consuming: bool,
    refused: Option<&str>,
    deps: [(&str, Seen); 2],
    now: Duration,
) -> ProbeReport {
    let broker = match (refused, consuming) {
        (Some(what), _) => (
            false,
            format!("permission refused: {what} (grant what deploy/README.md lists)"),
        ),
        (None, true) => (true, "ok (consuming the work queue)".to_owned()),
        (None, false) => (
            false,
            "not ready (not connected or not consuming; reconnecting)".to_owned(),
        ),
    };
    let mut lines = vec![("broker", broker.0, broker.1)];
    for (name, seen) in deps {
        let (ok, text) = dependency(seen, now);
        lines.push((name, ok, text));
    }
    let failing: Vec<&str> = lines.iter().filter(|l| !l.1).map(|l| l.0).collect();
    let mut body = if failing.is_empty() {
        "ready\n".to_owned()
    } else {
        format!("not ready: {}\n", failing.join(", "))
    };
    for (name, _, text) in &lines {
        let _ = writeln!(body, "{name}: {text}");
    }
    ProbeReport {
        ok: failing.is_empty(),
        body,
    }
}

fn dependency(seen: Seen, now: Duration) -> (bool, String) {
    let now = now.as_millis() as u64;
    let ago = |t: u64| now.saturating_sub(t) / 1000;
    let last = match seen.last_answer {
        0 => "never answered".to_owned(),
        t => format!("last answer {}s ago", ago(t)),
    };
    match seen.failing_since {
        0 if seen.last_answer == 0 => (true, "unknown (not asked yet)".to_owned()),
        0 => (true, format!("ok ({last})")),
        since if now.saturating_sub(since) >= UNANSWERED_FOR.as_millis() as u64 => (
            false,
            format!("not ready (failing for {}s, {last})", ago(since)),
        ),
        since => (
            true,
            format!(
                "degraded (failing for {}s, {last}; unready after {}s)",
                ago(since),
                UNANSWERED_FOR.as_secs()
            ),
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const NOW: Duration = Duration::from_secs(1_000_000);

    fn at(secs_ago: u64) -> u64 {
        (NOW.as_secs() - secs_ago) * 1000
    }

    fn deps(mlflow: Seen, store: Seen) -> [(&'static str, Seen); 2] {
        [("mlflow", mlflow), ("store", store)]
    }

    #[test]
    fn a_fresh_idle_worker_is_ready_with_unknown_dependencies() {
        let r = report(true, None, deps(Seen::default(), Seen::default()), NOW);
        assert!(r.ok, "{}", r.body);
        assert_eq!(
            r.body,
            "ready\nbroker: ok (consuming the work queue)\n\
             mlflow: unknown (not asked yet)\nstore: unknown (not asked yet)\n"
        );
    }

    #[test]
    fn a_refused_permission_is_not_ready_and_named_even_while_consuming() {
        let what = "ACCESS_REFUSED - write access to exchange 'amq.default'";
        let r = report(
            true,
            Some(what),
            deps(Seen::default(), Seen::default()),
            NOW,
        );
        assert!(!r.ok);
        assert!(r.body.starts_with("not ready: broker\n"), "{}", r.body);
        assert!(
            r.body
                .contains("broker: permission refused: ACCESS_REFUSED"),
            "{}",
            r.body
        );
    }

    #[test]
    fn not_consuming_is_not_ready_and_says_so() {
        let r = report(false, None, deps(Seen::default(), Seen::default()), NOW);
        assert!(!r.ok);
        assert!(r.body.starts_with("not ready: broker\n"), "{}", r.body);
    }

    #[test]
    fn an_answer_long_ago_is_still_ready() {
        let old = Seen {
            last_answer: at(86_400),
            failing_since: 0,
        };
        let r = report(true, None, deps(old, old), NOW);
        assert!(r.ok, "{}", r.body);
        assert!(r.body.contains("mlflow: ok (last answer 86400s ago)"));
    }

    #[test]
    fn short_failures_degrade_but_long_ones_make_the_worker_unready() {
        let blip = Seen {
            last_answer: at(600),
            failing_since: at(30),
        };
        let r = report(true, None, deps(blip, Seen::default()), NOW);
        assert!(r.ok, "{}", r.body);
        assert!(
            r.body.contains("mlflow: degraded (failing for 30s"),
            "{}",
            r.body
        );

        let down = Seen {
            last_answer: 0,
            failing_since: at(301),
        };
        let r = report(true, None, deps(Seen::default(), down), NOW);
        assert!(!r.ok);
        assert!(r.body.starts_with("not ready: store\n"), "{}", r.body);
        assert!(
            r.body
                .contains("store: not ready (failing for 301s, never answered)"),
            "{}",
            r.body
        );
    }

    #[test]
    fn a_loop_that_stopped_beating_is_not_alive() {
        let limit = Duration::from_secs(120);
        assert!(liveness(0, limit, NOW).ok, "not started yet");
        assert!(liveness(at(119), limit, NOW).ok);
        let stalled = liveness(at(121), limit, NOW);
        assert!(!stalled.ok);
        assert_eq!(
            stalled.body,
            "stalled: the worker's loop last ran 121s ago (limit 120s)\n"
        );
    }

    #[test]
    fn a_run_of_failures_starts_at_the_first_and_ends_with_an_answer() {
        let dep = Dependency::default();
        let t = Duration::from_secs;
        dep.record(false, t(10));
        dep.record(false, t(20));
        assert_eq!(dep.seen().failing_since, 10_000);
        dep.record(true, t(30));
        assert_eq!(
            dep.seen(),
            Seen {
                last_answer: 30_000,
                failing_since: 0
            }
        );
    }
}
