//! Deleting the planned runs' files and marking the runs: the pass's I/O, driven as one pipeline.
//! Folders are listed page by page, the keys of several runs are packed into full DeleteObjects
//! batches ([`Batcher`]), and each run is marked in MLflow as soon as its last key is gone.
//! Listings, deletions and marks each keep up to `concurrency.parallel_deletions` requests in
//! flight, and listing pauses while that many batches wait to be sent, so memory stays bounded
//! (a few batches of keys) whatever the size of the experiment.

use std::collections::VecDeque;

use futures::StreamExt as _;
use futures::stream::FuturesUnordered;
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;
use tracing::info;

use super::batch::{Batch, Batcher};
use super::inventory::{PARAM_DELETED, TAG_DELETED, TAG_DELETED_AT, TAG_REASON};
use super::{Engine, PlannedDeletion, PruneError, PrunedRun};
use crate::domain::location::ModelLocation;
use crate::store::{Page, Usage};

/// One folder of one planned run, listed from `token` on.
struct Listing<'p> {
    run: usize,
    location: &'p ModelLocation,
    token: Option<String>,
}

impl Engine {
    /// Deletes every file of the planned runs, then marks each run and its logged models.
    /// Returns the pruned runs in plan order. On an error the pass stops; runs already marked
    /// stay marked and the next pass completes the rest.
    pub(super) async fn prune(
        &self,
        experiment_id: &str,
        planned: &[PlannedDeletion],
    ) -> Result<Vec<PrunedRun>, PruneError> {
        let width = self.parallel_deletions.max(1);
        let mut batcher = Batcher::new(
            self.store.batch_size(),
            planned.iter().map(|p| p.locations.len()),
        );
        // Collected, not a lazy iterator: its closures held across an await would make the
        // pass's future fail the `Send` bound of the worker's tasks (rust-lang/rust#102211).
        let mut folders: VecDeque<Listing> = planned
            .iter()
            .enumerate()
            .flat_map(|(run, p)| {
                p.locations.iter().map(move |(location, _)| Listing {
                    run,
                    location,
                    token: None,
                })
            })
            .collect();
        let mut lists = FuturesUnordered::new();
        let mut batches: VecDeque<Batch> = VecDeque::new();
        let mut deletes = FuturesUnordered::new();
        let mut to_mark: VecDeque<(usize, Usage)> = batcher.complete_without_folders().into();
        let mut marks = FuturesUnordered::new();
        let mut pruned: Vec<(usize, PrunedRun)> = Vec::with_capacity(planned.len());

        loop {
            while lists.len() < width
                && batches.len() < width
                && let Some(listing) = folders.pop_front()
            {
                lists.push(self.list_page(experiment_id, planned, listing));
            }
            if folders.is_empty() && lists.is_empty() {
                // Nothing more will be listed: send the partly filled batches too.
                batches.extend(batcher.flush());
            }
            while deletes.len() < width
                && let Some(batch) = batches.pop_front()
            {
                deletes.push(self.delete_batch(experiment_id, planned, batch));
            }
            while marks.len() < width
                && let Some((run, freed)) = to_mark.pop_front()
            {
                marks.push(self.mark_run(experiment_id, run, &planned[run], freed));
            }
            tokio::select! {
                Some(listed) = lists.next() => {
                    let (listing, page) = listed?;
                    batches.extend(batcher.add(listing.run, &listing.location.bucket, page.objects));
                    match page.next {
                        Some(token) => {
                            let next = Listing { token: Some(token), ..listing };
                            lists.push(self.list_page(experiment_id, planned, next));
                        }
                        None => to_mark.extend(batcher.listing_done(listing.run)),
                    }
                }
                Some(deleted) = deletes.next() => to_mark.extend(batcher.deleted(&deleted?)),
                Some(marked) = marks.next() => pruned.push(marked?),
                else => break,
            }
        }
        debug_assert_eq!(pruned.len(), planned.len(), "every planned run is marked");
        pruned.sort_unstable_by_key(|(run, _)| *run);
        Ok(pruned.into_iter().map(|(_, run)| run).collect())
    }

    /// Lists one page of a folder, retrying transient failures with the same token.
    async fn list_page<'p>(
        &self,
        experiment_id: &str,
        planned: &[PlannedDeletion],
        listing: Listing<'p>,
    ) -> Result<(Listing<'p>, Page), PruneError> {
        let location = listing.location;
        let page = self
            .retry
            .run("store", "ListObjectsV2", || {
                let token = listing.token.as_deref();
                self.store
                    .list_page(&location.bucket, &location.prefix, token)
            })
            .await
            .map_err(|source| PruneError::Store {
                experiment_id: experiment_id.to_owned(),
                run_ids: vec![planned[listing.run].run_id.clone()],
                source,
            })?;
        Ok((listing, page))
    }

    /// Deletes one batch, retrying transient failures (keys already gone count as deleted).
    async fn delete_batch(
        &self,
        experiment_id: &str,
        planned: &[PlannedDeletion],
        batch: Batch,
    ) -> Result<Batch, PruneError> {
        self.retry
            .run("store", "DeleteObjects", || {
                self.store.delete_objects(&batch.bucket, &batch.objects)
            })
            .await
            .map_err(|source| PruneError::Store {
                experiment_id: experiment_id.to_owned(),
                run_ids: batch.runs().map(|r| planned[r].run_id.clone()).collect(),
                source,
            })?;
        Ok(batch)
    }

    /// Marks a run whose files are all gone: its logged models first, then the run itself.
    #[tracing::instrument(skip_all, fields(experiment_id, run_id = %plan.run_id), err)]
    async fn mark_run(
        &self,
        experiment_id: &str,
        index: usize,
        plan: &PlannedDeletion,
        freed: Usage,
    ) -> Result<(usize, PrunedRun), PruneError> {
        let now = OffsetDateTime::now_utc()
            .format(&Rfc3339)
            .expect("the current time formats as RFC 3339");
        let tags = [
            (TAG_DELETED, "true"),
            (TAG_DELETED_AT, now.as_str()),
            (TAG_REASON, plan.reason.as_str()),
        ];
        let mlflow_err = |source| PruneError::Mlflow {
            experiment_id: experiment_id.to_owned(),
            source,
        };
        for model_id in plan.locations.iter().filter_map(|(_, id)| id.as_deref()) {
            self.retry
                .run("mlflow", "logged-models/tags", || {
                    self.mlflow.set_logged_model_tags(model_id, &tags)
                })
                .await
                .map_err(mlflow_err)?;
        }
        // The run's own mark comes last: it is what takes the run out of later passes. One
        // runs/log-batch writes the param and the tags in one request (one transaction in
        // MLflow) instead of four: MLflow's writes bound the pruning rate.
        let params: &[(&str, &str)] = if self.log_deleted_param {
            &[(PARAM_DELETED, "1")]
        } else {
            &[]
        };
        self.retry
            .run("mlflow", "runs/log-batch", || {
                self.mlflow.log_batch(&plan.run_id, params, &tags)
            })
            .await
            .map_err(mlflow_err)?;
        info!(
            objects = freed.objects,
            bytes = freed.bytes,
            reason = %plan.reason,
            "model deleted"
        );
        crate::metrics::run_pruned(plan.locations.len(), freed.objects, freed.bytes);
        let pruned = PrunedRun {
            run_id: plan.run_id.clone(),
            objects: freed.objects,
            bytes: freed.bytes,
        };
        Ok((index, pruned))
    }
}
