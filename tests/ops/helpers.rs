//! Isolated settings (random exchange and queue names), a broker connection to set up and
//! inspect queues, workers run in-process, and the `model-pruner` binary run with the same
//! names through `MODEL_PRUNER__BROKER__*`.

use std::process::Output;
use std::time::Duration;

use lapin::BasicProperties;
use lapin::message::Delivery;
use lapin::options::{
    BasicGetOptions, ExchangeDeleteOptions, QueueDeclareOptions, QueueDeleteOptions,
};
use lapin::types::FieldTable;
use model_pruner::broker::{Broker, Topology, headers};
use model_pruner::settings::Settings;
use tokio::process::Command;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

/// Settings with unique names and small delays; `MODEL_PRUNER__*` from the environment apply.
pub fn settings() -> Settings {
    if std::env::var_os("TEST_LOG").is_some() {
        model_pruner::telemetry::init(model_pruner::settings::LogFormat::Pretty);
    }
    let mut s = Settings::load(None).expect("settings load");
    let id = format!("mp-ops-{:08x}", rand::random::<u32>());
    s.broker.exchange = id.clone();
    s.broker.work_queue = format!("{id}.work");
    s.broker.dead_letter_queue = format!("{id}.dead-letter");
    s.broker.delay_queue_prefix = format!("{id}.delay");
    s.retry.delays = vec![Duration::from_millis(500).into()];
    s.retry.max_attempts = 3;
    s.retry.in_process_attempts = 1;
    s.retry.initial_backoff = Duration::from_millis(10);
    s.retry.max_backoff = Duration::from_millis(50);
    s.mlflow.request_timeout = Duration::from_secs(5);
    s.concurrency.shutdown_grace = Duration::from_secs(5);
    s.metrics.listen = "127.0.0.1:0".parse().unwrap();
    s
}

/// The `model-pruner` binary with the broker names of `settings` (the rest of its settings
/// come from the environment, as `scripts/stack.sh env` sets it).
pub fn cli(settings: &Settings, args: &[&str]) -> Command {
    let b = &settings.broker;
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_model-pruner"));
    cmd.args(args)
        .env("MODEL_PRUNER__BROKER__EXCHANGE", &b.exchange)
        .env("MODEL_PRUNER__BROKER__WORK_QUEUE", &b.work_queue)
        .env(
            "MODEL_PRUNER__BROKER__DEAD_LETTER_QUEUE",
            &b.dead_letter_queue,
        )
        .env(
            "MODEL_PRUNER__BROKER__DELAY_QUEUE_PREFIX",
            &b.delay_queue_prefix,
        )
        .env("MODEL_PRUNER__LOG__FORMAT", "pretty")
        .env("RUST_LOG", "off")
        .kill_on_drop(true);
    cmd
}

