//! `model-pruner migrate-queues` brings queues declared by an earlier version (a classic delay
//! queue, a work queue dead-lettering at most once) to this version's arguments, and every
//! message comes out as what it was: a pipeline's event through the exchange, a retry as the
//! same attempt.

use std::time::Duration;

use lapin::BasicProperties;
use lapin::options::{ExchangeDeclareOptions, QueueBindOptions, QueueDeclareOptions};
use lapin::types::{AMQPValue, FieldTable, LongString};
use model_pruner::broker::{BINDINGS, Broker, Topology, headers};

use crate::helpers::{TestApp, cli, outcome, run_cli, settings};
use crate::support::eventually::eventually;
use crate::support::management::Management;
use crate::support::pika::{self, RawMessage};

fn string(s: &str) -> AMQPValue {
    AMQPValue::LongString(LongString::from(s))
}

/// Binds the work queue of `t` to its exchange with every routing key it takes.
async fn bind_work_queue(channel: &lapin::Channel, t: &Topology) {
    for key in BINDINGS {
        channel
            .queue_bind(
                t.work_queue.as_str().into(),
                t.exchange.as_str().into(),
                key.into(),
                QueueBindOptions::default(),
                FieldTable::default(),
            )
            .await
            .expect("bind");
    }
}

/// Declares the queues of `t` as the version before at-least-once dead-lettering did.
async fn declare_old_topology(app: &TestApp, t: &Topology) {
    let channel = app.broker.channel();
    let mut work = FieldTable::default();
    work.insert("x-queue-type".into(), string("quorum"));
    work.insert(
        "x-delivery-limit".into(),
        AMQPValue::LongLongInt(t.delivery_limit.into()),
    );
    work.insert("x-dead-letter-exchange".into(), string(""));
    work.insert(
        "x-dead-letter-routing-key".into(),
        string(&t.dead_letter_queue),
    );
    channel
        .queue_declare(
            t.work_queue.as_str().into(),
            QueueDeclareOptions::durable(),
            work,
        )
        .await
        .expect("old work queue");
    bind_work_queue(channel, t).await;
    let delay = &t.delay_queues[0];
    let mut args = FieldTable::default();
    args.insert(
        "x-message-ttl".into(),
        AMQPValue::LongLongInt(delay.delay.as_millis() as i64),
    );
    args.insert("x-dead-letter-exchange".into(), string(""));
    args.insert("x-dead-letter-routing-key".into(), string(&t.work_queue));
    channel
        .queue_declare(
            delay.name.as_str().into(),
            QueueDeclareOptions::durable(),
            args,
        )
        .await
        .expect("old classic delay queue");
}

/// A retry as the worker writes it: the event's routing key and the attempts so far.
fn retry(routing_key: &str, attempts: u32) -> BasicProperties {
    let mut h = FieldTable::default();
    headers::set_str(&mut h, headers::ROUTING_KEY, routing_key);
    headers::set_u32(&mut h, headers::ATTEMPTS, attempts);
    BasicProperties::default().with_headers(h)
}

