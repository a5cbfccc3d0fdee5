//! Deleting the planned runs' files and marking the runs: the pass's I/O, driven as one pipeline.
//! The folders are listed in a few walks over key ranges ([`walk`](super::walk)), the keys of
//! several runs are packed into full DeleteObjects batches ([`Batcher`]), and each run is marked
//! in MLflow as soon as its last key is gone. Listings, deletions and marks each keep up to
//! `concurrency.parallel_deletions` requests in flight, and listing pauses while that many
//! batches wait to be sent, so memory stays bounded (a few batches of keys) whatever the size of
//! the experiment.

use std::collections::VecDeque;

use futures::StreamExt as _;
use futures::stream::FuturesUnordered;
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;
use tracing::info;

use super::batch::{Batch, Batcher};
use super::inventory::{PARAM_DELETED, TAG_DELETED, TAG_DELETED_AT, TAG_REASON};
use super::walk::{self, Walk};
use super::{Engine, PlannedDeletion, PruneError, PrunedRun};
use crate::store::{Page, Usage};

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
        let folders = planned
            .iter()
            .enumerate()
            .flat_map(|(run, p)| p.locations.iter().map(move |(location, _)| (run, location)));
        let mut walks: VecDeque<Walk> = walk::plan(folders, width).into();
        let mut lists = FuturesUnordered::new();
        let mut batches: VecDeque<Batch> = VecDeque::new();
        let mut deletes = FuturesUnordered::new();
        let mut to_mark: VecDeque<(usize, Usage)> = batcher.complete_without_folders().into();
        let mut marks = FuturesUnordered::new();
        let mut pruned: Vec<(usize, PrunedRun)> = Vec::with_capacity(planned.len());

        loop {
            while lists.len() < width
                && batches.len() < width
                && let Some(walk) = walks.pop_front()
            {
                lists.push(self.list_page(experiment_id, planned, walk));
            }
            if walks.is_empty() && lists.is_empty() {
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
                    let (mut walk, page) = listed?;
                    let step = walk.page(page.objects, page.more);
                    for (run, objects) in step.taken {
                        batches.extend(batcher.add(run, walk.bucket(), objects));
                    }
                    to_mark.extend(step.finished.into_iter().filter_map(|run| batcher.listing_done(run)));
                    if walk.request().is_some() {
                        // Back in line: its next page waits, like a new walk, while `width`
                        // batches wait to be sent.
                        walks.push_front(walk);
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

    /// Lists the next page of a walk, retrying transient failures.
    async fn list_page(
        &self,
        experiment_id: &str,
        planned: &[PlannedDeletion],
        walk: Walk,
    ) -> Result<(Walk, Page), PruneError> {
        let request = walk
            .request()
            .expect("a walk is listed only while it has folders left");
        let page = self
            .retry
            .run("store", "ListObjectsV2", || {
                self.store
                    .list_page(request.bucket, request.prefix, request.start_after)
            })
            .await
            .map_err(|source| PruneError::Store {
                experiment_id: experiment_id.to_owned(),
                run_ids: walk
                    .current_run()
                    .map(|run| planned[run].run_id.clone())
                    .into_iter()
                    .collect(),
                source,
            })?;
        Ok((walk, page))
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
