//! Whether MLflow and the store answer as the engine will use them: the tracking URI answers
//! MLflow's REST API (its own JSON, not a page from whatever else sits at a wrong URL), and the
//! store's credentials may list each allowed bucket. `model-pruner config check --connect` runs
//! them for a person, a worker at start; they change nothing.

use super::Engine;
use crate::domain::classify::ErrorClass;
use crate::mlflow::MlflowError;

/// A folder no run uses: listing it needs the same permission as any listing, and finds nothing.
const PROBE_PREFIX: &str = ".model-pruner-check/";

/// One system tried: `problem` is `None` when it answered as expected.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Check {
    /// `mlflow` or `store`.
    pub system: &'static str,
    /// The settings that decide it.
    pub settings: &'static str,
    /// What was tried, or what answered.
    pub detail: String,
    /// What went wrong (the error, or a hint such as a wrong base path); `None` when all is well.
    pub problem: Option<String>,
    /// The problem is in the settings (a page that is not MLflow's API, credentials or a
    /// bucket refused): trying again cannot help. Otherwise the system did not answer (yet).
    pub misconfigured: bool,
}

impl Engine {
    /// Tries MLflow once, then lists each allowed bucket once (no retries: a person or a log
    /// line reads the first answer).
    pub async fn check_connections(&self) -> Vec<Check> {
        let mut checks = vec![self.check_mlflow().await];
        for bucket in &self.rules.allowed_buckets {
            checks.push(self.check_bucket(bucket).await);
        }
        checks
    }

    async fn check_mlflow(&self) -> Check {
        // Experiment 0 may be gone: MLflow's own "does not exist" answers as well as the
        // experiment itself.
        let mut detail = "the tracking URI answers as MLflow's REST API".to_owned();
        let (problem, misconfigured) = match self.mlflow.get_experiment("0").await {
            Ok(_) => (None, false),
            Err(e) if e.is_not_found() => (None, false),
            Err(e) if e.is_not_the_api() => (
                Some(format!(
                    "something answers, but not MLflow's REST API ({e}); is the base path right?"
                )),
                true,
            ),
            // A user who may read only some experiments: MLflow answered, as itself.
            Err(MlflowError::Status { status: 403, .. }) => {
                detail.push_str(" (the user may not read experiment 0)");
                (None, false)
            }
            // A wrong token or password, or a page that is not MLflow's JSON.
            Err(e @ (MlflowError::Status { status: 401, .. } | MlflowError::Decode { .. })) => {
                (Some(e.to_string()), true)
            }
            Err(e) => (Some(e.to_string()), false),
        };
        Check {
            system: "mlflow",
            settings: "mlflow.tracking_uri, mlflow.token / username / password",
            detail,
            problem,
            misconfigured,
        }
    }

    async fn check_bucket(&self, bucket: &str) -> Check {
        let error = self.store.list_page(bucket, PROBE_PREFIX, None).await.err();
        Check {
            system: "store",
            settings: "store.endpoint, store.access_key_id / secret_access_key, store.allowed_buckets",
            detail: format!("bucket {bucket:?} can be listed"),
            misconfigured: error
                .as_ref()
                .is_some_and(|e| e.class() == ErrorClass::Permanent),
            problem: error.map(|e| e.to_string()),
        }
    }
}
