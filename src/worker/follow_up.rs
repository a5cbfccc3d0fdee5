//! Follow-up passes the worker schedules for itself when a pass leaves runs held back by time
//! (in their grace window, or too recent for `older_than`): one delayed `experiment.prune` per
//! experiment when the earliest of them changes its fate.
//! Pure bookkeeping so that a burst of passes over one experiment schedules one follow-up, not
//! one per pass; the settler publishes. Follow-ups are told apart by experiment and by the
//! policy overrides their pass ranks under (a follow-up under other overrides may keep other
//! runs in grace, so it cannot stand in for this one).
//!
//! Across replicas and restarts, the chain of follow-ups of an experiment and policy is claimed
//! in an experiment tag, `model_pruner.follow_up.<policy hash>` = `<due ms> <chain id>`: a pass
//! schedules none while a claim comes no later than it would, and writes its own claim once the
//! broker has its follow-up. A follow-up travelling on whose claim was taken over by another
//! chain due no later stops there, so duplicate chains (two replicas racing, a restart, a lost
//! ack) die at their next leg instead of each running every pass to the end.

use std::collections::HashMap;
use std::time::Duration;

use crate::domain::policy::{MAX_GRACE, PolicyOverrides};
use crate::domain::time::EpochMs;

/// Margin added to the end of a grace window, so that the follow-up finds the run out of it.
pub(super) const MARGIN: Duration = Duration::from_secs(1);

/// How early a follow-up may arrive and still run its pass (clocks of several workers differ a
/// little); an earlier one travels on.
pub(super) const EARLY: Duration = Duration::from_secs(1);

/// Which follow-up: the experiment and the policy overrides of its pass.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub(super) struct Key(String);

impl Key {
    pub(super) fn new(experiment_id: &str, policy: &PolicyOverrides) -> Self {
        let policy = serde_json::to_string(policy).expect("policy overrides serialise");
        Key(format!("{experiment_id} {policy}"))
    }

    /// The experiment tag that claims this follow-up's chain: one per policy overrides, named
    /// by a stable hash of them (FNV-1a) so the name stays short and valid for MLflow.
    pub(super) fn claim_tag(policy: &PolicyOverrides) -> String {
        let policy = serde_json::to_string(policy).expect("policy overrides serialise");
        let hash = policy.bytes().fold(0xcbf2_9ce4_8422_2325_u64, |h, b| {
            (h ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01b3)
        });
        format!("{CLAIM_TAG_PREFIX}{hash:016x}")
    }
}

/// Prefix of the experiment tags that claim follow-up chains.
pub(super) const CLAIM_TAG_PREFIX: &str = "model_pruner.follow_up.";

/// A chain's claim on its experiment's follow-ups: when its next follow-up is due and which
/// chain it is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Claim {
    pub due: EpochMs,
    pub chain: String,
}

impl Claim {
    /// A new chain's claim.
    pub(super) fn new(due: EpochMs) -> Self {
        Claim {
            due,
            chain: format!("{:016x}", rand::random::<u64>()),
        }
    }

    /// Reads a claim tag's value; anything else reads as no claim.
    pub(super) fn parse(value: &str) -> Option<Self> {
        let (due, chain) = value.split_once(' ')?;
        let chain = chain.trim();
        let due = EpochMs::from_millis(due.parse().ok()?);
        (!chain.is_empty()).then(|| Claim {
            due,
            chain: chain.to_owned(),
        })
    }

    /// The claim tag's value.
    pub(super) fn value(&self) -> String {
        format!("{} {}", self.due.millis(), self.chain)
    }

    /// A follow-up due at `at` is not needed at `now`: this claim's is still to run and comes
    /// no later (its pass schedules the next).
    pub(super) fn covers(&self, at: EpochMs, now: EpochMs) -> bool {
        is_pending(self.due, now) && self.due <= at
    }

