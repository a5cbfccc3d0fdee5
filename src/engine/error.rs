//! Why a pass failed, with the ids involved, and whether trying again can help.

use crate::domain::classify::ErrorClass;
use crate::domain::location::LocationError;
use crate::domain::policy::PolicyError;
use crate::domain::ranking::RankingError;
use crate::mlflow::MlflowError;
use crate::store::StoreError;

/// A ranking-and-pruning pass that did not complete.
///
/// Each cause is part of the message (a field named `cause`, not an error `source`), so a
/// chain printed with `{:#}` says it once.
#[derive(Debug, thiserror::Error)]
pub enum PruneError {
    /// MLflow has no experiment with the id the event or command named.
    #[error("experiment {experiment_id} does not exist in MLflow")]
    UnknownExperiment {
        /// The experiment id the pass was asked for.
        experiment_id: String,
    },
    /// Every run the `run.finished` events named belongs to another experiment (or none).
    #[error("run(s) {} do not belong to experiment {experiment_id}", run_ids.join(", "))]
    RunNotInExperiment {
        /// The experiment the events named.
        experiment_id: String,
        /// The named runs that are not among the experiment's runs.
        run_ids: Vec<String>,
    },
    /// The retention policy (event fields, experiment tags, then settings) is invalid.
    #[error("experiment {experiment_id}: {cause}")]
    Policy {
        /// The experiment whose policy did not resolve.
        experiment_id: String,
        /// What is wrong with the policy.
        cause: PolicyError,
    },
    /// The runs cannot be ranked, e.g. none has a value for the policy's metric.
    #[error("experiment {experiment_id}: {cause}{hint}")]
    Ranking {
        /// The experiment whose runs could not be ranked.
        experiment_id: String,
        /// Why ranking is impossible.
        cause: RankingError,
        /// What would help, e.g. the metrics the runs do log; empty or starting with `; `.
        hint: String,
    },
    /// A pass that is not a forced sweep planned more deletions than
    /// `policy.max_deletions_per_pass`.
    #[error(
        "experiment {experiment_id}: the pass would delete {count} models, more than \
         policy.max_deletions_per_pass = {max}; nothing deleted (to go past it: --force on the \
         command line, force: true in an experiment.prune event)"
    )]
    SafetyValve {
        /// The experiment the pass was over.
        experiment_id: String,
        /// Runs whose models the pass planned to delete.
        count: usize,
        /// The bound it went over (`policy.max_deletions_per_pass`).
        max: u32,
    },
    /// A run's artifact URI is one the pruner refuses to delete under (unsupported scheme,
    /// malformed, bucket not allowed, prefix too broad); the pass deletes nothing.
    #[error(
        "experiment {experiment_id}, run {run_id}: refused to delete: {cause}; nothing deleted"
    )]
    Location {
        /// The experiment the run belongs to.
        experiment_id: String,
        /// The run whose model location was refused.
        run_id: String,
        /// Which rule refused it.
        cause: LocationError,
    },
    /// A call to MLflow failed; transient or permanent as its cause is.
    #[error("experiment {experiment_id}: {cause}")]
    Mlflow {
        /// The experiment the pass was over.
        experiment_id: String,
        /// The failed MLflow call's error.
        cause: MlflowError,
    },
    /// A request to the object store (listing or deleting) failed; transient or permanent as
    /// its cause is.
    #[error("experiment {experiment_id}, run(s) {}: {cause}", run_ids.join(", "))]
    Store {
        /// The experiment the pass was over.
        experiment_id: String,
        /// The runs whose files the failed request was about.
        run_ids: Vec<String>,
        /// The failed store request's error.
        cause: StoreError,
    },
    /// Every folder the pass planned to delete was empty in the store, so the models likely
    /// live elsewhere; nothing is deleted or marked.
    #[error(
        "experiment {experiment_id}: every planned model folder holds no file (run(s) {}, e.g. \
         {folder}): nothing deleted, no run marked; {cause}",
        run_ids.join(", ")
    )]
    EmptyFolders {
        /// The experiment the pass was over.
        experiment_id: String,
        /// The planned runs whose folders held no file.
        run_ids: Vec<String>,
        /// The first planned folder of those runs (empty if none had one), as an example.
        folder: String,
        /// The likely cause, from a look at the folder's parent.
        cause: String,
    },
    /// An experiment.prune with `delete_experiment` found runs still holding models, protected
    /// or unfinished, or registry versions pointing into it; the experiment is not deleted.
    #[error(
        "experiment {experiment_id} not deleted: {} run(s) still hold models, are protected \
         (registered, tagged model_pruner.keep) or are unfinished ({}); a retired experiment's \
         runs count as deleted and MLflow's garbage collection would take their files: prune \
         with keep_top 0 once they are finished, and unregister or untag what may go",
        remaining.len(), remaining.join(", ")
    )]
    ExperimentNotEmpty {
        /// The experiment that was to be deleted.
        experiment_id: String,
        /// What blocks it, each as `<run id, source or location> (<why>)`.
        remaining: Vec<String>,
    },
}

