//! One or two workers take a burst of `run.finished` events for one experiment: every event is
//! acked, exactly the top N models remain, nothing is dead-lettered. Two workers run passes on
//! the same experiment at once and mark the same losers concurrently.

use std::time::Duration;

use model_pruner::broker::headers;

use crate::helpers::{TestApp, header, run_finished, same_queues, settings, wait_drained};
use crate::support::world::{Layout, World};

#[tokio::test]
async fn a_burst_of_run_finished_events_prunes_to_the_top_three_and_is_all_acked() {
    burst(1).await;
}

#[tokio::test]
async fn two_workers_on_one_queue_keep_exactly_the_top_three() {
    burst(2).await;
}

async fn burst(workers: usize) {
    let world = World::new("worker");
    let exp = world.experiment().await;
    // Run i has accuracy 0.1 * (i + 1): the top 3 are runs 5, 6 and 7.
    let values: Vec<f64> = (0..8).map(|i| 0.1 * f64::from(i + 1)).collect();
    let runs = world.ranked_runs(&exp, Layout::Classic, &values).await;

    let base = settings();
    let mut app = TestApp::without_worker(&base).await;
    for _ in 0..workers {
        app.start(same_queues(&base));
    }

    for _ in 0..3 {
        for run in &runs {
            app.publish("run.finished", &run_finished(&exp, run, 3))
                .await;
        }
    }

    let kept = [5, 6, 7];
    world
        .wait_pruned(&runs, &kept, Duration::from_secs(90))
        .await;
    wait_drained(&app, Duration::from_secs(90)).await;
    app.stop(Duration::from_secs(30))
        .await
        .expect("the workers stop cleanly");

    world.assert_kept(&runs, &kept).await;
    let (work, dead) = (
        app.topology.work_queue.clone(),
        app.topology.dead_letter_queue.clone(),
    );
    assert_eq!(app.queue_len(&work).await, 0, "every event was acked");
    if let Some(letter) = app.next_message(&dead, Duration::ZERO).await {
        panic!(
            "dead-lettered: {} {:?}: {:?}",
            String::from_utf8_lossy(&letter.data),
            header(&letter, headers::ERROR_KIND),
            header(&letter, headers::ERROR_MESSAGE)
        );
    }
    app.cleanup().await;
    exp.delete().await.expect("delete experiment");
}
