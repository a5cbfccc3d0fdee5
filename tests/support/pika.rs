//! pika, the Python client pipelines use, to publish what lapin refuses to send (message ids
//! and header names that are not UTF-8) and to read back the exact bytes a queue holds.
//! Runs the stack's virtualenv (`MODEL_PRUNER_PYTHON`, set by `scripts/stack.sh env`).

use std::process::Command;

use model_pruner::settings::Settings;
use serde_json::{Value, json};

const SCRIPT: &str = r#"
import json, sys
import pika

spec = json.loads(sys.argv[1])
conn = pika.BlockingConnection(pika.URLParameters(spec["url"]))
ch = conn.channel()
out = None
if spec["op"] == "publish":
    ch.confirm_delivery()
    headers = {bytes.fromhex(k): v for k, v in spec["headers"]}
    props = pika.BasicProperties(
        content_type="application/json",
        delivery_mode=2,
        message_id=bytes.fromhex(spec["message_id"]) if spec["message_id"] else None,
        expiration=spec["expiration"],
        headers=headers or None,
    )
    ch.basic_publish(spec["exchange"], spec["routing_key"], spec["body"].encode(), props,
                     mandatory=True)
else:
    method, props, body = ch.basic_get(spec["queue"], auto_ack=False)
    if method is not None:
        raw = lambda s: (s.encode() if isinstance(s, str) else s).hex()
        out = {
            "message_id": raw(props.message_id) if props.message_id is not None else None,
            "header_names": sorted(raw(k) for k in (props.headers or {})),
            "body": body.decode(),
        }
        ch.basic_nack(method.delivery_tag, requeue=True)
conn.close()
print(json.dumps(out))
"#;

/// A message as a pipeline publishes it with pika; names and ids as raw bytes.
pub struct RawMessage<'a> {
    pub exchange: &'a str,
    pub routing_key: &'a str,
    pub body: &'a str,
    pub message_id: Option<&'a [u8]>,
    /// Header names as bytes, each with a string value.
    pub headers: Vec<(&'a [u8], &'a str)>,
    /// Per-message TTL in milliseconds, as AMQP writes it.
    pub expiration: Option<&'a str>,
}

/// Publishes `message` with publisher confirms and the mandatory flag.
pub fn publish(settings: &Settings, message: &RawMessage<'_>) {
    let spec = json!({
        "op": "publish",
        "url": settings.broker.url.expose().as_str(),
        "exchange": message.exchange,
        "routing_key": message.routing_key,
        "body": message.body,
        "message_id": message.message_id.map(hex),
        "headers": message.headers.iter().map(|(k, v)| json!([hex(k), v])).collect::<Vec<_>>(),
        "expiration": message.expiration,
    });
    run(&spec);
}

/// The first message of `queue`, left in place: its message id and header names as hex bytes
/// and its body; `Null` when the queue is empty.
pub fn peek(settings: &Settings, queue: &str) -> Value {
    let spec = json!({
        "op": "get",
        "url": settings.broker.url.expose().as_str(),
        "queue": queue,
    });
    run(&spec)
}

pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn run(spec: &Value) -> Value {
    let python = std::env::var("MODEL_PRUNER_PYTHON")
        .expect("MODEL_PRUNER_PYTHON: run the tests through scripts/test.sh or stack.sh env");
    let output = Command::new(python)
        .args(["-c", SCRIPT, &spec.to_string()])
        .output()
        .expect("python runs");
    assert!(
        output.status.success(),
        "pika failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    serde_json::from_slice(&output.stdout).expect("the script prints JSON")
}
