//! Packs the listed files of many runs into full DeleteObjects batches, and tells when every
//! file of a run is gone so the run can be marked. Pure bookkeeping: the engine lists, deletes
//! and marks.
//!
//! Deleting run by run sends one small request per model (50 files make a 50-key request);
//! packing keys of several runs into one request of up to 1,000 keys is what lets a sweep go at
//! the store's bulk rate.

use std::collections::BTreeMap;

use super::run_index::{PerRun, RunIndex};
use crate::store::{ObjectInfo, Usage};

/// Keys to delete in one request, all in one bucket, and the runs they belong to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct DeleteBatch {
    pub bucket: String,
    pub objects: Vec<ObjectInfo>,
    /// The run of each object.
    owners: Vec<RunIndex>,
    /// Runs with keys in this batch, and how much of each.
    members: Vec<(RunIndex, Usage)>,
}

impl DeleteBatch {
    fn new(bucket: &str) -> Self {
        DeleteBatch {
            bucket: bucket.to_owned(),
            objects: Vec::new(),
            owners: Vec::new(),
            members: Vec::new(),
        }
    }

    /// The runs with keys in this batch.
    pub(super) fn runs(&self) -> impl Iterator<Item = RunIndex> + '_ {
        self.members.iter().map(|(run, _)| *run)
    }

    /// Takes `run`'s keys out of the batch.
    fn remove(&mut self, run: RunIndex) {
        let mut owners = self.owners.iter();
        self.objects
            .retain(|_| owners.next().is_some_and(|owner| *owner != run));
        self.owners.retain(|owner| *owner != run);
        self.members.retain(|(member, _)| *member != run);
    }

    pub(super) fn is_empty(&self) -> bool {
        self.objects.is_empty()
    }
}

#[derive(Debug, Clone, Copy, Default)]
struct RunProgress {
    /// Folders of the run whose listing has not finished.
    listings_left: usize,
    /// Batches (open or sent) holding keys of the run.
    batches_pending: usize,
    freed: Usage,
    complete: bool,
    /// Taken out of the pass: its keys are dropped and it never completes.
    withdrawn: bool,
}

/// The batching state of one pass.
#[derive(Debug)]
pub(super) struct Batcher {
    batch_size: usize,
    /// The batch being filled, per bucket.
    open: BTreeMap<String, DeleteBatch>,
    runs: PerRun<RunProgress>,
}

impl Batcher {
    /// `folders` is the number of folders each run has to empty, in plan order; `batch_size` is at least 1.
    pub(super) fn new(batch_size: usize, folders: impl IntoIterator<Item = usize>) -> Self {
        Batcher {
            batch_size: batch_size.max(1),
            open: BTreeMap::new(),
            runs: folders
                .into_iter()
                .map(|listings_left| RunProgress {
                    listings_left,
                    ..RunProgress::default()
                })
                .collect(),
        }
    }

    /// Runs with no folder at all: complete from the start.
    pub(super) fn complete_without_folders(&mut self) -> Vec<(RunIndex, Usage)> {
        RunIndex::all(self.runs.len())
            .filter_map(|run| self.complete_if_done(run))
            .collect()
    }

    /// Files listed in one of `run`'s folders; returns the batches this filled up.
    pub(super) fn add(
        &mut self,
        run: RunIndex,
        bucket: &str,
        objects: Vec<ObjectInfo>,
    ) -> Vec<DeleteBatch> {
        let mut full = Vec::new();
        if self.runs[run].withdrawn {
            return full;
        }
        for object in objects {
            let batch = self
                .open
                .entry(bucket.to_owned())
                .or_insert_with(|| DeleteBatch::new(bucket));
            let size = object.size;
            batch.objects.push(object);
            batch.owners.push(run);
            // The run is nearly always the last member: search from the end.
            match batch.members.iter_mut().rev().find(|(r, _)| *r == run) {
                Some((_, usage)) => {
                    usage.objects += 1;
                    usage.bytes += size;
                }
                None => {
                    let usage = Usage {
                        objects: 1,
                        bytes: size,
                    };
                    batch.members.push((run, usage));
                    self.runs[run].batches_pending += 1;
                }
            }
            if batch.objects.len() >= self.batch_size {
                full.extend(self.open.remove(bucket));
            }
        }
        full
    }

