//! `/readyz` follows the broker: unready before the first connection and while the worker
//! reconnects after the broker closed its connection; `/healthz` answers all along, because
//! the worker never hangs on the broker: an address that accepts TCP and never speaks AMQP is
//! given up after `broker.connect_timeout` and tried again.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use crate::scrape::{DEADLINE, Endpoint, settings};
use crate::support::app::{TestApp, start_worker};
use crate::support::eventually::eventually;
use crate::support::management::Management;

#[tokio::test]
async fn the_listener_is_up_and_unready_while_the_broker_is_unreachable() {
    let mut s = settings();
    s.broker.url = "amqp://guest:guest@127.0.0.1:1/%2f".parse().unwrap();
    let shutdown = CancellationToken::new();
    let worker = start_worker(s, shutdown.clone());
    let endpoint = Endpoint::at(worker.address);
    let worker = worker.task;

    endpoint
        .wait("/healthz", "the listener answers", |status, _| {
            status == 200
        })
        .await;
    let (status, body) = endpoint.get("/readyz").await.expect("/readyz answers");
    assert_eq!(status, 503, "{body}");
    assert!(body.starts_with("not ready: broker\n"), "{body}");
    assert!(body.contains("mlflow: "), "{body}");

    shutdown.cancel();
    tokio::time::timeout(DEADLINE, worker)
        .await
        .expect("the worker stops")
        .expect("no panic")
        .expect("a clean stop");
    assert!(
        endpoint.get("/healthz").await.is_none(),
        "the listener stops with the worker"
    );
}

#[tokio::test]
async fn a_broker_address_that_never_speaks_amqp_is_given_up_and_tried_again() {
    // What a load balancer with no healthy backend does: accept, then say nothing.
    let silent = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("a free port");
    let address = silent.local_addr().expect("an address");
    let accepted = Arc::new(AtomicUsize::new(0));
    let counter = accepted.clone();
    let listener = tokio::spawn(async move {
        let mut open = Vec::new();
        while let Ok((socket, _)) = silent.accept().await {
            counter.fetch_add(1, Ordering::SeqCst);
            open.push(socket);
        }
    });
    let mut s = settings();
    s.broker.url = format!("amqp://guest:guest@{address}/%2f").parse().unwrap();
    s.broker.connect_timeout = Duration::from_secs(1);
    let shutdown = CancellationToken::new();
    let worker = start_worker(s, shutdown.clone());
    let endpoint = Endpoint::at(worker.address);
    let worker = worker.task;

    eventually(
        DEADLINE,
        "the worker hangs on its first connection",
        async || {
            let n = accepted.load(Ordering::SeqCst);
            if n >= 3 {
                Ok(())
            } else {
                Err(format!("{n} accepted"))
            }
        },
    )
    .await;
    let (status, body) = endpoint.get("/healthz").await.expect("/healthz answers");
    assert_eq!((status, body.as_str()), (200, "ok\n"));
    let (status, body) = endpoint.get("/readyz").await.expect("/readyz answers");
    assert_eq!(status, 503, "{body}");
    assert!(body.starts_with("not ready: broker\n"), "{body}");

    shutdown.cancel();
    tokio::time::timeout(DEADLINE, worker)
        .await
        .expect("the worker stops")
        .expect("no panic")
        .expect("a clean stop");
    listener.abort();
}

#[tokio::test]
async fn readyz_turns_unready_when_the_broker_drops_the_connection_and_ready_again() {
    let s = settings();
    let app = TestApp::spawn(s).await;
    let endpoint = Endpoint::at(app.address());
    endpoint
        .wait("/readyz", "ready once consuming", |status, body| {
            status == 200 && body.contains("broker: ok")
        })
        .await;

    let management = Management::from_env();
    let needle = format!("on {}", app.topology.work_queue);
    let listed = management.wait_connections(&needle, DEADLINE).await;
    let name = listed.and_then(|names| names.into_iter().next()).expect(
        "the worker's connection shows in the RabbitMQ management API (stack.sh enables it)",
    );
    // Poll /readyz while the broker closes the connection: the worker reconnects after a
    // backoff of at least 250 ms, so the 503 lasts long enough to be seen.
    let watch = async {
        endpoint
            .wait(
                "/readyz",
                "unready after the connection closed",
                |status, body| status == 503 && body.starts_with("not ready: broker\n"),
            )
            .await
    };
    let (body, ()) = tokio::join!(
        watch,
        management.close(&name, "model-pruner readiness test")
    );
    assert!(body.contains("broker: not ready"), "{body}");
    assert_eq!(
        endpoint.get("/healthz").await.map(|(s, _)| s),
        Some(200),
        "alive while reconnecting"
    );

    endpoint
        .wait("/readyz", "ready again after reconnecting", |status, _| {
            status == 200
        })
        .await;
    app.finish().await;
}
