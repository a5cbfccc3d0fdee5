//! A run out of the top N that finished less than `grace` ago stays, and the pass that left it
//! schedules its own follow-up: after one event from the test, the run is pruned once its window
//! has ended, unless someone tagged it to keep in between. A burst schedules one follow-up. A
//! run too recent for `older_than` is revisited the same way once it comes of age.

use std::time::Duration;

use model_pruner::settings::Settings;
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

use crate::helpers::{TestApp, counted, run_finished, settings, wait_drained};
use crate::support::eventually::{eventually, eventually_every};
use crate::support::mlflow_fixtures::{ExperimentFixture, RunSpec, now_ms};
use crate::support::world::{Layout, METRIC, ModelRun, World};

const GRACE_MS: i64 = 15_000;

/// The worker suite's settings with a second, long delay step: a follow-up due within it rides
/// that queue with its own expiration.
fn grace_settings() -> Settings {
    let mut s = settings();
    s.retry.delays = vec![
        Duration::from_secs(1).into(),
        Duration::from_secs(60).into(),
    ];
    s
}

async fn experiment(world: &World, grace: &str) -> ExperimentFixture {
    world
        .mlflow
        .experiment_with_tags("worker-grace", &[("model_pruner.grace", grace)])
        .await
        .unwrap()
}

async fn model_run(
    world: &World,
    exp: &ExperimentFixture,
    i: usize,
    acc: f64,
    end: i64,
) -> ModelRun {
    let spec = RunSpec::new(format!("run-{i}"))
        .metric(METRIC, acc)
        .end_time(Some(end));
    world.model_run(exp, Layout::Classic, spec, 2).await
}

fn follow_ups_scheduled(app: &TestApp) -> f64 {
    counted(app, "model_pruner_follow_ups_scheduled_total", None)
}

#[tokio::test]
async fn a_run_in_grace_is_pruned_by_the_scheduled_follow_up_once_its_window_ends() {
    let world = World::new("worker");
    let exp = experiment(&world, "15s").await;
    let old = 1_700_000_000_000;
    let now = now_ms();
    let best = model_run(&world, &exp, 0, 0.9, old).await;
    let poor = model_run(&world, &exp, 1, 0.1, old + 1).await;
    let fresh = model_run(&world, &exp, 2, 0.2, now).await;
    let rescued = model_run(&world, &exp, 3, 0.3, now).await;

    let app = TestApp::spawn(grace_settings()).await;
    app.publish("run.finished", &run_finished(&exp, &fresh, 1))
        .await;

    // The first pass prunes the old loser and leaves the two fresh ones in their window.
    wait_marked(
        &world,
        &poor,
        Duration::from_secs(30),
        "the old loser was not pruned",
    )
    .await;
    assert!(
        now_ms() < now + GRACE_MS,
        "the first pass came after the window; nothing left to check"
    );
    for run in [&best, &fresh, &rescued] {
        assert!(!world.marked(run).await);
        assert_eq!(world.objects(run).await, 2);
    }
    // Someone keeps one of them within the window.
    world
        .mlflow
        .set_tag(&rescued.run.run_id, "model_pruner.keep", "true")
        .await
        .unwrap();

    // No further event: the follow-up prunes the other once its window has ended.
    wait_marked(
        &world,
        &fresh,
        Duration::from_secs(60),
        "the run in grace was never pruned",
    )
    .await;
    assert_eq!(world.objects(&fresh).await, 0);
    let tags = world.mlflow.run_tags(&fresh.run.run_id).await.unwrap();
    let deleted_at = OffsetDateTime::parse(&tags["model_pruner.deleted_at"], &Rfc3339).unwrap();
    let after_end = (deleted_at.unix_timestamp_nanos() / 1_000_000) as i64 - now;
    assert!(
        after_end >= GRACE_MS,
        "pruned {after_end} ms after its end, within grace"
    );
    // It rode the 60 s delay queue with its own expiration, not the queue's.
    assert!(
        after_end < GRACE_MS + 20_000,
        "pruned {after_end} ms after its end"
    );
    assert!(
        tags["model_pruner.reason"] == "rank 3 of 3 by accuracy max, keep_top 1, grace 15s",
        "{tags:?}"
    );

    for run in [&best, &rescued] {
        assert!(!world.marked(run).await);
        assert_eq!(world.objects(run).await, 2);
    }
    wait_drained(&app, Duration::from_secs(30)).await;
    let dead = app.topology.dead_letter_queue.clone();
    assert!(app.next_message(&dead, Duration::ZERO).await.is_none());
    // The follow-up's own pass found nothing left in grace: nothing more scheduled.
    assert_eq!(follow_ups_scheduled(&app), 1.0);
    app.cleanup().await;
}