    /// One of `run`'s folders is fully listed; returns the run if that was the last thing it
    /// waited for.
    pub(super) fn listing_done(&mut self, run: RunIndex) -> Option<(RunIndex, Usage)> {
        let progress = &mut self.runs[run];
        progress.listings_left = progress
            .listings_left
            .checked_sub(1)
            .expect("a folder's listing finishes once");
        self.complete_if_done(run)
    }

    /// The partly filled batches, to send once nothing more will be listed for a while.
    pub(super) fn flush(&mut self) -> Vec<DeleteBatch> {
        std::mem::take(&mut self.open).into_values().collect()
    }

    /// Takes `run` out of the pass, before any of its keys were sent: its keys leave the open
    /// batches and `batches` (batches taken from the batcher but not sent yet), those left
    /// empty are dropped, and later listings of its folders add nothing.
    pub(super) fn withdraw(&mut self, run: RunIndex, batches: &mut Vec<DeleteBatch>) {
        self.runs[run].withdrawn = true;
        self.runs[run].batches_pending = 0;
        for batch in self.open.values_mut().chain(batches.iter_mut()) {
            batch.remove(run);
        }
        self.open.retain(|_, batch| !batch.is_empty());
        batches.retain(|batch| !batch.is_empty());
    }

    /// A batch was deleted; returns the runs it completed, with what was freed for each.
    pub(super) fn deleted(&mut self, batch: &DeleteBatch) -> Vec<(RunIndex, Usage)> {
        batch
            .members
            .iter()
            .filter_map(|&(run, usage)| {
                let progress = &mut self.runs[run];
                progress.freed += usage;
                progress.batches_pending = progress
                    .batches_pending
                    .checked_sub(1)
                    .expect("a batch is deleted once");
                self.complete_if_done(run)
            })
            .collect()
    }