#[tokio::test]
async fn old_queues_are_migrated_and_every_message_keeps_what_it_is() {
    let mut s = settings();
    s.retry.delays = vec![Duration::from_secs(8).into()];
    // Only the exchange and the dead-letter queue: the rest is declared the old way.
    let app = TestApp::without_worker(&{
        let mut bare = crate::helpers::same_queues(&s);
        bare.broker.work_queue = format!("{}-unused", s.broker.work_queue);
        bare.retry.delays = vec![Duration::from_secs(1).into()];
        bare.broker.delay_queue_prefix = format!("{}-unused", s.broker.delay_queue_prefix);
        bare
    })
    .await;
    let t = Topology::from_settings(&s);
    declare_old_topology(&app, &t).await;
    let delay = t.delay_queues[0].name.clone();

    // A pipeline's event, waiting in the work queue.
    app.broker
        .publish(
            &t.exchange,
            "run.finished",
            b"pipeline",
            FieldTable::default(),
        )
        .await
        .expect("publish");
    // A retry already back from the delay queue (it expired at once), attempt 3.
    app.broker
        .publish_to_queue(
            &delay,
            b"returned retry",
            retry("experiment.prune", 2).with_expiration("1".into()),
        )
        .await
        .expect("publish");
    app.wait_len(&t.work_queue, 2, Duration::from_secs(10))
        .await;
    // A retry still waiting in the delay queue, attempt 2.
    app.broker
        .publish_to_queue(&delay, b"waiting retry", retry("run.finished", 1))
        .await
        .expect("publish");

    // With the default log filter: the expected refusals of its lookups are no ERROR lines.
    let mut dry_run = cli(&s, &["migrate-queues", "--dry-run"]);
    dry_run.env_remove("RUST_LOG");
    let (code, stdout, stderr) = outcome(&dry_run.output().await.expect("the binary runs"));
    assert_eq!(code, 0, "{stdout}{stderr}");
    assert!(!stderr.contains("ERROR"), "{stderr}");
    let line = stdout
        .lines()
        .find(|l| l.starts_with(&format!("{delay}: declared with other arguments")))
        .unwrap_or_else(|| panic!("{stdout}"));
    assert!(
        line.contains("inequivalent arg"),
        "names the argument: {line}"
    );
    assert_eq!(
        app.queue_len(&t.work_queue).await,
        2,
        "a dry run moves nothing"
    );

    let (code, stdout, stderr) = outcome(&run_cli(&s, &["migrate-queues"]).await);
    assert_eq!(code, 0, "{stdout}{stderr}");
    assert!(
        stdout.contains(&format!("{}: migrated", t.work_queue)),
        "{stdout}"
    );

    let management = Management::from_env();
    for queue in [&t.work_queue, &delay] {
        let q = management.queue(queue).await.expect("listed");
        assert_eq!(q["type"], "quorum", "{queue}");
        assert_eq!(
            q["arguments"]["x-dead-letter-strategy"], "at-least-once",
            "{queue}"
        );
    }
    // Every message comes back from the new first delay queue as what the worker would have
    // believed it to be.
    let mut back = Vec::new();
    for _ in 0..3 {
        let d = app
            .next_message(&t.work_queue, Duration::from_secs(20))
            .await
            .expect("a message back from the new delay queue");
        let o = t.origin(&d);
        assert!(o.from_delay_queue);
        back.push((
            String::from_utf8_lossy(&d.data).into_owned(),
            o.routing_key,
            o.attempt,
        ));
    }
    back.sort();
    let expected = [
        ("pipeline", "run.finished", 1),
        ("returned retry", "experiment.prune", 3),
        ("waiting retry", "run.finished", 2),
    ]
    .map(|(b, k, a)| (b.to_owned(), k.to_owned(), a));
    assert_eq!(back, expected);
    assert_eq!(app.queue_len(&t.work_queue).await, 0, "nothing else");

    let (code, stdout, stderr) = outcome(&run_cli(&s, &["migrate-queues"]).await);
    assert_eq!(code, 0, "{stdout}{stderr}");
    assert_eq!(stdout.matches("up to date").count(), 3, "{stdout}");
    assert!(
        !stdout.contains("holding"),
        "no holding queue is left: {stdout}"
    );
    for hold in [
        "migrating.run.finished",
        "migrating.experiment.prune",
        "migrating.as-is",
    ] {
        assert!(
            management
                .queue(&format!("{}.{hold}", t.work_queue))
                .await
                .is_none(),
            "{hold} is deleted"
        );
    }
    let mut cleanup = TestApp::without_worker(&s).await;
    cleanup.topology = t;
    cleanup.cleanup().await;
    app.cleanup().await;
}

