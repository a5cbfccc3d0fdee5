//! Model endpoints: MLflow 3 logged models (`logged-models/...`) and registered model versions
//! (`model-versions/search`).

use reqwest::Method;
use serde::de::IgnoredAny;
use serde_json::json;

use std::collections::BTreeSet;
use std::fmt;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Instant;

use super::client::{Call, MlflowClient, all_pages, in_list};
use super::error::MlflowError;
use super::features::{self, REMEMBERED_FOR};
use super::types::{LoggedModel, ModelVersion};
use super::wire::{
    SearchLoggedModelsResponse, SearchModelVersionsResponse, WireLoggedModel, WireModelVersion,
};

/// Page size for `model-versions/search`: MLflow's cap, so that a search nearly always reads one
/// page. Pages are offsets: a version deleted between two page requests would make the next page
/// skip one, and a skipped version is a protection missed. A search that spans several pages is
/// therefore read again until two reads in a row find the same versions (see [`stable`]).
const MODEL_VERSIONS_PAGE_SIZE: u32 = 200_000;

/// Reads of a multi-page version search before it is given up as unstable (transient).
const VERSION_READS: usize = 4;

/// Oldest first, then a total order: versions registered while a search pages come last.
const VERSIONS_ORDER: [&str; 3] = ["creation_timestamp ASC", "name ASC", "version_number ASC"];

/// Which registry versions to search for. Values are ids MLflow returned (see [`in_list`]).
#[derive(Debug, Clone, Copy)]
pub enum VersionFilter<'a> {
    /// Versions whose `run_id` is one of these runs.
    RunIds(&'a [&'a str]),
    /// Versions whose source matches this SQL `LIKE` pattern (`%` any text, `_` any
    /// character).
    SourceLike(&'a str),
}

impl fmt::Display for VersionFilter<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            VersionFilter::RunIds(ids) => write!(f, "run_id IN {}", in_list(ids.iter().copied())),
            VersionFilter::SourceLike(pattern) => write!(f, "source_path LIKE '{pattern}'"),
        }
    }
}

/// Whether the last of `reads` (the keys each read found) can be trusted: it came in one page
/// (offsets cannot skip within one answer), or it found the same rows as the read before it. A
/// row skipped because another was deleted between two page requests shows as a difference:
/// the earlier read holds the deleted row, the later one does not.
fn stable(pages: usize, reads: &[BTreeSet<String>]) -> bool {
    pages <= 1 || matches!(reads, [.., before, last] if before == last)
}

impl MlflowClient {
    /// Every logged model of the experiment (`POST logged-models/search`), all pages. Models
    /// deleted with `DELETE logged-models/{id}` are not listed.
    ///
    /// MLflow answers an empty list, not an error, for an experiment that does not exist.
    ///
    /// A server without the logged-models API answers that none exist: MLflow 2.x, told by a
    /// 404 from `logged-models/search` together with a `/version` below 3 (a 404 alone could be
    /// an ingress or an old replica in front of a 3.x server, whose logged models must not be
    /// assumed away). Remembered for [`REMEMBERED_FOR`] and logged when learnt.
    #[tracing::instrument(level = "debug", skip_all, fields(%experiment_id), err(level = "debug", Display))]
    pub async fn search_logged_models(
        &self,
        experiment_id: &str,
    ) -> Result<Vec<LoggedModel>, MlflowError> {
        if self.features.logged_models(Instant::now()) == Some(false) {
            return Ok(Vec::new());
        }
        let error = match self.logged_models_pages(experiment_id).await {
            Ok(models) => {
                self.learned(true, None);
                return Ok(models);
            }
            Err(e) if e.is_not_the_api() => e,
            Err(e) => return Err(e),
        };
        match self.server_version().await {
            Ok(version) if features::before_logged_models(&version) => {
                self.learned(false, Some(&version));
                Ok(Vec::new())
            }
            // A 3.x server (or one that does not say) missing the endpoint: not trusted.
            _ => Err(error),
        }
    }

