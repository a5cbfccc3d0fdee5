//! Per-experiment scheduling, free of I/O: at most `max_in_flight` experiments at once, one
//! pass per experiment at a time, and a burst of `run.finished` events for one experiment
//! coalesced into one pass.

use std::collections::{HashMap, HashSet, VecDeque};

use crate::domain::event::Event;
use crate::engine::{PassKind, PassRequest};

/// A parsed event and what the caller needs to settle it later (its delivery).
#[derive(Debug)]
pub struct Job<T> {
    /// The event parsed from the message's routing key and body.
    pub event: Event,
    /// What settles the message once its pass is over (the worker's received delivery).
    pub delivery: T,
}

/// One pass to run and the jobs it settles.
#[derive(Debug)]
pub struct PassBatch<T> {
    /// The pass to run: one experiment, with the run ids of every coalesced `run.finished`.
    pub request: PassRequest,
    /// The jobs the pass covers, in arrival order; each is settled by its outcome.
    pub jobs: Vec<Job<T>>,
}

/// Queues jobs per experiment and hands out batches.
///
/// Invariant: an experiment is in `ready` exactly when it has waiting jobs and is not running.
#[derive(Debug)]
pub struct Scheduler<T> {
    waiting: HashMap<String, VecDeque<Job<T>>>,
    running: HashSet<String>,
    ready: VecDeque<String>,
    max_in_flight: usize,
}

impl<T> Scheduler<T> {
    /// A scheduler running passes for at most `max_in_flight` experiments at once (at least 1;
    /// `concurrency.max_in_flight`).
    pub fn new(max_in_flight: usize) -> Self {
        Scheduler {
            waiting: HashMap::new(),
            running: HashSet::new(),
            ready: VecDeque::new(),
            max_in_flight: max_in_flight.max(1),
        }
    }

    /// Queues a job behind the others of its experiment.
    pub fn push(&mut self, job: Job<T>) {
        let experiment = job.event.experiment_id().to_owned();
        let queue = self.waiting.entry(experiment.clone()).or_default();
        let was_idle = queue.is_empty() && !self.running.contains(&experiment);
        queue.push_back(job);
        if was_idle {
            self.ready.push_back(experiment);
        }
    }

    /// The next pass to start, if a slot is free and an experiment is waiting; the experiment
    /// counts as running until [`finish`](Self::finish).
    ///
    /// An `experiment.prune` job is a batch of its own. A `run.finished` job takes along every
    /// other waiting `run.finished` job of the experiment with the same policy overrides.
    pub fn next_batch(&mut self) -> Option<PassBatch<T>> {
        if self.running.len() >= self.max_in_flight {
            return None;
        }
        let experiment = self.ready.pop_front()?;
        let mut queue = self
            .waiting
            .remove(&experiment)
            .expect("a ready experiment has waiting jobs");
        let first = queue.pop_front().expect("waiting queues are never empty");
        let batch = match &first.event {
            Event::ExperimentPrune(_) => PassBatch {
                request: PassRequest::from(&first.event),
                jobs: vec![first],
            },
            Event::RunFinished(head) => {
                let policy = head.policy.clone();
                let (same, rest): (VecDeque<_>, VecDeque<_>) = queue
                    .into_iter()
                    .partition(|j| matches!(&j.event, Event::RunFinished(e) if e.policy == policy));
                queue = rest;
                let jobs: Vec<Job<T>> = std::iter::once(first).chain(same).collect();
                let mut run_ids: Vec<String> = Vec::with_capacity(jobs.len());
                for job in &jobs {
                    if let Event::RunFinished(e) = &job.event
                        && !run_ids.contains(&e.run_id)
                    {
                        run_ids.push(e.run_id.clone());
                    }
                }
                PassBatch {
                    request: PassRequest {
                        experiment_id: experiment.clone(),
                        policy,
                        run_ids,
                        kind: PassKind::RunFinished,
                        dry_run: false,
                    },
                    jobs,
                }
            }
        };
        if !queue.is_empty() {
            self.waiting.insert(experiment.clone(), queue);
        }
        self.running.insert(experiment);
        Some(batch)
    }

    /// Marks the experiment's pass as done; its waiting jobs become ready again.
    pub fn finish(&mut self, experiment_id: &str) {
        if self.running.remove(experiment_id) && self.waiting.contains_key(experiment_id) {
            self.ready.push_back(experiment_id.to_owned());
        }
    }

    /// Takes out the waiting jobs `expired` picks, in arrival order per experiment; an
    /// experiment left with none waiting is no longer ready.
    pub fn take_waiting(&mut self, expired: impl Fn(&Job<T>) -> bool) -> Vec<Job<T>> {
        let mut taken = Vec::new();
        for queue in self.waiting.values_mut() {
            let (out, keep): (VecDeque<_>, VecDeque<_>) =
                std::mem::take(queue).into_iter().partition(&expired);
            *queue = keep;
            taken.extend(out);
        }
        self.waiting.retain(|_, queue| !queue.is_empty());
        let waiting = &self.waiting;
        self.ready
            .retain(|experiment| waiting.contains_key(experiment));
        taken
    }

    /// Experiments with a pass running.
    pub fn in_flight(&self) -> usize {
        self.running.len()
    }

