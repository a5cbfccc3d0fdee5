//! The worker: consumes the work queue, runs one pass per experiment at a time (coalescing
//! bursts of `run.finished`), routes failures by class (ack, delay, dead letter), reconnects
//! after a broker outage, and shuts down gracefully on SIGTERM/SIGINT.
//!
//! - [`scheduler`]: which deliveries go into which pass (pure).
//! - [`outcome`]: what happens to a delivery after its pass (pure).
//! - `follow_up`: one follow-up pass per experiment at the end of a grace window (pure).
//! - `settle`: carries an outcome out on the broker, and publishes follow-ups.
//! - `session`: one connection's consume loop.

mod follow_up;
pub mod outcome;
pub mod scheduler;
mod session;
mod settle;

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use tokio_util::sync::CancellationToken;
use tracing::{error, info, warn};

use crate::broker::Topology;
use crate::domain::backoff::{Backoff, Jitter};
use crate::engine::{Engine, PruneError};
use crate::metrics::{self, Metrics, Refused};
use crate::settings::Settings;
use outcome::RetryRules;
use session::SessionError;

/// First wait before reconnecting to the broker; doubles up to [`MAX_RECONNECT_DELAY`].
const FIRST_RECONNECT_DELAY: Duration = Duration::from_millis(500);
const MAX_RECONNECT_DELAY: Duration = Duration::from_secs(30);
/// How long a session must consume before its end resets the reconnect backoff.
const HEALTHY_SESSION: Duration = Duration::from_secs(60);

/// Runs the worker until `shutdown` is cancelled, then returns `Ok` once the passes in flight
/// have finished (or `concurrency.shutdown_grace` has expired). Serves `/metrics` (what it
/// counts into `metrics`), `/healthz` and `/readyz` on `server`, bound by the caller (the
/// command line binds `metrics.listen`). Broker outages are waited out with backoff; only
/// settings the broker refuses (a queue declared with other arguments, no access) end the
/// worker with an error.
pub async fn run(
    settings: Settings,
    server: metrics::Server,
    metrics: Metrics,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    // Up before the broker, so probes and scrapes see a worker that cannot connect.
    info!(address = %server.local_addr(), "serving /metrics, /healthz and /readyz");
    let health = Arc::new(metrics::Health::new(stall_limit(&settings), &metrics));
    metrics.expect_dead_letters(PruneError::KINDS.into_iter().chain(outcome::MESSAGE_KINDS));
    let _server = server.spawn(metrics.clone(), health.clone());
    settings.store.check_keys()?;
    let engine = Engine::new(&settings, &metrics).context("cannot build the pruning engine")?;
    tokio::select! {
        checked = check_settings(&engine) => checked?,
        () = shutdown.cancelled() => return Ok(()),
    }
    let host = hostname::get()
        .map(|h| h.to_string_lossy().into_owned())
        .unwrap_or_else(|_| "unknown".to_owned());
    let ctx = session::Context {
        engine: Arc::new(engine),
        topology: Topology::from_settings(&settings),
        rules: RetryRules {
            max_attempts: settings.retry.max_attempts,
            delay_steps: settings.retry.delays.len(),
        },
        max_in_flight: settings.concurrency.max_in_flight,
        shutdown_grace: settings.concurrency.shutdown_grace,
        identity: format!("{host}:{}", std::process::id()),
        host,
        broker: settings.broker,
        health,
        metrics,
        follow_ups: Default::default(),
    };
    let mut reconnects = Reconnects::default();
    while !shutdown.is_cancelled() {
        ctx.health.beat();
        let started = tokio::time::Instant::now();
        match session::run(&ctx, &shutdown).await {
            Ok(()) => break,
            Err(SessionError::Declare(e)) if e.is_access_refused() => {
                error!(error = %e, "RabbitMQ refused the worker's user a permission it needs to declare the topology");
                return Err(e).context(
                    "RabbitMQ refused the worker's user a permission while declaring the \
                     topology: grant the permissions deploy/README.md lists (configure, write and \
                     read on the exchange and queues, and write on amq.default)",
                );
            }
            Err(SessionError::Declare(e)) if e.is_refusal() => {
                error!(error = %e, "RabbitMQ refused the topology");
                return Err(e).context(
                    "RabbitMQ refused the topology. If a queue exists with other arguments \
                     (after an upgrade, or a changed broker.delivery_limit), stop the workers and \
                     run `model-pruner migrate-queues` (README: Upgrading the queues); otherwise \
                     check the broker settings and permissions",
                );
            }
            Err(e) => {
                if matches!(e, SessionError::Lost(_)) {
                    reconnects.session_ended(started.elapsed());
                }
                let wait = reconnects.next_delay();
                if e.broker().is_access_refused() {
                    ctx.health
                        .set_refused(Refused::Session, Some(e.to_string()));
                    error!(
                        error = %e, retry_in = ?wait,
                        "RabbitMQ refused the worker's user a permission (deploy/README.md lists \
                         what it needs); reconnecting"
                    );
                } else {
                    warn!(error = %e, retry_in = ?wait, "RabbitMQ unavailable; reconnecting");
                }
                tokio::select! {
                    () = shutdown.cancelled() => break,
                    () = tokio::time::sleep(wait) => {}
                }
            }
        }
    }
    info!("worker stopped");
    Ok(())
}