    /// Reports a run once, when all its folders are listed and all its keys deleted.
    fn complete_if_done(&mut self, run: RunIndex) -> Option<(RunIndex, Usage)> {
        let progress = &mut self.runs[run];
        let done = progress.listings_left == 0 && progress.batches_pending == 0;
        if !done || progress.complete || progress.withdrawn {
            return None;
        }
        progress.complete = true;
        Some((run, progress.freed))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::size::Bytes;

    const fn r(at: usize) -> RunIndex {
        RunIndex::new(at)
    }

    fn files(run: usize, n: usize) -> Vec<ObjectInfo> {
        (0..n)
            .map(|i| ObjectInfo {
                key: format!("1/run{run}/artifacts/model/f{i}"),
                size: Bytes(10),
            })
            .collect()
    }

    fn usage(objects: u64) -> Usage {
        Usage {
            objects,
            bytes: Bytes(10 * objects),
        }
    }

    fn keys(batch: &DeleteBatch) -> Vec<&str> {
        batch.objects.iter().map(|o| o.key.as_str()).collect()
    }

    #[test]
    fn a_withdrawn_run_leaves_held_and_open_batches_and_never_completes() {
        let mut b = Batcher::new(3, [1, 1]);
        assert!(b.add(r(0), "mlflow", files(0, 2)).is_empty());
        let mut held = b.add(r(1), "mlflow", files(1, 2));
        assert_eq!(held.len(), 1);
        assert_eq!(
            held[0].runs().map(RunIndex::get).collect::<Vec<_>>(),
            [0, 1]
        );
        b.withdraw(r(1), &mut held);
        assert_eq!(
            keys(&held[0]),
            ["1/run0/artifacts/model/f0", "1/run0/artifacts/model/f1"]
        );
        assert_eq!(held[0].runs().map(RunIndex::get).collect::<Vec<_>>(), [0]);
        assert!(b.flush().is_empty(), "run 1's last key left the open batch");
        assert!(
            b.add(r(1), "mlflow", files(1, 5)).is_empty(),
            "later listings add nothing"
        );
        assert_eq!(b.listing_done(r(1)), None);
        assert_eq!(b.listing_done(r(0)), None);
        assert_eq!(b.deleted(&held[0]), [(r(0), usage(2))]);
    }

    #[test]
    fn keys_of_several_runs_share_one_full_batch() {
        let mut b = Batcher::new(5, [1, 1, 1]);
        assert!(b.add(r(0), "mlflow", files(0, 2)).is_empty());
        assert_eq!(b.listing_done(r(0)), None, "its keys are not deleted yet");
        assert!(b.add(r(1), "mlflow", files(1, 2)).is_empty());
        assert_eq!(b.listing_done(r(1)), None);
        let full = b.add(r(2), "mlflow", files(2, 2));
        assert_eq!(full.len(), 1);
        assert_eq!(full[0].objects.len(), 5);
        assert_eq!(
            full[0].runs().map(RunIndex::get).collect::<Vec<_>>(),
            [0, 1, 2]
        );

        assert_eq!(b.deleted(&full[0]), [(r(0), usage(2)), (r(1), usage(2))]);
        assert_eq!(b.listing_done(r(2)), None, "one key of run 2 is still open");
        let rest = b.flush();
        assert_eq!(rest.len(), 1);
        assert_eq!(keys(&rest[0]), ["1/run2/artifacts/model/f1"]);
        assert_eq!(b.deleted(&rest[0]), [(r(2), usage(2))]);
        assert!(b.flush().is_empty());
    }

    #[test]
    fn a_run_is_complete_only_when_every_folder_is_listed() {
        let mut b = Batcher::new(2, [2]);
        let full = b.add(r(0), "mlflow", files(0, 2));
        assert_eq!(b.deleted(&full[0]), [], "a second folder is still to list");
        assert_eq!(b.listing_done(r(0)), None);
        assert_eq!(b.listing_done(r(0)), Some((r(0), usage(2))));
    }

    #[test]
    fn a_run_is_complete_only_when_every_batch_is_deleted() {
        let mut b = Batcher::new(3, [1]);
        let full = b.add(r(0), "mlflow", files(0, 7));
        assert_eq!(full.len(), 2);
        assert_eq!(b.listing_done(r(0)), None);
        let rest = b.flush();
        assert_eq!(rest[0].objects.len(), 1);
        assert_eq!(b.deleted(&rest[0]), []);
        assert_eq!(b.deleted(&full[1]), []);
        assert_eq!(b.deleted(&full[0]), [(r(0), usage(7))], "any order");
    }

    #[test]
    fn empty_folders_complete_when_listed_and_runs_without_folders_at_once() {
        let mut b = Batcher::new(10, [0, 1, 0]);
        assert_eq!(
            b.complete_without_folders(),
            [(r(0), usage(0)), (r(2), usage(0))]
        );
        assert_eq!(b.complete_without_folders(), [], "reported once");
        assert!(b.add(r(1), "mlflow", vec![]).is_empty());
        assert_eq!(b.listing_done(r(1)), Some((r(1), usage(0))));
        assert!(b.flush().is_empty(), "no empty batch is sent");
    }

    #[test]
    fn buckets_never_share_a_batch() {
        let mut b = Batcher::new(10, [1, 1]);
        b.add(r(0), "mlflow", files(0, 1));
        b.add(r(1), "models", files(1, 1));
        let mut rest = b.flush();
        rest.sort_by(|a, b| a.bucket.cmp(&b.bucket));
        assert_eq!(rest.len(), 2);
        assert_eq!(
            (rest[0].bucket.as_str(), rest[0].objects.len()),
            ("mlflow", 1)
        );
        assert_eq!(
            (rest[1].bucket.as_str(), rest[1].objects.len()),
            ("models", 1)
        );
    }

    #[test]
    fn interleaved_pages_count_each_run_once_per_batch() {
        let mut b = Batcher::new(100, [1, 1]);
        b.add(r(0), "mlflow", files(0, 2));
        b.add(r(1), "mlflow", files(1, 2));
        b.add(r(0), "mlflow", files(0, 3));
        b.listing_done(r(0));
        b.listing_done(r(1));
        let rest = b.flush();
        assert_eq!(
            rest[0].runs().map(RunIndex::get).collect::<Vec<_>>(),
            [0, 1]
        );
        assert_eq!(b.deleted(&rest[0]), [(r(0), usage(5)), (r(1), usage(2))]);
    }

    #[test]
    fn a_batch_never_exceeds_the_size() {
        let mut b = Batcher::new(1000, [1, 1, 1]);
        let mut sent = Vec::new();
        for run in 0..3 {
            sent.extend(b.add(r(run), "mlflow", files(run, 700)));
        }
        sent.extend(b.flush());
        let sizes: Vec<usize> = sent.iter().map(|s| s.objects.len()).collect();
        assert_eq!(sizes, [1000, 1000, 100]);
        let mut completed: Vec<_> = (0..3).filter_map(|run| b.listing_done(r(run))).collect();
        for batch in &sent {
            completed.extend(b.deleted(batch));
        }
        assert_eq!(
            completed,
            [(r(0), usage(700)), (r(1), usage(700)), (r(2), usage(700))]
        );
    }
}