    /// Jobs waiting for a pass.
    pub fn waiting(&self) -> usize {
        self.waiting.values().map(VecDeque::len).sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::event::{ExperimentPrune, RunFinished};
    use crate::domain::policy::PolicyOverrides;

    fn run(exp: &str, run: &str, keep_top: Option<i64>, tag: u32) -> Job<u32> {
        Job {
            event: Event::RunFinished(RunFinished {
                experiment_id: exp.into(),
                run_id: run.into(),
                policy: PolicyOverrides {
                    keep_top,
                    ..PolicyOverrides::default()
                },
            }),
            delivery: tag,
        }
    }

    fn prune(exp: &str, tag: u32) -> Job<u32> {
        Job {
            event: Event::ExperimentPrune(ExperimentPrune {
                experiment_id: exp.into(),
                policy: PolicyOverrides::default(),
                delete_experiment: false,
                dry_run: false,
                force: false,
            }),
            delivery: tag,
        }
    }

    fn tags(batch: &PassBatch<u32>) -> Vec<u32> {
        batch.jobs.iter().map(|j| j.delivery).collect()
    }

    #[test]
    fn burst_for_one_experiment_waits_for_the_running_pass_then_coalesces() {
        let mut s = Scheduler::new(4);
        s.push(run("e", "r1", None, 1));
        let first = s.next_batch().unwrap();
        assert_eq!(first.request.run_ids, ["r1"]);
        for (i, r) in ["r2", "r3", "r4"].into_iter().enumerate() {
            s.push(run("e", r, None, i as u32 + 2));
        }
        assert!(s.next_batch().is_none(), "same experiment never runs twice");
        s.finish("e");
        let second = s.next_batch().unwrap();
        assert_eq!(second.request.run_ids, ["r2", "r3", "r4"]);
        assert_eq!(second.request.kind, PassKind::RunFinished);
        assert_eq!(tags(&second), [2, 3, 4]);
        s.finish("e");
        assert!(s.next_batch().is_none());
        assert_eq!((s.in_flight(), s.waiting()), (0, 0));
    }

    #[test]
    fn different_policies_are_not_merged() {
        let mut s = Scheduler::new(4);
        s.push(run("e", "r1", Some(3), 1));
        s.push(run("e", "r2", Some(5), 2));
        s.push(run("e", "r3", Some(3), 3));
        let b = s.next_batch().unwrap();
        assert_eq!(b.request.run_ids, ["r1", "r3"]);
        assert_eq!(b.request.policy.keep_top, Some(3));
        s.finish("e");
        let b = s.next_batch().unwrap();
        assert_eq!(tags(&b), [2]);
        assert_eq!(b.request.policy.keep_top, Some(5));
    }

    #[test]
    fn prune_events_are_never_merged() {
        let mut s = Scheduler::new(4);
        s.push(prune("e", 1));
        s.push(run("e", "r1", None, 2));
        s.push(prune("e", 3));
        s.push(run("e", "r2", None, 4));
        let mut order = Vec::new();
        while let Some(b) = s.next_batch() {
            order.push((b.request.kind, tags(&b)));
            s.finish("e");
        }
        let sweep = PassKind::Sweep {
            delete_experiment: false,
            force: false,
        };
        assert_eq!(
            order,
            [
                (sweep, vec![1]),
                (PassKind::RunFinished, vec![2, 4]),
                (sweep, vec![3])
            ]
        );
    }

    #[test]
    fn duplicate_run_ids_appear_once_but_every_delivery_is_settled() {
        let mut s = Scheduler::new(1);
        s.push(run("e", "r1", None, 1));
        s.push(run("e", "r1", None, 2));
        let b = s.next_batch().unwrap();
        assert_eq!(b.request.run_ids, ["r1"]);
        assert_eq!(tags(&b), [1, 2]);
    }

    #[test]
    fn in_flight_experiments_are_capped() {
        let mut s = Scheduler::new(2);
        for (i, e) in ["a", "b", "c"].into_iter().enumerate() {
            s.push(prune(e, i as u32));
        }
        let a = s.next_batch().unwrap();
        let b = s.next_batch().unwrap();
        assert!(s.next_batch().is_none());
        assert_eq!(s.in_flight(), 2);
        assert_eq!(s.waiting(), 1);
        s.finish(&b.request.experiment_id);
        assert_eq!(s.next_batch().unwrap().request.experiment_id, "c");
        assert_eq!(a.request.experiment_id, "a");
    }

    #[test]
    fn experiments_are_served_in_arrival_order() {
        let mut s = Scheduler::new(1);
        s.push(prune("a", 1));
        s.push(prune("b", 2));
        s.push(prune("a", 3));
        let mut order = Vec::new();
        while let Some(b) = s.next_batch() {
            order.push(b.jobs[0].delivery);
            s.finish(&b.request.experiment_id);
        }
        assert_eq!(order, [1, 2, 3]);
    }

    #[test]
    fn expired_waiting_jobs_are_taken_out_and_the_rest_still_run() {
        let mut s = Scheduler::new(1);
        s.push(prune("a", 1));
        let running = s.next_batch().unwrap();
        s.push(run("a", "r1", None, 2));
        s.push(run("a", "r2", None, 3));
        s.push(prune("b", 4));
        s.push(prune("c", 5));
        let mut taken: Vec<u32> = s
            .take_waiting(|j| [2, 4].contains(&j.delivery))
            .into_iter()
            .map(|j| j.delivery)
            .collect();
        taken.sort();
        assert_eq!(taken, [2, 4]);
        assert_eq!(s.waiting(), 2);
        s.finish(&running.request.experiment_id);
        let mut order = Vec::new();
        while let Some(b) = s.next_batch() {
            order.push(tags(&b));
            s.finish(&b.request.experiment_id);
        }
        // b has nothing left and is not served; c, then a (ready again when its pass ended).
        assert_eq!(order, [vec![5], vec![3]]);
        assert!(s.take_waiting(|_| true).is_empty());
    }

    #[test]
    fn finishing_an_idle_experiment_changes_nothing() {
        let mut s: Scheduler<u32> = Scheduler::new(1);
        s.finish("ghost");
        assert!(s.next_batch().is_none());
    }
}
