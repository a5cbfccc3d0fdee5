//! Names of the message headers the worker owns, and reading and writing them. Not `x-`
//! prefixed: RabbitMQ 4 ignores client-set `x-death` and reserves the prefix. The ops CLI that
//! lists and replays dead letters reads the same names.

use crate::domain::time::EpochMs;
use lapin::BasicProperties;
use lapin::types::{AMQPValue, FieldTable, LongString, ShortString};

/// Deliveries of the message so far (failed attempts before this delivery).
pub const ATTEMPTS: &str = "model-pruner-attempts";
/// The routing key the message was first published with; delay-queue dead-lettering replaces
/// the delivery's own routing key with the work queue's name.
pub const ROUTING_KEY: &str = "model-pruner-routing-key";
/// Times the message was handed back unstarted at the ack deadline since its last attempt.
pub const HAND_BACKS: &str = "model-pruner-hand-backs";
/// Milliseconds since the epoch at which a follow-up pass the worker scheduled itself is due
/// (the end of a grace window); before that, the follow-up only travels on.
pub const FOLLOW_UP_AT: &str = "model-pruner-follow-up-at";
/// The chain a follow-up belongs to (see the worker's follow-up claims): a leg whose chain
/// another one took over stops.
pub const FOLLOW_UP_CHAIN: &str = "model-pruner-follow-up-chain";
/// `transient` or `permanent`.
pub const ERROR_CLASS: &str = "model-pruner-error-class";
/// Low-cardinality kind of the last error (`mlflow`, `unknown_experiment`, `invalid_message`...).
pub const ERROR_KIND: &str = "model-pruner-error-kind";
/// Human-readable last error, truncated to [`MAX_ERROR_MESSAGE`] bytes.
pub const ERROR_MESSAGE: &str = "model-pruner-error-message";
/// RFC 3339 time of the first failure of the message.
pub const FIRST_FAILURE: &str = "model-pruner-first-failure";
/// RFC 3339 time of the last failure of the message.
pub const LAST_FAILURE: &str = "model-pruner-last-failure";
/// Version of the worker that last handled the message (`CARGO_PKG_VERSION`).
pub const WORKER_VERSION: &str = "model-pruner-worker-version";
/// Host name of the worker that last handled the message.
pub const WORKER_HOST: &str = "model-pruner-worker-host";

/// Prefix of every header the worker writes.
pub const WORKER_PREFIX: &str = "model-pruner-";

/// Longest error message written into a header; AMQP headers must fit in one frame.
pub const MAX_ERROR_MESSAGE: usize = 2048;

/// Headers RabbitMQ manages itself; dropped when the worker re-publishes a message.
const BROKER_MANAGED: [&str; 9] = [
    "x-death",
    "x-delivery-count",
    "x-first-death-exchange",
    "x-first-death-queue",
    "x-first-death-reason",
    "x-last-death-exchange",
    "x-last-death-queue",
    "x-last-death-reason",
    "x-delivery-limit",
];

/// Reads a header as a string (long or short string), if present.
pub fn get_str(headers: Option<&FieldTable>, name: &str) -> Option<String> {
    match headers?.inner().get(name)? {
        AMQPValue::LongString(s) => Some(String::from_utf8_lossy(s.as_bytes()).into_owned()),
        AMQPValue::ShortString(s) => Some(s.as_str().to_owned()),
        _ => None,
    }
}

/// Reads a header as an unsigned integer, whatever integer type the publisher used.
pub fn get_u32(headers: Option<&FieldTable>, name: &str) -> Option<u32> {
    u32::try_from(get_int(headers, name)?).ok()
}

/// Reads a header as a signed 64-bit integer, whatever integer type the publisher used.
pub fn get_i64(headers: Option<&FieldTable>, name: &str) -> Option<i64> {
    i64::try_from(get_int(headers, name)?).ok()
}