#[tokio::test]
async fn a_burst_of_events_schedules_one_follow_up() {
    let world = World::new("worker");
    let exp = experiment(&world, "1h").await;
    let now = now_ms();
    let mut runs = Vec::new();
    for i in 0..4 {
        runs.push(model_run(&world, &exp, i, 0.1 * (i + 1) as f64, now).await);
    }

    let app = TestApp::spawn(grace_settings()).await;
    for _ in 0..5 {
        for run in &runs {
            app.publish("run.finished", &run_finished(&exp, run, 1))
                .await;
        }
    }
    wait_drained(&app, Duration::from_secs(60)).await;

    assert_eq!(follow_ups_scheduled(&app), 1.0);
    // The follow-up waits in the longest delay queue (an hour is longer than every step).
    let longest = app.topology.delay_queues[1].name.clone();
    assert_eq!(app.queue_len(&longest).await, 1);
    for run in &runs {
        assert!(!world.marked(run).await);
        assert_eq!(world.objects(run).await, 2);
    }
    app.cleanup().await;
}

#[tokio::test]
async fn a_window_longer_than_every_delay_is_waited_out_in_legs_without_passes() {
    let world = World::new("worker");
    let exp = experiment(&world, "5s").await;
    let now = now_ms();
    let best = model_run(&world, &exp, 0, 0.9, 1_700_000_000_000).await;
    let fresh = model_run(&world, &exp, 1, 0.1, now).await;

    // One delay step of a second: the follow-up travels on until it is due.
    let app = TestApp::spawn(settings()).await;
    app.publish("run.finished", &run_finished(&exp, &fresh, 1))
        .await;
    wait_marked(
        &world,
        &fresh,
        Duration::from_secs(60),
        "the run in grace was never pruned",
    )
    .await;
    let tags = world.mlflow.run_tags(&fresh.run.run_id).await.unwrap();
    let deleted_at = OffsetDateTime::parse(&tags["model_pruner.deleted_at"], &Rfc3339).unwrap();
    let after_end = (deleted_at.unix_timestamp_nanos() / 1_000_000) as i64 - now;
    assert!(
        after_end >= 5_000,
        "pruned {after_end} ms after its end, within grace"
    );
    assert!(!world.marked(&best).await);

    wait_drained(&app, Duration::from_secs(30)).await;
    let snoozed = ("outcome", "snoozed");
    assert!(counted(&app, "model_pruner_messages_finished_total", Some(snoozed)) >= 2.0);
    // Two passes: the event's, and the follow-up's once due; the legs ran none.
    let passes = counted(&app, "model_pruner_passes_total", Some(("outcome", "ok")));
    assert_eq!(passes, 2.0);
    assert_eq!(follow_ups_scheduled(&app), 1.0);
    app.cleanup().await;
}

#[tokio::test]
async fn a_run_too_recent_for_older_than_is_pruned_by_a_follow_up_once_it_comes_of_age() {
    let world = World::new("worker");
    let exp = world
        .mlflow
        .experiment_with_tags("worker-older-than", &[("model_pruner.older_than", "5s")])
        .await
        .unwrap();
    let now = now_ms();
    let best = model_run(&world, &exp, 0, 0.9, 1_700_000_000_000).await;
    let young = model_run(&world, &exp, 1, 0.1, now).await;

    // The event's pass finds the young run no candidate yet and deletes nothing; no further
    // event comes, as in an experiment whose pipelines went quiet.
    let app = TestApp::spawn(settings()).await;
    app.publish("run.finished", &run_finished(&exp, &young, 1))
        .await;
    wait_marked(
        &world,
        &young,
        Duration::from_secs(60),
        "the run held back by older_than was never revisited",
    )
    .await;
    let tags = world.mlflow.run_tags(&young.run.run_id).await.unwrap();
    let deleted_at = OffsetDateTime::parse(&tags["model_pruner.deleted_at"], &Rfc3339).unwrap();
    let after_end = (deleted_at.unix_timestamp_nanos() / 1_000_000) as i64 - now;
    assert!(
        after_end >= 5_000,
        "pruned {after_end} ms after its end, too young"
    );
    assert!(!world.marked(&best).await);
    wait_drained(&app, Duration::from_secs(30)).await;
    assert_eq!(follow_ups_scheduled(&app), 1.0);
    app.cleanup().await;
}

