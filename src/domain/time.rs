//! Points in time as MLflow and the worker's own headers carry them: milliseconds since the
//! Unix epoch. One type for them, so that a time is never mistaken for a duration or a count,
//! and the arithmetic (a grace window's end, a follow-up's remaining wait) saturates in one place.

use std::fmt;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

/// Milliseconds since the Unix epoch (UTC): a run's start or end time, a grace window's end, a
/// follow-up's due time. Serialised as the bare number, as MLflow writes it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct EpochMs(i64);

impl EpochMs {
    /// The latest time there is: what an unknown end sorts as among the most recent.
    pub const MAX: EpochMs = EpochMs(i64::MAX);

    /// The time `ms` milliseconds after the epoch.
    pub const fn from_millis(ms: i64) -> Self {
        EpochMs(ms)
    }

    /// Milliseconds since the epoch.
    pub const fn millis(self) -> i64 {
        self.0
    }

    /// The time `duration` later, or [`EpochMs::MAX`] past the end of the range.
    pub fn saturating_add(self, duration: Duration) -> Self {
        let ms = i64::try_from(duration.as_millis()).unwrap_or(i64::MAX);
        EpochMs(self.0.saturating_add(ms))
    }

    /// How long after `earlier` this is; zero when it is not later.
    pub fn since(self, earlier: EpochMs) -> Duration {
        Duration::from_millis(u64::try_from(self.0.saturating_sub(earlier.0)).unwrap_or(0))
    }
}

/// RFC 3339 (UTC), for reasons, logs and tables; a time out of the calendar's range says how
/// many milliseconds it is.
impl fmt::Display for EpochMs {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let formatted = OffsetDateTime::from_unix_timestamp_nanos(i128::from(self.0) * 1_000_000)
            .ok()
            .and_then(|t| t.format(&Rfc3339).ok());
        match formatted {
            Some(text) => f.write_str(&text),
            None => write!(f, "{} ms after the epoch", self.0),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times_print_as_rfc3339_and_out_of_range_ones_as_milliseconds() {
        assert_eq!(
            EpochMs::from_millis(1_700_000_000_123).to_string(),
            "2023-11-14T22:13:20.123Z"
        );
        assert_eq!(EpochMs::from_millis(0).to_string(), "1970-01-01T00:00:00Z");
        assert_eq!(
            EpochMs::MAX.to_string(),
            format!("{} ms after the epoch", i64::MAX)
        );
    }

    #[test]
    fn adding_saturates_at_the_end_of_the_range() {
        let t = EpochMs::from_millis(1_000);
        assert_eq!(
            t.saturating_add(Duration::from_secs(2)),
            EpochMs::from_millis(3_000)
        );
        assert_eq!(t.saturating_add(Duration::MAX), EpochMs::MAX);
        assert_eq!(
            EpochMs::MAX.saturating_add(Duration::from_secs(1)),
            EpochMs::MAX
        );
    }

    #[test]
    fn the_time_since_an_earlier_one_is_never_negative() {
        let (early, late) = (EpochMs::from_millis(1_000), EpochMs::from_millis(4_500));
        assert_eq!(late.since(early), Duration::from_millis(3_500));
        assert_eq!(early.since(late), Duration::ZERO);
    }

    #[test]
    fn serialises_as_the_bare_number() {
        let t = EpochMs::from_millis(42);
        assert_eq!(serde_json::to_string(&t).unwrap(), "42");
        assert_eq!(serde_json::from_str::<EpochMs>("42").unwrap(), t);
    }
}
