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

use futures::future::BoxFuture;
use futures::stream::FuturesUnordered;
use futures::{FutureExt as _, StreamExt as _};
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;
use tracing::info;

use super::batch::{Batcher, DeleteBatch};
use super::last_look::{Depth, Planned, Settled, Verdict, Verdicts};
use super::run_index::{PerRun, RunIndex};
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
    /// Looked at: the verdict, as later looks weigh it.
    Done(Settled),
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

/// A request of the pipeline on its way, boxed so that each stage's are held in one set.
type Request<'p, T> = BoxFuture<'p, T>;

/// The pipeline's requests in flight, by stage.
struct InFlight<'p> {
    lists: FuturesUnordered<Request<'p, Result<(ListingWalk, Page), PruneError>>>,
    looks: FuturesUnordered<Request<'p, Result<Verdicts, PruneError>>>,
    records: FuturesUnordered<Request<'p, (RunIndex, Result<(), PruneError>)>>,
    deletes: FuturesUnordered<Request<'p, Result<DeleteBatch, PruneError>>>,
    marks: FuturesUnordered<Request<'p, (RunIndex, Result<PrunedRun, PruneError>)>>,
}

impl InFlight<'_> {
    fn new() -> Self {
        InFlight {
            lists: FuturesUnordered::new(),
            looks: FuturesUnordered::new(),
            records: FuturesUnordered::new(),
            deletes: FuturesUnordered::new(),
            marks: FuturesUnordered::new(),
        }
    }
}

/// How the planned runs are tied by the logged models they share.
struct Links<'p> {
    /// Each run's place in the plan, by id.
    index: HashMap<&'p str, RunIndex>,
    /// The runs that carry a model a run shares (name it among their sharers).
    carriers_of: HashMap<&'p str, Vec<RunIndex>>,
    /// The other runs of the pass that output a logged model a run carries (plans it): the
    /// shared model's keys go only once every such run is recorded as being deleted, so that
    /// none of them can look whole while the model is partly gone. Only that way: a sharer's
    /// batch holds its own files, not the shared model's, and must never record the carrier,
    /// which a look may keep (a deletion record on a kept run would have the next pass resume
    /// it, unranked).
    linked: PerRun<Vec<RunIndex>>,
}

impl<'p> Links<'p> {
    fn new(planned: &'p [PlannedDeletion]) -> Self {
        let runs = || RunIndex::all(planned.len()).map(|at| (at, at.of(planned)));
        let index: HashMap<&str, RunIndex> =
            runs().map(|(at, p)| (p.run_id.as_str(), at)).collect();
        let mut carriers_of: HashMap<&str, Vec<RunIndex>> = HashMap::new();
        for (at, p) in runs() {
            for other in p.shared_with.values().flatten() {
                carriers_of.entry(other.as_str()).or_default().push(at);
            }
        }
        let linked = planned
            .iter()
            .map(|p| {
                p.shared_with
                    .values()
                    .flatten()
                    .filter_map(|id| index.get(id.as_str()).copied())
                    .collect()
            })
            .collect();
        Links {
            index,
            carriers_of,
            linked,
        }
    }

    /// `run` and the runs linked to it.
    fn with_linked(&self, run: RunIndex) -> impl Iterator<Item = RunIndex> + '_ {
        std::iter::once(run).chain(self.linked[run].iter().copied())
    }
}

/// The deletion pipeline between two answers: where each planned run stands, and the work
/// queued at each stage (listing, last look, recording, deleting, marking). [`Pipeline::start`]
/// sends what may go; each other method takes one kind of answer.
struct Pipeline<'p> {
    engine: &'p Engine,
    plan: &'p Planned<'p>,
    /// Requests in flight per stage.
    width: usize,
    links: Links<'p>,
    batcher: Batcher,
    walks: VecDeque<ListingWalk>,
    looks: PerRun<Look>,
    /// Runs asked for a look and not in one yet.
    asked: Vec<RunIndex>,
    intents: PerRun<Intent>,
    to_record: VecDeque<RunIndex>,
    /// Batches waiting for their runs' looks.
    held: Vec<DeleteBatch>,
    /// Batches whose runs all stand, in the order they go.
    batches: VecDeque<DeleteBatch>,
    /// Runs whose files are all gone (or that had none), waiting for their look.
    unconfirmed_marks: Vec<(RunIndex, Usage)>,
    to_mark: VecDeque<(RunIndex, Usage)>,
    /// Runs whose folders held no file.
    empty: Vec<RunIndex>,
    pruned: Vec<(RunIndex, PrunedRun)>,
    withdrawn: Vec<(String, Decision)>,
    unmarked: Vec<UnmarkedRun>,
}