    /// The experiment holding logged model `model_id` (`GET logged-models/{id}`), or `None` when
    /// the server has no such model. A 2.x server answers [`MlflowError::is_not_the_api`].
    #[tracing::instrument(level = "debug", skip_all, fields(%model_id), err(level = "debug", Display))]
    pub async fn logged_model_experiment(
        &self,
        model_id: &str,
    ) -> Result<Option<String>, MlflowError> {
        #[derive(serde::Deserialize)]
        struct GetModel {
            model: WireLoggedModel,
        }
        let call = Call::new("logged-models/get", format!("logged model {model_id}"));
        let url = self.url(&["logged-models", model_id]);
        match self.get::<GetModel>(call, url, &[]).await {
            Ok(found) => Ok(Some(found.model.info.experiment_id)),
            Err(e) if e.is_not_found() => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// Records whether the server has logged models, logging what changed.
    fn learned(&self, has: bool, version: Option<&str>) {
        if !self.features.learn_logged_models(has, Instant::now()) {
            return;
        }
        let server = self.server();
        if has {
            tracing::info!(%server, "the tracking server has MLflow 3's logged-models API");
        } else {
            tracing::info!(
                %server,
                version = version.unwrap_or_default(),
                "the tracking server has no logged-models API (MLflow 2.x): classic models only, \
                 asked again in {} minutes",
                REMEMBERED_FOR.as_secs() / 60
            );
        }
    }

    async fn logged_models_pages(
        &self,
        experiment_id: &str,
    ) -> Result<Vec<LoggedModel>, MlflowError> {
        let key = |m: &WireLoggedModel| m.info.model_id.clone();
        let models = all_pages("logged-models/search", key, |page_token| async move {
            let call = Call::new(
                "logged-models/search",
                format!("experiment {experiment_id}"),
            );
            let url = self.url(&["logged-models", "search"]);
            let body = json!({
                "experiment_ids": [experiment_id],
                "max_results": self.page_size,
                // Oldest first: models created while the search pages come after the rows
                // already read instead of shifting them (MLflow breaks ties by model id).
                "order_by": [{"field_name": "creation_timestamp", "ascending": true}],
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

    /// Every registered model version matching `filter`, all pages, oldest first, each
    /// version once (`GET model-versions/search`).
    #[tracing::instrument(level = "debug", skip_all, fields(%filter), err(level = "debug", Display))]
    pub async fn search_model_versions(
        &self,
        filter: &VersionFilter<'_>,
    ) -> Result<Vec<ModelVersion>, MlflowError> {
        let filter = &filter.to_string();
        let max_results = &MODEL_VERSIONS_PAGE_SIZE.to_string();
        let key = |v: &WireModelVersion| format!("{}\0{}", v.name, v.version);
        let mut reads = Vec::new();
        while reads.len() < VERSION_READS {
            let pages = &AtomicUsize::new(0);
            let versions = all_pages(
                "model-versions/search",
                key,
                |page_token: Option<String>| async move {
                    pages.fetch_add(1, Ordering::Relaxed);
                    let call = Call::new("model-versions/search", format!("filter {filter:?}"));
                    let url = self.url(&["model-versions", "search"]);
                    let mut query = vec![("max_results", max_results.as_str()), ("filter", filter)];
                    query.extend(VERSIONS_ORDER.iter().map(|o| ("order_by", *o)));
                    query.extend(page_token.as_deref().map(|t| ("page_token", t)));
                    let page: SearchModelVersionsResponse = self.get(call, url, &query).await?;
                    Ok((page.model_versions, page.next_page_token))
                },
            )
            .await?;
            let keys: BTreeSet<String> = versions.iter().map(key).collect();
            reads.push(keys);
            if stable(pages.load(Ordering::Relaxed), &reads) {
                tracing::debug!(versions = versions.len(), "searched model versions");
                return Ok(versions.into_iter().map(ModelVersion::from).collect());
            }
        }
        Err(MlflowError::Unstable {
            operation: "model-versions/search",
            target: format!("filter {filter:?}"),
            reads: reads.len(),
        })
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

#[cfg(test)]
mod tests {
    use super::*;

    fn read(keys: &[&str]) -> BTreeSet<String> {
        keys.iter().map(|k| k.to_string()).collect()
    }

    #[test]
    fn one_page_is_trusted_and_several_only_when_two_reads_agree() {
        assert!(stable(1, &[read(&["a"])]));
        assert!(stable(0, &[read(&[])]));
        // Two pages: a deletion between them may have skipped a row.
        assert!(!stable(2, &[read(&["a", "c"])]));
        // Read again: "b" was deleted, "c" had been skipped the first time.
        assert!(!stable(2, &[read(&["a", "b"]), read(&["a", "c"])]));
        assert!(stable(
            2,
            &[read(&["a", "b"]), read(&["a", "c"]), read(&["a", "c"])]
        ));
    }
}