    /// The follow-up of chain `chain`, due at `due`, can stop at `now`: this claim is another
    /// chain's, still to run and no later, so its pass stands in for this one's. A claim whose
    /// follow-up is due already stands in for nothing (its pass may have run before this chain
    /// was scheduled, or its claim came late).
    pub(super) fn supersedes(&self, chain: &str, due: EpochMs, now: EpochMs) -> bool {
        self.chain != chain && is_pending(self.due, now) && self.due <= due
    }
}

/// The follow-ups this worker has scheduled and that are not due yet.
#[derive(Debug, Default)]
pub(super) struct FollowUps {
    due: HashMap<Key, EpochMs>,
}

impl FollowUps {
    /// Whether a follow-up due at `at` is needed at `now`: not
    /// when the same one is pending and comes no later, since its pass schedules the next.
    pub(super) fn needed(&self, key: &Key, at: EpochMs, now: EpochMs) -> bool {
        self.due
            .get(key)
            .is_none_or(|&pending| !is_pending(pending, now) || pending > at)
    }

    /// Records a follow-up the broker confirmed, and forgets those already due.
    pub(super) fn scheduled(&mut self, key: Key, at: EpochMs, now: EpochMs) {
        self.due.retain(|_, due| is_pending(*due, now));
        self.due.insert(key, at);
    }
}

/// When the follow-up of a pass whose next look is at `next_look` is due, at `now`: just after
/// it, but no further ahead than the longest grace (an `older_than` of months is looked at
/// again at that horizon, by a pass that schedules the rest).
pub(super) fn due(next_look: EpochMs, now: EpochMs) -> EpochMs {
    next_look
        .saturating_add(MARGIN)
        .min(now.saturating_add(MAX_GRACE))
}

/// A follow-up due at `due` has not run yet at `now`: it runs from [`EARLY`] before.
fn is_pending(due: EpochMs, now: EpochMs) -> bool {
    due > now.saturating_add(EARLY)
}

