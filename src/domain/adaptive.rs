//! Adaptive request concurrency, free of I/O: how many requests a worker keeps in flight towards
//! one system (MLflow, the store), learnt from that system's answers. Additive increase,
//! multiplicative decrease (AIMD), after vector's adaptive request concurrency:
//!
//! - Answers are taken in windows of about `limit` answers (one round trip of the whole window).
//! - Each answer's latency is compared with the baseline of its operation (a search of a large
//!   experiment is slower than a tag write whatever the load).
//! - A window whose requests used the whole limit and whose answers came within
//!   [`SLOW_FACTOR`] of their baselines on average raises the limit by one.
//! - A window whose answers were slower than that lowers the limit by [`SLOW_DECREASE`]: the
//!   server queues, so more requests in flight only add waiting.
//! - An overload answer (a timeout, 429, 502, 503, 504) halves the limit at once, once per
//!   window: requests in flight together fail together, and that is one congestion event.
//!
//! A baseline is the latency the server shows unloaded for that operation: it follows a faster
//! answer quickly and a slower one slowly, so sustained queueing does not become the new normal
//! within a few windows.

use std::time::Duration;

/// A window whose answers took this many times their baselines on average counts as slow.
pub const SLOW_FACTOR: f64 = 2.0;
/// An answer faster than this is never slow: noise on a fast local server.
pub const SLOW_FLOOR: Duration = Duration::from_millis(20);
/// What a slow window leaves of the limit.
pub const SLOW_DECREASE: f64 = 0.9;
/// What an overload answer leaves of the limit.
pub const OVERLOAD_DECREASE: f64 = 0.5;
/// How much of a slower answer the baseline takes in.
const BASELINE_RISE: f64 = 0.01;
/// How much of a faster answer the baseline takes in.
const BASELINE_FALL: f64 = 0.5;

/// Whether an HTTP status says the server is overloaded (too many requests, or a gateway or
/// the server itself giving up on it) rather than that the request is wrong or the server broken.
pub fn is_overload_status(status: u16) -> bool {
    matches!(status, 429 | 502 | 503 | 504)
}

/// The limit and what it is learnt from.
#[derive(Debug, Clone)]
pub struct Aimd {
    limit: f64,
    min: f64,
    max: f64,
    /// Latency of an unloaded server by operation, in seconds (a few dozen operations at most).
    baselines: Vec<(&'static str, f64)>,
    window: Window,
}

#[derive(Debug, Clone, Default)]
struct Window {
    /// Requests ended in the window, overloads included.
    ended: u32,
    answers: u32,
    /// Sum over the answers of latency over the operation's baseline.
    slowness_sum: f64,
    /// Some request of the window was sent with the whole limit in use.
    saturated: bool,
    /// The limit was already cut for an overload in this window.
    cut: bool,
}

/// What one request's end tells about the server.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Outcome {
    /// An answer to `operation` (success or an error that is not overload) after `latency`.
    Answered {
        /// The request's operation (an MLflow endpoint such as `runs/search`, an S3 call such as
        /// `DeleteObjects`), whose own baseline the latency is compared with.
        operation: &'static str,
        /// Time from sending the request to its answer.
        latency: Duration,
    },
    /// A timeout or an answer saying the server is overloaded.
    Overloaded,
    /// Nothing learnt (connection refused, a request given up by its caller).
    Ignored,
}

impl Aimd {
    /// Starts at `initial` requests in flight, kept within `min..=max` (both at least 1).
    pub fn new(initial: usize, min: usize, max: usize) -> Self {
        let min = min.max(1) as f64;
        let max = (max as f64).max(min);
        Aimd {
            limit: (initial as f64).clamp(min, max),
            min,
            max,
            baselines: Vec::new(),
            window: Window::default(),
        }
    }

    /// Requests allowed in flight now.
    pub fn limit(&self) -> usize {
        self.limit.floor() as usize
    }

    /// Whether a request is worth sending again at once after an overload: it was sent while
    /// more than the fewest requests were allowed, so the cut that followed slows the worker
    /// down and the server gets less load for the second try.
    pub fn resend_is_free(&self, limit_when_sent: usize) -> bool {
        limit_when_sent as f64 > self.min
    }