/// Follow-up legs waiting in the app's delay queues.
/// Waits until `run` is marked pruned, looking every 250 ms (MLflow is not hurried); panics
/// with `what` after `within`.
async fn wait_marked(world: &World, run: &ModelRun, within: Duration, what: &str) {
    let every = Duration::from_millis(250);
    eventually_every(within, every, what, async || world.marked(run).await).await;
}

async fn legs(app: &TestApp) -> u32 {
    let mut n = 0;
    for q in &app.topology.delay_queues {
        n += app.queue_len(&q.name).await;
    }
    n
}

/// Waits until the delay queues hold exactly one leg in several samples in a row.
async fn one_chain_left(app: &TestApp, timeout: Duration) {
    let mut in_a_row = 0;
    eventually_every(
        timeout,
        Duration::from_millis(300),
        "not one follow-up leg in flight",
        async || {
            let n = legs(app).await;
            in_a_row = if n == 1 { in_a_row + 1 } else { 0 };
            if in_a_row >= 5 {
                Ok(())
            } else {
                Err(format!("{n} follow-up legs in flight"))
            }
        },
    )
    .await;
}

#[tokio::test]
async fn follow_ups_collapse_to_one_chain_across_replicas_and_restarts() {
    let world = World::new("worker");
    let exp = experiment(&world, "1h").await;
    model_run(&world, &exp, 0, 0.9, 1_700_000_000_000).await;
    let fresh = model_run(&world, &exp, 1, 0.1, now_ms()).await;
    // Legs of two seconds: a chain shows itself (or stops) every two seconds.
    let mut s = settings();
    s.retry.delays = vec![Duration::from_secs(1).into(), Duration::from_secs(2).into()];

    // One replica's pass schedules the chain and claims it.
    let mut first = TestApp::new(s.clone()).await;
    first.start(s.clone());
    first
        .publish("run.finished", &run_finished(&exp, &fresh, 1))
        .await;
    eventually(Duration::from_secs(30), "no follow-up", async || {
        follow_ups_scheduled(&first) >= 1.0
    })
    .await;
    first.stop(Duration::from_secs(30)).await.unwrap();
    let tags = world.mlflow.get_experiment(&exp.id).await.unwrap();
    let claim = tags["experiment"]["tags"]
        .as_array()
        .unwrap()
        .iter()
        .find(|t| {
            t["key"]
                .as_str()
                .is_some_and(|k| k.starts_with("model_pruner.follow_up."))
        })
        .expect("the chain is claimed on the experiment")
        .clone();

    // Another replica (or the same one restarted, its memory gone) runs a pass over the same
    // experiment: the claim covers it, no second chain.
    let mut second = TestApp::new(s.clone()).await;
    second.start(s);
    second
        .publish("run.finished", &run_finished(&exp, &fresh, 1))
        .await;
    let passes = ("outcome", "ok");
    eventually(Duration::from_secs(30), "no pass", async || {
        counted(&second, "model_pruner_passes_total", Some(passes)) >= 1.0
    })
    .await;
    assert_eq!(follow_ups_scheduled(&second), 0.0);
    one_chain_left(&second, Duration::from_secs(20)).await;

    // A duplicate chain (two replicas that raced past the claim) stops at its next leg.
    let due = now_ms() + 3_600_000;
    let body = model_pruner::domain::event::Event::ExperimentPrune(crate::support::world::sweep(
        &exp,
        crate::support::world::keep(1),
    ))
    .to_body();
    let duplicate = model_pruner::broker::headers::follow_up(
        "experiment.prune",
        model_pruner::domain::time::EpochMs::from_millis(due),
        "dup",
    );
    second
        .broker
        .publish_to_queue(
            &second.topology.delay_queues[0].name,
            &body,
            lapin::BasicProperties::default().with_headers(duplicate),
        )
        .await
        .unwrap();
    let superseded = ("outcome", "superseded");
    eventually(
        Duration::from_secs(20),
        "the duplicate chain was not stopped",
        async || {
            counted(
                &second,
                "model_pruner_messages_finished_total",
                Some(superseded),
            ) >= 1.0
        },
    )
    .await;
    one_chain_left(&second, Duration::from_secs(20)).await;
    let tags = world.mlflow.get_experiment(&exp.id).await.unwrap();
    assert!(
        tags["experiment"]["tags"]
            .as_array()
            .unwrap()
            .contains(&claim),
        "the surviving chain is the claimed one"
    );
    second.cleanup().await;
    first.cleanup().await;
}
