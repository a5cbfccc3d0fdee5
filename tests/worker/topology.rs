//! Declaring the topology is idempotent; a conflicting declaration stops the worker.

use std::time::Duration;

use model_pruner::broker::{Broker, Topology};

use crate::helpers::{TestApp, settings};

#[tokio::test]
async fn declaring_the_topology_twice_is_idempotent() {
    let s = settings();
    let app = TestApp::without_worker(&s).await;
    let other = Broker::connect(&s.broker, "model-pruner worker tests (2)")
        .await
        .unwrap();
    other
        .declare(&Topology::from_settings(&s))
        .await
        .expect("second declaration");
    app.broker
        .declare(&app.topology)
        .await
        .expect("third declaration");
    for q in app.topology.queue_names() {
        assert_eq!(app.queue_len(q).await, 0, "{q} exists");
    }
    let _ = other.close().await;
    app.cleanup().await;
}

#[tokio::test]
async fn worker_stops_with_an_error_when_the_broker_refuses_the_topology() {
    let mut s = settings();
    let app = TestApp::without_worker(&s).await;
    // Same queue, other arguments: PRECONDITION_FAILED, which reconnecting cannot fix.
    s.broker.delivery_limit += 1;
    let result = tokio::time::timeout(
        Duration::from_secs(10),
        model_pruner::worker::run(s, tokio_util::sync::CancellationToken::new()),
    )
    .await
    .expect("the worker gives up at once");
    let err = result.expect_err("a refused topology is fatal");
    assert!(format!("{err:#}").contains("PRECONDITION"), "{err:#}");
    app.cleanup().await;
}