    /// A request is being sent with `in_flight` requests (itself included) in flight.
    pub fn sent(&mut self, in_flight: usize) {
        if in_flight >= self.limit() {
            self.window.saturated = true;
        }
    }

    /// A request ended; adjusts the limit.
    pub fn ended(&mut self, outcome: Outcome) {
        match outcome {
            Outcome::Ignored => {}
            Outcome::Overloaded => {
                if !self.window.cut {
                    self.limit = (self.limit * OVERLOAD_DECREASE).max(self.min);
                    self.window.cut = true;
                }
                self.count(None);
            }
            Outcome::Answered { operation, latency } => {
                let seconds = latency.as_secs_f64();
                let slowness = match self.baselines.iter_mut().find(|(op, _)| *op == operation) {
                    None => {
                        self.baselines.push((operation, seconds));
                        1.0
                    }
                    Some((_, b)) => {
                        let slowness = if latency < SLOW_FLOOR || *b <= 0.0 {
                            1.0
                        } else {
                            seconds / *b
                        };
                        let weight = if seconds < *b {
                            BASELINE_FALL
                        } else {
                            BASELINE_RISE
                        };
                        *b += (seconds - *b) * weight;
                        slowness
                    }
                };
                self.count(Some(slowness));
            }
        }
    }

    /// Adds one ended request (with the slowness of its answer, if any) to the window and
    /// closes the window once it holds `limit`.
    fn count(&mut self, slowness: Option<f64>) {
        let w = &mut self.window;
        w.ended += 1;
        if let Some(slowness) = slowness {
            w.answers += 1;
            w.slowness_sum += slowness;
        }
        if (w.ended as usize) < self.limit() {
            return;
        }
        let window = std::mem::take(&mut self.window);
        if window.cut || window.answers == 0 {
            return;
        }
        if window.slowness_sum / f64::from(window.answers) > SLOW_FACTOR {
            self.limit = (self.limit * SLOW_DECREASE).max(self.min);
        } else if window.saturated {
            self.limit = (self.limit + 1.0).min(self.max);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const FAST: Duration = Duration::from_millis(10);

    fn answered(latency: Duration) -> Outcome {
        Outcome::Answered {
            operation: "runs/log-batch",
            latency,
        }
    }

    /// Fills windows of saturated, answered requests of `latency`.
    fn busy(a: &mut Aimd, windows: usize, latency: Duration) {
        for _ in 0..windows {
            let n = a.limit();
            for _ in 0..n {
                a.sent(n);
            }
            for _ in 0..n {
                a.ended(answered(latency));
            }
        }
    }

    #[test]
    fn overload_statuses_are_the_ones_that_say_slow_down() {
        for status in [429, 502, 503, 504] {
            assert!(is_overload_status(status), "{status}");
        }
        for status in [200, 400, 401, 403, 404, 409, 500, 501] {
            assert!(!is_overload_status(status), "{status}");
        }
    }

    #[test]
    fn the_limit_starts_within_its_bounds() {
        assert_eq!(Aimd::new(4, 1, 16).limit(), 4);
        assert_eq!(Aimd::new(0, 1, 16).limit(), 1);
        assert_eq!(Aimd::new(40, 1, 16).limit(), 16);
        assert_eq!(Aimd::new(4, 0, 0).limit(), 1, "never below one request");
    }

    #[test]
    fn a_saturated_window_of_steady_latency_raises_the_limit_by_one() {
        let mut a = Aimd::new(4, 1, 16);
        busy(&mut a, 1, FAST);
        assert_eq!(a.limit(), 5);
        busy(&mut a, 3, FAST);
        assert_eq!(a.limit(), 8);
    }

    #[test]
    fn the_limit_never_passes_its_maximum() {
        let mut a = Aimd::new(4, 1, 6);
        busy(&mut a, 10, FAST);
        assert_eq!(a.limit(), 6);
    }

    #[test]
    fn a_window_that_does_not_use_the_limit_leaves_it() {
        let mut a = Aimd::new(4, 1, 16);
        for _ in 0..8 {
            a.sent(1);
            a.ended(answered(FAST));
        }
        assert_eq!(
            a.limit(),
            4,
            "one request at a time says nothing about more"
        );
    }

    #[test]
    fn latency_past_twice_the_baseline_lowers_the_limit() {
        let mut a = Aimd::new(10, 1, 16);
        busy(&mut a, 1, Duration::from_millis(50));
        assert_eq!(a.limit(), 11);
        busy(&mut a, 1, Duration::from_millis(300));
        assert_eq!(a.limit(), 9, "11 x 0.9");
        busy(&mut a, 1, Duration::from_millis(300));
        assert_eq!(a.limit(), 8, "the baseline rises slowly: still slow");
    }

    #[test]
    fn a_slower_operation_is_not_slowness() {
        let mut a = Aimd::new(4, 1, 16);
        busy(&mut a, 1, FAST);
        for _ in 0..2 {
            let n = a.limit();
            for _ in 0..n {
                a.sent(n);
            }
            for _ in 0..n {
                a.ended(Outcome::Answered {
                    operation: "runs/search",
                    latency: Duration::from_millis(400),
                });
            }
        }
        assert_eq!(
            a.limit(),
            7,
            "a search's own pace is its baseline: raised three times"
        );
    }

    #[test]
    fn a_fast_server_s_jitter_is_not_slowness() {
        let mut a = Aimd::new(4, 1, 16);
        busy(&mut a, 1, Duration::from_millis(2));
        busy(&mut a, 1, Duration::from_millis(15));
        assert_eq!(a.limit(), 6, "15 ms is under the floor: raised twice");
    }

    #[test]
    fn an_overload_halves_the_limit_once_per_window() {
        let mut a = Aimd::new(16, 1, 16);
        busy(&mut a, 1, FAST);
        for _ in 0..5 {
            a.ended(Outcome::Overloaded);
        }
        assert_eq!(
            a.limit(),
            8,
            "five timeouts in flight together are one event"
        );
        busy(&mut a, 1, FAST);
        a.ended(Outcome::Overloaded);
        assert_eq!(a.limit(), 4);
    }

    #[test]
    fn overloads_stop_at_the_minimum() {
        let mut a = Aimd::new(3, 1, 16);
        for _ in 0..20 {
            a.ended(Outcome::Overloaded);
        }
        assert_eq!(a.limit(), 1);
        let mut b = Aimd::new(8, 2, 16);
        for _ in 0..20 {
            b.ended(Outcome::Overloaded);
        }
        assert_eq!(b.limit(), 2);
    }

    #[test]
    fn a_window_with_an_overload_raises_nothing_after_the_cut() {
        let mut a = Aimd::new(4, 1, 16);
        a.sent(4);
        a.ended(Outcome::Overloaded);
        assert_eq!(a.limit(), 2);
        a.sent(2);
        a.ended(answered(FAST));
        assert_eq!(a.limit(), 2, "the window closed with its cut, not a rise");
        busy(&mut a, 1, FAST);
        assert_eq!(a.limit(), 3, "the next window may rise again");
    }

    #[test]
    fn ignored_ends_change_nothing() {
        let mut a = Aimd::new(4, 1, 16);
        for _ in 0..20 {
            a.sent(4);
            a.ended(Outcome::Ignored);
        }
        assert_eq!(a.limit(), 4);
    }

    #[test]
    fn a_resend_is_free_only_when_the_worker_could_slow_down() {
        let a = Aimd::new(4, 1, 16);
        assert!(a.resend_is_free(4));
        assert!(a.resend_is_free(2));
        assert!(
            !a.resend_is_free(1),
            "one request at a time: the overload is not ours"
        );
    }

    #[test]
    fn after_overload_the_limit_recovers_by_one_per_busy_window() {
        let mut a = Aimd::new(8, 1, 16);
        a.ended(Outcome::Overloaded);
        assert_eq!(a.limit(), 4);
        busy(&mut a, 3, FAST);
        // The window the cut opened closes first; then each busy window adds one.
        assert!((5..=7).contains(&a.limit()), "{}", a.limit());
    }
}
