//! One broker session's life: connect, declare, consume, schedule passes, settle deliveries,
//! hand back what is held too long, and on shutdown or connection loss drain the passes in
//! flight.
//!
//! A session has two connections: RabbitMQ blocks a connection that publishes while a memory
//! or disk alarm is on, and a blocked connection carries no acks either. Copies (delay,
//! dead letter, hand-back) go out on the publishing one, acks and nacks on the consuming one,
//! which never publishes.

use std::collections::HashMap;
use std::panic::AssertUnwindSafe;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::{FutureExt as _, StreamExt};
use lapin::options::BasicCancelOptions;
use tokio::task::{Id, JoinSet};
use tokio::time::{Instant, MissedTickBehavior};
use tokio_util::sync::CancellationToken;
use tracing::{Instrument, error, info, info_span, warn};

use super::follow_up::{self, FollowUps};
use super::outcome::{Failure, RetryRules, decide};
use super::scheduler::{Job, PassBatch, Scheduler};
use super::settle::{Received, Settler, Subject};
use crate::broker::{Broker, BrokerError, Topology, headers};
use crate::domain::event::{EXPERIMENT_PRUNE, Event};
use crate::domain::ranking::Rule;
use crate::engine::{Engine, PassReport, PruneError, now_ms};
use crate::metrics::{self, Health, Metrics, Refused};
use crate::settings::BrokerSettings;

/// How often the session beats for `/healthz` and looks for deliveries held too long.
const TICK: Duration = Duration::from_secs(1);
/// Hand-backs of a delivery that never started before it costs an attempt.
const MAX_HAND_BACKS: u32 = 3;

