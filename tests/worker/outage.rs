//! The broker closes the worker's connection in the middle of a stream of events: after the
//! reconnect every event is still processed and acked, and exactly the top N models remain.

use std::time::Duration;

use crate::helpers::{TestApp, run_finished, settings, wait_drained};
use crate::support::management::Management;
use crate::support::world::{Layout, World};

#[tokio::test]
async fn events_published_around_a_forced_connection_close_are_all_processed() {
    let management = Management::from_env();
    let world = World::new("worker");
    let exp = world.experiment().await;
    let values = [0.1, 0.2, 0.3, 0.4, 0.5, 0.6];
    let runs = world.ranked_runs(&exp, Layout::Classic, &values).await;
    let app = TestApp::spawn(settings()).await;
    let names = management
        .wait_connections(
            &format!("on {}", app.topology.work_queue),
            Duration::from_secs(20),
        )
        .await
        .expect("management API");

    let events: Vec<Vec<u8>> = (0..20)
        .map(|i| run_finished(&exp, &runs[i % runs.len()], 2))
        .collect();
    for body in &events[..10] {
        app.publish("run.finished", body).await;
    }
    for name in names {
        management.close(&name, "model-pruner outage test").await;
    }
    for body in &events[10..] {
        app.publish("run.finished", body).await;
    }

    world
        .wait_pruned(&runs, &[4, 5], Duration::from_secs(90))
        .await;
    wait_drained(&app, Duration::from_secs(90)).await;
    world.assert_kept(&runs, &[4, 5]).await;
    let dead = app.topology.dead_letter_queue.clone();
    assert_eq!(app.queue_len(&dead).await, 0, "nothing was dead-lettered");
    app.cleanup().await;
    exp.delete().await.expect("delete experiment");
}
