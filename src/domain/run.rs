//! What MLflow says about the state of a run and of an experiment, parsed once where its
//! answers are read, so the rest of the code matches on variants instead of strings. A value
//! MLflow may add later is kept as it came and treated as the most careful variant would be.

use std::fmt;

use serde::{Serialize, Serializer};

/// The few metrics, params or tags of a run a pass keeps, as a short list of pairs. A
/// `BTreeMap` allocates a node of eleven entries for a single pair: at 20,000 runs of one
/// experiment that was over 20 MiB of the worker's peak. Keys are unique (a later pair replaces
/// an earlier one); lookups scan the few pairs.
#[derive(Debug, Clone, PartialEq)]
pub struct Fields<V>(Vec<(String, V)>);

impl<V> Default for Fields<V> {
    fn default() -> Self {
        Fields(Vec::new())
    }
}

impl<V> Fields<V> {
    /// The value of `key`, if present.
    pub fn get(&self, key: &str) -> Option<&V> {
        self.0.iter().find(|(k, _)| k == key).map(|(_, v)| v)
    }

    /// Whether `key` is present, whatever its value.
    pub fn contains_key(&self, key: &str) -> bool {
        self.get(key).is_some()
    }

    /// Sets `key` to `value`, replacing what it had.
    pub fn insert(&mut self, key: String, value: V) {
        match self.0.iter_mut().find(|(k, _)| *k == key) {
            Some((_, v)) => *v = value,
            None => self.0.push((key, value)),
        }
    }

    /// Removes every pair.
    pub fn clear(&mut self) {
        self.0.clear();
    }

    /// Whether there is no pair at all.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// The keys, in the order they were first inserted.
    pub fn keys(&self) -> impl Iterator<Item = &String> {
        self.0.iter().map(|(k, _)| k)
    }
}

impl<V> FromIterator<(String, V)> for Fields<V> {
    fn from_iter<I: IntoIterator<Item = (String, V)>>(pairs: I) -> Self {
        let mut fields = Fields::default();
        for (k, v) in pairs {
            fields.insert(k, v);
        }
        fields.0.shrink_to_fit();
        fields
    }
}

impl<V> std::ops::Index<&str> for Fields<V> {
    type Output = V;

    fn index(&self, key: &str) -> &V {
        self.get(key).unwrap_or_else(|| panic!("no field {key:?}"))
    }
}

/// A run's status.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum RunStatus {
    /// `RUNNING`: still training, may still write files; never touched.
    Running,
    /// `SCHEDULED`: not started yet; never touched.
    Scheduled,
    /// `FINISHED`: ended successfully; the only status whose runs are candidates.
    Finished,
    /// `FAILED`: ended with an error; never touched.
    Failed,
    /// `KILLED`: stopped before it ended; never touched.
    Killed,
    /// A status this version does not know: never touched, like a running one.
    Other(String),
}

impl RunStatus {
    /// Reads MLflow's `info.status` (`FINISHED`...); an unknown value becomes [`RunStatus::Other`].
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

    /// The status as MLflow writes it (`FINISHED`), an unknown one as it came.
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
    /// `active`: not in the trash.
    Active,
    /// `deleted`: in MLflow's trash (restorable until the server's garbage collection runs).
    Deleted,
    /// A stage this version does not know: treated as not active.
    Other(String),
}

impl LifecycleStage {
    /// Reads MLflow's `lifecycle_stage` (`active`, `deleted`); an unknown value becomes
    /// [`LifecycleStage::Other`].
    pub fn parse(s: &str) -> Self {
        match s {
            "active" => LifecycleStage::Active,
            "deleted" => LifecycleStage::Deleted,
            other => LifecycleStage::Other(other.to_owned()),
        }
    }

    /// The stage as MLflow writes it (`active`), an unknown one as it came.
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
    fn fields_keep_one_value_per_key_the_latest() {
        let mut f: Fields<String> = [("a", "1"), ("b", "2"), ("a", "3")]
            .into_iter()
            .map(|(k, v)| (k.to_owned(), v.to_owned()))
            .collect();
        assert_eq!(f.get("a").map(String::as_str), Some("3"));
        assert_eq!(f.keys().collect::<Vec<_>>(), ["a", "b"]);
        f.insert("b".into(), "4".into());
        assert_eq!(f["b"], "4");
        assert!(!f.contains_key("c") && f.get("c").is_none());
        f.clear();
        assert!(f.is_empty());
    }

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
