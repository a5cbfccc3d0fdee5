//! Graceful shutdown: stop consuming, let passes in flight finish within the grace period,
//! leave the rest in the queue, return Ok.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use tokio::net::TcpListener;

use crate::helpers::{TestApp, settings};
use crate::support::eventually::{eventually, eventually_every};

/// An "MLflow" that accepts connections and never answers; returns its URL and accept count.
async fn silent_server() -> (String, Arc<AtomicUsize>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let accepted = Arc::new(AtomicUsize::new(0));
    let count = accepted.clone();
    tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((socket, _)) = listener.accept().await {
            count.fetch_add(1, Ordering::SeqCst);
            held.push(socket);
        }
    });
    (url, accepted)
}

#[tokio::test]
async fn shutdown_returns_ok_when_idle() {
    let mut app = TestApp::spawn(settings()).await;
    let work = app.topology.work_queue.clone();
    app.wait_consumers(&work, 1, Duration::from_secs(10)).await;
    app.stop(Duration::from_secs(5))
        .await
        .expect("Ok on shutdown");
    app.cleanup().await;
}

#[tokio::test]
async fn shutdown_after_the_grace_period_leaves_unprocessed_messages_in_the_queue() {
    let (url, accepted) = silent_server().await;
    let mut s = settings();
    s.mlflow.tracking_uri = url.parse().unwrap();
    s.mlflow.request_timeout = Duration::from_secs(60);
    s.concurrency.max_in_flight = 1;
    s.concurrency.shutdown_grace = Duration::from_secs(1);
    let mut app = TestApp::spawn(s).await;
    // The start-up check gives up on the silent "MLflow" after 10 s; then the worker consumes.
    let work = app.topology.work_queue.clone();
    app.wait_consumers(&work, 1, Duration::from_secs(30)).await;
    let checked = accepted.load(Ordering::SeqCst);
    for exp in ["1", "2", "3"] {
        let body = format!(r#"{{"experiment_id":"{exp}"}}"#);
        app.publish("experiment.prune", body.as_bytes()).await;
    }
    // Wait until the first pass hangs on "MLflow".
    eventually_every(
        Duration::from_secs(10),
        Duration::from_millis(50),
        "no pass started",
        async || accepted.load(Ordering::SeqCst) != checked,
    )
    .await;

    let started = tokio::time::Instant::now();
    app.stop(Duration::from_secs(10))
        .await
        .expect("Ok on shutdown");
    let took = started.elapsed();
    assert!(
        took >= Duration::from_millis(900),
        "waited for the grace period: {took:?}"
    );
    assert!(
        took < Duration::from_secs(5),
        "did not wait past the grace period: {took:?}"
    );

    eventually(
        Duration::from_secs(5),
        "not 3 messages back in the queue",
        async || {
            let n = app.queue_len(&work).await;
            if n == 3 {
                Ok(())
            } else {
                Err(format!("{n} messages back in the queue"))
            }
        },
    )
    .await;
    let dlq = app.topology.dead_letter_queue.clone();
    assert_eq!(app.queue_len(&dlq).await, 0);
    app.cleanup().await;
}
