//! Experiment endpoints: `experiments/get`, `experiments/get-by-name`,
//! `experiments/set-experiment-tag` and
//! `experiments/delete`.

use reqwest::Method;
use serde::de::IgnoredAny;
use serde_json::json;

use super::client::{Call, MlflowClient};
use super::error::MlflowError;
use super::types::Experiment;
use super::wire::GetExperimentResponse;

impl MlflowClient {
    /// The experiment, deleted ones included (their `lifecycle_stage` is `deleted`).
    ///
    /// A missing id answers 404 and a non-numeric one 400; both are
    /// [`is_not_found`](MlflowError::is_not_found).
    #[tracing::instrument(level = "debug", skip_all, fields(%experiment_id), err(level = "debug", Display))]
    pub async fn get_experiment(&self, experiment_id: &str) -> Result<Experiment, MlflowError> {
        let call = Call::new("experiments/get", format!("experiment {experiment_id}"));
        let url = self.url(&["experiments", "get"]);
        let response: GetExperimentResponse = self
            .get(call, url, &[("experiment_id", experiment_id)])
            .await?;
        Ok(response.experiment.into())
    }

    /// The experiment named `name` (MLflow names are unique; deleted ones included). A name
    /// no experiment has is [`is_not_found`](MlflowError::is_not_found).
    #[tracing::instrument(level = "debug", skip_all, fields(%name), err(level = "debug", Display))]
    pub async fn get_experiment_by_name(&self, name: &str) -> Result<Experiment, MlflowError> {
        let call = Call::new("experiments/get-by-name", format!("experiment {name:?}"));
        let url = self.url(&["experiments", "get-by-name"]);
        let response: GetExperimentResponse =
            self.get(call, url, &[("experiment_name", name)]).await?;
        Ok(response.experiment.into())
    }

    /// Sets (or overwrites) one tag of the experiment.
    #[tracing::instrument(skip_all, fields(%experiment_id, %key), err(level = "debug", Display))]
    pub async fn set_experiment_tag(
        &self,
        experiment_id: &str,
        key: &str,
        value: &str,
    ) -> Result<(), MlflowError> {
        let call = Call::new(
            "experiments/set-experiment-tag",
            format!("experiment {experiment_id}"),
        );
        let url = self.url(&["experiments", "set-experiment-tag"]);
        let body = json!({ "experiment_id": experiment_id, "key": key, "value": value });
        let _: IgnoredAny = self.send(call, Method::POST, url, &body).await?;
        Ok(())
    }

    /// Moves the experiment to the `deleted` lifecycle stage (MLflow keeps it until garbage
    /// collection). Deleting an already deleted experiment is a not-found error.
    #[tracing::instrument(skip_all, fields(%experiment_id), err(level = "debug", Display))]
    pub async fn delete_experiment(&self, experiment_id: &str) -> Result<(), MlflowError> {
        let call = Call::new("experiments/delete", format!("experiment {experiment_id}"));
        let url = self.url(&["experiments", "delete"]);
        let body = json!({ "experiment_id": experiment_id });
        let _: IgnoredAny = self.send(call, Method::POST, url, &body).await?;
        Ok(())
    }
}
