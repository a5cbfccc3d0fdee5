//! Deleting the planned runs' files and marking the runs: the pass's I/O, driven as one pipeline.
//! The folders are listed in a few walks over key ranges ([`walk`](super::walk)), the keys of
//! several runs are packed into full DeleteObjects batches ([`Batcher`]), and each run is marked
//! in MLflow as soon as its last key is gone. Listings, deletions and marks each keep up to
//! `concurrency.parallel_deletions` requests in flight, and listing pauses while that many
//! batches wait to be sent, so memory stays bounded (a few batches of keys) whatever the size of
//! the experiment.
//!
//! Deletion is recoverable at any point. Before the first key of a run goes, the run is tagged
//! `model_pruner.deleting` (one MLflow write per run); the mark comes after its last key. A run
//! with the first tag and not the mark is one a pass left half done (crash, ack deadline, a
//! failed batch, a mark MLflow refused): it never ranks again, and the next pass completes it.
//! A run whose planned folders hold no file at all is not marked: it is reported (rule `empty`),
//! and a pass that found every planned folder empty fails, naming the likely cause.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicBool, Ordering};

use futures::StreamExt as _;
use futures::stream::FuturesUnordered;
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;
use tracing::info;

use super::batch::{Batcher, DeleteBatch};
use super::confirm::{Depth, Planned};
use super::walk::{self, ListingWalk};
use super::{Engine, PlannedDeletion, PruneError, PrunedRun, UnmarkedRun};
use crate::domain::marks::{
    self, PARAM_DELETED, TAG_DELETED, TAG_DELETED_AT, TAG_DELETING, TAG_REASON,
};
use crate::domain::ranking::{Decision, SkipReason};
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

/// Whether the start of a run's deletion is recorded in MLflow (tag `model_pruner.deleting`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Intent {
    /// Not yet: none of its keys may go.
    Unrecorded,
    Recording,
    /// Written by this pass or an earlier one (a resumed run): its keys may go.
    Recorded,
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
    /// Runs the last look kept, or whose folders held no file, with the decision that
    /// replaces `Delete`.
    pub withdrawn: Vec<(String, Decision)>,
    /// Runs whose files are gone but whose mark MLflow refused.
    pub unmarked: Vec<UnmarkedRun>,
}