/// Whether a follow-up due at `at` travels on at `now` instead of running its pass: only while
/// it is not due and within the longest grace there can be (a time beyond that is not one the
/// worker wrote: the pass runs rather than the message circulating for ever).
pub(super) fn travels_on(at: EpochMs, now: EpochMs) -> bool {
    is_pending(at, now) && at <= now.saturating_add(MAX_GRACE.saturating_add(MARGIN))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The time `ms` milliseconds after the epoch.
    fn t(ms: i64) -> EpochMs {
        EpochMs::from_millis(ms)
    }

    fn key(experiment_id: &str) -> Key {
        Key::new(experiment_id, &PolicyOverrides::default())
    }

    #[test]
    fn a_follow_up_is_due_after_the_next_look_within_the_horizon() {
        assert_eq!(
            due(t(5_000), t(0)),
            t(6_000),
            "a second after the next look"
        );
        let horizon = i64::try_from(MAX_GRACE.as_millis()).unwrap();
        assert_eq!(due(t(10 * horizon), t(7)), t(7 + horizon));
        assert!(travels_on(due(t(10 * horizon), t(7)), t(7)));
    }

    #[test]
    fn a_burst_of_passes_schedules_one_follow_up() {
        let mut f = FollowUps::default();
        assert!(f.needed(&key("1"), t(5_000), t(0)));
        f.scheduled(key("1"), t(5_000), t(0));
        for now in [10, 100, 3_999] {
            assert!(!f.needed(&key("1"), t(5_000), t(now)), "pending at {now}");
            // A later window is covered by the pending follow-up's own pass.
            assert!(!f.needed(&key("1"), t(9_000), t(now)));
        }
        // Another experiment has its own.
        assert!(f.needed(&key("2"), t(5_000), t(10)));
    }

    #[test]
    fn other_policy_overrides_get_their_own_follow_up() {
        let mut f = FollowUps::default();
        f.scheduled(key("1"), t(5_000), t(0));
        let other = Key::new(
            "1",
            &PolicyOverrides {
                keep_top: Some(1),
                ..Default::default()
            },
        );
        assert!(f.needed(&other, t(9_000), t(10)));
    }

    #[test]
    fn an_earlier_window_gets_its_own_follow_up() {
        let mut f = FollowUps::default();
        f.scheduled(key("1"), t(5_000), t(0));
        assert!(f.needed(&key("1"), t(3_000), t(10)));
        f.scheduled(key("1"), t(3_000), t(10));
        assert!(!f.needed(&key("1"), t(5_000), t(20)));
    }

    #[test]
    fn the_follow_up_s_own_pass_schedules_the_next_even_when_it_ran_early() {
        let mut f = FollowUps::default();
        f.scheduled(key("1"), t(5_000), t(0));
        // It may run from a second before it is due.
        assert!(f.needed(&key("1"), t(9_000), t(4_000)));
        f.scheduled(key("1"), t(9_000), t(4_000));
        assert!(!f.needed(&key("1"), t(9_000), t(6_000)));
    }

    #[test]
    fn due_follow_ups_are_forgotten() {
        let mut f = FollowUps::default();
        f.scheduled(key("1"), t(5_000), t(0));
        f.scheduled(key("2"), t(9_000), t(6_000));
        assert_eq!(f.due.len(), 1);
    }

    #[test]
    fn claims_read_back_and_garbage_reads_as_none() {
        let c = Claim::new(t(5_000));
        assert_eq!(Claim::parse(&c.value()), Some(c.clone()));
        assert_eq!(c.chain.len(), 16);
        assert_ne!(Claim::new(t(5_000)).chain, c.chain);
        for bad in ["", "5000", "5000 ", "soon abc", " abc"] {
            assert_eq!(Claim::parse(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn a_pending_claim_no_later_covers_a_follow_up() {
        let c = Claim {
            due: t(5_000),
            chain: "a".into(),
        };
        assert!(c.covers(t(5_000), t(0)));
        assert!(c.covers(t(9_000), t(0)));
        assert!(!c.covers(t(4_000), t(0)), "an earlier window needs its own");
        assert!(
            !c.covers(t(9_000), t(4_500)),
            "due already: it may have run"
        );
    }

    #[test]
    fn another_chain_due_no_later_supersedes_a_follow_up() {
        let c = Claim {
            due: t(5_000),
            chain: "a".into(),
        };
        assert!(c.supersedes("b", t(5_000), t(0)));
        assert!(c.supersedes("b", t(9_000), t(0)));
        assert!(
            !c.supersedes("b", t(4_000), t(0)),
            "a later chain cannot stand in for it"
        );
        assert!(!c.supersedes("a", t(9_000), t(0)), "its own claim");
        assert!(
            !c.supersedes("b", t(9_000), t(4_500)),
            "a claim due already stands in for nothing"
        );
    }

    #[test]
    fn each_policy_has_its_own_claim_tag() {
        let default = Key::claim_tag(&PolicyOverrides::default());
        assert_eq!(default, Key::claim_tag(&PolicyOverrides::default()));
        assert!(default.starts_with(CLAIM_TAG_PREFIX));
        assert_eq!(default.len(), CLAIM_TAG_PREFIX.len() + 16);
        let other = PolicyOverrides {
            keep_top: Some(1),
            ..Default::default()
        };
        assert_ne!(default, Key::claim_tag(&other));
    }

    #[test]
    fn a_follow_up_runs_from_a_second_before_it_is_due_or_when_its_time_is_beyond_any_grace() {
        assert!(!travels_on(t(5_000), t(5_000)));
        assert!(!travels_on(t(5_000), t(4_000)));
        assert!(travels_on(t(5_000), t(3_999)));
        let max = i64::try_from(MAX_GRACE.as_millis()).unwrap();
        assert!(travels_on(t(max), t(0)));
        assert!(
            !travels_on(t(max + 1_000 + 1), t(0)),
            "beyond the longest grace and the margin"
        );
        assert!(!travels_on(EpochMs::MAX, t(0)));
    }
}