/// What a session needs; shared by every session of a worker.
pub struct Context {
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
pub enum SessionError {
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
    pub fn broker(&self) -> &BrokerError {
        match self {
            SessionError::Declare(e) | SessionError::Connect(e) | SessionError::Lost(e) => e,
        }
    }
}

/// Connects, consumes until `shutdown` (returns `Ok`) or until a connection fails.
pub async fn run(ctx: &Context, shutdown: &CancellationToken) -> Result<(), SessionError> {
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
    let settler = Arc::new(Settler {
        broker: Arc::new(publisher),
        topology: ctx.topology.clone(),
        host: ctx.host.clone(),
        failed_republications: Default::default(),
        ack_deadline: ctx.broker.ack_deadline,
        topology_gone: Default::default(),
        follow_ups: ctx.follow_ups.clone(),
        metrics: ctx.metrics.clone(),
        health: ctx.health.clone(),
    });
    let deadline = ctx.broker.ack_deadline;
    let mut scheduler: Scheduler<Received> = Scheduler::new(ctx.max_in_flight);
    // The experiment each task holds (none for an invalid message or a hand-back), to free it
    // when done.
    let mut tasks: JoinSet<()> = JoinSet::new();
    let mut holding: HashMap<Id, Option<String>> = HashMap::new();
    let mut tick = tokio::time::interval(TICK);
    tick.set_missed_tick_behavior(MissedTickBehavior::Delay);

    let ended = loop {
        tokio::select! {
            biased;
            () = shutdown.cancelled() => break Ok(()),
            Some(done) = tasks.join_next_with_id() => {
                let id = match done {
                    Ok((id, ())) => id,
                    Err(e) => {
                        error!(error = %e, "a pass task failed; its deliveries stay unacked");
                        e.id()
                    }
                };
                if let Some(Some(experiment)) = holding.remove(&id) {
                    scheduler.finish(&experiment);
                }
            }
            _ = tick.tick() => {
                ctx.health.beat();
                // lapin reports an error only to a listener that existed when it happened.
                if !settler.broker.is_connected() {
                    break Err(BrokerError::Closed { connection: "publishing" });
                }
                if settler.topology_gone.load(Ordering::Relaxed) {
                    break Err(BrokerError::TopologyGone);
                }
                let now = Instant::now();
                for job in scheduler.take_waiting(|j| now >= j.delivery.received_at + deadline) {
                    give_back(&mut tasks, &mut holding, &settler, ctx.rules, job);
                }
            }
            Some(event) = publisher_events.next() => match event {
                lapin::Event::Error(source) => {
                    break Err(BrokerError::Amqp { op: "publishing connection", cause: source });
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
            },
            next = consumer.next() => match next {
                Some(Ok(delivery)) => {
                    let received = Received::new(delivery, &ctx.topology, &ctx.metrics);
                    if headers::unreadable(&received.delivery.properties) {
                        let settler = settler.clone();
                        let task = tasks.spawn(async move { settler.reject_unreadable(received).await });
                        holding.insert(task.id(), None);
                        continue;
                    }
                    let size = received.delivery.data.len();
                    if size > ctx.broker.max_message_bytes {
                        let failure = Failure::too_large(size, ctx.broker.max_message_bytes);
                        let outcome = decide(Err(failure), received.attempt, ctx.rules);
                        let settler = settler.clone();
                        let task = tasks.spawn(async move {
                            settler.settle(received, outcome, Subject::default()).await;
                        });
                        holding.insert(task.id(), None);
                        continue;
                    }
                    if let Some(at) = received.follow_up_at.filter(|at| {
                        received.routing_key == EXPERIMENT_PRUNE
                            && follow_up::travels_on(*at, now_ms())
                    }) {
                        let (settler, engine) = (settler.clone(), ctx.engine.clone());
                        let task = tasks.spawn(async move { settler.snooze(&engine, received, at).await });
                        holding.insert(task.id(), None);
                        continue;
                    }
                    match Event::parse(&received.routing_key, &received.delivery.data) {
                        Ok(event) => scheduler.push(Job { event, delivery: received }),
                        Err(e) => {
                            let outcome =
                                decide(Err(Failure::invalid_message(&e)), received.attempt, ctx.rules);
                            let settler = settler.clone();
                            let task = tasks.spawn(async move {
                                settler.settle(received, outcome, Subject::default()).await;
                            });
                            holding.insert(task.id(), None);
                        }
                    }
                }
                Some(Err(cause)) => break Err(BrokerError::Amqp { op: "consume", cause }),
                None => break Err(BrokerError::ConsumerCancelled { queue: queue.to_owned() }),
            },
        }
        while let Some(mut batch) = scheduler.next_batch() {
            let experiment = batch.request.experiment_id.clone();
            let now = Instant::now();
            let (late, fresh): (Vec<_>, Vec<_>) = batch.jobs.into_iter().partition(|j| {
                j.delivery.hand_backs < MAX_HAND_BACKS
                    && too_late_to_start(j.delivery.received_at, now, deadline)
            });
            for job in late {
                give_back(&mut tasks, &mut holding, &settler, ctx.rules, job);
            }
            if fresh.is_empty() {
                scheduler.finish(&experiment);
                continue;
            }
            batch
                .request
                .run_ids
                .retain(|id| fresh.iter().any(|j| j.event.run_id() == Some(id.as_str())));
            batch.jobs = fresh;
            let task = tasks.spawn(run_batch(
                ctx.engine.clone(),
                settler.clone(),
                ctx.rules,
                deadline,
                batch,
            ));
            holding.insert(task.id(), Some(experiment));
        }
    };
    ctx.health.set_consuming(false);

    match &ended {
        Ok(()) => {
            info!(
                in_flight = scheduler.in_flight(),
                waiting = scheduler.waiting(),
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
            in_flight = scheduler.in_flight(),
            "connection lost: finishing passes in flight; their deliveries will be redelivered"
        ),
    }
    drain(&mut tasks, ctx.shutdown_grace, &ctx.health).await;
    drop(scheduler);
    if ended.is_ok() {
        for (broker, what) in [(&*settler.broker, "publishing"), (&consuming, "consuming")] {
            if let Err(e) = broker.close().await {
                warn!(error = %e, "closing the {what} connection failed");
            }
        }
    }
    ended.map_err(SessionError::Lost)
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

/// Gives `job` back unstarted, in a task of its own: through the first delay queue, same
/// attempt; or, once it was handed back [`MAX_HAND_BACKS`] times in a row (the worker is
/// overloaded), as a transient failure that costs an attempt, so it cannot circulate for ever.
fn give_back(
    tasks: &mut JoinSet<()>,
    holding: &mut HashMap<Id, Option<String>>,
    settler: &Arc<Settler>,
    rules: RetryRules,
    job: Job<Received>,
) {
    let settler = settler.clone();
    let task = tasks.spawn(async move {
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
    });
    holding.insert(task.id(), None);
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
                    .metrics
                    .pass_finished(run_counts(result), jobs.len(), took)
            }
            Ended::Panicked(panic) => {
                error!(panic = %panic, "the pass panicked: its events are retried after a delay");
                settler
                    .metrics
                    .pass_interrupted("panicked", jobs.len(), took);
            }
            Ended::TimedOut => {
                warn!(
                    ack_deadline = ?ack_deadline,
                    "the pass was still running at broker.ack_deadline: cancelled, its events \
                     are retried after a delay"
                );
                settler
                    .metrics
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
                    follow_up::due(at, now_ms()),
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
    use std::sync::atomic::AtomicUsize;

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