#[tokio::test]
async fn an_unbounded_dead_letter_queue_is_migrated_and_each_letter_says_what_it_said() {
    let s = settings();
    let t = Topology::from_settings(&s);
    let broker = Broker::connect(&s.broker, "model-pruner migrate test")
        .await
        .unwrap();
    // The version before: a dead-letter queue without a type, a bound or an overflow.
    let channel = broker.channel();
    channel
        .queue_declare(
            t.dead_letter_queue.as_str().into(),
            QueueDeclareOptions::durable(),
            FieldTable::default(),
        )
        .await
        .expect("old dead-letter queue");
    channel
        .exchange_declare(
            t.exchange.as_str().into(),
            lapin::ExchangeKind::Topic,
            ExchangeDeclareOptions {
                durable: true,
                ..ExchangeDeclareOptions::default()
            },
            FieldTable::default(),
        )
        .await
        .unwrap();
    channel
        .queue_declare(
            t.work_queue.as_str().into(),
            QueueDeclareOptions::durable(),
            t.work_queue_arguments(),
        )
        .await
        .unwrap();
    bind_work_queue(channel, &t).await;
    // A letter the worker wrote, with properties a replay keeps.
    let mut h = FieldTable::default();
    headers::set_str(&mut h, headers::ROUTING_KEY, "run.finished");
    headers::set_str(&mut h, headers::ERROR_CLASS, "permanent");
    headers::set_str(&mut h, headers::ERROR_KIND, "unknown_experiment");
    let props = BasicProperties::default()
        .with_headers(h)
        .with_type("event".into())
        .with_priority(3);
    broker
        .publish_to_queue(&t.dead_letter_queue, b"worker letter", props)
        .await
        .unwrap();
    // A letter the broker dead-lettered (expired), whose publisher wrote the worker's headers.
    pika::publish(
        &s,
        &RawMessage {
            exchange: &t.exchange,
            routing_key: "run.finished",
            body: "expired letter",
            message_id: None,
            headers: vec![(headers::ROUTING_KEY.as_bytes(), "experiment.prune")],
            expiration: Some("1"),
        },
    );
    eventually(Duration::from_secs(20), "letter not expired", async || {
        broker.ready_messages(&t.dead_letter_queue).await.unwrap() >= 2
    })
    .await;

    let (code, stdout, stderr) = outcome(&run_cli(&s, &["migrate-queues"]).await);
    assert_eq!(code, 0, "{stdout}{stderr}");
    assert!(
        stdout.contains(&format!(
            "{}: migrated (2 messages moved out, 2 put back)",
            t.dead_letter_queue
        )),
        "{stdout}"
    );
    let q = Management::from_env()
        .queue(&t.dead_letter_queue)
        .await
        .expect("listed");
    assert_eq!(q["type"], "classic");
    assert_eq!(q["arguments"]["x-overflow"], "reject-publish");
    assert_eq!(q["arguments"]["x-max-length"], 100_000);

    let (code, stdout, err) = outcome(&run_cli(&s, &["dlq", "list", "--json"]).await);
    assert_eq!(code, 0, "{err}");
    let listed: Vec<serde_json::Value> = serde_json::from_str(&stdout).unwrap();
    assert_eq!(listed.len(), 2, "{stdout}");
    assert_eq!(listed[0]["body"], "worker letter");
    assert_eq!(listed[0]["error_kind"], "unknown_experiment");
    assert_eq!(listed[1]["body"], "expired letter");
    assert_eq!(
        listed[1]["routing_key"], "run.finished",
        "the key it entered with, not its publisher's header"
    );
    assert_eq!(listed[1]["error_class"], "broker");
    assert_eq!(listed[1]["error_kind"], "expired");

    let app = TestApp::without_worker(&s).await;
    let letters = app.drain(&t.dead_letter_queue).await;
    assert_eq!(
        letters[0].properties.kind().as_ref().unwrap().as_str(),
        "event"
    );
    assert_eq!(letters[0].properties.priority(), &Some(3));
    app.cleanup().await;
}
