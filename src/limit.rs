//! The gate every request to MLflow or the store passes: a worker process keeps at most the
//! adaptive limit ([`Aimd`]) of requests in flight towards each system, whatever the number of
//! passes running. The limit follows what the system sustains: it grows while answers come at
//! the usual speed and every permit is in use, shrinks when answers slow down or the system
//! times out, so replicas added under a backlog slow each other down instead of timing out the
//! tracking server. The limit and the requests in flight are exported per system.

use std::sync::Mutex;
use std::time::Instant;

use tokio::sync::Notify;

use crate::domain::adaptive::{Aimd, Outcome};
use crate::metrics::{Metrics, Target};
use crate::settings::AdaptiveLimit;

/// Re-sends of one request after an overload that cost no retry attempt: free only while the
/// cut limit slows the worker down ([`Aimd::resend_is_free`]); a second overload in a row is an
/// ordinary transient failure.
pub const MAX_FREE_RESENDS: u32 = 1;

/// The adaptive limit of requests in flight towards one system.
#[derive(Debug)]
pub struct Limiter {
    target: Target,
    state: Mutex<State>,
    freed: Notify,
    metrics: Metrics,
}

#[derive(Debug)]
struct State {
    aimd: Aimd,
    in_flight: usize,
}

/// One request's place under the limit, held while it is in flight. Dropped without
/// [`Permit::ended`] (the request was cancelled), it teaches the limit nothing.
#[must_use = "a permit is the request's place in flight"]
pub struct Permit<'l> {
    limiter: &'l Limiter,
    limit_when_sent: usize,
    sent: Instant,
}

impl Limiter {
    /// A limit starting at `settings.initial`, within `settings.min..=settings.max`.
    pub fn new(target: Target, settings: &AdaptiveLimit, metrics: &Metrics) -> Self {
        let aimd = Aimd::new(settings.initial, settings.min, settings.max);
        metrics.concurrency_limit(target, aimd.limit(), 0);
        Limiter {
            target,
            state: Mutex::new(State { aimd, in_flight: 0 }),
            freed: Notify::new(),
            metrics: metrics.clone(),
        }
    }

    /// Requests allowed in flight now.
    pub fn limit(&self) -> usize {
        self.lock().aimd.limit()
    }

    /// Waits for a place under the limit.
    pub async fn acquire(&self) -> Permit<'_> {
        loop {
            let freed = self.freed.notified();
            tokio::pin!(freed);
            // Registered before the check: a place freed between the check and the wait wakes it.
            freed.as_mut().enable();
            if let Some(permit) = self.try_acquire() {
                return permit;
            }
            freed.await;
        }
    }

    fn try_acquire(&self) -> Option<Permit<'_>> {
        let mut state = self.lock();
        let limit = state.aimd.limit();
        if state.in_flight >= limit {
            return None;
        }
        state.in_flight += 1;
        let in_flight = state.in_flight;
        state.aimd.sent(in_flight);
        self.metrics
            .concurrency_limit(self.target, limit, in_flight);
        Some(Permit {
            limiter: self,
            limit_when_sent: limit,
            sent: Instant::now(),
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        // A panic elsewhere cannot leave the counts half-updated: every update is one statement.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }
}

impl Permit<'_> {
    /// The request to `operation` got an answer (success, or an error that says nothing about
    /// load).
    pub fn answered(self, operation: &'static str) {
        let latency = self.sent.elapsed();
        self.ended(Outcome::Answered { operation, latency });
    }

    /// The request timed out or the system said it is overloaded. Returns whether sending it
    /// again at once is free: the limit it was sent under was above the minimum, so the cut
    /// leaves the system less load for the second try.
    pub fn overloaded(self) -> bool {
        let free = self
            .limiter
            .lock()
            .aimd
            .resend_is_free(self.limit_when_sent);
        self.limiter.metrics.overload(self.limiter.target);
        self.ended(Outcome::Overloaded);
        free
    }

    fn ended(self, outcome: Outcome) {
        let (before, after) = {
            let mut state = self.limiter.lock();
            let before = state.aimd.limit();
            state.aimd.ended(outcome);
            (before, state.aimd.limit())
        };
        if after != before {
            tracing::debug!(
                target_system = self.limiter.target.as_str(),
                from = before,
                to = after,
                "requests in flight limit changed"
            );
        }
        // Drop releases the place.
    }
}

impl Drop for Permit<'_> {
    fn drop(&mut self) {
        {
            let mut state = self.limiter.lock();
            state.in_flight -= 1;
            // Under the lock: two places freed at once must not leave the gauge behind.
            self.limiter.metrics.concurrency_limit(
                self.limiter.target,
                state.aimd.limit(),
                state.in_flight,
            );
        }
        // Every waiter checks again: a raised limit may let several through.
        self.limiter.freed.notify_waiters();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;
    use std::time::Duration;

    fn limiter(initial: usize, max: usize) -> Arc<Limiter> {
        let settings = AdaptiveLimit {
            initial,
            min: 1,
            max,
        };
        Arc::new(Limiter::new(Target::Mlflow, &settings, &Metrics::new()))
    }

    #[tokio::test]
    async fn no_more_than_the_limit_are_in_flight() {
        let l = limiter(2, 8);
        let a = l.acquire().await;
        let _b = l.acquire().await;
        let waiting = {
            let l = Arc::clone(&l);
            tokio::spawn(async move {
                let _c = l.acquire().await;
            })
        };
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert!(
            !waiting.is_finished(),
            "a third request waits at a limit of 2"
        );
        drop(a);
        tokio::time::timeout(Duration::from_secs(5), waiting)
            .await
            .expect("a freed place lets the waiter through")
            .unwrap();
    }

    #[tokio::test]
    async fn an_overload_cuts_the_limit_and_says_whether_a_resend_is_free() {
        let l = limiter(4, 8);
        let permits = [
            l.acquire().await,
            l.acquire().await,
            l.acquire().await,
            l.acquire().await,
        ];
        let mut permits = permits.into_iter();
        assert!(permits.next().unwrap().overloaded(), "sent under 4: free");
        assert_eq!(l.limit(), 2);
        drop(permits);
        let solo = limiter(1, 8);
        let only = solo.acquire().await;
        assert!(!only.overloaded(), "sent alone: the overload is not ours");
    }

    #[tokio::test]
    async fn a_cancelled_request_frees_its_place() {
        let l = limiter(1, 1);
        let held = l.acquire().await;
        let cancelled = tokio::time::timeout(Duration::from_millis(20), l.acquire()).await;
        assert!(cancelled.is_err());
        drop(held);
        let again = tokio::time::timeout(Duration::from_secs(5), l.acquire()).await;
        assert!(again.is_ok(), "the timed-out wait left no place taken");
    }

    #[tokio::test]
    async fn busy_answers_raise_the_limit_and_wake_waiters() {
        let l = limiter(1, 4);
        for _ in 0..3 {
            let n = l.limit();
            let busy: Vec<Permit<'_>> =
                futures::future::join_all((0..n).map(|_| l.acquire())).await;
            busy.into_iter().for_each(|p| p.answered("runs/search"));
        }
        assert_eq!(l.limit(), 4, "each window that used every place adds one");
        let all = futures::future::join_all((0..4).map(|_| l.acquire()));
        let all = tokio::time::timeout(Duration::from_secs(5), all).await;
        assert_eq!(all.expect("four places").len(), 4);
    }
}