fn get_int(headers: Option<&FieldTable>, name: &str) -> Option<i128> {
    let value: i128 = match headers?.inner().get(name)? {
        AMQPValue::ShortShortInt(v) => (*v).into(),
        AMQPValue::ShortShortUInt(v) => (*v).into(),
        AMQPValue::ShortInt(v) => (*v).into(),
        AMQPValue::ShortUInt(v) => (*v).into(),
        AMQPValue::LongInt(v) => (*v).into(),
        AMQPValue::LongUInt(v) => (*v).into(),
        AMQPValue::LongLongInt(v) => (*v).into(),
        AMQPValue::Timestamp(v) => (*v).into(),
        AMQPValue::LongString(s) => std::str::from_utf8(s.as_bytes())
            .ok()?
            .trim()
            .parse()
            .ok()?,
        _ => return None,
    };
    Some(value)
}

/// One entry of the broker's `x-death`: a time RabbitMQ dead-lettered the message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Death {
    /// The queue it left.
    pub queue: String,
    /// Why: `rejected`, `expired`, `maxlen` or `delivery_limit`.
    pub reason: String,
    /// The exchange it had been published to before it entered `queue`.
    pub exchange: Option<String>,
    /// The routing keys it had been published with before it entered `queue`.
    pub routing_keys: Vec<String>,
    /// Seconds since the epoch of the first such death.
    pub time: Option<i64>,
}

/// The broker's `x-death` entries, newest first: RabbitMQ moves the entry of the latest
/// dead-lettering to the front. Empty when the message was never dead-lettered; `None` when an
/// `x-death` is there but any entry is not what RabbitMQ writes (a publisher's, on RabbitMQ 3.x,
/// which keeps a client-written `x-death`): nothing about such a message can be believed.
pub fn deaths(headers: Option<&FieldTable>) -> Option<Vec<Death>> {
    let Some(header) = headers.and_then(|h| h.inner().get("x-death")) else {
        return Some(Vec::new());
    };
    let AMQPValue::FieldArray(deaths) = header else {
        return None;
    };
    deaths
        .as_slice()
        .iter()
        .map(|d| {
            let AMQPValue::FieldTable(d) = d else {
                return None;
            };
            let d = Some(d);
            let routing_keys = match d?.inner().get("routing-keys") {
                Some(AMQPValue::FieldArray(keys)) => keys
                    .as_slice()
                    .iter()
                    .filter_map(|k| match k {
                        AMQPValue::LongString(s) => {
                            Some(String::from_utf8_lossy(s.as_bytes()).into_owned())
                        }
                        AMQPValue::ShortString(s) => Some(s.as_str().to_owned()),
                        _ => None,
                    })
                    .collect(),
                _ => Vec::new(),
            };
            Some(Death {
                queue: get_str(d, "queue")?,
                reason: get_str(d, "reason")?,
                exchange: get_str(d, "exchange"),
                routing_keys,
                time: get_i64(d, "time"),
            })
        })
        .collect()
}

/// The queue and reason of the message's latest dead-lettering, from the broker's `x-death`
/// (newest first), if it was ever dead-lettered.
pub fn last_death(headers: Option<&FieldTable>) -> Option<(String, String)> {
    deaths(headers)?
        .into_iter()
        .next()
        .map(|d| (d.queue, d.reason))
}

/// Whether a message's properties or header names held bytes that are not UTF-8. AMQP short
/// strings (ids, content type, header names) must be UTF-8 for lapin; the tree's patched
/// `amq-protocol-types` (see `vendor/README.md`) reads such bytes as U+FFFD instead of closing
/// the connection, and this tells the worker and the `dlq` commands that the message is not
/// what its publisher sent once read: it is rejected unread, never re-published from a copy.
pub fn unreadable(properties: &BasicProperties) -> bool {
    let garbled = |s: &Option<ShortString>| {
        s.as_ref()
            .is_some_and(|s| s.as_str().contains(char::REPLACEMENT_CHARACTER))
    };
    [
        properties.content_type(),
        properties.content_encoding(),
        properties.correlation_id(),
        properties.reply_to(),
        properties.expiration(),
        properties.message_id(),
        properties.kind(),
        properties.user_id(),
        properties.app_id(),
        properties.cluster_id(),
    ]
    .into_iter()
    .any(garbled)
        || properties.headers().as_ref().is_some_and(table_unreadable)
}

