//! What MLflow says about the state of a run and of an experiment, parsed once where its
//! answers are read, so the rest of the code matches on variants instead of strings. A value
//! MLflow may add later is kept as it came and treated as the most careful variant would be.

use std::fmt;

use serde::{Serialize, Serializer};

/// A run's status.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum RunStatus {
    Running,
    Scheduled,
    Finished,
    Failed,
    Killed,
    /// A status this version does not know: never touched, like a running one.
    Other(String),
}

impl RunStatus {
    pub fn parse(s: &str) -> Self {
        match s {
            "RUNNING" => RunStatus::Running,
            "SCHEDULED" => RunStatus::Scheduled,
            "FINISHED" => RunStatus::Finished,
            "FAILED" => RunStatus::Failed,
            "KILLED" => RunStatus::Killed,
            other => RunStatus::Other(other.to_owned()),
        }
    }

    pub fn as_str(&self) -> &str {
        match self {
            RunStatus::Running => "RUNNING",
            RunStatus::Scheduled => "SCHEDULED",
            RunStatus::Finished => "FINISHED",
            RunStatus::Failed => "FAILED",
            RunStatus::Killed => "KILLED",
            RunStatus::Other(s) => s,
        }
    }

    /// The run may still be writing files (running, scheduled, or a status not known here).
    pub fn is_active(&self) -> bool {
        matches!(
            self,
            RunStatus::Running | RunStatus::Scheduled | RunStatus::Other(_)
        )
    }
}

/// Whether a run or an experiment is in MLflow's trash.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum LifecycleStage {
    Active,
    Deleted,
    /// A stage this version does not know: treated as not active.
    Other(String),
}

impl LifecycleStage {
    pub fn parse(s: &str) -> Self {
        match s {
            "active" => LifecycleStage::Active,
            "deleted" => LifecycleStage::Deleted,
            other => LifecycleStage::Other(other.to_owned()),
        }
    }

    pub fn as_str(&self) -> &str {
        match self {
            LifecycleStage::Active => "active",
            LifecycleStage::Deleted => "deleted",
            LifecycleStage::Other(s) => s,
        }
    }
}

macro_rules! as_text {
    ($t:ty) => {
        impl fmt::Display for $t {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(self.as_str())
            }
        }

        impl Serialize for $t {
            fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
                serializer.serialize_str(self.as_str())
            }
        }
    };
}

as_text!(RunStatus);
as_text!(LifecycleStage);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statuses_read_and_print_as_mlflow_writes_them() {
        for s in [
            "RUNNING",
            "SCHEDULED",
            "FINISHED",
            "FAILED",
            "KILLED",
            "PAUSED",
        ] {
            assert_eq!(RunStatus::parse(s).to_string(), s);
        }
        for s in ["active", "deleted", "archived"] {
            assert_eq!(LifecycleStage::parse(s).as_str(), s);
        }
    }

    #[test]
    fn an_unknown_status_counts_as_still_running() {
        assert!(RunStatus::parse("PAUSED").is_active());
        assert!(RunStatus::Running.is_active() && RunStatus::Scheduled.is_active());
        for s in [RunStatus::Finished, RunStatus::Failed, RunStatus::Killed] {
            assert!(!s.is_active());
        }
    }
}