impl<'p> Pipeline<'p> {
    fn new(engine: &'p Engine, plan: &'p Planned<'p>) -> Self {
        let planned = plan.runs;
        let width = engine.parallel_deletions.max(1);
        let mut batcher = Batcher::new(
            engine.store.batch_size(),
            planned.iter().map(|p| p.locations.len()),
        );
        let folders = RunIndex::all(planned.len()).flat_map(|run| {
            let locations = &run.of(planned).locations;
            locations.iter().map(move |(location, _)| (run, location))
        });
        let walks = walk::plan(folders, width).into();
        let intents = planned
            .iter()
            .map(|p| {
                if p.resume {
                    Intent::Recorded
                } else {
                    Intent::Unrecorded
                }
            })
            .collect();
        let unconfirmed_marks = batcher.complete_without_folders();
        let mut pipeline = Pipeline {
            engine,
            plan,
            width,
            links: Links::new(planned),
            batcher,
            walks,
            looks: planned.iter().map(|_| Look::Pending).collect(),
            asked: Vec::new(),
            intents,
            to_record: VecDeque::new(),
            held: Vec::new(),
            batches: VecDeque::new(),
            unconfirmed_marks: Vec::new(),
            to_mark: VecDeque::new(),
            empty: Vec::new(),
            pruned: Vec::with_capacity(planned.len()),
            withdrawn: Vec::new(),
            unmarked: Vec::new(),
        };
        for &(run, _) in &unconfirmed_marks {
            pipeline.ask(run);
        }
        pipeline.unconfirmed_marks = unconfirmed_marks;
        pipeline
    }

    /// Asks for a look at `run` and at every run of the pass linked to it through shared
    /// models, transitively, so that a chain of sharers is looked at together.
    fn ask(&mut self, run: RunIndex) {
        let planned = self.plan.runs;
        let mut next = vec![run];
        while let Some(at) = next.pop() {
            if self.looks[at] != Look::Pending {
                continue;
            }
            self.looks[at] = Look::Asked;
            self.asked.push(at);
            let sharers = at.of(planned).shared_with.values().flatten();
            next.extend(sharers.filter_map(|id| self.links.index.get(id.as_str()).copied()));
            // And the carriers that name this run as a sharer.
            next.extend(
                self.links
                    .carriers_of
                    .get(at.of(planned).run_id.as_str())
                    .into_iter()
                    .flatten(),
            );
        }
    }

    fn stands(&self, run: RunIndex) -> bool {
        self.looks[run] == Look::Done(Settled::Stands)
    }

