use lapin::BasicProperties;
use lapin::types::AMQPValue;

use super::*;

fn letter(experiment: &str, class: &str, kind: &str) -> DeadLetter {
    DeadLetter {
        position: 1,
        source: Source::Worker,
        routing_key: Some("run.finished".into()),
        experiment_id: Some(experiment.into()),
        run_id: None,
        error_class: Some(class.into()),
        error_kind: Some(kind.into()),
        error_message: None,
        attempts: Some(3),
        first_failure: None,
        last_failure: None,
        age_seconds: None,
        unreadable: false,
        body: "{}".into(),
    }
}

#[test]
fn filter_matches_experiment_and_class_or_kind() {
    let l = letter("12", "transient", "mlflow");
    assert!(Filter::default().matches(&l));
    let f = |e: Option<&str>, c: Option<&str>| Filter {
        experiment_id: e.map(str::to_owned),
        error_class: c.map(str::to_owned),
    };
    assert!(f(Some("12"), None).matches(&l));
    assert!(!f(Some("13"), None).matches(&l));
    assert!(f(None, Some("transient")).matches(&l));
    assert!(f(Some("12"), Some("mlflow")).matches(&l));
    assert!(!f(Some("12"), Some("permanent")).matches(&l));
}

#[test]
fn rates_parse_with_or_without_per_second() {
    assert_eq!("5".parse::<Rate>(), Ok(Rate(5.0)));
    assert_eq!("0.5/s".parse::<Rate>(), Ok(Rate(0.5)));
    assert!("0".parse::<Rate>().is_err());
    assert!("fast".parse::<Rate>().is_err());
}

#[test]
fn ages_read_at_a_glance() {
    assert_eq!(age(-3), "0s");
    assert_eq!(age(42), "42s");
    assert_eq!(age(192), "3m12s");
    assert_eq!(age(5 * 3600 + 180), "5h03m");
    assert_eq!(age(2 * 86400 + 4 * 3600), "2d04h");
}

fn topology() -> Topology {
    Topology {
        exchange: "mp".into(),
        work_queue: "mp.work".into(),
        dead_letter_queue: "mp.dlq".into(),
        dead_letter_max_length: 1000,
        delivery_limit: 20,
        delay_queues: vec![crate::broker::DelayQueue {
            name: "mp.delay.30s".into(),
            delay: std::time::Duration::from_secs(30),
        }],
    }
}

/// A dead letter as `basic.get` returns it from the dead-letter queue, with `h`, and
/// `deaths` (newest first) as the broker's `x-death`: queue, reason, exchange, routing keys
/// (comma-separated).
fn delivered(mut h: FieldTable, deaths: &[(&str, &str, &str, &str)]) -> Delivery {
    if !deaths.is_empty() {
        let deaths = deaths
            .iter()
            .map(|(queue, reason, exchange, key)| {
                let mut d = FieldTable::default();
                headers::set_str(&mut d, "queue", queue);
                headers::set_str(&mut d, "reason", reason);
                headers::set_str(&mut d, "exchange", exchange);
                let keys: Vec<_> = key
                    .split(',')
                    .map(|k| AMQPValue::LongString(k.into()))
                    .collect();
                d.insert("routing-keys".into(), AMQPValue::FieldArray(keys.into()));
                d.insert("time".into(), AMQPValue::Timestamp(1_735_725_600));
                AMQPValue::FieldTable(d)
            })
            .collect::<Vec<_>>();
        h.insert("x-death".into(), AMQPValue::FieldArray(deaths.into()));
    }
    let mut d = Delivery::mock(
        1,
        "".into(),
        "mp.dlq".into(),
        false,
        br#"{"experiment_id":"7","run_id":"r1"}"#.to_vec(),
    );
    d.properties = BasicProperties::default().with_headers(h);
    d
}

/// What a publisher can write: the worker's header names.
fn forged() -> FieldTable {
    let mut h = FieldTable::default();
    headers::set_str(&mut h, headers::ROUTING_KEY, "experiment.prune");
    headers::set_str(&mut h, headers::ERROR_CLASS, "transient");
    headers::set_u32(&mut h, headers::ATTEMPTS, 1);
    h
}

fn now() -> OffsetDateTime {
    OffsetDateTime::parse("2025-01-01T10:01:00Z", &Rfc3339).unwrap()
}

#[test]
fn a_letter_the_broker_dead_lettered_names_the_key_it_entered_with_not_its_headers() {
    for reason in ["delivery_limit", "expired", "maxlen", "rejected"] {
        let d = delivered(forged(), &[("mp.work", reason, "mp", "run.finished")]);
        let l = DeadLetter::read(1, &d, &topology(), now());
        assert_eq!(l.source, Source::Broker);
        assert_eq!(l.routing_key.as_deref(), Some("run.finished"));
        assert_eq!(l.error_class.as_deref(), Some("broker"));
        assert_eq!(l.error_kind.as_deref(), Some(reason));
        assert_eq!(l.attempts, None);
        assert_eq!(l.age_seconds, Some(60));
    }
    // Entered with a key the work queue is not bound to (a bound one only as a CC key), or
    // through another exchange.
    for (exchange, key) in [
        ("mp", "x.y"),
        ("mp", "x.y,experiment.prune"),
        ("other", "run.finished"),
    ] {
        let d = delivered(forged(), &[("mp.work", "expired", exchange, key)]);
        assert_eq!(
            DeadLetter::read(1, &d, &topology(), now()).routing_key,
            None
        );
    }
}

