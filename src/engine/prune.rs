//! Deleting the planned runs' files and marking the runs: the pass's I/O, driven as one pipeline.
//! The folders are listed in a few walks over key ranges ([`walk`](super::walk)), the keys of
//! several runs are packed into full DeleteObjects batches ([`Batcher`]), and each run is marked
//! in MLflow as soon as its last key is gone. Listings, deletions and marks each keep up to
//! `concurrency.parallel_deletions` requests in flight, and listing pauses while that many
//! batches wait to be sent, so memory stays bounded (a few batches of keys) whatever the size of
//! the experiment.

use std::collections::{HashMap, VecDeque};

use futures::StreamExt as _;
use futures::stream::FuturesUnordered;
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;
use tracing::info;

use super::batch::{Batcher, DeleteBatch};
use super::confirm::Depth;
use super::inventory::{InventoryOptions, ModelSources};
use super::walk::{self, ListingWalk};
use super::{Engine, PlannedDeletion, PruneError, PrunedRun};
use crate::domain::marks::{PARAM_DELETED, TAG_DELETED, TAG_DELETED_AT, TAG_REASON};
use crate::domain::ranking::Decision;
use crate::store::{Page, Usage};

/// Where a planned run stands with the last look before its files go.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Look {
    /// Nothing of it is about to go yet.
    Pending,
    /// Waiting for, or in, a look.
    Asked,
    Confirmed,
    Withdrawn,
}

/// Looks in flight at once: one can run while the previous one's answers are applied.
const LOOKS_IN_FLIGHT: usize = 2;
/// Runs a look waits for while deletions are under way: a look costs the same few requests
/// whatever its size, on a tracking server the marks keep busy. When nothing is being deleted,
/// a look starts at once.
const LOOK_GROUP: usize = 40;

/// What the pipeline did.
pub(super) struct Pruned {
    /// The runs whose files are gone and that are marked, in plan order.
    pub runs: Vec<PrunedRun>,
    /// Runs the last look kept, with the decision that replaces `Delete`.
    pub withdrawn: Vec<(String, Decision)>,
}

