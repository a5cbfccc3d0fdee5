//! One broker session's life: connect, declare, consume, schedule passes, settle deliveries,
//! hand back what is held too long, and on shutdown or connection loss drain the passes in
//! flight.
//!
//! A session has two connections: RabbitMQ blocks a connection that publishes while a memory
//! or disk alarm is on, and a blocked connection carries no acks either. Copies (delay,
//! dead letter, hand-back) go out on the publishing one, acks and nacks on the consuming one,
//! which never publishes.

use std::collections::HashMap;
use std::ops::ControlFlow;
use std::panic::AssertUnwindSafe;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::{FutureExt as _, StreamExt};
use lapin::message::Delivery;
use lapin::options::BasicCancelOptions;
use tokio::task::{Id, JoinSet};
use tokio::time::{Instant, MissedTickBehavior};
use tokio_util::sync::CancellationToken;
use tracing::{Instrument, error, info, info_span, warn};

use super::follow_up::{self, FollowUps};
use super::outcome::{Failure, RetryRules, decide};
use super::scheduler::{Job, PassBatch, Scheduler};
use super::settle::{Received, Settler, SettlerContext, Subject};
use crate::broker::{Broker, BrokerError, Topology, headers};
use crate::domain::event::{EXPERIMENT_PRUNE, Event};
use crate::domain::ranking::Rule;
use crate::engine::{Engine, PassReport, PruneError, now};
use crate::metrics::{self, Health, Metrics, Refused};
use crate::settings::BrokerSettings;

/// How often the session beats for `/healthz` and looks for deliveries held too long.
const TICK: Duration = Duration::from_secs(1);
/// Hand-backs of a delivery that never started before it costs an attempt.
const MAX_HAND_BACKS: u32 = 3;

/// What a session needs; shared by every session of a worker.
pub(super) struct Context {
    pub broker: BrokerSettings,
    pub engine: Arc<Engine>,
    pub topology: Topology,
    pub rules: RetryRules,
    pub max_in_flight: usize,
    pub shutdown_grace: Duration,
    /// `<host>:<pid>`, for the connection name and the consumer tag.
    pub identity: String,
    pub host: String,
    /// Told when consuming starts and stops (`/readyz`) and that the loop runs (`/healthz`).
    pub health: Arc<Health>,
    /// What the worker counts.
    pub metrics: Metrics,
    /// Follow-up passes this worker scheduled, kept across sessions.
    pub follow_ups: Arc<Mutex<FollowUps>>,
}

/// Why a session ended other than by shutdown.
#[derive(Debug, thiserror::Error)]
pub(super) enum SessionError {
    /// The broker refused the topology (arguments differ from an existing queue...).
    #[error("declaring the topology: {0}")]
    Declare(BrokerError),
    /// Could not connect or start consuming.
    #[error("connecting: {0}")]
    Connect(BrokerError),
    /// The connection or the consumer went away after consuming had started.
    #[error("connection lost: {0}")]
    Lost(BrokerError),
}

impl SessionError {
    /// The broker operation that failed.
    pub(super) fn broker(&self) -> &BrokerError {
        match self {
            SessionError::Declare(e) | SessionError::Connect(e) | SessionError::Lost(e) => e,
        }
    }
}