/// How long the start-up check may wait for MLflow and the store before the worker starts
/// anyway (their requests keep their own `request_timeout` within it).
const CHECK_WITHIN: Duration = Duration::from_secs(10);

/// Fails the start when MLflow or the store answers in a way only a settings change can fix (a
/// tracking URI that is not MLflow's API, refused credentials, a missing bucket), naming the
/// settings, so such a worker never consumes events to fail them one by one. A system that does
/// not answer yet (starting, down) is only warned about: passes retry it, and `/readyz` says
/// how it went.
async fn check_settings(engine: &Engine) -> anyhow::Result<()> {
    let Ok(checks) = tokio::time::timeout(CHECK_WITHIN, engine.check_connections()).await else {
        warn!(
            within_s = CHECK_WITHIN.as_secs(),
            "MLflow or the store did not answer the start-up check in time; starting anyway"
        );
        return Ok(());
    };
    for check in checks {
        match &check.problem {
            None => info!(system = check.system, "start-up check: {}", check.detail),
            Some(problem) if check.misconfigured => {
                error!(system = check.system, %problem, settings = check.settings, "start-up check failed");
                anyhow::bail!(
                    "start-up check: {} ({}): {problem}; check {}",
                    check.system,
                    check.detail,
                    check.settings
                );
            }
            Some(problem) => warn!(
                system = check.system,
                %problem,
                "start-up check: no answer yet; starting anyway (passes retry it)"
            ),
        }
    }
    Ok(())
}

/// How long the worker's loop may go without a beat before `/healthz` fails: longer than any
/// bounded step between two beats (two connections and the declarations, a reconnect wait).
fn stall_limit(settings: &Settings) -> std::time::Duration {
    let steps = settings.broker.connect_timeout * 4 + MAX_RECONNECT_DELAY;
    (steps * 2).max(metrics::STALLED_AFTER)
}

/// A token cancelled on the first SIGTERM (what Kubernetes sends to start a graceful shutdown)
/// or SIGINT. Must be called inside a tokio runtime.
pub fn shutdown_signal() -> CancellationToken {
    let token = CancellationToken::new();
    let cancel = token.clone();
    tokio::spawn(async move {
        #[cfg(unix)]
        {
            use tokio::signal::unix::{SignalKind, signal};
            match signal(SignalKind::terminate()) {
                Ok(mut term) => tokio::select! {
                    _ = term.recv() => info!("SIGTERM received: shutting down"),
                    _ = tokio::signal::ctrl_c() => info!("SIGINT received: shutting down"),
                },
                Err(e) => {
                    warn!(error = %e, "cannot listen for SIGTERM; only SIGINT stops the worker");
                    let _ = tokio::signal::ctrl_c().await;
                    info!("SIGINT received: shutting down");
                }
            }
        }
        #[cfg(not(unix))]
        {
            let _ = tokio::signal::ctrl_c().await;
            info!("interrupt received: shutting down");
        }
        cancel.cancel();
    });
    token
}

/// The reconnect waits: doubling with jitter (half to full), so a fleet of workers does not
/// reconnect in step.
const RECONNECT: Backoff = Backoff::new(FIRST_RECONNECT_DELAY, MAX_RECONNECT_DELAY, Jitter::Half);

/// Sessions that ended in a row without staying up, which sets the next reconnect's wait.
#[derive(Debug, Default)]
struct Reconnects {
    failures: u32,
}

impl Reconnects {
    /// A session that consumed for `lived` ended: start again from the first delay only if it
    /// stayed up long enough to call the connection healthy, so a session that dies right after
    /// it starts (a broker accepting connections then closing them) keeps backing off.
    fn session_ended(&mut self, lived: Duration) {
        if lived >= HEALTHY_SESSION {
            self.failures = 0;
        }
    }

    fn next_delay(&mut self) -> Duration {
        let delay = RECONNECT.next(self.failures);
        self.failures = self.failures.saturating_add(1);
        delay
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_a_session_that_stayed_up_resets_the_backoff() {
        let mut r = Reconnects::default();
        for _ in 0..4 {
            r.next_delay();
        }
        r.session_ended(Duration::from_millis(200));
        assert_eq!(
            r.failures, 4,
            "a session that died at once keeps backing off"
        );
        r.session_ended(HEALTHY_SESSION);
        assert_eq!(r.failures, 0);
        assert!(r.next_delay() <= FIRST_RECONNECT_DELAY);
    }

    #[test]
    fn reconnect_delays_double_up_to_the_cap_with_jitter() {
        let mut r = Reconnects::default();
        let mut ceiling = FIRST_RECONNECT_DELAY;
        for _ in 0..12 {
            let d = r.next_delay();
            assert!(d <= ceiling && d >= ceiling / 2, "{d:?} vs {ceiling:?}");
            ceiling = (ceiling * 2).min(MAX_RECONNECT_DELAY);
        }
        assert_eq!(ceiling, MAX_RECONNECT_DELAY);
    }
}
