//! `run.finished` through a worker whose tracking server is MLflow 2.x (no logged-models API):
//! the event is handled, acked, and the runs out of the top N are pruned.

use std::time::Duration;

use crate::helpers::{TestApp, run_finished, settings};
use crate::support::world::{Layout, World, mlflow2_uri};

#[tokio::test]
async fn run_finished_on_an_mlflow_2_server_prunes_and_is_acked() {
    let world = World::mlflow2("worker");
    let exp = world.experiment().await;
    let runs = world
        .ranked_runs(&exp, Layout::Classic, &[0.3, 0.9, 0.6, 0.1])
        .await;
    let mut s = settings();
    s.mlflow.tracking_uri = mlflow2_uri().parse().unwrap();
    let app = TestApp::spawn(s).await;
    app.publish("run.finished", &run_finished(&exp, &runs[3], 2))
        .await;
    world
        .wait_pruned(&runs, &[1, 2], Duration::from_secs(60))
        .await;
    world.assert_kept(&runs, &[1, 2]).await;
    app.wait_len(&app.topology.work_queue, 0, Duration::from_secs(10))
        .await;
    assert_eq!(app.queue_len(&app.topology.dead_letter_queue).await, 0);
    app.cleanup().await;
}