fn table_unreadable(table: &FieldTable) -> bool {
    table
        .inner()
        .iter()
        .any(|(k, v)| k.as_str().contains(char::REPLACEMENT_CHARACTER) || value_unreadable(v))
}

fn value_unreadable(value: &AMQPValue) -> bool {
    match value {
        AMQPValue::ShortString(s) => s.as_str().contains(char::REPLACEMENT_CHARACTER),
        AMQPValue::FieldTable(t) => table_unreadable(t),
        AMQPValue::FieldArray(a) => a.as_slice().iter().any(value_unreadable),
        _ => false,
    }
}

/// Sets a string header.
pub fn set_str(headers: &mut FieldTable, name: &str, value: &str) {
    headers.insert(
        ShortString::from(name),
        AMQPValue::LongString(LongString::from(value)),
    );
}

/// Sets an integer header (AMQP long-long, which every client reads).
pub fn set_u32(headers: &mut FieldTable, name: &str, value: u32) {
    headers.insert(
        ShortString::from(name),
        AMQPValue::LongLongInt(value.into()),
    );
}

/// The headers of a message being re-published: the original ones without those the broker
/// manages and without a follow-up time, which only the worker's own follow-ups carry (set
/// afresh on each of their legs), so a header a publisher wrote cannot become trusted by
/// riding a retry through a delay queue.
pub fn republished(original: Option<&FieldTable>) -> FieldTable {
    let mut headers = FieldTable::default();
    for (k, v) in original.map(FieldTable::inner).into_iter().flatten() {
        if !BROKER_MANAGED.contains(&k.as_str())
            && k.as_str() != FOLLOW_UP_AT
            && k.as_str() != FOLLOW_UP_CHAIN
        {
            headers.insert(k.clone(), v.clone());
        }
    }
    headers
}

/// `headers` without any the worker writes (`model-pruner-*`): a fresh attempt count, and no
/// claim a publisher could have written in the worker's name.
pub fn without_worker_headers(headers: FieldTable) -> FieldTable {
    let mut kept = FieldTable::default();
    for (k, v) in headers.inner() {
        if !k.as_str().starts_with(WORKER_PREFIX) {
            kept.insert(k.clone(), v.clone());
        }
    }
    kept
}

/// The headers of a copy that goes through a delay queue and must come back as the same
/// attempt of the same event: the original ones (minus those the broker manages) with the
/// routing key, the attempts before this one and how often it was handed back.
pub fn handed_back(
    original: Option<&FieldTable>,
    routing_key: &str,
    attempt: u32,
    hand_backs: u32,
) -> FieldTable {
    let mut h = republished(original);
    set_u32(&mut h, ATTEMPTS, attempt.saturating_sub(1));
    set_str(&mut h, ROUTING_KEY, routing_key);
    set_u32(&mut h, HAND_BACKS, hand_backs);
    h
}

/// The headers of a follow-up pass the worker schedules for itself: an `experiment.prune`,
/// first attempt, due at `at` (milliseconds since the epoch in the header), of chain `chain`.
pub fn follow_up(routing_key: &str, at: EpochMs, chain: &str) -> FieldTable {
    let mut h = FieldTable::default();
    set_u32(&mut h, ATTEMPTS, 0);
    set_str(&mut h, ROUTING_KEY, routing_key);
    h.insert(
        ShortString::from(FOLLOW_UP_AT),
        AMQPValue::LongLongInt(at.millis()),
    );
    set_str(&mut h, FOLLOW_UP_CHAIN, chain);
    h
}

