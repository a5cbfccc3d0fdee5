//! Declaring the topology is idempotent; a conflicting declaration stops the worker; the
//! queues the broker dead-letters from do it at least once.

use std::time::Duration;

use lapin::options::QueueDeleteOptions;
use lapin::types::FieldTable;
use model_pruner::broker::{Broker, Topology};
use serde_json::{Value, json};

use crate::helpers::{TestApp, settings};
use crate::support::app::start_worker;
use crate::support::eventually::eventually_every;
use crate::support::management::Management;

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
        start_worker(s, tokio_util::sync::CancellationToken::new()).task,
    )
    .await
    .expect("the worker gives up at once");
    let err = result
        .expect("no panic")
        .expect_err("a refused topology is fatal");
    let err = format!("{err:#}");
    assert!(err.contains("PRECONDITION"), "{err}");
    assert!(
        err.contains("model-pruner migrate-queues"),
        "says what to do: {err}"
    );
    app.cleanup().await;
}

/// `queue` from the management API, which lists a queue a moment after it is declared.
async fn listed(management: &Management, queue: &str) -> Value {
    eventually_every(
        Duration::from_secs(20),
        Duration::from_millis(250),
        &format!(
            "{queue} is not listed by the management API at {}",
            management.base()
        ),
        async || management.queue(queue).await,
    )
    .await
}

#[tokio::test]
async fn the_queues_the_broker_dead_letters_from_do_it_at_least_once() {
    let s = settings();
    let app = TestApp::without_worker(&s).await;
    let management = Management::from_env();
    let t = &app.topology;
    let at_least_once = |target: &str| {
        json!({
            "x-queue-type": "quorum",
            "x-dead-letter-exchange": "",
            "x-dead-letter-routing-key": target,
            "x-dead-letter-strategy": "at-least-once",
            "x-overflow": "reject-publish",
        })
    };

    let work = listed(&management, &t.work_queue).await;
    assert_eq!(work["type"], "quorum");
    let mut expected = at_least_once(&t.dead_letter_queue);
    expected["x-delivery-limit"] = json!(t.delivery_limit);
    assert_eq!(work["arguments"], expected);

    let delay = &t.delay_queues[0];
    let queue = listed(&management, &delay.name).await;
    assert_eq!(queue["type"], "quorum");
    let mut expected = at_least_once(&t.work_queue);
    expected["x-message-ttl"] = json!(delay.delay.as_millis());
    assert_eq!(queue["arguments"], expected);

    let dead = listed(&management, &t.dead_letter_queue).await;
    assert_eq!(
        dead["type"], "classic",
        "dlq commands rely on classic requeue order"
    );
    app.cleanup().await;
}

#[tokio::test]
async fn an_expired_delay_is_kept_while_the_work_queue_cannot_take_it() {
    let s = settings();
    let app = TestApp::without_worker(&s).await;
    let management = Management::from_env();
    let work = app.topology.work_queue.clone();
    let delay = app.topology.delay_queues[0].clone();
    app.broker
        .channel()
        .queue_delete(work.as_str().into(), QueueDeleteOptions::default())
        .await
        .expect("delete the work queue");
    app.broker
        .publish_to_queue(
            &delay.name,
            b"a retry",
            lapin::BasicProperties::default().with_headers(FieldTable::default()),
        )
        .await
        .expect("publish into the delay queue");

    // The delay expires while nothing can take the message: RabbitMQ's default strategy
    // drops it; at least once, the queue keeps it until the work queue confirms a copy.
    tokio::time::sleep(delay.delay + Duration::from_secs(1)).await;
    eventually_every(
        Duration::from_secs(20),
        Duration::from_millis(500),
        "the expired message is not held for dead-lettering",
        async || {
            let q = management.queue(&delay.name).await.expect("listed");
            let (messages, dlx) = (q["messages"].as_u64(), q["messages_dlx"].as_u64());
            if messages == Some(1) && dlx == Some(1) {
                Ok(())
            } else {
                Err(q.to_string())
            }
        },
    )
    .await;
    app.cleanup().await;
}