/// Runs the binary to completion.
pub async fn run_cli(settings: &Settings, args: &[&str]) -> Output {
    let out = cli(settings, args)
        .output()
        .await
        .expect("the model-pruner binary runs");
    if std::env::var_os("TEST_LOG").is_some() {
        eprintln!(
            "model-pruner {args:?}: {}\n{}{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    out
}

/// The exit code, stdout and stderr of a finished run.
pub fn outcome(out: &Output) -> (i32, String, String) {
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

pub struct TestApp {
    pub settings: Settings,
    pub topology: Topology,
    pub broker: Broker,
    shutdown: CancellationToken,
    workers: Vec<JoinHandle<anyhow::Result<()>>>,
}

impl TestApp {
    /// Connects and declares the topology of `settings`; no worker yet.
    pub async fn new(settings: Settings) -> TestApp {
        let topology = Topology::from_settings(&settings);
        let broker = Broker::connect(&settings.broker, "model-pruner ops tests")
            .await
            .expect("RabbitMQ at 127.0.0.1:5672");
        broker.declare(&topology).await.expect("declare topology");
        TestApp {
            settings,
            topology,
            broker,
            shutdown: CancellationToken::new(),
            workers: Vec::new(),
        }
    }

    /// Starts a worker on this app's queues with `settings` (same broker names).
    pub fn start(&mut self, settings: Settings) {
        let worker = tokio::spawn(model_pruner::worker::run(settings, self.shutdown.clone()));
        self.workers.push(worker);
    }

    /// Stops the workers started so far; later ones get a fresh shutdown token.
    pub async fn stop(&mut self) {
        self.shutdown.cancel();
        for w in self.workers.drain(..) {
            let _ = tokio::time::timeout(Duration::from_secs(30), w).await;
        }
        self.shutdown = CancellationToken::new();
    }

    /// Publishes an event to the exchange.
    pub async fn publish(&self, routing_key: &str, body: &[u8]) {
        self.broker
            .publish(
                &self.topology.exchange,
                routing_key,
                body,
                FieldTable::default(),
            )
            .await
            .expect("publish");
    }

    /// Puts a dead letter like the worker writes it into the dead-letter queue.
    pub async fn dead_letter(&self, routing_key: &str, body: &str, class: &str, kind: &str) {
        let mut h = FieldTable::default();
        headers::set_u32(&mut h, headers::ATTEMPTS, 3);
        headers::set_str(&mut h, headers::ROUTING_KEY, routing_key);
        headers::set_str(&mut h, headers::ERROR_CLASS, class);
        headers::set_str(&mut h, headers::ERROR_KIND, kind);
        headers::set_str(&mut h, headers::ERROR_MESSAGE, "planted by a test");
        headers::set_str(&mut h, headers::LAST_FAILURE, "2025-01-01T10:00:00Z");
        headers::set_str(&mut h, "trace-id", "t-1");
        self.broker
            .publish_to_queue(
                &self.topology.dead_letter_queue,
                body.as_bytes(),
                BasicProperties::default().with_headers(h),
            )
            .await
            .expect("publish to the dead-letter queue");
    }

    /// Ready messages in `queue`.
    pub async fn queue_len(&self, queue: &str) -> u32 {
        self.broker
            .channel()
            .queue_declare(
                queue.into(),
                QueueDeclareOptions {
                    passive: true,
                    ..QueueDeclareOptions::default()
                },
                FieldTable::default(),
            )
            .await
            .expect("passive queue.declare")
            .message_count()
    }

    /// Waits until `queue` holds `n` ready messages.
    pub async fn wait_len(&self, queue: &str, n: u32, timeout: Duration) {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let len = self.queue_len(queue).await;
            if len == n {
                return;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "{queue} holds {len} messages, not {n}, after {timeout:?}"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Takes (acks) every message of `queue`, in order.
    pub async fn drain(&self, queue: &str) -> Vec<Delivery> {
        let mut all = Vec::new();
        while let Some(m) = self
            .broker
            .channel()
            .basic_get(queue.into(), BasicGetOptions { no_ack: true })
            .await
            .expect("basic.get")
        {
            all.push(m.delivery);
        }
        all
    }

    /// Stops the workers, deletes the queues and the exchange (best effort).
    pub async fn cleanup(mut self) {
        self.stop().await;
        let channel = self.broker.channel();
        for q in self.topology.queue_names() {
            let _ = channel
                .queue_delete(q.into(), QueueDeleteOptions::default())
                .await;
        }
        let _ = channel
            .exchange_delete(
                self.topology.exchange.as_str().into(),
                ExchangeDeleteOptions::default(),
            )
            .await;
        let _ = self.broker.close().await;
    }
}

/// A header of `delivery` as a string.
pub fn header(delivery: &Delivery, name: &str) -> Option<String> {
    headers::get_str(delivery.properties.headers().as_ref(), name)
}

/// The bodies of `deliveries`, as strings.
pub fn bodies(deliveries: &[Delivery]) -> Vec<String> {
    deliveries
        .iter()
        .map(|d| String::from_utf8_lossy(&d.data).into_owned())
        .collect()
}

/// Fresh settings on the queues of `first` (settings are not `Clone`).
pub fn same_queues(first: &Settings) -> Settings {
    let mut s = settings();
    s.broker.exchange = first.broker.exchange.clone();
    s.broker.work_queue = first.broker.work_queue.clone();
    s.broker.dead_letter_queue = first.broker.dead_letter_queue.clone();
    s.broker.delay_queue_prefix = first.broker.delay_queue_prefix.clone();
    s
}
