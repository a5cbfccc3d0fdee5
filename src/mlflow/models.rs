//! Model endpoints: MLflow 3 logged models (`logged-models/...`) and registered model versions
//! (`model-versions/search`).

use reqwest::Method;
use serde::de::IgnoredAny;
use serde_json::json;

use super::client::{Call, MlflowClient, all_pages};
use super::error::MlflowError;
use super::types::{LoggedModel, ModelVersion};
use super::wire::{SearchLoggedModelsResponse, SearchModelVersionsResponse};

/// Page size for `model-versions/search` (MLflow caps it at 200 000).
const MODEL_VERSIONS_PAGE_SIZE: u32 = 1_000;

impl MlflowClient {
    /// Every logged model of the experiment (`POST logged-models/search`), all pages. Models
    /// deleted with `DELETE logged-models/{id}` are not listed.
    ///
    /// MLflow answers an empty list, not an error, for an experiment that does not exist.
    #[tracing::instrument(level = "debug", skip_all, fields(%experiment_id), err(level = "debug", Display))]
    pub async fn search_logged_models(
        &self,
        experiment_id: &str,
    ) -> Result<Vec<LoggedModel>, MlflowError> {
        let models = all_pages(|page_token| async move {
            let call = Call::new(
                "logged-models/search",
                format!("experiment {experiment_id}"),
            );
            let url = self.url(&["logged-models", "search"]);
            let body = json!({
                "experiment_ids": [experiment_id],
                "max_results": self.page_size,
                "page_token": page_token,
            });
            let page: SearchLoggedModelsResponse =
                self.send(call, Method::POST, url, &body).await?;
            Ok((page.models, page.next_page_token))
        })
        .await?;
        tracing::debug!(models = models.len(), "searched logged models");
        Ok(models.into_iter().map(LoggedModel::from).collect())
    }

    /// Every registered model version matching `filter` (MLflow's search syntax, e.g.
    /// `run_id = '...'`), or all of them; all pages (`GET model-versions/search`).
    #[tracing::instrument(level = "debug", skip_all, fields(filter = ?filter), err(level = "debug", Display))]
    pub async fn search_model_versions(
        &self,
        filter: Option<&str>,
    ) -> Result<Vec<ModelVersion>, MlflowError> {
        let target = match filter {
            Some(filter) => format!("filter {filter:?}"),
            None => "all registered models".to_owned(),
        };
        let target = &target;
        let max_results = &MODEL_VERSIONS_PAGE_SIZE.to_string();
        let versions = all_pages(|page_token: Option<String>| async move {
            let call = Call::new("model-versions/search", target.clone());
            let url = self.url(&["model-versions", "search"]);
            let mut query = vec![("max_results", max_results.as_str())];
            query.extend(filter.map(|f| ("filter", f)));
            query.extend(page_token.as_deref().map(|t| ("page_token", t)));
            let page: SearchModelVersionsResponse = self.get(call, url, &query).await?;
            Ok((page.model_versions, page.next_page_token))
        })
        .await?;
        tracing::debug!(versions = versions.len(), "searched model versions");
        Ok(versions.into_iter().map(ModelVersion::from).collect())
    }

    /// Sets (or overwrites) tags on a logged model (`PATCH logged-models/{id}/tags`).
    #[tracing::instrument(skip_all, fields(%model_id), err(level = "debug", Display))]
    pub async fn set_logged_model_tags(
        &self,
        model_id: &str,
        tags: &[(&str, &str)],
    ) -> Result<(), MlflowError> {
        let call = Call::new("logged-models/tags", format!("logged model {model_id}"));
        let url = self.url(&["logged-models", model_id, "tags"]);
        let tags: Vec<_> = tags
            .iter()
            .map(|(key, value)| json!({ "key": key, "value": value }))
            .collect();
        let body = json!({ "tags": tags });
        let _: IgnoredAny = self.send(call, Method::PATCH, url, &body).await?;
        Ok(())
    }
}
