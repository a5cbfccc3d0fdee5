//! Follow-up passes the worker schedules for itself when a pass leaves runs in their grace
//! window: one delayed `experiment.prune` per experiment at the end of the earliest window.
//! Pure bookkeeping so that a burst of passes over one experiment schedules one follow-up, not
//! one per pass; the settler publishes.

use std::collections::HashMap;

/// Margin added to the end of a grace window, so that the follow-up finds the run out of it.
pub const MARGIN_MS: i64 = 1_000;

/// How early a follow-up may arrive and still run its pass (clocks of several workers differ a
/// little); an earlier one travels on.
pub const EARLY_MS: i64 = 1_000;

/// The follow-ups this worker has scheduled and that are not due yet, per experiment.
#[derive(Debug, Default)]
pub struct FollowUps {
    due: HashMap<String, i64>,
}

impl FollowUps {
    /// Whether the experiment needs a follow-up due at `at` (milliseconds since the epoch), at
    /// `now`: not when one is pending that comes no later, since its pass schedules the next.
    pub fn needed(&self, experiment_id: &str, at: i64, now: i64) -> bool {
        self.due
            .get(experiment_id)
            .is_none_or(|&pending| pending <= now || pending > at)
    }

    /// Records a follow-up the broker confirmed, and forgets those already due.
    pub fn scheduled(&mut self, experiment_id: &str, at: i64, now: i64) {
        self.due.retain(|_, due| *due > now);
        self.due.insert(experiment_id.to_owned(), at);
    }
}

/// Whether a follow-up due at `at` runs its pass at `now`, or travels on.
pub fn is_due(at: i64, now: i64) -> bool {
    at <= now.saturating_add(EARLY_MS)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_burst_of_passes_schedules_one_follow_up() {
        let mut f = FollowUps::default();
        assert!(f.needed("1", 5_000, 0));
        f.scheduled("1", 5_000, 0);
        for now in [10, 100, 4_999] {
            assert!(!f.needed("1", 5_000, now), "pending at {now}");
            // A later window is covered by the pending follow-up's own pass.
            assert!(!f.needed("1", 9_000, now));
        }
        // Another experiment has its own.
        assert!(f.needed("2", 5_000, 10));
    }

    #[test]
    fn an_earlier_window_gets_its_own_follow_up() {
        let mut f = FollowUps::default();
        f.scheduled("1", 5_000, 0);
        assert!(f.needed("1", 3_000, 10));
        f.scheduled("1", 3_000, 10);
        assert!(!f.needed("1", 5_000, 20));
    }

    #[test]
    fn the_follow_up_s_own_pass_schedules_the_next() {
        let mut f = FollowUps::default();
        f.scheduled("1", 5_000, 0);
        assert!(f.needed("1", 9_000, 5_000));
        f.scheduled("1", 9_000, 5_000);
        assert!(!f.needed("1", 9_000, 6_000));
    }

    #[test]
    fn due_follow_ups_are_forgotten() {
        let mut f = FollowUps::default();
        f.scheduled("1", 5_000, 0);
        f.scheduled("2", 9_000, 6_000);
        assert_eq!(f.due.len(), 1);
    }

    #[test]
    fn a_follow_up_runs_from_a_second_before_it_is_due() {
        assert!(is_due(5_000, 5_000));
        assert!(is_due(5_000, 4_000));
        assert!(!is_due(5_000, 3_999));
    }
}