impl PruneError {
    /// An MLflow write refused for a reason of the run's own (see
    /// [`MlflowError::is_about_the_run`]).
    pub fn is_about_the_run(&self) -> bool {
        matches!(self, PruneError::Mlflow { cause, .. } if cause.is_about_the_run())
    }

    /// Transient errors are worth retrying; everything else is permanent.
    pub fn class(&self) -> ErrorClass {
        match self {
            PruneError::Mlflow { cause, .. } => cause.class(),
            PruneError::Store { cause, .. } => cause.class(),
            _ => ErrorClass::Permanent,
        }
    }

    /// Every [`PruneError::kind`], so metrics can start each series at zero.
    pub const KINDS: [&'static str; 10] = [
        "unknown_experiment",
        "run_not_in_experiment",
        "invalid_policy",
        "metric_missing",
        "safety_valve",
        "refused_location",
        "mlflow",
        "store",
        "experiment_not_empty",
        "empty_folders",
    ];

    /// Low-cardinality kind for metrics and dead-letter headers.
    pub fn kind(&self) -> &'static str {
        match self {
            PruneError::UnknownExperiment { .. } => "unknown_experiment",
            PruneError::RunNotInExperiment { .. } => "run_not_in_experiment",
            PruneError::Policy { .. } => "invalid_policy",
            PruneError::Ranking { .. } => "metric_missing",
            PruneError::SafetyValve { .. } => "safety_valve",
            PruneError::Location { .. } => "refused_location",
            PruneError::Mlflow { .. } => "mlflow",
            PruneError::Store { .. } => "store",
            PruneError::ExperimentNotEmpty { .. } => "experiment_not_empty",
            PruneError::EmptyFolders { .. } => "empty_folders",
        }
    }
}

#[cfg(test)]
mod tests {
    use std::error::Error as _;

    use super::*;

    #[test]
    fn a_cause_is_printed_once_in_the_message_not_again_as_a_source() {
        let cause = LocationError::UnsupportedScheme {
            uri: "file:///m".into(),
        };
        let said = cause.to_string();
        let err = PruneError::Location {
            experiment_id: "7".into(),
            run_id: "r1".into(),
            cause,
        };
        assert!(err.to_string().contains(&said), "{err}");
        assert!(err.source().is_none(), "{:#}", anyhow::Error::new(err));
    }

    #[test]
    fn what_mlflow_could_not_parse_is_said_once_through_a_pass() {
        let parser = serde_json::from_str::<serde_json::Value>("nope").unwrap_err();
        let said = parser.to_string();
        let err = PruneError::Mlflow {
            experiment_id: "7".into(),
            cause: MlflowError::Decode {
                operation: "runs/get",
                target: "run r".into(),
                cause: parser,
            },
        };
        let printed = format!("{:#}", anyhow::Error::new(err));
        assert_eq!(printed.matches(&said).count(), 1, "{printed}");
    }
}