    /// Sends every request that may go now, up to `width` per stage: listings while few
    /// batches wait, looks, recordings of the runs whose batches are next, the batches whose
    /// runs are all recorded, and marks.
    fn start(&mut self, sent: &'p PerRun<AtomicBool>, flight: &mut InFlight<'p>) {
        let (engine, plan, width) = (self.engine, self.plan, self.width);
        let (experiment_id, planned) = (plan.experiment_id, plan.runs);
        while flight.lists.len() < width
            && self.batches.len() + self.held.len() < width
            && let Some(walk) = self.walks.pop_front()
        {
            flight
                .lists
                .push(engine.list_page(experiment_id, planned, walk).boxed());
        }
        let listed = self.walks.is_empty() && flight.lists.is_empty();
        if listed {
            // Nothing more will be listed: send the partly filled batches too.
            for batch in self.batcher.flush() {
                batch.runs().for_each(|run| self.ask(run));
                self.held.push(batch);
            }
        }
        let idle = flight.deletes.is_empty() && self.batches.is_empty();
        while flight.looks.len() < LOOKS_IN_FLIGHT
            && !self.asked.is_empty()
            && (self.asked.len() >= LOOK_GROUP || idle || listed)
        {
            let group = std::mem::take(&mut self.asked);
            let settled: HashMap<&str, Settled> = self
                .looks
                .iter()
                .filter_map(|(at, look)| match look {
                    Look::Done(settled) => Some((at.of(planned).run_id.as_str(), *settled)),
                    Look::Pending | Look::Asked => None,
                })
                .collect();
            let look = async move { engine.last_look(plan, &group, &settled, Depth::Full).await };
            flight.looks.push(look.boxed());
        }
        // Batches whose runs all stand wait to be sent; marks likewise.
        let (ready, waiting): (Vec<DeleteBatch>, Vec<DeleteBatch>) = std::mem::take(&mut self.held)
            .into_iter()
            .partition(|batch| batch.runs().all(|run| self.stands(run)));
        self.batches.extend(ready);
        self.held = waiting;
        let (ready, waiting): (Vec<_>, Vec<_>) = std::mem::take(&mut self.unconfirmed_marks)
            .into_iter()
            .partition(|(run, _)| self.stands(*run));
        self.to_mark.extend(ready);
        self.unconfirmed_marks = waiting;

        // The batches next in line have the start of their runs' deletion recorded, and go
        // once it is: a run is recorded just before its first key goes, not earlier.
        let next = self.batches.iter().take(width).flat_map(DeleteBatch::runs);
        for run in next.flat_map(|run| self.links.with_linked(run)) {
            if self.intents[run] == Intent::Unrecorded {
                self.intents[run] = Intent::Recording;
                self.to_record.push_back(run);
            }
        }
        while flight.records.len() < width
            && let Some(run) = self.to_record.pop_front()
        {
            let record = engine.record_start(experiment_id, run, run.of(planned));
            flight.records.push(record.boxed());
        }
        while flight.deletes.len() < width
            && self.batches.front().is_some_and(|b| {
                b.runs()
                    .flat_map(|run| self.links.with_linked(run))
                    .all(|run| self.intents[run] == Intent::Recorded)
            })
            && let Some(batch) = self.batches.pop_front()
        {
            let delete = engine.delete_batch(experiment_id, planned, batch, sent);
            flight.deletes.push(delete.boxed());
        }
        while flight.marks.len() < width
            && let Some((run, freed)) = self.to_mark.pop_front()
        {
            let mark = engine.mark_run(experiment_id, run, run.of(planned), freed);
            flight.marks.push(mark.boxed());
        }
    }

    /// A page of a walk: its keys join batches, and the runs whose folders it finished wait
    /// for their look before they are marked.
    fn listed(&mut self, mut walk: ListingWalk, page: Page) {
        let step = walk.page(page.objects, page.more);
        for (run, objects) in step.taken {
            // Asked as soon as its keys are listed, so the look runs while its batch fills
            // rather than after.
            self.ask(run);
            for batch in self.batcher.add(run, walk.bucket(), objects) {
                batch.runs().for_each(|run| self.ask(run));
                self.held.push(batch);
            }
        }
        for run in step.finished {
            let Some(done) = self.batcher.listing_done(run) else {
                continue;
            };
            if done.1.objects == 0 && !done.0.of(self.plan.runs).resume {
                // Not one file in any of its folders: nothing to mark as deleted.
                self.empty.push(done.0);
                continue;
            }
            self.ask(done.0);
            self.unconfirmed_marks.push(done);
        }
        if walk.request().is_some() {
            // Back in line: its next page waits, like a new walk, while `width` batches wait
            // to be sent.
            self.walks.push_front(walk);
        }
    }

    /// A look's verdicts: a withdrawn run keeps every file.
    fn looked(&mut self, verdicts: Verdicts) {
        for (run, verdict) in verdicts {
            self.looks[run] = Look::Done(verdict.settled());
            if let Verdict::Withdrawn(decision) = verdict {
                self.batcher.withdraw(run, &mut self.held);
                self.withdraw(run, decision);
            }
        }
    }

    fn withdraw(&mut self, run: RunIndex, decision: Decision) {
        let run_id = &run.of(self.plan.runs).run_id;
        info!(%run_id, reason = %decision, "kept after a last look");
        self.withdrawn.push((run_id.clone(), decision));
    }