/// Connects, consumes until `shutdown` (returns `Ok`) or until a connection fails.
pub(super) async fn run(ctx: &Context, shutdown: &CancellationToken) -> Result<(), SessionError> {
    let name = format!(
        "model-pruner worker {} on {}",
        ctx.identity, ctx.topology.work_queue
    );
    let publisher = Broker::connect(&ctx.broker, &format!("{name} (publish)"))
        .await
        .map_err(SessionError::Connect)?;
    publisher
        .declare(&ctx.topology)
        .await
        .map_err(SessionError::Declare)?;
    let consuming = Broker::connect(&ctx.broker, &format!("{name} (consume)"))
        .await
        .map_err(SessionError::Connect)?;
    let tag = format!(
        "model-pruner-{}-{:08x}",
        ctx.identity,
        rand::random::<u32>()
    );
    let queue = ctx.topology.work_queue.as_str();
    let (channel, mut consumer) = consuming
        .consume(queue, &tag, ctx.broker.prefetch)
        .await
        .map_err(SessionError::Connect)?;
    info!(
        queue,
        prefetch = ctx.broker.prefetch,
        max_in_flight = ctx.max_in_flight,
        ack_deadline = ?ctx.broker.ack_deadline,
        "consuming"
    );
    ctx.health.set_consuming(true);
    ctx.health.set_refused(Refused::Session, None);

    let mut publisher_events = publisher.events();
    let publisher = Arc::new(publisher);
    let mut session = Consuming::new(ctx, publisher.clone());
    let mut tick = tokio::time::interval(TICK);
    tick.set_missed_tick_behavior(MissedTickBehavior::Delay);

    let ended = loop {
        let step = tokio::select! {
            biased;
            () = shutdown.cancelled() => break Ok(()),
            Some(done) = session.tasks.join_next() => {
                session.task_done(done);
                ControlFlow::Continue(())
            }
            _ = tick.tick() => session.tick(),
            Some(event) = publisher_events.next() => session.publisher_event(event),
            next = consumer.next() => match next {
                Some(Ok(delivery)) => {
                    session.delivery(delivery);
                    ControlFlow::Continue(())
                }
                Some(Err(cause)) => ControlFlow::Break(BrokerError::Amqp { op: "consume", cause }),
                None => ControlFlow::Break(BrokerError::ConsumerCancelled { queue: queue.to_owned() }),
            },
        };
        if let ControlFlow::Break(lost) = step {
            break Err(lost);
        }
        session.start_passes();
    };
    ctx.health.set_consuming(false);

    match &ended {
        Ok(()) => {
            info!(
                in_flight = session.scheduler.in_flight(),
                waiting = session.scheduler.waiting(),
                "shutting down: no new deliveries; waiting ones go back to the queue"
            );
            // Bounded: a broker that stops answering must not hold the shutdown past the
            // grace Kubernetes gives it.
            let cancel = channel.basic_cancel(tag.as_str().into(), BasicCancelOptions::default());
            match tokio::time::timeout(ctx.broker.connect_timeout, cancel).await {
                Ok(Ok(())) => {}
                Ok(Err(e)) => warn!(error = %e, "basic.cancel failed"),
                Err(_) => warn!(after = ?ctx.broker.connect_timeout, "basic.cancel not answered"),
            }
        }
        Err(e) => warn!(
            error = %e,
            in_flight = session.scheduler.in_flight(),
            "connection lost: finishing passes in flight; their deliveries will be redelivered"
        ),
    }
    session.drain().await;
    if ended.is_ok() {
        for (broker, what) in [(&*publisher, "publishing"), (&consuming, "consuming")] {
            if let Err(e) = broker.close().await {
                warn!(error = %e, "closing the {what} connection failed");
            }
        }
    }
    ended.map_err(SessionError::Lost)
}

/// The tasks of a session: passes, and settlements of deliveries that start none. Each
/// pass task holds its experiment in the scheduler until it ends.
#[derive(Default)]
struct Tasks {
    running: JoinSet<()>,
    holding: HashMap<Id, String>,
}

impl Tasks {
    /// Runs `task`; while it runs, `experiment` (if any) is held in the scheduler.
    fn spawn(
        &mut self,
        task: impl Future<Output = ()> + Send + 'static,
        experiment: Option<String>,
    ) {
        let id = self.running.spawn(task).id();
        if let Some(experiment) = experiment {
            self.holding.insert(id, experiment);
        }
    }

    /// The next task to end, and the experiment it held.
    async fn join_next(&mut self) -> Option<Option<String>> {
        let done = self.running.join_next_with_id().await?;
        let id = match done {
            Ok((id, ())) => id,
            Err(e) => {
                error!(error = %e, "a pass task failed; its deliveries stay unacked");
                e.id()
            }
        };
        Some(self.holding.remove(&id))
    }
}

/// A session while it consumes: one method per event of its loop.
struct Consuming<'c> {
    ctx: &'c Context,
    settler: Arc<Settler>,
    scheduler: Scheduler<Received>,
    tasks: Tasks,
}

impl<'c> Consuming<'c> {
    fn new(ctx: &'c Context, publisher: Arc<Broker>) -> Self {
        let settler = Settler::new(
            publisher,
            SettlerContext {
                topology: ctx.topology.clone(),
                host: ctx.host.clone(),
                ack_deadline: ctx.broker.ack_deadline,
                follow_ups: ctx.follow_ups.clone(),
                metrics: ctx.metrics.clone(),
                health: ctx.health.clone(),
            },
        );
        Consuming {
            ctx,
            settler: Arc::new(settler),
            scheduler: Scheduler::new(ctx.max_in_flight),
            tasks: Tasks::default(),
        }
    }