impl Engine {
    /// Deletes every file of the planned runs, then marks each run and its logged models.
    /// Before the first key of a run is sent (or the run is marked, if it has none), the run
    /// gets a last look ([`Engine::confirm`]): a run found protected, unfinished or sharing a
    /// model with a run that stays keeps every file; then the start of its deletion is recorded.
    /// A mark MLflow refuses (a 4xx) is that run's problem: reported in
    /// [`Pruned::unmarked`], the other runs go on. On any other error the pass stops; runs
    /// already marked stay marked, and runs already started are completed by the next pass.
    pub(super) async fn prune(&self, plan: &Planned<'_>) -> Result<Pruned, PruneError> {
        let (experiment_id, planned) = (plan.experiment_id, plan.runs);
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
        // The other runs of the pass that output a logged model a run carries (plans it): the
        // shared model's keys go only once every such run is recorded as being deleted, so
        // that none of them can look whole while the model is partly gone. Only that way: a
        // sharer's batch holds its own files, not the shared model's, and must never record
        // the carrier, which a look may keep (a deletion record on a kept run would have the
        // next pass resume it, unranked).
        let linked: Vec<Vec<usize>> = planned
            .iter()
            .map(|p| {
                p.shared_with
                    .values()
                    .flatten()
                    .filter_map(|id| index.get(id.as_str()).copied())
                    .collect()
            })
            .collect();
        let with_linked = |run: usize| std::iter::once(run).chain(linked[run].iter().copied());
        let mut looks = vec![Look::Pending; planned.len()];
        let mut intents: Vec<Intent> = planned
            .iter()
            .map(|p| {
                if p.resume {
                    Intent::Recorded
                } else {
                    Intent::Unrecorded
                }
            })
            .collect();
        let mut recording = FuturesUnordered::new();
        let mut to_record: VecDeque<usize> = VecDeque::new();
        let mut empty: Vec<usize> = Vec::new();
        // Runs with a batch sent (answered or not): their files may be partly gone.
        let sent: Vec<AtomicBool> = (0..planned.len()).map(|_| AtomicBool::new(false)).collect();
        let mut unmarked: Vec<UnmarkedRun> = Vec::new();
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
        // Every failure of the pass goes through here.
        macro_rules! fail {
            ($error:expr) => {{
                let error = $error;
                // Recordings in flight land (or not) before the unsent ones are taken back.
                while let Some((run, recorded)) = recording.next().await {
                    if recorded.is_ok() {
                        intents[run] = Intent::Recorded;
                    }
                }
                return Err(self
                    .unrecord(experiment_id, planned, &intents, &sent, error)
                    .await);
            }};
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
                confirming
                    .push(async move { self.confirm(plan, &group, &settled, Depth::Full).await });
            }
            // Batches whose runs all passed their look wait to be sent; marks likewise.
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

            // The batches next in line have the start of their runs' deletion recorded, and
            // go once it is: a run is recorded just before its first key goes, not earlier.
            let next = batches.iter().take(width).flat_map(DeleteBatch::runs);
            for run in next.flat_map(with_linked) {
                if intents[run] == Intent::Unrecorded {
                    intents[run] = Intent::Recording;
                    to_record.push_back(run);
                }
            }
            while recording.len() < width
                && let Some(run) = to_record.pop_front()
            {
                recording.push(self.record_start(experiment_id, run, &planned[run]));
            }
            while deletes.len() < width
                && batches.front().is_some_and(|b| {
                    b.runs()
                        .flat_map(with_linked)
                        .all(|run| intents[run] == Intent::Recorded)
                })
                && let Some(batch) = batches.pop_front()
            {
                deletes.push(self.delete_batch(experiment_id, planned, batch, &sent));
            }
            while marks.len() < width
                && let Some((run, freed)) = to_mark.pop_front()
            {
                marks.push(self.mark_run(experiment_id, run, &planned[run], freed));
            }
            tokio::select! {
                Some(listed) = lists.next() => {
                    let (mut walk, page) = match listed {
                        Ok(listed) => listed,
                        Err(e) => fail!(e),
                    };
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
                        if done.1.objects == 0 && !planned[done.0].resume {
                            // Not one file in any of its folders: nothing to mark as deleted.
                            empty.push(done.0);
                            continue;
                        }
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
                    let verdicts = match verdicts {
                        Ok(verdicts) => verdicts,
                        Err(e) => fail!(e),
                    };
                    for (run, verdict) in verdicts {
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
                Some((run, recorded)) = recording.next() => match recorded {
                    Ok(()) => intents[run] = Intent::Recorded,
                    Err(e) if !e.is_about_the_run() || !linked[run].is_empty() => fail!(e),
                    Err(e) => {
                        // MLflow refuses to tag the run (gone, no longer active): nothing of
                        // it was deleted, it stays.
                        looks[run] = Look::Withdrawn;
                        intents[run] = Intent::Unrecorded;
                        batcher.withdraw(run, &mut held);
                        let mut queued: Vec<DeleteBatch> = batches.drain(..).collect();
                        batcher.withdraw(run, &mut queued);
                        batches.extend(queued);
                        let reason = SkipReason::NotRecorded { error: e.to_string() };
                        tracing::warn!(run_id = %planned[run].run_id, error = %e, "kept: the start of its deletion could not be recorded");
                        withdrawn.push((planned[run].run_id.clone(), Decision::Skipped { reason }));
                    }
                },
                Some(deleted) = deletes.next() => match deleted {
                    Ok(batch) => to_mark.extend(batcher.deleted(&batch)),
                    Err(e) => fail!(e),
                },
                Some((run, marked)) = marks.next() => match marked {
                    Ok(done) => pruned.push((run, done)),
                    Err(e) if !e.is_about_the_run() => fail!(e),
                    Err(e) => {
                        tracing::error!(run_id = %planned[run].run_id, error = %e, "files deleted but MLflow refused the mark: the next pass completes it");
                        self.metrics.run_left("unmarked");
                        unmarked.push(UnmarkedRun {
                            run_id: planned[run].run_id.clone(),
                            error: e.to_string(),
                        });
                    }
                },
                else => break,
            }
        }
        // Runs whose folders held nothing, unless a look kept them for a reason of its own.
        empty.retain(|&run| looks[run] != Look::Withdrawn);
        let deleted_any = pruned.iter().any(|(_, run)| run.objects > 0) || !unmarked.is_empty();
        // Every planned folder empty in an experiment never pruned before: the layout or the
        // settings are likely wrong for all of it. Once a pass has pruned a run, an empty
        // folder is a stray run's own, reported without failing every later event.
        if !empty.is_empty() && !deleted_any && !plan.pruned_before {
            // An empty run nothing was asked of yet gets its look first: one the look keeps
            // (registered, kept, running) is protected, not a sign of a wrong layout.
            let unlooked: Vec<usize> = empty
                .iter()
                .copied()
                .filter(|&run| looks[run] == Look::Pending)
                .collect();
            let verdicts = self
                .confirm(plan, &unlooked, &HashMap::new(), Depth::Full)
                .await?;
            for (run, verdict) in verdicts {
                if let Some(decision) = verdict {
                    looks[run] = Look::Withdrawn;
                    info!(run_id = %planned[run].run_id, reason = %decision, "kept after a last look");
                    withdrawn.push((planned[run].run_id.clone(), decision));
                }
            }
            empty.retain(|&run| looks[run] != Look::Withdrawn);
            if !empty.is_empty() {
                return Err(self.all_empty(experiment_id, planned, &empty).await);
            }
        }
        for &run in &empty {
            let folder = planned[run]
                .locations
                .first()
                .map(|(location, _)| location.to_string())
                .unwrap_or_default();
            tracing::warn!(run_id = %planned[run].run_id, %folder, "planned model folder holds no file: nothing deleted, not marked");
            let reason = SkipReason::EmptyFolder { folder };
            withdrawn.push((planned[run].run_id.clone(), Decision::Skipped { reason }));
        }
        if pruned.len() + withdrawn.len() + unmarked.len() != planned.len() {
            tracing::error!(
                planned = planned.len(),
                pruned = pruned.len(),
                withdrawn = withdrawn.len(),
                unmarked = unmarked.len(),
                "a planned run was neither marked nor withdrawn; the next pass completes it"
            );
        }
        pruned.sort_unstable_by_key(|(run, _)| *run);
        Ok(Pruned {
            runs: pruned.into_iter().map(|(_, run)| run).collect(),
            withdrawn,
            unmarked,
        })
    }

    /// The error of a pass whose planned folders all held no file: nothing was deleted, and
    /// marking the runs would hide models that live elsewhere. One listing of the first run's
    /// parent folder tells the likely cause.
    async fn all_empty(
        &self,
        experiment_id: &str,
        planned: &[PlannedDeletion],
        empty: &[usize],
    ) -> PruneError {
        let run_ids: Vec<String> = empty.iter().map(|&r| planned[r].run_id.clone()).collect();
        let folder = empty
            .iter()
            .find_map(|&r| planned[r].locations.first())
            .map(|(location, _)| location);
        let parent = folder.and_then(|folder| {
            let (parent, _) = folder.prefix.trim_end_matches('/').rsplit_once('/')?;
            Some((folder.bucket.as_str(), format!("{parent}/")))
        });
        let beside = match &parent {
            Some((bucket, parent)) => self
                .store
                .list_page(bucket, parent, None)
                .await
                .ok()
                .map(|page| page.objects.len()),
            None => None,
        };
        let parent = parent.map(|(bucket, p)| format!("s3://{bucket}/{p}"));
        let cause = match (beside, parent) {
            (Some(n), Some(parent)) if n > 0 => format!(
                "{parent} holds files outside it: the models are logged under another artifact \
                 path than the one planned (the classic layout is <run>/artifacts/model/)"
            ),
            (Some(_), Some(parent)) => format!(
                "{parent} holds no file either: the artifacts live elsewhere (is \
                 store.artifacts_destination the tracking server's --artifacts-destination, and \
                 store.endpoint the store it writes to?)"
            ),
            _ => "check the layout of the models and store.artifacts_destination".to_owned(),
        };
        PruneError::EmptyFolders {
            experiment_id: experiment_id.to_owned(),
            run_ids,
            folder: folder.map(ToString::to_string).unwrap_or_default(),
            cause,
        }
    }

    /// Before a failed pass returns `error`: takes back the start recorded for runs none of
    /// whose keys was sent, so that the next pass ranks them again instead of completing them.
    /// Best effort: a tag left behind (MLflow down too) makes the next pass complete a deletion
    /// the last look had confirmed.
    async fn unrecord(
        &self,
        experiment_id: &str,
        planned: &[PlannedDeletion],
        intents: &[Intent],
        sent: &[AtomicBool],
        error: PruneError,
    ) -> PruneError {
        let unsent = (0..planned.len()).filter(|&run| {
            !planned[run].resume
                && intents[run] != Intent::Unrecorded
                && !sent[run].load(Ordering::Relaxed)
        });
        let mut removals: FuturesUnordered<_> = unsent
            .map(|run| async move {
                let run_id = planned[run].run_id.as_str();
                let removed = self
                    .retry
                    .run("mlflow", "runs/delete-tag", || {
                        self.mlflow.delete_tag(run_id, TAG_DELETING)
                    })
                    .await;
                (run_id, removed)
            })
            .collect();
        while let Some((run_id, removed)) = removals.next().await {
            // Not found: the recording never landed, there is nothing to take back.
            if let Err(e) = removed
                && !e.is_not_found()
            {
                tracing::warn!(%experiment_id, %run_id, error = %e, "could not take back the recorded start of a deletion that did not begin: the next pass completes it");
            }
        }
        error
    }

    /// Records that the run's deletion starts (tag `model_pruner.deleting`): from here on, a
    /// pass that stops leaves a run the next one completes, never one that looks whole.
    async fn record_start(
        &self,
        experiment_id: &str,
        index: usize,
        plan: &PlannedDeletion,
    ) -> (usize, Result<(), PruneError>) {
        let now = OffsetDateTime::now_utc()
            .format(&Rfc3339)
            .expect("the current time formats as RFC 3339");
        let tags = [(TAG_DELETING, now.as_str())];
        let recorded = self
            .retry
            .run("mlflow", "runs/log-batch", || {
                self.mlflow.log_batch(&plan.run_id, &[], &tags)
            })
            .await
            .map_err(|source| PruneError::Mlflow {
                experiment_id: experiment_id.to_owned(),
                cause: source,
            });
        (index, recorded)
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
                cause: source,
            })?;
        Ok((walk, page))
    }

    /// Deletes one batch, retrying transient failures (keys already gone count as deleted).
    async fn delete_batch(
        &self,
        experiment_id: &str,
        planned: &[PlannedDeletion],
        batch: DeleteBatch,
        sent: &[AtomicBool],
    ) -> Result<DeleteBatch, PruneError> {
        // From the first poll on, the request may be on its way.
        batch
            .runs()
            .for_each(|run| sent[run].store(true, Ordering::Relaxed));
        self.retry
            .run("store", "DeleteObjects", || {
                self.store.delete_objects(&batch.bucket, &batch.objects)
            })
            .await
            .map_err(|source| PruneError::Store {
                experiment_id: experiment_id.to_owned(),
                run_ids: batch.runs().map(|r| planned[r].run_id.clone()).collect(),
                cause: source,
            })?;
        Ok(batch)
    }

    /// Marks a run whose files are all gone: its logged models first, then the run itself.
    /// Returns the run's index with the outcome, so that a refused mark stays the run's own.
    #[tracing::instrument(skip_all, fields(experiment_id, run_id = %plan.run_id))]
    async fn mark_run(
        &self,
        experiment_id: &str,
        index: usize,
        plan: &PlannedDeletion,
        freed: Usage,
    ) -> (usize, Result<PrunedRun, PruneError>) {
        (index, self.mark(experiment_id, plan, freed).await)
    }

    async fn mark(
        &self,
        experiment_id: &str,
        plan: &PlannedDeletion,
        freed: Usage,
    ) -> Result<PrunedRun, PruneError> {
        let now = OffsetDateTime::now_utc()
            .format(&Rfc3339)
            .expect("the current time formats as RFC 3339");
        let reason = marks::tag_value(&plan.reason);
        let tags = [
            (TAG_DELETED, "true"),
            (TAG_DELETED_AT, now.as_str()),
            (TAG_REASON, reason.as_ref()),
        ];
        let mlflow_err = |source| PruneError::Mlflow {
            experiment_id: experiment_id.to_owned(),
            cause: source,
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
        let params: &[(&str, &str)] = if self.log_deleted_param && plan.writes_deleted_param {
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
        Ok(PrunedRun {
            run_id: plan.run_id.clone(),
            objects: freed.objects,
            bytes: freed.bytes,
        })
    }
}
