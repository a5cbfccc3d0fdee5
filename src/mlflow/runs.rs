//! Run endpoints: search, get, set a tag, log a param.

use reqwest::Method;
use serde::de::IgnoredAny;
use serde_json::json;

use super::client::{Call, MlflowClient, all_pages};
use super::error::MlflowError;
use super::types::Run;
use super::wire::{GetRunResponse, SearchRunsResponse};

/// MLflow rejects `runs/search` with `max_results` above this.
const RUNS_SEARCH_MAX_RESULTS: u32 = 50_000;

impl MlflowClient {
    /// Every run of the experiment, active and deleted (`run_view_type` `ALL`), all pages.
    ///
    /// MLflow answers an empty list, not an error, for an experiment that does not exist.
    #[tracing::instrument(level = "debug", skip_all, fields(%experiment_id), err(level = "debug", Display))]
    pub async fn search_runs(&self, experiment_id: &str) -> Result<Vec<Run>, MlflowError> {
        let max_results = self.page_size.min(RUNS_SEARCH_MAX_RESULTS);
        let runs = all_pages(|page_token| async move {
            let call = Call::new("runs/search", format!("experiment {experiment_id}"));
            let url = self.url(&["runs", "search"]);
            let body = json!({
                "experiment_ids": [experiment_id],
                "run_view_type": "ALL",
                "max_results": max_results,
                "page_token": page_token,
            });
            let page: SearchRunsResponse = self.send(call, Method::POST, url, &body).await?;
            Ok((page.runs, page.next_page_token))
        })
        .await?;
        tracing::debug!(runs = runs.len(), "searched runs");
        Ok(runs.into_iter().map(Run::from).collect())
    }

    /// The run, deleted or not.
    #[tracing::instrument(level = "debug", skip_all, fields(%run_id), err(level = "debug", Display))]
    pub async fn get_run(&self, run_id: &str) -> Result<Run, MlflowError> {
        let call = Call::new("runs/get", format!("run {run_id}"));
        let url = self.url(&["runs", "get"]);
        let response: GetRunResponse = self.get(call, url, &[("run_id", run_id)]).await?;
        Ok(response.run.into())
    }

    /// Sets (or overwrites) a tag on the run.
    #[tracing::instrument(skip_all, fields(%run_id, %key), err(level = "debug", Display))]
    pub async fn set_run_tag(
        &self,
        run_id: &str,
        key: &str,
        value: &str,
    ) -> Result<(), MlflowError> {
        let call = Call::new("runs/set-tag", format!("run {run_id} (tag {key})"));
        let url = self.url(&["runs", "set-tag"]);
        let body = json!({ "run_id": run_id, "key": key, "value": value });
        let _: IgnoredAny = self.send(call, Method::POST, url, &body).await?;
        Ok(())
    }

    /// Logs a param on the run. Re-logging the same value succeeds (MLflow answers 200), so
    /// this is safe to repeat; a different value is a permanent 400 `INVALID_PARAMETER_VALUE`
    /// ("Changing param values is not allowed").
    #[tracing::instrument(skip_all, fields(%run_id, %key), err(level = "debug", Display))]
    pub async fn log_param(&self, run_id: &str, key: &str, value: &str) -> Result<(), MlflowError> {
        let call = Call::new("runs/log-parameter", format!("run {run_id} (param {key})"));
        let url = self.url(&["runs", "log-parameter"]);
        let body = json!({ "run_id": run_id, "key": key, "value": value });
        let _: IgnoredAny = self.send(call, Method::POST, url, &body).await?;
        Ok(())
    }
}
