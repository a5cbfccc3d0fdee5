//! What the tracking server offers, learnt from its answers and remembered for a while: MLflow
//! 2.x has no logged-models API (it came with MLflow 3). The endpoint's own 404 says it is
//! missing; the server's `/version` confirms it is a 2.x server and not something in front of a
//! 3.x one.

use std::sync::{Mutex, PoisonError};
use std::time::{Duration, Instant};

/// How long an answer about the server is trusted before it is asked again (a server upgraded
/// from 2.x to 3.x gains logged models without the worker restarting).
pub(super) const REMEMBERED_FOR: Duration = Duration::from_secs(600);

/// Whether a server answering `/version` with `version` predates logged models (MLflow 3.0):
/// a major version below 3. Anything unreadable is not.
pub(super) fn before_logged_models(version: &str) -> bool {
    version
        .trim()
        .split('.')
        .next()
        .and_then(|major| major.parse::<u32>().ok())
        .is_some_and(|major| major < 3)
}

/// The server's optional APIs as last seen, shared by every clone of a client.
#[derive(Debug, Default)]
pub(super) struct Features {
    /// Whether `logged-models/search` exists, and when that was learnt.
    logged_models: Mutex<Option<(bool, Instant)>>,
}

impl Features {
    /// Whether the server has the logged-models API, if learnt less than [`REMEMBERED_FOR`]
    /// before `now`.
    pub(super) fn logged_models(&self, now: Instant) -> Option<bool> {
        let seen = *self
            .logged_models
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        seen.filter(|(_, at)| now.saturating_duration_since(*at) < REMEMBERED_FOR)
            .map(|(has, _)| has)
    }

    /// Records what the server answered at `now`; true when that differs from what was known
    /// before (never known, or the other answer), so the caller logs it once.
    pub(super) fn learn_logged_models(&self, has: bool, now: Instant) -> bool {
        let mut seen = self
            .logged_models
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        let changed = seen.is_none_or(|(before, _)| before != has);
        *seen = Some((has, now));
        changed
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_a_major_version_below_3_predates_logged_models() {
        assert!(before_logged_models("2.22.5"));
        assert!(before_logged_models("1.30.0\n"));
        assert!(!before_logged_models("3.0.0"));
        assert!(!before_logged_models("3.17.2"));
        assert!(!before_logged_models("<!doctype html>"));
        assert!(!before_logged_models(""));
    }

    #[test]
    fn an_answer_is_remembered_for_a_while_and_a_change_is_reported_once() {
        let features = Features::default();
        let t0 = Instant::now();
        assert_eq!(features.logged_models(t0), None, "not asked yet");
        assert!(features.learn_logged_models(false, t0), "first answer");
        assert_eq!(
            features.logged_models(t0 + Duration::from_secs(60)),
            Some(false)
        );
        assert_eq!(
            features.logged_models(t0 + REMEMBERED_FOR),
            None,
            "asked again"
        );
        assert!(
            !features.learn_logged_models(false, t0 + REMEMBERED_FOR),
            "same answer"
        );
        assert!(
            features.learn_logged_models(true, t0 + REMEMBERED_FOR),
            "upgraded"
        );
    }
}
