//! Routing by error class: invalid messages and permanent failures are dead-lettered at once,
//! transient failures are delayed and dead-lettered after the last attempt.

use std::time::Duration;

use lapin::types::FieldTable;
use model_pruner::broker::headers;

use tokio_util::sync::CancellationToken;

use crate::helpers::{TestApp, attempts, counted, header, settings};
use crate::support::app::start_worker;
use crate::support::eventually::eventually;
use crate::support::proxy::{Action, Proxy};

#[tokio::test]
async fn invalid_messages_are_dead_lettered_with_headers_and_the_worker_keeps_going() {
    let mut s = settings();
    // The engine is never called for these: an unreachable MLflow proves it.
    s.mlflow.tracking_uri = "http://127.0.0.1:1".parse().unwrap();
    let mut app = TestApp::spawn(s).await;

    app.publish("run.finished", b"{not json").await;
    app.publish("run.finished", br#"{"experiment_id":"1"}"#)
        .await;
    // A publisher's copy of the worker's own headers widens nothing: the message is parsed by
    // the routing key it was delivered with (here the work queue's name) as attempt 1, not as
    // the sweep it claims to be on its 100th attempt.
    let mut h = FieldTable::default();
    headers::set_str(&mut h, headers::ROUTING_KEY, "experiment.prune");
    headers::set_u32(&mut h, headers::ATTEMPTS, 99);
    app.publish_to_work_queue(br#"{"experiment_id":"1"}"#, h)
        .await;

    let wait = Duration::from_secs(10);
    let malformed = app.next_dead_letter(wait).await;
    assert_eq!(malformed.data, b"{not json");
    assert_eq!(
        header(&malformed, headers::ERROR_CLASS).as_deref(),
        Some("permanent")
    );
    assert_eq!(
        header(&malformed, headers::ERROR_KIND).as_deref(),
        Some("invalid_message")
    );
    assert_eq!(
        header(&malformed, headers::ROUTING_KEY).as_deref(),
        Some("run.finished")
    );
    assert_eq!(attempts(&malformed), Some(1));
    assert_eq!(
        header(&malformed, headers::WORKER_VERSION).as_deref(),
        Some(env!("CARGO_PKG_VERSION"))
    );
    assert!(header(&malformed, headers::WORKER_HOST).is_some_and(|h| !h.is_empty()));
    let first = header(&malformed, headers::FIRST_FAILURE).expect("first failure");
    assert!(
        time::OffsetDateTime::parse(&first, &time::format_description::well_known::Rfc3339).is_ok()
    );
    assert_eq!(header(&malformed, headers::LAST_FAILURE), Some(first));
    assert_eq!(
        malformed
            .properties
            .content_type()
            .as_ref()
            .map(|c| c.as_str()),
        Some("application/json")
    );
    assert_eq!(*malformed.properties.delivery_mode(), Some(2));

    let missing = app.next_dead_letter(wait).await;
    assert_eq!(missing.data, br#"{"experiment_id":"1"}"#);
    assert_eq!(
        header(&missing, headers::ERROR_KIND).as_deref(),
        Some("invalid_message")
    );
    assert!(
        header(&missing, headers::ERROR_MESSAGE).is_some_and(|m| m.contains("run_id")),
        "{:?}",
        header(&missing, headers::ERROR_MESSAGE)
    );

    let unknown = app.next_dead_letter(wait).await;
    assert_eq!(
        header(&unknown, headers::ERROR_KIND).as_deref(),
        Some("unknown_routing_key")
    );
    assert_eq!(
        header(&unknown, headers::ROUTING_KEY).as_deref(),
        Some(app.topology.work_queue.as_str())
    );
    assert_eq!(attempts(&unknown), Some(1));
    assert_eq!(
        header(&unknown, headers::ERROR_CLASS).as_deref(),
        Some("permanent")
    );

    app.stop(Duration::from_secs(10))
        .await
        .expect("worker stops cleanly");
    let work = app.topology.work_queue.clone();
    assert_eq!(app.queue_len(&work).await, 0, "every message was acked");
    app.cleanup().await;
}

#[tokio::test]
async fn unknown_experiment_is_dead_lettered_as_permanent() {
    // Needs the MLflow of `scripts/stack.sh up` (settings or MODEL_PRUNER__MLFLOW__TRACKING_URI).
    let app = TestApp::spawn(settings()).await;
    let body = br#"{"experiment_id":"987654321987","run_id":"0123456789abcdef"}"#;
    app.publish("run.finished", body).await;

    let dead = app.next_dead_letter(Duration::from_secs(20)).await;
    assert_eq!(dead.data, body);
    assert_eq!(
        header(&dead, headers::ERROR_CLASS).as_deref(),
        Some("permanent")
    );
    assert_eq!(
        header(&dead, headers::ERROR_KIND).as_deref(),
        Some("unknown_experiment"),
        "{:?}",
        header(&dead, headers::ERROR_MESSAGE)
    );
    assert_eq!(attempts(&dead), Some(1));
    app.cleanup().await;
}

#[tokio::test]
async fn unreachable_mlflow_delays_then_dead_letters_after_max_attempts() {
    let mut s = settings();
    s.mlflow.tracking_uri = "http://127.0.0.1:1".parse().unwrap();
    s.retry.max_attempts = 3;
    let app = TestApp::spawn(s).await;
    let body = br#"{"experiment_id":"5","policy":{"keep_top":1}}"#;
    app.publish("experiment.prune", body).await;

    // Two 1 s delays, then the third attempt dead-letters.
    let dead = app.next_dead_letter(Duration::from_secs(30)).await;
    assert_eq!(dead.data, body);
    assert_eq!(attempts(&dead), Some(3));
    assert_eq!(
        header(&dead, headers::ERROR_CLASS).as_deref(),
        Some("transient")
    );
    assert_eq!(
        header(&dead, headers::ERROR_KIND).as_deref(),
        Some("mlflow")
    );
    assert_eq!(
        header(&dead, headers::ROUTING_KEY).as_deref(),
        Some("experiment.prune")
    );
    let first = header(&dead, headers::FIRST_FAILURE).unwrap();
    let last = header(&dead, headers::LAST_FAILURE).unwrap();
    assert!(first < last, "first {first}, last {last}");

    let delay = app.topology.delay_queues[0].name.clone();
    assert_eq!(app.queue_len(&delay).await, 0);
    assert_eq!(
        app.queue_len(&app.topology.dead_letter_queue.clone()).await,
        0
    );
    app.cleanup().await;
}

#[tokio::test]
async fn a_body_over_the_size_bound_is_dead_lettered_unread_and_the_next_one_runs() {
    let mut s = settings();
    s.mlflow.tracking_uri = "http://127.0.0.1:1".parse().unwrap();
    s.broker.max_message_bytes = 1024;
    let app = TestApp::spawn(s).await;

    // Valid JSON naming an experiment: only its size keeps it from a pass (which would fail
    // transiently on the unreachable MLflow and be delayed, not dead-lettered).
    let padding = "x".repeat(2000);
    let large = format!(r#"{{"experiment_id":"1","run_id":"r","pad":"{padding}"}}"#);
    app.publish("run.finished", large.as_bytes()).await;
    app.publish("run.finished", b"{not json").await;

    let wait = Duration::from_secs(10);
    let first = app.next_dead_letter(wait).await;
    assert_eq!(first.data, large.as_bytes(), "the body is kept whole");
    assert_eq!(
        header(&first, headers::ERROR_KIND).as_deref(),
        Some("too_large")
    );
    assert_eq!(
        header(&first, headers::ERROR_CLASS).as_deref(),
        Some("permanent")
    );
    let next = app.next_dead_letter(wait).await;
    assert_eq!(next.data, b"{not json");
    app.cleanup().await;
}

#[tokio::test]
async fn a_full_dead_letter_queue_holds_letters_back_in_the_work_queue_and_counts_them() {
    let mut s = settings();
    s.mlflow.tracking_uri = "http://127.0.0.1:1".parse().unwrap();
    s.broker.dead_letter_max_length = 1;
    let app = TestApp::spawn(s).await;
    let (dlq, work) = (&app.topology.dead_letter_queue, &app.topology.work_queue);

    app.publish("run.finished", b"{first").await;
    app.wait_len(dlq, 1, Duration::from_secs(10)).await;
    app.publish("run.finished", b"{second").await;
    eventually(
        Duration::from_secs(20),
        "the refused dead letter was not counted",
        async || {
            counted(
                &app,
                "model_pruner_copies_refused_total",
                Some(("queue", "dead_letter")),
            ) >= 1.0
        },
    )
    .await;
    assert_eq!(app.queue_len(dlq).await, 1, "the bound holds");

    // Room again: the held message arrives, nothing was dropped.
    let first = app.next_dead_letter(Duration::from_secs(5)).await;
    assert_eq!(first.data, b"{first");
    let second = app.next_dead_letter(Duration::from_secs(30)).await;
    assert_eq!(second.data, b"{second");
    assert_eq!(app.queue_len(work).await, 0);
    app.cleanup().await;
}

/// Starts a worker that must stop at once with an error; returns the error's whole chain.
async fn failed_start(settings: model_pruner::settings::Settings) -> String {
    let worker = start_worker(settings, CancellationToken::new());
    let failed = tokio::time::timeout(Duration::from_secs(30), worker.task)
        .await
        .expect("the worker stops at once")
        .expect("no panic")
        .expect_err("a failed start");
    format!("{failed:#}")
}

#[tokio::test]
async fn a_worker_whose_settings_cannot_work_fails_at_start_naming_them() {
    // A wrong base path on the real tracking server answers with an HTML 404: only a settings
    // change helps, so the worker stops before consuming anything.
    let mut s = settings();
    let base = s
        .mlflow
        .tracking_uri
        .expose()
        .as_str()
        .trim_end_matches('/')
        .to_owned();
    s.mlflow.tracking_uri = format!("{base}/mlflow").parse().unwrap();
    let app = TestApp::new(s.clone()).await;
    let text = failed_start(s.clone()).await;
    assert!(
        text.contains("mlflow.tracking_uri") && text.contains("base path"),
        "{text}"
    );
    assert_eq!(app.queue_len(&app.topology.work_queue).await, 0);

    // The store's key refused: named as well.
    let mut s = settings();
    s.store.secret_access_key = "not-the-secret".to_owned().into();
    let text = failed_start(s).await;
    assert!(text.contains("store.access_key_id"), "{text}");
    assert!(!text.contains("not-the-secret"), "{text}");
    app.cleanup().await;
}

#[tokio::test]
async fn a_tracking_uri_that_stops_answering_as_mlflow_s_api_delays_events_instead_of_losing_them()
{
    // After a good start, something that is not MLflow's API answers in its place (an ingress
    // serving its own 404 page): that says nothing about the experiment, so the event is
    // retried as a transient failure, not dead-lettered at once as an unknown experiment.
    let proxy = Proxy::mlflow().await;
    let mut s = settings();
    s.mlflow.tracking_uri = proxy.url().into();
    let app = TestApp::spawn(s).await;
    app.wait_consumers(&app.topology.work_queue, 1, Duration::from_secs(30))
        .await;
    proxy.rule(
        ("GET", "experiments/get"),
        Action::Fail(404, "NotFound"),
        None,
    );
    let body = br#"{"experiment_id":"0","run_id":"0123456789abcdef"}"#;
    app.publish("run.finished", body).await;

    let dead = app.next_dead_letter(Duration::from_secs(30)).await;
    assert_eq!(dead.data, body);
    assert_eq!(
        header(&dead, headers::ERROR_CLASS).as_deref(),
        Some("transient"),
        "{:?}",
        header(&dead, headers::ERROR_MESSAGE)
    );
    assert_eq!(
        attempts(&dead),
        Some(3),
        "retried through the delay queue first"
    );
    assert!(
        header(&dead, headers::ERROR_MESSAGE).is_some_and(|m| m.contains("HTTP 404")),
        "{:?}",
        header(&dead, headers::ERROR_MESSAGE)
    );
    app.cleanup().await;
}