    /// The start of a run's deletion recorded, or refused: a refusal of the run's own (gone, no
    /// longer active) keeps it, nothing of it deleted; any other failure fails the pass.
    fn recorded(
        &mut self,
        run: RunIndex,
        recorded: Result<(), PruneError>,
    ) -> Result<(), PruneError> {
        let e = match recorded {
            Ok(()) => {
                self.intents[run] = Intent::Recorded;
                return Ok(());
            }
            Err(e) if !e.is_about_the_run() || !self.links.linked[run].is_empty() => return Err(e),
            Err(e) => e,
        };
        self.looks[run] = Look::Done(Settled::Withdrawn);
        self.intents[run] = Intent::Unrecorded;
        self.batcher.withdraw(run, &mut self.held);
        let mut queued: Vec<DeleteBatch> = self.batches.drain(..).collect();
        self.batcher.withdraw(run, &mut queued);
        self.batches.extend(queued);
        let run_id = &run.of(self.plan.runs).run_id;
        tracing::warn!(%run_id, error = %e, "kept: the start of its deletion could not be recorded");
        let reason = SkipReason::NotRecorded {
            error: e.to_string(),
        };
        self.withdrawn
            .push((run_id.clone(), Decision::Skipped { reason }));
        Ok(())
    }

    /// A batch deleted: the runs whose last key it held are marked next.
    fn deleted(&mut self, batch: &DeleteBatch) {
        self.to_mark.extend(self.batcher.deleted(batch));
    }

    /// A run marked, or its mark refused: a refusal of the run's own leaves it for the next
    /// pass to complete; any other failure fails the pass.
    fn marked(
        &mut self,
        run: RunIndex,
        marked: Result<PrunedRun, PruneError>,
    ) -> Result<(), PruneError> {
        match marked {
            Ok(done) => self.pruned.push((run, done)),
            Err(e) if !e.is_about_the_run() => return Err(e),
            Err(e) => {
                let run_id = &run.of(self.plan.runs).run_id;
                tracing::error!(%run_id, error = %e, "files deleted but MLflow refused the mark: the next pass completes it");
                self.engine.metrics.run_left("unmarked");
                self.unmarked.push(UnmarkedRun {
                    run_id: run_id.clone(),
                    error: e.to_string(),
                });
            }
        }
        Ok(())
    }
}

