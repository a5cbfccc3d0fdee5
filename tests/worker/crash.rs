//! A worker process killed with SIGKILL in the middle of a prune loses nothing: the broker
//! redelivers the unacked event to the next worker, which finishes the job.

use std::process::{Child, Command, Stdio};
use std::time::Duration;

use model_pruner::settings::Settings;

use crate::helpers::{TestApp, prune, settings, wait_drained};
use crate::support::eventually::eventually_every;
use crate::support::proxy::{Action, DELETE_OBJECTS, Proxy};
use crate::support::world::{Layout, World};

/// The worker binary on the queues of `s`, talking to the store through `store`.
fn spawn_worker(s: &Settings, store: &url::Url) -> Child {
    let quiet = std::env::var_os("TEST_LOG").is_none();
    let output = || {
        if quiet {
            Stdio::null()
        } else {
            Stdio::inherit()
        }
    };
    Command::new(env!("CARGO_BIN_EXE_model-pruner"))
        .arg("worker")
        .env("MODEL_PRUNER__BROKER__EXCHANGE", &s.broker.exchange)
        .env("MODEL_PRUNER__BROKER__WORK_QUEUE", &s.broker.work_queue)
        .env(
            "MODEL_PRUNER__BROKER__DEAD_LETTER_QUEUE",
            &s.broker.dead_letter_queue,
        )
        .env(
            "MODEL_PRUNER__BROKER__DELAY_QUEUE_PREFIX",
            &s.broker.delay_queue_prefix,
        )
        .env(
            "MODEL_PRUNER__BROKER__PREFETCH",
            s.broker.prefetch.to_string(),
        )
        .env("MODEL_PRUNER__RETRY__DELAYS", "1s")
        .env(
            "MODEL_PRUNER__RETRY__MAX_ATTEMPTS",
            s.retry.max_attempts.to_string(),
        )
        .env("MODEL_PRUNER__METRICS__LISTEN", "127.0.0.1:0")
        .env("MODEL_PRUNER__STORE__ENDPOINT", store.as_str())
        // Small batches, one run at a time: the prune takes many requests, so it can be cut.
        .env("MODEL_PRUNER__STORE__DELETE_BATCH_SIZE", "20")
        .env("MODEL_PRUNER__CONCURRENCY__PARALLEL_DELETIONS", "1")
        .stdin(Stdio::null())
        .stdout(output())
        .stderr(output())
        .spawn()
        .expect("spawn the worker binary")
}

#[tokio::test]
async fn a_prune_cut_by_sigkill_is_redelivered_and_completed_by_the_next_worker() {
    let world = World::new("worker");
    let exp = world.experiment().await;
    // Runs 4 and 5 rank best and keep 3 files; the four losers hold 400 files each.
    let values = [0.1, 0.2, 0.3, 0.4, 0.5, 0.6];
    let runs = world
        .ranked_runs_with_files(
            &exp,
            Layout::Classic,
            &values,
            |i| if i >= 4 { 3 } else { 400 },
        )
        .await;
    let initial: u64 = 4 * 400;

    // Every DeleteObjects is slowed down, so the pass is still running when the worker dies.
    let proxy = Proxy::store().await;
    proxy.rule(
        DELETE_OBJECTS,
        Action::Stall(Duration::from_millis(100)),
        None,
    );

    let s = settings();
    let app = TestApp::without_worker(&s).await;
    let mut worker = spawn_worker(&s, &proxy.url());
    app.publish("experiment.prune", &prune(&exp, 2, true)).await;

    eventually_every(
        Duration::from_secs(60),
        Duration::from_millis(50),
        "the prune did not start deleting",
        async || proxy.count(DELETE_OBJECTS) >= 3,
    )
    .await;
    worker.kill().expect("SIGKILL the worker");
    worker.wait().expect("reap the worker");

    let mut left = 0;
    for m in &runs[..4] {
        left += world.objects(m).await;
    }
    assert!(
        left > 0 && left < initial,
        "killed mid-prune: {left} of {initial} loser files left"
    );

    let mut worker = spawn_worker(&s, &proxy.url());
    world
        .wait_pruned(&runs, &[4, 5], Duration::from_secs(90))
        .await;
    wait_drained(&app, Duration::from_secs(60)).await;
    worker.kill().expect("stop the second worker");
    worker.wait().expect("reap the second worker");

    world.assert_kept(&runs, &[4, 5]).await;
    let dead = app.topology.dead_letter_queue.clone();
    assert_eq!(
        app.queue_len(&dead).await,
        0,
        "the event was not dead-lettered"
    );
    app.cleanup().await;
    exp.delete().await.expect("delete experiment");
}