    /// A task ended: the experiment it held may start its next pass.
    fn task_done(&mut self, held: Option<String>) {
        if let Some(experiment) = held {
            self.scheduler.finish(&experiment);
        }
    }

    /// Beats for `/healthz`, ends the session if copies can no longer go out, and gives back
    /// the deliveries that waited for a pass up to the ack deadline.
    fn tick(&mut self) -> ControlFlow<BrokerError> {
        self.ctx.health.beat();
        if let Err(e) = self.settler.usable() {
            return ControlFlow::Break(e);
        }
        let (now, deadline) = (Instant::now(), self.ctx.broker.ack_deadline);
        for job in self
            .scheduler
            .take_waiting(|j| now >= j.delivery.received_at + deadline)
        {
            self.give_back(job);
        }
        ControlFlow::Continue(())
    }

    /// An event of the publishing connection: an error ends the session; a block by a
    /// resource alarm is logged (copies wait for it within their deadline).
    fn publisher_event(&mut self, event: lapin::Event) -> ControlFlow<BrokerError> {
        match event {
            lapin::Event::Error(cause) => {
                return ControlFlow::Break(BrokerError::Amqp {
                    op: "publishing connection",
                    cause,
                });
            }
            lapin::Event::ConnectionBlocked(reason) => warn!(
                reason,
                "RabbitMQ blocked the publishing connection (resource alarm): copies (delay, \
                 dead letter, hand-back) wait for it within their deadline, then their \
                 deliveries go back to the work queue"
            ),
            lapin::Event::ConnectionUnblocked => {
                info!("RabbitMQ unblocked the publishing connection");
            }
            _ => {}
        }
        ControlFlow::Continue(())
    }

    /// A delivery: settled at once if it cannot start a pass (unreadable, too large, a
    /// follow-up not due, not an event), else queued for its experiment's next pass.
    fn delivery(&mut self, delivery: Delivery) {
        let received = Received::new(delivery, &self.ctx.topology, &self.ctx.metrics);
        let settler = self.settler.clone();
        if headers::unreadable(&received.delivery.properties) {
            return self.tasks.spawn(
                async move { settler.reject_unreadable(received).await },
                None,
            );
        }
        let (size, max) = (
            received.delivery.data.len(),
            self.ctx.broker.max_message_bytes,
        );
        if size > max {
            return self.fail_at_once(received, Failure::too_large(size, max));
        }
        if let Some(at) = received.follow_up_at.filter(|at| {
            received.routing_key == EXPERIMENT_PRUNE && follow_up::travels_on(*at, now())
        }) {
            let engine = self.ctx.engine.clone();
            return self.tasks.spawn(
                async move { settler.snooze(&engine, received, at).await },
                None,
            );
        }
        match Event::parse(&received.routing_key, &received.delivery.data) {
            Ok(event) => self.scheduler.push(Job {
                event,
                delivery: received,
            }),
            Err(e) => self.fail_at_once(received, Failure::invalid_message(&e)),
        }
    }

    /// Settles a delivery that failed before any pass.
    fn fail_at_once(&mut self, received: Received, failure: Failure) {
        let outcome = decide(Err(failure), received.attempt, self.ctx.rules);
        let settler = self.settler.clone();
        self.tasks.spawn(
            async move { settler.settle(received, outcome, Subject::default()).await },
            None,
        );
    }

    /// Starts a pass for every experiment the scheduler lets go, giving back the deliveries
    /// too late to start one.
    fn start_passes(&mut self) {
        let deadline = self.ctx.broker.ack_deadline;
        while let Some(mut batch) = self.scheduler.next_batch() {
            let experiment = batch.request.experiment_id.clone();
            let now = Instant::now();
            let (late, fresh): (Vec<_>, Vec<_>) = batch.jobs.into_iter().partition(|j| {
                j.delivery.hand_backs < MAX_HAND_BACKS
                    && too_late_to_start(j.delivery.received_at, now, deadline)
            });
            for job in late {
                self.give_back(job);
            }
            if fresh.is_empty() {
                self.scheduler.finish(&experiment);
                continue;
            }
            batch
                .request
                .run_ids
                .retain(|id| fresh.iter().any(|j| j.event.run_id() == Some(id.as_str())));
            batch.jobs = fresh;
            let pass = run_batch(
                self.ctx.engine.clone(),
                self.settler.clone(),
                self.ctx.rules,
                deadline,
                batch,
            );
            self.tasks.spawn(pass, Some(experiment));
        }
    }