impl Engine {
    /// Deletes every file of the planned runs, then marks each run and its logged models.
    /// Before the first key of a run is sent (or the run is marked, if it has none), the run
    /// gets a last look ([`Engine::last_look`]): a run found protected, unfinished or sharing a
    /// model with a run that stays keeps every file; then the start of its deletion is recorded.
    /// A mark MLflow refuses (a 4xx) is that run's problem: reported in
    /// [`Pruned::unmarked`], the other runs go on. On any other error the pass stops; runs
    /// already marked stay marked, and runs already started are completed by the next pass.
    pub(super) async fn prune<'p>(&'p self, plan: &'p Planned<'p>) -> Result<Pruned, PruneError> {
        // Runs with a batch sent (answered or not): their files may be partly gone.
        let sent: PerRun<AtomicBool> = plan.runs.iter().map(|_| AtomicBool::new(false)).collect();
        let mut pipeline = Pipeline::new(self, plan);
        let mut flight = InFlight::new();
        loop {
            pipeline.start(&sent, &mut flight);
            let answered = tokio::select! {
                Some(listed) = flight.lists.next() => {
                    listed.map(|(walk, page)| pipeline.listed(walk, page))
                }
                Some(verdicts) = flight.looks.next() => verdicts.map(|v| pipeline.looked(v)),
                Some((run, recorded)) = flight.records.next() => pipeline.recorded(run, recorded),
                Some(deleted) = flight.deletes.next() => deleted.map(|batch| pipeline.deleted(&batch)),
                Some((run, marked)) = flight.marks.next() => pipeline.marked(run, marked),
                else => break,
            };
            if let Err(error) = answered {
                // Recordings in flight land (or not) before the unsent ones are taken back; the
                // other requests are dropped (a batch counts as sent from its first poll).
                let mut records = std::mem::take(&mut flight.records);
                drop(flight);
                while let Some((run, recorded)) = records.next().await {
                    if recorded.is_ok() {
                        pipeline.intents[run] = Intent::Recorded;
                    }
                }
                return Err(self
                    .unrecord(
                        plan.experiment_id,
                        plan.runs,
                        &pipeline.intents,
                        &sent,
                        error,
                    )
                    .await);
            }
        }
        drop(flight);
        self.finish(pipeline).await
    }

    /// What the pipeline did, once nothing is in flight: the runs whose folders held nothing
    /// are reported (or, when every planned folder was empty in an experiment never pruned
    /// before, fail the pass).
    async fn finish(&self, pipeline: Pipeline<'_>) -> Result<Pruned, PruneError> {
        let Pipeline {
            plan,
            mut looks,
            mut empty,
            mut pruned,
            mut withdrawn,
            unmarked,
            ..
        } = pipeline;
        let (experiment_id, planned) = (plan.experiment_id, plan.runs);
        let withdrawn_run = |look: Look| look == Look::Done(Settled::Withdrawn);
        // Runs whose folders held nothing, unless a look kept them for a reason of its own.
        empty.retain(|&run| !withdrawn_run(looks[run]));
        let deleted_any = pruned.iter().any(|(_, run)| run.objects > 0) || !unmarked.is_empty();
        // Every planned folder empty in an experiment never pruned before: the layout or the
        // settings are likely wrong for all of it. Once a pass has pruned a run, an empty
        // folder is a stray run's own, reported without failing every later event.
        if !empty.is_empty() && !deleted_any && !plan.pruned_before {
            // An empty run nothing was asked of yet gets its look first: one the look keeps
            // (registered, kept, running) is protected, not a sign of a wrong layout.
            let unlooked: Vec<RunIndex> = empty
                .iter()
                .copied()
                .filter(|&run| looks[run] == Look::Pending)
                .collect();
            let verdicts = self
                .last_look(plan, &unlooked, &HashMap::new(), Depth::Full)
                .await?;
            for (run, verdict) in verdicts {
                if let Verdict::Withdrawn(decision) = verdict {
                    looks[run] = Look::Done(Settled::Withdrawn);
                    let run_id = &run.of(planned).run_id;
                    info!(%run_id, reason = %decision, "kept after a last look");
                    withdrawn.push((run_id.clone(), decision));
                }
            }
            empty.retain(|&run| !withdrawn_run(looks[run]));
            if !empty.is_empty() {
                return Err(self.all_empty(experiment_id, planned, &empty).await);
            }
        }
        for &run in &empty {
            let folder = run
                .of(planned)
                .locations
                .first()
                .map(|(location, _)| location.to_string())
                .unwrap_or_default();
            let run_id = &run.of(planned).run_id;
            tracing::warn!(%run_id, %folder, "planned model folder holds no file: nothing deleted, not marked");
            let reason = SkipReason::EmptyFolder { folder };
            withdrawn.push((run_id.clone(), Decision::Skipped { reason }));
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
        empty: &[RunIndex],
    ) -> PruneError {
        let run_ids: Vec<String> = empty.iter().map(|r| r.of(planned).run_id.clone()).collect();
        let folder = empty
            .iter()
            .find_map(|r| r.of(planned).locations.first())
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
        intents: &PerRun<Intent>,
        sent: &PerRun<AtomicBool>,
        error: PruneError,
    ) -> PruneError {
        let unsent = RunIndex::all(planned.len()).filter(|&run| {
            !run.of(planned).resume
                && intents[run] != Intent::Unrecorded
                && !sent[run].load(Ordering::Relaxed)
        });
        let mut removals: FuturesUnordered<_> = unsent
            .map(|run| async move {
                let run_id = run.of(planned).run_id.as_str();
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
        index: RunIndex,
        plan: &PlannedDeletion,
    ) -> (RunIndex, Result<(), PruneError>) {
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
                    .map(|run| run.of(planned).run_id.clone())
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
        sent: &PerRun<AtomicBool>,
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
                run_ids: batch.runs().map(|r| r.of(planned).run_id.clone()).collect(),
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
        index: RunIndex,
        plan: &PlannedDeletion,
        freed: Usage,
    ) -> (RunIndex, Result<PrunedRun, PruneError>) {
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
            bytes = freed.bytes.0,
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
