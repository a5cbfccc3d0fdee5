//! Experiment endpoints: `experiments/get`, `experiments/get-by-name`, `experiments/search`,
//! `experiments/set-experiment-tag` and
//! `experiments/delete`.

use reqwest::Method;
use serde::de::IgnoredAny;
use serde_json::json;

use super::client::{Call, MlflowClient, all_pages};
use super::error::MlflowError;
use super::types::Experiment;
use super::wire::{GetExperimentResponse, SearchExperimentsResponse, WireExperiment};

/// Experiments per `experiments/search` page.
const EXPERIMENTS_PAGE_SIZE: u32 = 1000;

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

    /// Every active experiment matching `filter` (MLflow's experiment-search syntax, e.g.
    /// `tags.team = 'nlp'`; empty for all), all pages, oldest id first. A filter MLflow cannot
    /// read is a 400 `INVALID_PARAMETER_VALUE`.
    #[tracing::instrument(level = "debug", skip_all, fields(%filter), err(level = "debug", Display))]
    pub async fn search_experiments(&self, filter: &str) -> Result<Vec<Experiment>, MlflowError> {
        let key = |e: &WireExperiment| e.experiment_id.clone();
        let found = all_pages("experiments/search", key, |page_token| async move {
            let call = Call::new("experiments/search", format!("filter {filter:?}"));
            let url = self.url(&["experiments", "search"]);
            let body = json!({
                "max_results": EXPERIMENTS_PAGE_SIZE,
                "filter": filter,
                "view_type": "ACTIVE_ONLY",
                // Created while paging: after the rows already read, not among them.
                "order_by": ["creation_time ASC", "experiment_id ASC"],
                "page_token": page_token,
            });
            let page: SearchExperimentsResponse = self.send(call, Method::POST, url, &body).await?;
            Ok((page.experiments, page.next_page_token))
        })
        .await?;
        Ok(found.into_iter().map(Experiment::from).collect())
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
