//! Run endpoints: search, get, and writing params and tags in one batch.

use std::collections::BTreeSet;

use reqwest::Method;
use serde::de::IgnoredAny;
use serde_json::json;

use super::client::{Call, MlflowClient, all_pages, in_list};
use super::error::MlflowError;
use super::types::{Run, RunFields};
use super::wire::{RunInfo, SearchRunsResponse};

/// MLflow rejects `runs/search` with `max_results` above this.
const RUNS_SEARCH_MAX_RESULTS: u32 = 50_000;

/// Oldest first (MLflow breaks ties by run id): runs created while a search pages land after
/// the rows already read instead of shifting them, as the default newest-first order would.
const RUNS_ORDER: &str = "attributes.start_time ASC";

/// Run ids per `runs/search` filtered by id.
const RUN_IDS_PER_SEARCH: usize = 100;

impl MlflowClient {
    /// Every run of the experiment, active and deleted (`run_view_type` `ALL`), all pages, with
    /// the metrics, params and tags named in `fields`; each run once (see [`all_pages`]).
    ///
    /// MLflow answers an empty list, not an error, for an experiment that does not exist.
    #[tracing::instrument(level = "debug", skip_all, fields(%experiment_id), err(level = "debug", Display))]
    pub async fn search_runs(
        &self,
        experiment_id: &str,
        fields: &RunFields<'_>,
    ) -> Result<Vec<Run>, MlflowError> {
        let runs = self.search_runs_where(experiment_id, None, fields).await?;
        tracing::debug!(runs = runs.len(), "searched runs");
        Ok(runs)
    }

    /// The runs of the experiment among `run_ids`, read afresh (a run that no longer exists is
    /// missing from the answer), in requests of at most 100 ids.
    #[tracing::instrument(level = "debug", skip_all, fields(%experiment_id, runs = run_ids.len()), err(level = "debug", Display))]
    pub async fn search_runs_by_id(
        &self,
        experiment_id: &str,
        run_ids: &[&str],
        fields: &RunFields<'_>,
    ) -> Result<Vec<Run>, MlflowError> {
        let mut runs = Vec::with_capacity(run_ids.len());
        for chunk in run_ids.chunks(RUN_IDS_PER_SEARCH) {
            let filter = format!("attributes.run_id IN {}", in_list(chunk.iter().copied()));
            runs.extend(
                self.search_runs_where(experiment_id, Some(&filter), fields)
                    .await?,
            );
        }
        Ok(runs)
    }

    async fn search_runs_where(
        &self,
        experiment_id: &str,
        filter: Option<&str>,
        fields: &RunFields<'_>,
    ) -> Result<Vec<Run>, MlflowError> {
        let max_results = self.page_size.min(RUNS_SEARCH_MAX_RESULTS);
        let key = |run: &Run| run.run_id.clone();
        all_pages("runs/search", key, |page_token| async move {
            let call = Call::new("runs/search", format!("experiment {experiment_id}"));
            let url = self.url(&["runs", "search"]);
            let body = json!({
                "experiment_ids": [experiment_id],
                "filter": filter.unwrap_or_default(),
                "run_view_type": "ALL",
                "max_results": max_results,
                "order_by": [RUNS_ORDER],
                "page_token": page_token,
            });
            let page: SearchRunsResponse = self.send(call, Method::POST, url, &body).await?;
            // Converted page by page: only the wanted fields outlive the page.
            let runs = page.runs.into_iter().map(|r| r.into_run(fields));
            let runs = runs.collect::<Vec<_>>();
            Ok((runs, page.next_page_token))
        })
        .await
    }

    /// The metric names logged by the experiment's latest `runs` runs (one `runs/search` page),
    /// to tell a person who mistyped the policy's metric which ones exist.
    #[tracing::instrument(level = "debug", skip_all, fields(%experiment_id), err(level = "debug", Display))]
    pub async fn metric_names(
        &self,
        experiment_id: &str,
        runs: u32,
    ) -> Result<BTreeSet<String>, MlflowError> {
        let call = Call::new("runs/search", format!("experiment {experiment_id}"));
        let url = self.url(&["runs", "search"]);
        let body = json!({
            "experiment_ids": [experiment_id],
            "max_results": runs.min(RUNS_SEARCH_MAX_RESULTS),
            "order_by": [RUNS_ORDER],
        });
        let page: SearchRunsResponse = self.send(call, Method::POST, url, &body).await?;
        Ok(page
            .runs
            .into_iter()
            .flat_map(|r| r.data.metrics)
            .map(|m| m.key)
            .collect())
    }

    /// The experiment holding run `run_id` on this server (`runs/get`), or `None` when the
    /// server has no such run.
    #[tracing::instrument(level = "debug", skip_all, fields(%run_id), err(level = "debug", Display))]
    pub async fn run_experiment(&self, run_id: &str) -> Result<Option<String>, MlflowError> {
        #[derive(serde::Deserialize)]
        struct GetRun {
            run: RunOnly,
        }
        #[derive(serde::Deserialize)]
        struct RunOnly {
            info: RunInfo,
        }
        let call = Call::new("runs/get", format!("run {run_id}"));
        let url = self.url(&["runs", "get"]);
        match self.get::<GetRun>(call, url, &[("run_id", run_id)]).await {
            Ok(found) => Ok(Some(found.run.info.experiment_id)),
            Err(e) if e.is_not_found() => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// Removes a tag from a run (`POST runs/delete-tag`).
    #[tracing::instrument(level = "debug", skip_all, fields(%run_id, %key), err(level = "debug", Display))]
    pub async fn delete_tag(&self, run_id: &str, key: &str) -> Result<(), MlflowError> {
        let call = Call::new("runs/delete-tag", format!("run {run_id}"));
        let url = self.url(&["runs", "delete-tag"]);
        let body = json!({ "run_id": run_id, "key": key });
        let _: IgnoredAny = self.send(call, Method::POST, url, &body).await?;
        Ok(())
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