    /// Gives `job` back unstarted, in a task of its own: through the first delay queue, same
    /// attempt; or, once it was handed back [`MAX_HAND_BACKS`] times in a row (the worker is
    /// overloaded), as a transient failure that costs an attempt, so it cannot circulate for
    /// ever.
    fn give_back(&mut self, job: Job<Received>) {
        let (settler, rules) = (self.settler.clone(), self.ctx.rules);
        self.tasks.spawn(
            async move {
                let subject = Subject {
                    experiment_id: Some(job.event.experiment_id()),
                    run_id: job.event.run_id(),
                };
                if job.delivery.hand_backs < MAX_HAND_BACKS {
                    return settler.hand_back(job.delivery, subject).await;
                }
                let failure = Failure::held_too_long(job.event.experiment_id(), MAX_HAND_BACKS);
                let outcome = decide(Err(failure), job.delivery.attempt, rules);
                settler.settle(job.delivery, outcome, subject).await;
            },
            None,
        );
    }

    /// Lets the tasks in flight finish within the shutdown grace; the waiting deliveries are
    /// dropped unacked, so the broker redelivers them.
    async fn drain(self) {
        let Consuming {
            ctx,
            mut tasks,
            scheduler,
            ..
        } = self;
        drain(&mut tasks.running, ctx.shutdown_grace, &ctx.health).await;
        drop(scheduler);
    }
}

/// Lets the passes in flight finish within `grace`; aborts the rest (their deliveries stay
/// unacked, so the broker redelivers them). Beats while it waits.
async fn drain(tasks: &mut JoinSet<()>, grace: Duration, health: &Health) {
    if tasks.is_empty() {
        return;
    }
    let all_done = async { while tasks.join_next().await.is_some() {} };
    let beating = async {
        loop {
            health.beat();
            tokio::time::sleep(TICK).await;
        }
    };
    let finished = tokio::select! {
        finished = tokio::time::timeout(grace, all_done) => finished.is_ok(),
        () = beating => unreachable!("beating never ends"),
    };
    if !finished {
        warn!(
            remaining = tasks.len(),
            grace = ?grace,
            "shutdown grace expired: aborting the passes still running; their deliveries stay unacked"
        );
        tasks.abort_all();
        while tasks.join_next().await.is_some() {}
    }
}

/// A pass gets at least half the deadline: a delivery that has waited longer than that goes
/// back (same attempt) rather than into a pass cut short on its account.
fn too_late_to_start(received_at: Instant, now: Instant, deadline: Duration) -> bool {
    now + deadline / 2 > received_at + deadline
}

/// How a pass ended.
enum Ended {
    Finished(Box<Result<PassReport, PruneError>>),
    Panicked(String),
    /// Cancelled when its oldest delivery reached `broker.ack_deadline`.
    TimedOut,
}

