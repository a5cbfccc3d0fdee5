//! Store faults injected by a proxy in front of the real S3 store: short outages are retried
//! inside the worker, lasting ones are delayed and dead-lettered after the last attempt, and
//! refusals are dead-lettered at once without a retry.

use std::time::Duration;

use model_pruner::broker::headers;
use model_pruner::settings::Settings;

use crate::helpers::{TestApp, attempts, header, prune, settings};
use crate::support::mlflow_fixtures::ExperimentFixture;
use crate::support::proxy::{Action, DELETE_OBJECTS, Proxy};
use crate::support::world::{Layout, ModelRun, World};

/// Runs ranked 0.1, 0.2, ... with 3 files each, and settings whose store is `proxy`.
async fn scene(
    world: &World,
    proxy: &Proxy,
    runs: usize,
) -> (ExperimentFixture, Vec<ModelRun>, Settings) {
    let exp = world.experiment().await;
    let values: Vec<f64> = (1..=runs).map(|i| 0.1 * i as f64).collect();
    let models = world.ranked_runs(&exp, Layout::Classic, &values).await;
    let mut s = settings();
    s.store.endpoint = Some(proxy.url().into());
    (exp, models, s)
}

#[tokio::test]
async fn transient_delete_failures_are_retried_in_process_and_the_prune_completes() {
    let world = World::new("worker");
    let proxy = Proxy::store().await;
    proxy.rule(DELETE_OBJECTS, Action::Fail(503, "SlowDown"), Some(2));
    let (exp, runs, mut s) = scene(&world, &proxy, 5).await;
    s.retry.in_process_attempts = 3;
    let mut app = TestApp::spawn(s).await;

    app.publish("experiment.prune", &prune(&exp, 2, false))
        .await;
    world
        .wait_pruned(&runs, &[3, 4], Duration::from_secs(60))
        .await;
    app.stop(Duration::from_secs(30)).await.expect("clean stop");

    world.assert_kept(&runs, &[3, 4]).await;
    assert_eq!(proxy.injected(), 2, "both injected failures were hit");
    // The three losers' files share one DeleteObjects: two failures, then the success.
    assert_eq!(proxy.count(DELETE_OBJECTS), 2 + 1);
    let names = [
        app.topology.work_queue.clone(),
        app.topology.dead_letter_queue.clone(),
        app.topology.delay_queues[0].name.clone(),
    ];
    for queue in names {
        assert_eq!(app.queue_len(&queue).await, 0, "{queue} is empty");
    }
    app.cleanup().await;
    exp.delete().await.expect("delete experiment");
}

#[tokio::test]
async fn lasting_delete_failures_are_dead_lettered_as_transient_after_max_attempts() {
    let world = World::new("worker");
    let proxy = Proxy::store().await;
    proxy.rule(DELETE_OBJECTS, Action::Fail(500, "InternalError"), None);
    // Three runs, keep two: one DeleteObjects per attempt.
    let (exp, runs, mut s) = scene(&world, &proxy, 3).await;
    s.retry.max_attempts = 3;
    s.retry.in_process_attempts = 1;
    let app = TestApp::spawn(s).await;

    let body = prune(&exp, 2, false);
    app.publish("experiment.prune", &body).await;
    let dead = app.next_dead_letter(Duration::from_secs(60)).await;
    assert_eq!(dead.data, body);
    assert_eq!(attempts(&dead), Some(3));
    assert_eq!(
        header(&dead, headers::ERROR_CLASS).as_deref(),
        Some("transient")
    );
    assert_eq!(header(&dead, headers::ERROR_KIND).as_deref(), Some("store"));
    assert_eq!(proxy.count(DELETE_OBJECTS), 3, "one request per attempt");

    assert_eq!(
        world.objects(&runs[0]).await,
        3,
        "the loser's files are intact"
    );
    assert!(!world.marked(&runs[0]).await, "the loser is not marked");
    app.cleanup().await;
    exp.delete().await.expect("delete experiment");
}

#[tokio::test]
async fn a_refused_delete_is_dead_lettered_at_once_without_retry() {
    let world = World::new("worker");
    let proxy = Proxy::store().await;
    proxy.rule(DELETE_OBJECTS, Action::Fail(403, "AccessDenied"), None);
    let (exp, runs, mut s) = scene(&world, &proxy, 3).await;
    s.retry.max_attempts = 3;
    s.retry.in_process_attempts = 3;
    let app = TestApp::spawn(s).await;

    let body = prune(&exp, 2, false);
    app.publish("experiment.prune", &body).await;
    let dead = app.next_dead_letter(Duration::from_secs(30)).await;
    assert_eq!(dead.data, body);
    assert_eq!(attempts(&dead), Some(1));
    assert_eq!(
        header(&dead, headers::ERROR_CLASS).as_deref(),
        Some("permanent")
    );
    assert_eq!(header(&dead, headers::ERROR_KIND).as_deref(), Some("store"));
    assert_eq!(proxy.count(DELETE_OBJECTS), 1, "no retry of a refusal");
    assert_eq!(world.objects(&runs[0]).await, 3);
    assert!(!world.marked(&runs[0]).await);
    app.cleanup().await;
    exp.delete().await.expect("delete experiment");
}