/// `message` cut to at most [`MAX_ERROR_MESSAGE`] bytes on a character boundary.
pub fn truncate_message(message: &str) -> &str {
    if message.len() <= MAX_ERROR_MESSAGE {
        return message;
    }
    let mut end = MAX_ERROR_MESSAGE;
    while !message.is_char_boundary(end) {
        end -= 1;
    }
    &message[..end]
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// `x-death` as RabbitMQ writes it, newest death first.
    pub(crate) fn with_deaths(deaths: &[(&str, &str)]) -> FieldTable {
        let deaths = deaths
            .iter()
            .map(|(queue, reason)| {
                let mut death = FieldTable::default();
                set_str(&mut death, "queue", queue);
                set_str(&mut death, "reason", reason);
                set_u32(&mut death, "count", 1);
                AMQPValue::FieldTable(death)
            })
            .collect::<Vec<_>>();
        let mut h = FieldTable::default();
        h.insert("x-death".into(), AMQPValue::FieldArray(deaths.into()));
        h
    }

    #[test]
    fn the_latest_death_is_the_first_of_x_death() {
        let h = with_deaths(&[("p.30s", "expired"), ("work", "rejected")]);
        assert_eq!(
            last_death(Some(&h)),
            Some(("p.30s".to_owned(), "expired".to_owned()))
        );
        assert_eq!(last_death(Some(&FieldTable::default())), None);
        assert_eq!(last_death(None), None);
    }

    #[test]
    fn integers_of_any_width_read_as_attempts() {
        let mut h = FieldTable::default();
        for v in [
            AMQPValue::ShortShortUInt(3),
            AMQPValue::LongInt(3),
            AMQPValue::LongLongInt(3),
            AMQPValue::LongString("3".into()),
        ] {
            h.insert(ATTEMPTS.into(), v);
            assert_eq!(get_u32(Some(&h), ATTEMPTS), Some(3));
        }
    }

    #[test]
    fn negative_or_absent_attempts_read_as_none() {
        let mut h = FieldTable::default();
        assert_eq!(get_u32(Some(&h), ATTEMPTS), None);
        assert_eq!(get_u32(None, ATTEMPTS), None);
        h.insert(ATTEMPTS.into(), AMQPValue::LongInt(-1));
        assert_eq!(get_u32(Some(&h), ATTEMPTS), None);
    }

    #[test]
    fn written_headers_read_back() {
        let mut h = FieldTable::default();
        set_u32(&mut h, ATTEMPTS, 7);
        set_str(&mut h, ROUTING_KEY, "run.finished");
        assert_eq!(get_u32(Some(&h), ATTEMPTS), Some(7));
        assert_eq!(
            get_str(Some(&h), ROUTING_KEY).as_deref(),
            Some("run.finished")
        );
    }

    #[test]
    fn republished_headers_drop_broker_managed_ones_and_a_follow_up_time() {
        let mut h = FieldTable::default();
        h.insert("x-death".into(), AMQPValue::FieldArray(vec![].into()));
        h.insert(
            "x-first-death-reason".into(),
            AMQPValue::LongString("expired".into()),
        );
        set_str(&mut h, "trace-id", "abc");
        set_u32(&mut h, ATTEMPTS, 1);
        h.insert(FOLLOW_UP_AT.into(), AMQPValue::LongLongInt(1));
        set_str(&mut h, FOLLOW_UP_CHAIN, "c");
        let r = republished(Some(&h));
        assert!(!r.contains_key(FOLLOW_UP_CHAIN));
        assert!(!r.contains_key("x-death"));
        assert!(!r.contains_key("x-first-death-reason"));
        assert!(!r.contains_key(FOLLOW_UP_AT));
        assert!(r.contains_key("trace-id"));
        assert!(r.contains_key(ATTEMPTS));
    }

    #[test]
    fn deaths_read_newest_first_with_the_key_a_message_entered_with() {
        let mut death = FieldTable::default();
        set_str(&mut death, "queue", "work");
        set_str(&mut death, "reason", "expired");
        set_str(&mut death, "exchange", "model-pruner");
        death.insert(
            "routing-keys".into(),
            AMQPValue::FieldArray(vec![AMQPValue::LongString("run.finished".into())].into()),
        );
        death.insert("time".into(), AMQPValue::Timestamp(1_700_000_000));
        let mut h = with_deaths(&[("p.30s", "expired")]);
        let AMQPValue::FieldArray(older) = h.inner()["x-death"].clone() else {
            unreachable!()
        };
        let mut all = vec![AMQPValue::FieldTable(death)];
        all.extend(older.as_slice().iter().cloned());
        h.insert("x-death".into(), AMQPValue::FieldArray(all.into()));
        let d = deaths(Some(&h)).unwrap();
        assert_eq!(d.len(), 2);
        assert_eq!(
            d[0],
            Death {
                queue: "work".into(),
                reason: "expired".into(),
                exchange: Some("model-pruner".into()),
                routing_keys: vec!["run.finished".into()],
                time: Some(1_700_000_000),
            }
        );
        assert_eq!(
            (d[1].queue.as_str(), d[1].exchange.clone()),
            ("p.30s", None)
        );
        assert_eq!(deaths(None), Some(vec![]));
        // Any entry RabbitMQ would not write makes the whole header unbelievable.
        let mut bad = FieldTable::default();
        bad.insert("queue".into(), AMQPValue::ByteArray(vec![b'w'].into()));
        set_str(&mut bad, "reason", "expired");
        let AMQPValue::FieldArray(all) = h.inner()["x-death"].clone() else {
            unreachable!()
        };
        let mut all = all.as_slice().to_vec();
        all.push(AMQPValue::FieldTable(bad));
        h.insert("x-death".into(), AMQPValue::FieldArray(all.into()));
        assert_eq!(deaths(Some(&h)), None);
        h.insert("x-death".into(), AMQPValue::LongString("x".into()));
        assert_eq!(deaths(Some(&h)), None);
    }

    #[test]
    fn replacement_characters_anywhere_in_properties_or_header_names_are_unreadable() {
        let clean = BasicProperties::default()
            .with_message_id("m-1".into())
            .with_headers(with_deaths(&[("w", "rejected")]));
        assert!(!unreadable(&clean));
        assert!(unreadable(
            &clean.clone().with_message_id("\u{FFFD}\u{FFFD}".into())
        ));
        assert!(unreadable(&clean.clone().with_app_id("a\u{FFFD}".into())));
        let mut h = FieldTable::default();
        set_str(&mut h, "k\u{FFFD}", "v");
        assert!(unreadable(&BasicProperties::default().with_headers(h)));
        let mut nested = FieldTable::default();
        nested.insert("x".into(), AMQPValue::ShortString("\u{FFFD}".into()));
        let mut h = FieldTable::default();
        h.insert(
            "list".into(),
            AMQPValue::FieldArray(vec![AMQPValue::FieldTable(nested)].into()),
        );
        assert!(unreadable(&BasicProperties::default().with_headers(h)));
        // A long-string value is bytes: any content is readable, and is kept as sent.
        let mut h = FieldTable::default();
        h.insert("v".into(), AMQPValue::LongString(vec![0xff, 0xfe].into()));
        assert!(!unreadable(&BasicProperties::default().with_headers(h)));
    }

    #[test]
    fn long_messages_are_cut_on_a_char_boundary() {
        let long = "é".repeat(MAX_ERROR_MESSAGE);
        let cut = truncate_message(&long);
        assert!(cut.len() <= MAX_ERROR_MESSAGE);
        assert!(long.starts_with(cut));
        assert_eq!(truncate_message("short"), "short");
    }
}
