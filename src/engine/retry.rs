//! In-process retries of single MLflow and store calls: exponential backoff with full jitter
//! ([`Backoff`]), only for transient errors, a few attempts within seconds. Longer waits are the
//! worker's job. `tokio-retry` runs the attempts; the waits are the project's one backoff.

use std::future::Future;
use std::time::Duration;

use tokio_retry::RetryIf;

use crate::domain::backoff::{Backoff, Jitter};
use crate::domain::classify::{Classified, ErrorClass};
use crate::metrics::Metrics;
use crate::settings::RetrySettings;

/// How often and how patiently one call is retried.
#[derive(Debug, Clone)]
pub struct RetryPolicy {
    /// Attempts in all, the first included (`retry.in_process_attempts`); 1 means no retry.
    pub attempts: u32,
    /// Ceiling of the first wait (`retry.initial_backoff`); it doubles after each retry.
    pub initial_backoff: Duration,
    /// Cap on the ceiling of any wait (`retry.max_backoff`); full jitter waits 0 to the ceiling.
    pub max_backoff: Duration,
    metrics: Metrics,
}

impl RetryPolicy {
    /// The policy of `retry`, counting its retries into `metrics`.
    pub fn new(s: &RetrySettings, metrics: &Metrics) -> Self {
        RetryPolicy {
            attempts: s.in_process_attempts,
            initial_backoff: s.initial_backoff,
            max_backoff: s.max_backoff,
            metrics: metrics.clone(),
        }
    }

    /// The waits between attempts: initial, 2x, 4x, ... capped, each with full jitter. An
    /// initial wait of zero counts as a millisecond, so that the waits still grow.
    fn delays(&self) -> impl Iterator<Item = Duration> + use<> {
        let first = self.initial_backoff.max(Duration::from_millis(1));
        Backoff::new(first, self.max_backoff, Jitter::Full)
            .waits()
            .take(self.attempts.saturating_sub(1) as usize)
    }

    /// Runs `op`, retrying transient failures; `target` names the system for logs.
    pub async fn run<T, E, F, Fut>(&self, target: &'static str, what: &str, op: F) -> Result<T, E>
    where
        E: Classified,
        F: FnMut() -> Fut,
        Fut: Future<Output = Result<T, E>>,
    {
        // Called on every failure, the last one too: only a failure another attempt follows is
        // a retry to log and count.
        let mut failures = 0;
        let attempts = self.attempts;
        RetryIf::start(self.delays(), op, move |e: &E| {
            failures += 1;
            let retry = e.class() == ErrorClass::Transient && failures < attempts;
            if retry {
                let reason = e.reason();
                tracing::warn!(target_system = target, operation = what, reason, error = %e, "transient failure, retrying");
                self.metrics.retry(target, reason);
            }
            retry
        })
        .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicU32, Ordering};

    #[derive(Debug)]
    struct Fail(ErrorClass);
    impl std::fmt::Display for Fail {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            write!(f, "{}", self.0)
        }
    }
    impl Classified for Fail {
        fn class(&self) -> ErrorClass {
            self.0
        }

        fn reason(&self) -> &'static str {
            "server_error"
        }
    }

    fn policy(attempts: u32) -> RetryPolicy {
        RetryPolicy {
            attempts,
            initial_backoff: Duration::from_millis(1),
            max_backoff: Duration::from_millis(2),
            metrics: Metrics::new(),
        }
    }

    #[test]
    fn delays_grow_and_are_capped_and_counted() {
        let p = RetryPolicy {
            attempts: 6,
            initial_backoff: Duration::from_millis(200),
            max_backoff: Duration::from_secs(1),
            metrics: Metrics::new(),
        };
        let d: Vec<_> = p.delays().collect();
        assert_eq!(d.len(), 5);
        assert!(d.iter().all(|d| *d <= Duration::from_secs(1)));
    }

    #[tokio::test]
    async fn transient_errors_are_retried_until_attempts_run_out() {
        let calls = AtomicU32::new(0);
        let r: Result<(), Fail> = policy(3)
            .run("test", "op", || async {
                calls.fetch_add(1, Ordering::SeqCst);
                Err(Fail(ErrorClass::Transient))
            })
            .await;
        assert!(r.is_err());
        assert_eq!(calls.load(Ordering::SeqCst), 3);
    }

    #[tokio::test]
    async fn only_failures_another_attempt_follows_count_as_retries() {
        let p = policy(3);
        let r: Result<(), Fail> = p
            .run("retry-count-test", "op", || async {
                Err(Fail(ErrorClass::Transient))
            })
            .await;
        assert!(r.is_err());
        let counted: f64 = p
            .metrics
            .registry()
            .gather()
            .iter()
            .filter(|f| f.name() == "model_pruner_retries_total")
            .flat_map(|f| f.get_metric())
            .filter(|m| {
                m.get_label()
                    .iter()
                    .any(|l| l.value() == "retry-count-test")
            })
            .map(|m| m.get_counter().value())
            .sum();
        assert_eq!(counted, 2.0, "three attempts, two retries");
    }

    #[tokio::test]
    async fn permanent_errors_are_not_retried() {
        let calls = AtomicU32::new(0);
        let r: Result<(), Fail> = policy(3)
            .run("test", "op", || async {
                calls.fetch_add(1, Ordering::SeqCst);
                Err(Fail(ErrorClass::Permanent))
            })
            .await;
        assert!(r.is_err());
        assert_eq!(calls.load(Ordering::SeqCst), 1);
    }

    #[tokio::test]
    async fn a_transient_failure_then_success_succeeds() {
        let calls = AtomicU32::new(0);
        let r: Result<u32, Fail> = policy(3)
            .run("test", "op", || async {
                match calls.fetch_add(1, Ordering::SeqCst) {
                    0 => Err(Fail(ErrorClass::Transient)),
                    n => Ok(n),
                }
            })
            .await;
        assert_eq!(r.unwrap(), 1);
    }
}