/// Runs one pass and settles every delivery it covers, all at once. A pass still running when
/// its oldest delivery reaches `ack_deadline` is cancelled (the next one resumes where it
/// stopped) and its deliveries handled as a transient failure, so RabbitMQ's consumer_timeout
/// never takes them back and a pass that never fits ends in the dead-letter queue.
async fn run_batch(
    engine: Arc<Engine>,
    settler: Arc<Settler>,
    rules: RetryRules,
    ack_deadline: Duration,
    batch: PassBatch<Received>,
) {
    let PassBatch { request, jobs } = batch;
    let span = info_span!("pass", experiment_id = %request.experiment_id, events = jobs.len());
    async move {
        let started = std::time::Instant::now();
        let oldest = jobs.iter().map(|j| j.delivery.received_at).min();
        let cut_off = oldest.unwrap_or_else(Instant::now) + ack_deadline;
        let ended = tokio::select! {
            result = guarded(engine.run_pass(&request)) => match result {
                Ok(result) => Ended::Finished(Box::new(result)),
                Err(panic) => Ended::Panicked(panic),
            },
            () = tokio::time::sleep_until(cut_off) => Ended::TimedOut,
        };
        let took = started.elapsed();
        match &ended {
            Ended::Finished(result) => {
                settler
                    .metrics()
                    .pass_finished(run_counts(result), jobs.len(), took)
            }
            Ended::Panicked(panic) => {
                error!(panic = %panic, "the pass panicked: its events are retried after a delay");
                settler
                    .metrics()
                    .pass_interrupted("panicked", jobs.len(), took);
            }
            Ended::TimedOut => {
                warn!(
                    ack_deadline = ?ack_deadline,
                    "the pass was still running at broker.ack_deadline: cancelled, its events \
                     are retried after a delay"
                );
                settler
                    .metrics()
                    .pass_interrupted("timed_out", jobs.len(), took);
            }
        }
        // Runs held back by time (a grace window, `older_than`): the pass's work is done only
        // once its follow-up is with the broker.
        let next_look = match &ended {
            Ended::Finished(result) if !request.dry_run => result
                .as_ref()
                .as_ref()
                .ok()
                .and_then(|r| r.ranking.next_look()),
            _ => None,
        };
        let follow_up = match next_look {
            Some(at) => settler
                .follow_up(
                    &engine,
                    &request.experiment_id,
                    &request.policy,
                    follow_up::due(at, now()),
                )
                .await
                .map(drop)
                .map_err(|e| Failure::follow_up(&request.experiment_id, &e.to_string())),
            None => Ok(()),
        };
        let settled = jobs.into_iter().map(|job| {
            let failure = match &ended {
                Ended::Finished(result) => {
                    job_result(result, &request.experiment_id, job.event.run_id())
                        .and_then(|()| follow_up.clone())
                }
                Ended::Panicked(panic) => Err(Failure::panic(&request.experiment_id, panic)),
                Ended::TimedOut => Err(Failure::pass_timeout(&request.experiment_id, ack_deadline)),
            };
            let outcome = decide(failure, job.delivery.attempt, rules);
            let settler = &settler;
            let experiment_id = request.experiment_id.as_str();
            async move {
                let subject = Subject {
                    experiment_id: Some(experiment_id),
                    run_id: job.event.run_id(),
                };
                settler.settle(job.delivery, outcome, subject).await;
            }
        });
        futures::future::join_all(settled).await;
    }
    .instrument(span)
    .await
}

/// What a successful pass decided, for the runs counter.
fn run_counts(result: &Result<PassReport, PruneError>) -> Option<metrics::RunCounts> {
    let ranking = &result.as_ref().ok()?.ranking;
    let empty_folder = ranking
        .runs
        .iter()
        .filter(|r| r.rule == Rule::Empty)
        .count();
    Some(metrics::RunCounts {
        evaluated: ranking.runs.len(),
        kept: ranking.count("keep"),
        in_grace: ranking.count("grace"),
        protected: ranking.count("protected"),
        skipped: ranking.count("skipped") - empty_folder,
        empty_folder,
    })
}

/// Runs `pass`, turning a panic into its message, so the deliveries it covers are still
/// settled and the worker keeps running.
async fn guarded<T>(pass: impl Future<Output = T>) -> Result<T, String> {
    AssertUnwindSafe(pass)
        .catch_unwind()
        .await
        .map_err(|panic| {
            panic
                .downcast_ref::<&str>()
                .map(|s| (*s).to_owned())
                .or_else(|| panic.downcast_ref::<String>().cloned())
                .unwrap_or_else(|| "(no message)".to_owned())
        })
}