impl Engine {
    /// Deletes every file of the planned runs, then marks each run and its logged models.
    /// Before the first key of a run is sent (or the run is marked, if it has none), the run
    /// gets a last look ([`Engine::confirm`]): a run found protected, unfinished or sharing a
    /// model with a run that stays keeps every file. On an error the pass stops; runs already
    /// marked stay marked and the next pass completes the rest.
    pub(super) async fn prune(
        &self,
        experiment_id: &str,
        planned: &[PlannedDeletion],
        sources: &HashMap<String, ModelSources>,
        options: &InventoryOptions<'_>,
    ) -> Result<Pruned, PruneError> {
        let width = self.parallel_deletions.max(1);
        let mut batcher = Batcher::new(
            self.store.batch_size(),
            planned.iter().map(|p| p.locations.len()),
        );
        let folders = planned
            .iter()
            .enumerate()
            .flat_map(|(run, p)| p.locations.iter().map(move |(location, _)| (run, location)));
        let mut walks: VecDeque<ListingWalk> = walk::plan(folders, width).into();
        let index: HashMap<&str, usize> = planned
            .iter()
            .enumerate()
            .map(|(at, p)| (p.run_id.as_str(), at))
            .collect();
        let mut carriers_of: HashMap<&str, Vec<usize>> = HashMap::new();
        for (at, p) in planned.iter().enumerate() {
            for other in p.shared_with.values().flatten() {
                carriers_of.entry(other.as_str()).or_default().push(at);
            }
        }
        let mut looks = vec![Look::Pending; planned.len()];
        let mut asked: Vec<usize> = Vec::new();
        let mut confirming = FuturesUnordered::new();
        let mut held: Vec<DeleteBatch> = Vec::new();
        let mut lists = FuturesUnordered::new();
        let mut batches: VecDeque<DeleteBatch> = VecDeque::new();
        let mut deletes = FuturesUnordered::new();
        let mut unconfirmed_marks: Vec<(usize, Usage)> = batcher.complete_without_folders();
        let mut to_mark: VecDeque<(usize, Usage)> = VecDeque::new();
        let mut marks = FuturesUnordered::new();
        let mut pruned: Vec<(usize, PrunedRun)> = Vec::with_capacity(planned.len());
        let mut withdrawn: Vec<(String, Decision)> = Vec::new();
        // Asks for a look at `run` and at every run of the pass linked to it through shared
        // models, transitively, so that a chain of sharers is looked at together.
        let ask = |run: usize, looks: &mut [Look], asked: &mut Vec<usize>| {
            let mut next = vec![run];
            while let Some(at) = next.pop() {
                if looks[at] != Look::Pending {
                    continue;
                }
                looks[at] = Look::Asked;
                asked.push(at);
                let sharers = planned[at].shared_with.values().flatten();
                next.extend(sharers.filter_map(|id| index.get(id.as_str()).copied()));
                // And the carriers that name this run as a sharer.
                next.extend(
                    carriers_of
                        .get(planned[at].run_id.as_str())
                        .into_iter()
                        .flatten(),
                );
            }
        };
        for &(run, _) in &unconfirmed_marks {
            ask(run, &mut looks, &mut asked);
        }

        loop {
            while lists.len() < width
                && batches.len() + held.len() < width
                && let Some(walk) = walks.pop_front()
            {
                lists.push(self.list_page(experiment_id, planned, walk));
            }
            if walks.is_empty() && lists.is_empty() {
                // Nothing more will be listed: send the partly filled batches too.
                for batch in batcher.flush() {
                    batch
                        .runs()
                        .for_each(|run| ask(run, &mut looks, &mut asked));
                    held.push(batch);
                }
            }
            let idle = deletes.is_empty() && batches.is_empty();
            let listed = walks.is_empty() && lists.is_empty();
            while confirming.len() < LOOKS_IN_FLIGHT
                && !asked.is_empty()
                && (asked.len() >= LOOK_GROUP || idle || listed)
            {
                let group = std::mem::take(&mut asked);
                let settled: HashMap<&str, bool> = looks
                    .iter()
                    .enumerate()
                    .filter(|(_, look)| matches!(look, Look::Confirmed | Look::Withdrawn))
                    .map(|(at, look)| (planned[at].run_id.as_str(), *look == Look::Confirmed))
                    .collect();
                confirming.push(async move {
                    self.confirm(
                        experiment_id,
                        planned,
                        &group,
                        &settled,
                        sources,
                        options,
                        Depth::Full,
                    )
                    .await
                });
            }
            // Batches whose runs all passed their look go; marks likewise.
            let (ready, waiting): (Vec<DeleteBatch>, Vec<DeleteBatch>) = std::mem::take(&mut held)
                .into_iter()
                .partition(|batch| batch.runs().all(|run| looks[run] == Look::Confirmed));
            batches.extend(ready);
            held = waiting;
            let (ready, waiting): (Vec<_>, Vec<_>) = std::mem::take(&mut unconfirmed_marks)
                .into_iter()
                .partition(|(run, _)| looks[*run] == Look::Confirmed);
            to_mark.extend(ready);
            unconfirmed_marks = waiting;

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
                        // Asked as soon as its keys are listed, so the look runs while its
                        // batch fills rather than after.
                        ask(run, &mut looks, &mut asked);
                        for batch in batcher.add(run, walk.bucket(), objects) {
                            batch.runs().for_each(|run| ask(run, &mut looks, &mut asked));
                            held.push(batch);
                        }
                    }
                    for done in step.finished.into_iter().filter_map(|run| batcher.listing_done(run)) {
                        ask(done.0, &mut looks, &mut asked);
                        unconfirmed_marks.push(done);
                    }
                    if walk.request().is_some() {
                        // Back in line: its next page waits, like a new walk, while `width`
                        // batches wait to be sent.
                        walks.push_front(walk);
                    }
                }
                Some(verdicts) = confirming.next() => {
                    for (run, verdict) in verdicts? {
                        match verdict {
                            None => looks[run] = Look::Confirmed,
                            Some(decision) => {
                                looks[run] = Look::Withdrawn;
                                batcher.withdraw(run, &mut held);
                                info!(run_id = %planned[run].run_id, reason = %decision, "kept after a last look");
                                withdrawn.push((planned[run].run_id.clone(), decision));
                            }
                        }
                    }
                }
                Some(deleted) = deletes.next() => to_mark.extend(batcher.deleted(&deleted?)),
                Some(marked) = marks.next() => pruned.push(marked?),
                else => break,
            }
        }
        if pruned.len() + withdrawn.len() != planned.len() {
            tracing::error!(
                planned = planned.len(),
                pruned = pruned.len(),
                withdrawn = withdrawn.len(),
                "a planned run was neither marked nor withdrawn; the next pass completes it"
            );
        }
        pruned.sort_unstable_by_key(|(run, _)| *run);
        Ok(Pruned {
            runs: pruned.into_iter().map(|(_, run)| run).collect(),
            withdrawn,
        })
    }

    /// Lists the next page of a walk, retrying transient failures.
    async fn list_page(
        &self,
        experiment_id: &str,
        planned: &[PlannedDeletion],
        walk: ListingWalk,
    ) -> Result<(ListingWalk, Page), PruneError> {
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
        batch: DeleteBatch,
    ) -> Result<DeleteBatch, PruneError> {
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
    #[tracing::instrument(skip_all, fields(experiment_id, run_id = %plan.run_id))]
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
        self.metrics
            .run_pruned(plan.locations.len(), freed.objects, freed.bytes);
        let pruned = PrunedRun {
            run_id: plan.run_id.clone(),
            objects: freed.objects,
            bytes: freed.bytes,
        };
        Ok((index, pruned))
    }
}
