//! Waiting for something a test cannot be told about: look again and again until it holds,
//! and fail, saying what was awaited and what was last seen, once the time is up.
//!
//! The clock is tokio's, so a test with paused time waits in virtual time.

use std::time::Duration;

/// How often [`eventually`] looks.
pub const EVERY: Duration = Duration::from_millis(100);

/// What one look found: whether it holds (with the value to hand back) or, if not, what was
/// seen instead, for the failure message.
pub trait Outcome {
    type Value;
    /// `Ok` with the value once it holds; else `Err` with what was seen ("" for nothing to say).
    fn into_result(self) -> Result<Self::Value, String>;
}

/// `true` once it holds.
impl Outcome for bool {
    type Value = ();
    fn into_result(self) -> Result<(), String> {
        if self { Ok(()) } else { Err(String::new()) }
    }
}

/// `Some(value)` once it holds.
impl<T> Outcome for Option<T> {
    type Value = T;
    fn into_result(self) -> Result<T, String> {
        self.ok_or_else(String::new)
    }
}

/// `Ok(value)` once it holds, else `Err(what was seen instead)`.
impl<T> Outcome for Result<T, String> {
    type Value = T;
    fn into_result(self) -> Result<T, String> {
        self
    }
}

/// Runs `check` every [`EVERY`] until it holds and returns its value; panics with `what` (the
/// failure message, as for `assert!`), how long it waited and what `check` last saw once
/// `within` has passed. See [`eventually_every`].
pub async fn eventually<F, O>(within: Duration, what: &str, check: F) -> O::Value
where
    F: AsyncFnMut() -> O,
    O: Outcome,
{
    eventually_every(within, EVERY, what, check).await
}

/// [`eventually`], looking every `every`. The first look is at once; it gives up on the first
/// look that fails and ends after `within`.
pub async fn eventually_every<F, O>(
    within: Duration,
    every: Duration,
    what: &str,
    mut check: F,
) -> O::Value
where
    F: AsyncFnMut() -> O,
    O: Outcome,
{
    let deadline = tokio::time::Instant::now() + within;
    loop {
        let seen = match check().await.into_result() {
            Ok(value) => return value,
            Err(seen) => seen,
        };
        if tokio::time::Instant::now() >= deadline {
            if seen.is_empty() {
                panic!("{what}: gave up after {within:?}");
            }
            panic!("{what}: gave up after {within:?}; last seen: {seen}");
        }
        tokio::time::sleep(every).await;
    }
}
