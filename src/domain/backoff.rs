//! Exponential backoff, the one shape of every wait after a failure: the worker's reconnects,
//! handing a delivery back after a failed re-publication, and in-process request retries.
//!
//! The n-th wait after failures in a row (0-based) is `first · 2ⁿ`, capped at `max`, then
//! jittered so replicas that failed together do not retry in step.

use std::time::Duration;

/// How a wait is spread below its ceiling.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Jitter {
    /// Exactly the ceiling: for a single worker's own retries, where predictability helps.
    None,
    /// Between half the ceiling and the ceiling: never much shorter than planned.
    Half,
    /// Anywhere from zero to the ceiling ("full jitter"): the best spread for many clients.
    Full,
}

/// Doubling waits from `first` up to `max`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Backoff {
    first: Duration,
    max: Duration,
    jitter: Jitter,
}

impl Backoff {
    /// Waits of `first`, twice that, and so on up to `max`, jittered as `jitter` says.
    pub const fn new(first: Duration, max: Duration, jitter: Jitter) -> Self {
        Backoff { first, max, jitter }
    }

    /// The longest wait after `failures` failures in a row past the first (0 for the first
    /// wait): `first · 2^failures`, capped at `max`.
    pub fn ceiling(&self, failures: u32) -> Duration {
        let doubled = 2u32
            .checked_pow(failures)
            .and_then(|factor| self.first.checked_mul(factor));
        doubled.map_or(self.max, |d| d.min(self.max))
    }

    /// The `failures`-th wait (0-based), jittered with `random`, a number in `0.0..=1.0`.
    pub fn wait(&self, failures: u32, random: f64) -> Duration {
        let ceiling = self.ceiling(failures);
        match self.jitter {
            Jitter::None => ceiling,
            Jitter::Half => ceiling.mul_f64(0.5 + random.clamp(0.0, 1.0) / 2.0),
            Jitter::Full => ceiling.mul_f64(random.clamp(0.0, 1.0)),
        }
    }

    /// The `failures`-th wait (0-based), with a fresh random jitter.
    pub fn next(&self, failures: u32) -> Duration {
        self.wait(failures, rand::random_range(0.0..=1.0))
    }

    /// Every wait in turn, each with a fresh random jitter.
    pub fn waits(self) -> impl Iterator<Item = Duration> {
        (0u32..).map(move |n| self.next(n))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: fn(u64) -> Duration = Duration::from_secs;

    #[test]
    fn the_ceiling_doubles_from_the_first_wait_up_to_the_cap() {
        let b = Backoff::new(S(1), S(10), Jitter::None);
        let ceilings: Vec<_> = (0..6).map(|n| b.ceiling(n)).collect();
        assert_eq!(ceilings, [S(1), S(2), S(4), S(8), S(10), S(10)]);
    }

    #[test]
    fn a_long_run_of_failures_stays_at_the_cap_without_overflowing() {
        let b = Backoff::new(S(1), S(30), Jitter::None);
        for n in [31, 32, 64, 1_000, u32::MAX] {
            assert_eq!(b.ceiling(n), S(30), "after {n} failures");
        }
    }

    #[test]
    fn no_jitter_waits_the_ceiling() {
        let b = Backoff::new(S(1), S(10), Jitter::None);
        assert_eq!(b.wait(2, 0.0), S(4));
        assert_eq!(b.wait(2, 1.0), S(4));
        assert_eq!(b.next(2), S(4));
    }

    #[test]
    fn half_jitter_waits_between_half_the_ceiling_and_the_ceiling() {
        let b = Backoff::new(S(1), S(10), Jitter::Half);
        assert_eq!(b.wait(2, 0.0), S(2));
        assert_eq!(b.wait(2, 1.0), S(4));
        assert_eq!(b.wait(2, 0.5), S(3));
        assert_eq!(b.wait(2, 7.0), S(4), "an out-of-range random is clamped");
    }

    #[test]
    fn full_jitter_waits_anywhere_up_to_the_ceiling() {
        let b = Backoff::new(S(1), S(10), Jitter::Full);
        assert_eq!(b.wait(3, 0.0), S(0));
        assert_eq!(b.wait(3, 1.0), S(8));
        assert_eq!(b.wait(3, 0.25), S(2));
    }

    #[test]
    fn random_waits_stay_within_their_bounds() {
        let half = Backoff::new(S(1), S(10), Jitter::Half);
        let full = Backoff::new(S(1), S(10), Jitter::Full);
        for n in 0..8 {
            let ceiling = half.ceiling(n);
            let h = half.next(n);
            assert!(h >= ceiling / 2 && h <= ceiling, "{h:?} vs {ceiling:?}");
            assert!(full.next(n) <= ceiling);
        }
        let waits: Vec<_> = full.waits().take(5).collect();
        assert_eq!(waits.len(), 5);
        assert!(waits.iter().zip(0..).all(|(w, n)| *w <= full.ceiling(n)));
    }
}