#[test]
fn a_letter_back_from_a_delay_queue_keeps_the_key_the_worker_recorded() {
    let deaths = [
        ("mp.work", "delivery_limit", "", "mp.work"),
        ("mp.delay.30s", "expired", "", "mp.delay.30s"),
    ];
    let d = delivered(forged(), &deaths);
    let l = DeadLetter::read(1, &d, &topology(), now());
    assert_eq!(l.source, Source::Broker);
    assert_eq!(l.routing_key.as_deref(), Some("experiment.prune"));
    // Straight into the work queue through the default exchange: nothing to believe.
    let d = delivered(forged(), &deaths[..1]);
    assert_eq!(
        DeadLetter::read(1, &d, &topology(), now()).routing_key,
        None
    );
    // A recorded key the work queue is not bound to is not believed either.
    let mut h = forged();
    headers::set_str(&mut h, headers::ROUTING_KEY, "mp.dlq");
    let d = delivered(h, &deaths);
    assert_eq!(
        DeadLetter::read(1, &d, &topology(), now()).routing_key,
        None
    );
}

#[test]
fn a_letter_from_nowhere_the_worker_or_broker_puts_them_is_unknown() {
    let d = delivered(forged(), &[("elsewhere", "expired", "mp", "run.finished")]);
    let l = DeadLetter::read(1, &d, &topology(), now());
    assert_eq!(l.source, Source::Unknown);
    assert_eq!((l.routing_key, l.error_class), (None, None));
    // Published into another queue's name, without x-death.
    let mut d = delivered(forged(), &[]);
    d.routing_key = "other".into();
    assert_eq!(
        DeadLetter::read(1, &d, &topology(), now()).source,
        Source::Unknown
    );
}

#[test]
fn a_moved_letter_keeps_only_what_the_worker_or_broker_said() {
    let mut h = forged();
    headers::set_str(&mut h, "trace-id", "t-1");
    let d = delivered(h.clone(), &[("mp.work", "expired", "mp", "run.finished")]);
    let moved =
        DeadLetter::read(1, &d, &topology(), now()).moved_headers(d.properties.headers().as_ref());
    let s = |name| headers::get_str(Some(&moved), name);
    assert_eq!(s(headers::ROUTING_KEY).as_deref(), Some("run.finished"));
    assert_eq!(s(headers::ERROR_CLASS).as_deref(), Some("broker"));
    assert_eq!(s(headers::ERROR_KIND).as_deref(), Some("expired"));
    assert_eq!(headers::get_u32(Some(&moved), headers::ATTEMPTS), None);
    assert_eq!(s("trace-id").as_deref(), Some("t-1"));
    assert!(!moved.contains_key("x-death"));
    // Read again where it lands, it says the same.
    let mut landed = delivered(moved, &[]);
    landed.routing_key = "mp.dlq".into();
    let again = DeadLetter::read(1, &landed, &topology(), now());
    assert_eq!(again.routing_key.as_deref(), Some("run.finished"));
    assert_eq!(again.error_kind.as_deref(), Some("expired"));
    // An unknown letter keeps no routing key: it stays unreplayable.
    let d = delivered(h, &[("elsewhere", "expired", "mp", "run.finished")]);
    let moved =
        DeadLetter::read(1, &d, &topology(), now()).moved_headers(d.properties.headers().as_ref());
    assert_eq!(headers::get_str(Some(&moved), headers::ROUTING_KEY), None);
    // A worker letter is moved as it is.
    let d = delivered(forged(), &[]);
    let moved =
        DeadLetter::read(1, &d, &topology(), now()).moved_headers(d.properties.headers().as_ref());
    assert_eq!(moved, forged());
}

#[test]
fn an_x_death_rabbitmq_would_not_write_makes_a_letter_unknown() {
    let mut h = forged();
    h.insert("x-death".into(), AMQPValue::LongString("forged".into()));
    let l = DeadLetter::read(1, &delivered(h, &[]), &topology(), now());
    assert_eq!(l.source, Source::Unknown);
    assert_eq!(l.routing_key, None);
}

#[test]
fn unreadable_properties_are_flagged() {
    let mut d = delivered(
        FieldTable::default(),
        &[("mp.work", "rejected", "mp", "run.finished")],
    );
    d.properties = d.properties.with_message_id("\u{FFFD}".into());
    assert!(DeadLetter::read(1, &d, &topology(), now()).unreadable);
}

#[test]
fn dead_letters_read_headers_and_body_ids() {
    let mut h = FieldTable::default();
    headers::set_str(&mut h, headers::ROUTING_KEY, "run.finished");
    headers::set_str(&mut h, headers::ERROR_CLASS, "permanent");
    headers::set_str(&mut h, headers::LAST_FAILURE, "2025-01-01T10:00:00Z");
    headers::set_u32(&mut h, headers::ATTEMPTS, 2);
    let mut d = Delivery::mock(
        1,
        "".into(),
        "mp.dlq".into(),
        false,
        br#"{"experiment_id":"7","run_id":"r1"}"#.to_vec(),
    );
    d.properties = BasicProperties::default().with_headers(h);
    let now = OffsetDateTime::parse("2025-01-01T10:01:00Z", &Rfc3339).unwrap();
    let l = DeadLetter::read(4, &d, &topology(), now);
    assert_eq!(l.source, Source::Worker);
    assert_eq!(l.position, 4);
    assert_eq!(l.experiment_id.as_deref(), Some("7"));
    assert_eq!(l.run_id.as_deref(), Some("r1"));
    assert_eq!(l.error_class.as_deref(), Some("permanent"));
    assert_eq!(l.attempts, Some(2));
    assert_eq!(l.age_seconds, Some(60));
}