/// What a pass means for one of the events it covered: a run.finished event naming a run of
/// another experiment fails on its own even when the pass succeeded for the others.
fn job_result(
    result: &Result<PassReport, PruneError>,
    experiment_id: &str,
    run_id: Option<&str>,
) -> Result<(), Failure> {
    match (result, run_id) {
        (Ok(report), Some(run)) if report.foreign_run_ids.iter().any(|f| f == run) => {
            Err(Failure::foreign_run(experiment_id, run))
        }
        (Ok(_), _) => Ok(()),
        (Err(PruneError::RunNotInExperiment { .. }), Some(run)) => {
            Err(Failure::foreign_run(experiment_id, run))
        }
        (Err(e), _) => Err(Failure::pass(e)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::worker::outcome::Outcome;
    use std::sync::atomic::{AtomicUsize, Ordering};

    /// Tasks that each finish after their delay, counting those that did.
    fn tasks(delays: &[u64], done: &Arc<AtomicUsize>) -> JoinSet<()> {
        let mut tasks = JoinSet::new();
        for &secs in delays {
            let done = done.clone();
            tasks.spawn(async move {
                tokio::time::sleep(Duration::from_secs(secs)).await;
                done.fetch_add(1, Ordering::SeqCst);
            });
        }
        tasks
    }

    /// Drains `running` with a grace of `secs` seconds; how long it took.
    async fn drain_within(running: &mut JoinSet<()>, secs: u64) -> Duration {
        let started = Instant::now();
        let health = Health::new(Duration::from_secs(60), &Metrics::new());
        drain(running, Duration::from_secs(secs), &health).await;
        started.elapsed()
    }

    #[tokio::test(start_paused = true)]
    async fn drain_waits_for_the_passes_that_finish_within_the_grace() {
        let done = Arc::new(AtomicUsize::new(0));
        let mut running = tasks(&[1, 3], &done);
        assert_eq!(drain_within(&mut running, 5).await, Duration::from_secs(3));
        assert_eq!(done.load(Ordering::SeqCst), 2);
        assert!(running.is_empty());
    }

    #[tokio::test(start_paused = true)]
    async fn drain_aborts_what_is_still_running_when_the_grace_ends() {
        let done = Arc::new(AtomicUsize::new(0));
        let mut running = tasks(&[1, 30], &done);
        assert_eq!(drain_within(&mut running, 5).await, Duration::from_secs(5));
        assert!(running.is_empty(), "the late pass was aborted");
        tokio::time::sleep(Duration::from_secs(60)).await;
        assert_eq!(
            done.load(Ordering::SeqCst),
            1,
            "the aborted pass never finished"
        );
    }

    #[tokio::test]
    async fn a_panicking_pass_becomes_its_message() {
        assert_eq!(guarded(async { 7 }).await, Ok(7));
        let panicked = guarded(async {
            if true {
                panic!("index out of bounds: {}", 3);
            }
        })
        .await;
        assert_eq!(panicked, Err("index out of bounds: 3".to_owned()));
    }

    #[test]
    fn a_delivery_starts_a_pass_only_with_half_the_deadline_left() {
        let deadline = Duration::from_secs(600);
        let t0 = Instant::now();
        let at = |secs| t0 + Duration::from_secs(secs);
        assert!(!too_late_to_start(t0, at(0), deadline));
        assert!(!too_late_to_start(t0, at(300), deadline));
        assert!(too_late_to_start(t0, at(301), deadline));
    }

    #[test]
    fn a_pass_cut_at_the_deadline_is_retried_then_dead_lettered_not_looped() {
        let rules = RetryRules {
            max_attempts: 2,
            delay_steps: 1,
        };
        let failure = || Err(Failure::pass_timeout("12", Duration::from_secs(900)));
        assert!(matches!(
            decide(failure(), 1, rules),
            Outcome::Delay { step: 0, .. }
        ));
        let Outcome::DeadLetter { failure, .. } = decide(failure(), 2, rules) else {
            panic!("dead-lettered once out of attempts");
        };
        assert_eq!(failure.kind, "pass_timeout");
        assert!(
            failure.message.contains("broker.ack_deadline"),
            "{}",
            failure.message
        );
    }

    #[test]
    fn an_event_handed_back_too_often_costs_an_attempt() {
        let rules = RetryRules {
            max_attempts: 2,
            delay_steps: 1,
        };
        let failure = || Err(Failure::held_too_long("12", MAX_HAND_BACKS));
        assert!(matches!(
            decide(failure(), 1, rules),
            Outcome::Delay { step: 0, .. }
        ));
        let Outcome::DeadLetter { failure, .. } = decide(failure(), 2, rules) else {
            panic!("dead-lettered once out of attempts");
        };
        assert_eq!(failure.kind, "held_too_long");
    }

    #[test]
    fn a_panic_is_retried_then_dead_lettered_not_looped() {
        let rules = RetryRules {
            max_attempts: 3,
            delay_steps: 2,
        };
        let failure = || Err(Failure::panic("12", "boom"));
        assert!(matches!(
            decide(failure(), 1, rules),
            Outcome::Delay { step: 0, .. }
        ));
        assert!(matches!(
            decide(failure(), 2, rules),
            Outcome::Delay { step: 1, .. }
        ));
        let Outcome::DeadLetter { failure, attempts } = decide(failure(), 3, rules) else {
            panic!("dead-lettered once out of attempts");
        };
        assert_eq!((failure.kind, attempts), ("panic", 3));
        assert!(
            failure.message.contains("experiment 12 panicked: boom"),
            "{}",
            failure.message
        );
    }
}
