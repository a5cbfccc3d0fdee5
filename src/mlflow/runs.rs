//! Run endpoints: search, and writing params and tags in one batch.

use reqwest::Method;
use serde::de::IgnoredAny;
use serde_json::json;

use super::client::{Call, MlflowClient, all_pages};
use super::error::MlflowError;
use super::types::{Run, RunFields};
use super::wire::SearchRunsResponse;

/// MLflow rejects `runs/search` with `max_results` above this.
const RUNS_SEARCH_MAX_RESULTS: u32 = 50_000;

impl MlflowClient {
    /// Every run of the experiment, active and deleted (`run_view_type` `ALL`), all pages, with
    /// the metrics, params and tags named in `fields`.
    ///
    /// MLflow answers an empty list, not an error, for an experiment that does not exist.
    #[tracing::instrument(level = "debug", skip_all, fields(%experiment_id), err(level = "debug", Display))]
    pub async fn search_runs(
        &self,
        experiment_id: &str,
        fields: &RunFields<'_>,
    ) -> Result<Vec<Run>, MlflowError> {
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
            // Converted page by page: only the wanted fields outlive the page.
            let runs = page.runs.into_iter().map(|r| r.into_run(fields));
            let runs = runs.collect::<Vec<_>>();
            Ok((runs, page.next_page_token))
        })
        .await?;
        tracing::debug!(runs = runs.len(), "searched runs");
        Ok(runs)
    }

    /// Logs params and sets tags on the run in one `runs/log-batch` request, which MLflow
    /// applies in one transaction. Re-logging a param with the same value succeeds, so this is
    /// safe to repeat; a different value is a permanent 400 `INVALID_PARAMETER_VALUE`.
    #[tracing::instrument(skip_all, fields(%run_id), err(level = "debug", Display))]
    pub async fn log_batch(
        &self,
        run_id: &str,
        params: &[(&str, &str)],
        tags: &[(&str, &str)],
    ) -> Result<(), MlflowError> {
        let call = Call::new("runs/log-batch", format!("run {run_id}"));
        let url = self.url(&["runs", "log-batch"]);
        let pairs = |pairs: &[(&str, &str)]| {
            pairs
                .iter()
                .map(|(key, value)| json!({ "key": key, "value": value }))
                .collect::<Vec<_>>()
        };
        let body = json!({ "run_id": run_id, "params": pairs(params), "tags": pairs(tags) });
        let _: IgnoredAny = self.send(call, Method::POST, url, &body).await?;
        Ok(())
    }
}
