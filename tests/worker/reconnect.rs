//! The worker survives its connection being closed by the broker (as in a RabbitMQ restart):
//! it reconnects, redeclares the topology and resumes consuming.

use std::time::Duration;

use crate::helpers::{TestApp, header, settings};
use crate::support::management::Management;
use model_pruner::broker::headers;

#[tokio::test]
async fn worker_resumes_consuming_after_the_broker_closes_its_connection() {
    let management = Management::from_env();
    let app = TestApp::spawn(settings()).await;
    let needle = format!("on {}", app.topology.work_queue);

    // The management API lists a new connection after its next statistics tick (~5 s).
    let listed = management
        .wait_connections(&needle, Duration::from_secs(20))
        .await;
    let names = listed.unwrap_or_else(|| {
        panic!(
            "the worker's connection never showed in the RabbitMQ management API at {} \
             (scripts/stack.sh up enables it)",
            management.base()
        )
    });
    management
        .close(&names[0], "model-pruner reconnect test")
        .await;

    // The consumer goes with the connection, and comes back with the next session (after a
    // reconnect delay of at least 250 ms).
    let work = app.topology.work_queue.clone();
    app.wait_consumers(&work, 0, Duration::from_secs(10)).await;
    app.wait_consumers(&work, 1, Duration::from_secs(30)).await;
    app.publish("run.finished", b"after reconnect").await;
    let dead = app.next_dead_letter(Duration::from_secs(30)).await;
    assert_eq!(dead.data, b"after reconnect");
    assert_eq!(
        header(&dead, headers::ERROR_KIND).as_deref(),
        Some("invalid_message")
    );
    app.cleanup().await;
}
