//! Messages from outside the worker's own paths: one the AMQP library cannot parse, and letters
//! RabbitMQ dead-lettered by itself, whose `model-pruner-*` headers are the publisher's.

use std::time::Duration;

use model_pruner::broker::headers;
use model_pruner::domain::event::{Event, RunFinished};
use model_pruner::domain::policy::PolicyOverrides;
use serde_json::Value;

use crate::helpers::{TestApp, header, outcome, run_cli, same_queues, settings};
use crate::support::pika::{self, RawMessage, hex};
use crate::support::world::{Layout, World};

/// A header name and a message id holding the bytes FF FE, which are not UTF-8.
const GARBLED_NAME: &[u8] = b"trace-\xff\xfe";
const GARBLED_ID: &[u8] = b"\xff\xfe";

#[tokio::test]
async fn a_message_lapin_cannot_parse_is_dead_lettered_intact_and_its_neighbours_run() {
    let world = World::new("ops");
    let exp = world.mlflow.experiment("ops-unreadable").await.unwrap();
    let runs = world
        .ranked_runs_with_files(&exp, Layout::Classic, &[0.9, 0.5, 0.7], |_| 2)
        .await;
    let mut app = TestApp::new(settings()).await;
    let s = app.settings().clone();
    let dlq = app.topology.dead_letter_queue.clone();
    let finished = Event::RunFinished(RunFinished {
        experiment_id: exp.id.clone(),
        run_id: runs[1].run.run_id.clone(),
        policy: PolicyOverrides {
            keep_top: Some(1),
            ..PolicyOverrides::default()
        },
    })
    .to_body();
    let poison_body = String::from_utf8(finished.clone()).unwrap();
    // The poison first, the innocent event right behind it.
    pika::publish(
        &s,
        &RawMessage {
            exchange: &app.topology.exchange,
            routing_key: "run.finished",
            body: &poison_body,
            message_id: Some(GARBLED_ID),
            headers: vec![(GARBLED_NAME, "t-1")],
            expiration: None,
        },
    );
    app.publish("run.finished", &finished).await;
    app.start(same_queues(&s));

    world
        .wait_pruned(&runs, &[0], Duration::from_secs(60))
        .await;
    app.wait_len(&dlq, 1, Duration::from_secs(30)).await;
    app.stop(Duration::from_secs(30)).await.unwrap();

    // RabbitMQ moved the original bytes, not a copy read with U+FFFD.
    let held = pika::peek(&s, &dlq);
    assert_eq!(held["message_id"], hex(GARBLED_ID), "{held}");
    assert!(
        held["header_names"]
            .as_array()
            .unwrap()
            .contains(&Value::from(hex(GARBLED_NAME))),
        "{held}"
    );
    assert_eq!(held["body"], poison_body.as_str());

    let (code, stdout, err) = outcome(&run_cli(&s, &["dlq", "list", "--json"]).await);
    assert_eq!(code, 0, "{err}");
    let listed: Vec<Value> = serde_json::from_str(&stdout).expect("a JSON array");
    assert_eq!(listed.len(), 1, "{stdout}");
    assert_eq!(listed[0]["source"], "broker");
    assert_eq!(listed[0]["error_kind"], "rejected");
    assert_eq!(listed[0]["unreadable"], true);
    assert_eq!(listed[0]["experiment_id"], exp.id.as_str());

    // A copy would not be what its publisher sent: replay leaves it and says why.
    let (code, stdout, err) = outcome(&run_cli(&s, &["dlq", "replay"]).await);
    assert_eq!(code, 1, "{stdout}{err}");
    assert!(
        stdout.contains("replayed 0") && stdout.contains("failed 1"),
        "{stdout}"
    );
    assert!(err.contains("not valid UTF-8"), "{err}");
    assert_eq!(app.queue_len(&dlq).await, 1);
    app.cleanup().await;
}

#[tokio::test]
async fn letters_the_broker_dead_lettered_replay_with_the_key_they_entered_with() {
    let app = TestApp::new(settings()).await;
    let s = app.settings().clone();
    let (dlq, work) = (&app.topology.dead_letter_queue, &app.topology.work_queue);
    // A run.finished whose publisher wrote the worker's headers, naming experiment.prune and a
    // transient failure, and that expired in the work queue before any worker took it.
    let sneaky = r#"{"experiment_id":"e1","run_id":"r1","delete_experiment":true,"force":true}"#;
    pika::publish(
        &s,
        &RawMessage {
            exchange: &app.topology.exchange,
            routing_key: "run.finished",
            body: sneaky,
            message_id: Some(b"m-1"),
            headers: vec![
                (headers::ROUTING_KEY.as_bytes(), "experiment.prune"),
                (headers::ERROR_CLASS.as_bytes(), "transient"),
                (b"trace-id", "t-1"),
            ],
            expiration: Some("1"),
        },
    );
    // A plain experiment.prune that expired too: it carries no routing-key header at all.
    let prune = r#"{"experiment_id":"e2"}"#;
    pika::publish(
        &s,
        &RawMessage {
            exchange: &app.topology.exchange,
            routing_key: "experiment.prune",
            body: prune,
            message_id: None,
            headers: vec![],
            expiration: Some("1"),
        },
    );
    app.wait_len(dlq, 2, Duration::from_secs(30)).await;

    let (code, stdout, err) = outcome(&run_cli(&s, &["dlq", "list", "--json"]).await);
    assert_eq!(code, 0, "{err}");
    let listed: Vec<Value> = serde_json::from_str(&stdout).expect("a JSON array");
    assert_eq!(listed.len(), 2, "{stdout}");
    for (letter, key) in listed.iter().zip(["run.finished", "experiment.prune"]) {
        assert_eq!(letter["source"], "broker", "{letter}");
        assert_eq!(letter["routing_key"], key, "{letter}");
        assert_eq!(letter["error_class"], "broker", "{letter}");
        assert_eq!(letter["error_kind"], "expired", "{letter}");
        assert_eq!(letter["unreadable"], false, "{letter}");
    }

    // The publisher's error class is not believed either.
    let args = ["dlq", "replay", "--error-class", "transient"];
    let (code, stdout, _) = outcome(&run_cli(&s, &args).await);
    assert_eq!(code, 0, "{stdout}");
    assert!(
        stdout.contains("replayed 0") && stdout.contains("skipped 2"),
        "{stdout}"
    );

    let (code, stdout, err) =
        outcome(&run_cli(&s, &["dlq", "replay", "--error-class", "expired"]).await);
    assert_eq!(code, 0, "{stdout}{err}");
    assert!(stdout.contains("replayed 2"), "{stdout}");
    let moved = app.drain(work).await;
    let keys: Vec<_> = moved.iter().map(|d| d.routing_key.as_str()).collect();
    assert_eq!(keys, ["run.finished", "experiment.prune"]);
    let sneaky_copy = &moved[0];
    assert_eq!(sneaky_copy.data, sneaky.as_bytes());
    assert_eq!(header(sneaky_copy, headers::ROUTING_KEY), None);
    assert_eq!(header(sneaky_copy, headers::ERROR_CLASS), None);
    assert_eq!(header(sneaky_copy, "trace-id").as_deref(), Some("t-1"));
    assert_eq!(
        sneaky_copy
            .properties
            .message_id()
            .as_ref()
            .map(|m| m.as_str()),
        Some("m-1")
    );
    assert_eq!(
        sneaky_copy.properties.expiration(),
        &None,
        "an expired letter is replayed without the expiration that sent it here"
    );
    assert_eq!(app.queue_len(dlq).await, 0);
    app.cleanup().await;
}
