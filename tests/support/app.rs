//! A worker app with isolated broker settings (random exchange and queue names): the
//! declared topology, a test connection to publish and inspect queues with, and workers run
//! in-process on the same queues.

use std::net::SocketAddr;
use std::time::Duration;

use lapin::BasicProperties;
use lapin::message::Delivery;
use lapin::options::{BasicGetOptions, ExchangeDeleteOptions, QueueDeleteOptions};
use lapin::types::FieldTable;
use model_pruner::broker::{Broker, Topology, headers};
use model_pruner::metrics::{Metrics, Server};
use model_pruner::settings::Settings;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::support::eventually::{eventually, eventually_every};

/// Settings with unique broker names `<prefix>-<random>`, one retry delay of `retry_delay`, a
/// single in-process attempt, short timeouts and a free metrics port (`127.0.0.1:0`), so
/// parallel tests share nothing; `MODEL_PRUNER__*` from the environment apply.
pub fn settings(prefix: &str, retry_delay: Duration) -> Settings {
    if std::env::var_os("TEST_LOG").is_some() {
        model_pruner::telemetry::init(model_pruner::settings::LogFormat::Pretty, false);
    }
    let mut s = Settings::load(None).expect("settings load");
    let id = format!("{prefix}-{:08x}", rand::random::<u32>());
    s.broker.exchange = id.clone();
    s.broker.work_queue = format!("{id}.work");
    s.broker.dead_letter_queue = format!("{id}.dead-letter");
    s.broker.delay_queue_prefix = format!("{id}.delay");
    s.retry.delays = vec![retry_delay.into()];
    s.retry.in_process_attempts = 1;
    s.mlflow.request_timeout = Duration::from_secs(5);
    s.concurrency.shutdown_grace = Duration::from_secs(5);
    // A free port each: workers of parallel tests must not fight over metrics.listen.
    s.metrics.listen = "127.0.0.1:0".parse().unwrap();
    s
}

/// `s` with three attempts and quick in-process backoffs (10 ms to 50 ms).
pub fn quick_retries(mut s: Settings) -> Settings {
    s.retry.max_attempts = 3;
    s.retry.initial_backoff = Duration::from_millis(10);
    s.retry.max_backoff = Duration::from_millis(50);
    s
}

/// `fresh` moved onto the broker, exchange and queues of `first`.
pub fn same_queues(mut fresh: Settings, first: &Settings) -> Settings {
    fresh.broker = first.broker.clone();
    fresh
}

/// A worker started in this process: where it serves `/metrics`, what it counts, its task.
pub struct Worker {
    pub address: SocketAddr,
    pub metrics: Metrics,
    pub task: JoinHandle<anyhow::Result<()>>,
}

/// Starts a worker with `settings` until `shutdown`, its listener bound on
/// `settings.metrics.listen` first (a port of its own with `127.0.0.1:0`) and a registry of its
/// own, so tests in one process neither share ports nor counters.
pub fn start_worker(settings: Settings, shutdown: CancellationToken) -> Worker {
    let server = Server::bind(settings.metrics.listen).expect("bind metrics.listen");
    let address = server.local_addr();
    let metrics = Metrics::new();
    let task = tokio::spawn(model_pruner::worker::run(
        settings,
        server,
        metrics.clone(),
        shutdown,
    ));
    Worker {
        address,
        metrics,
        task,
    }
}

pub struct TestApp {
    settings: Option<Settings>,
    pub topology: Topology,
    pub broker: Broker,
    shutdown: CancellationToken,
    workers: Vec<JoinHandle<anyhow::Result<()>>>,
    /// Address and metrics of each worker started, in order.
    served: Vec<(SocketAddr, Metrics)>,
}

impl TestApp {
    /// Declares the topology (so the test can publish at once) and starts a worker.
    pub async fn spawn(settings: Settings) -> TestApp {
        let mut app = TestApp::without_worker(&settings).await;
        app.start(settings);
        app
    }

    /// Connects and declares the topology of `settings`, keeping them for
    /// [`TestApp::settings`]; no worker yet.
    pub async fn new(settings: Settings) -> TestApp {
        let mut app = TestApp::without_worker(&settings).await;
        app.settings = Some(settings);
        app
    }

    /// The test's connection and the declared topology, no worker yet.
    pub async fn without_worker(settings: &Settings) -> TestApp {
        let topology = Topology::from_settings(settings);
        let broker = Broker::connect(&settings.broker, "model-pruner integration tests")
            .await
            .expect("RabbitMQ at 127.0.0.1:5672");
        broker.declare(&topology).await.expect("declare topology");
        TestApp {
            settings: None,
            topology,
            broker,
            shutdown: CancellationToken::new(),
            workers: Vec::new(),
            served: Vec::new(),
        }
    }

    /// The settings given to [`TestApp::new`].
    pub fn settings(&self) -> &Settings {
        self.settings
            .as_ref()
            .expect("settings kept: use TestApp::new")
    }

    /// Starts a worker; call again (with the same queue names) for more workers.
    pub fn start(&mut self, settings: Settings) {
        let worker = start_worker(settings, self.shutdown.clone());
        self.served.push((worker.address, worker.metrics));
        self.workers.push(worker.task);
    }

    /// Where the first worker serves `/metrics`, `/healthz` and `/readyz`.
    pub fn address(&self) -> SocketAddr {
        self.served.first().expect("a worker was started").0
    }

    /// What the first worker counts.
    pub fn metrics(&self) -> &Metrics {
        &self.served.first().expect("a worker was started").1
    }

    /// Cancels the workers and returns what `run` returned (the first error, if any), failing
    /// if they take over `within`. Workers started later get a fresh shutdown token.
    pub async fn stop(&mut self, within: Duration) -> anyhow::Result<()> {
        self.shutdown.cancel();
        assert!(!self.workers.is_empty(), "a worker was started");
        let all = futures::future::join_all(self.workers.drain(..));
        let stopped = tokio::time::timeout(within, all)
            .await
            .expect("the workers stop in time");
        self.shutdown = CancellationToken::new();
        stopped
            .into_iter()
            .try_for_each(|r| r.expect("the worker task does not panic"))
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

    /// Publishes straight into the work queue with the given headers.
    pub async fn publish_to_work_queue(&self, body: &[u8], headers: FieldTable) {
        self.broker
            .publish_to_queue(
                &self.topology.work_queue,
                body,
                BasicProperties::default().with_headers(headers),
            )
            .await
            .expect("publish to the work queue");
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

    /// Takes the next dead letter, waiting up to `timeout`.
    pub async fn next_dead_letter(&self, timeout: Duration) -> Delivery {
        let queue = self.topology.dead_letter_queue.clone();
        self.next_message(&queue, timeout)
            .await
            .unwrap_or_else(|| panic!("no dead letter within {timeout:?}"))
    }

    /// Takes (acks) the next message of `queue`, waiting up to `timeout`.
    pub async fn next_message(&self, queue: &str, timeout: Duration) -> Option<Delivery> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            if let Some(m) = self.get(queue).await {
                return Some(m);
            }
            if tokio::time::Instant::now() >= deadline {
                return None;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Takes (acks) every message of `queue`, in order.
    pub async fn drain(&self, queue: &str) -> Vec<Delivery> {
        let mut all = Vec::new();
        while let Some(m) = self.get(queue).await {
            all.push(m);
        }
        all
    }

    /// Takes (acks) the first message of `queue`, if any.
    async fn get(&self, queue: &str) -> Option<Delivery> {
        self.broker
            .channel()
            .basic_get(queue.into(), BasicGetOptions { no_ack: true })
            .await
            .expect("basic.get")
            .map(|m| m.delivery)
    }

    /// Ready messages in `queue` (unacked ones are not counted).
    pub async fn queue_len(&self, queue: &str) -> u32 {
        self.broker
            .ready_messages(queue)
            .await
            .expect("passive queue.declare")
    }

    /// Waits until `queue` holds `n` ready messages.
    pub async fn wait_len(&self, queue: &str, n: u32, timeout: Duration) {
        eventually(
            timeout,
            &format!("{queue} does not hold {n} messages"),
            async || {
                let len = self.queue_len(queue).await;
                if len == n {
                    Ok(())
                } else {
                    Err(format!("{queue} holds {len}"))
                }
            },
        )
        .await;
    }

    /// Waits until `queue` has `n` consumers.
    pub async fn wait_consumers(&self, queue: &str, n: u32, timeout: Duration) {
        eventually_every(
            timeout,
            Duration::from_millis(20),
            &format!("{queue} does not have {n} consumers"),
            async || {
                let (_, consumers) = self
                    .broker
                    .lookup(queue)
                    .await
                    .expect("passive queue.declare")
                    .unwrap_or_else(|| panic!("{queue} does not exist"));
                if consumers == n {
                    Ok(())
                } else {
                    Err(format!("{queue} has {consumers}"))
                }
            },
        )
        .await;
    }

    /// Stops the workers, asserting they stop cleanly within 30 s, then cleans up.
    pub async fn finish(mut self) {
        let stopped = self.stop(Duration::from_secs(30)).await;
        assert!(stopped.is_ok(), "the worker stops cleanly: {stopped:?}");
        self.cleanup().await;
    }

    /// Stops the workers if running, then deletes the queues and the exchange (best effort).
    pub async fn cleanup(mut self) {
        if !self.workers.is_empty() {
            let _ = self.stop(Duration::from_secs(30)).await;
        }
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

/// The attempts header of `delivery`.
pub fn attempts(delivery: &Delivery) -> Option<u32> {
    headers::get_u32(delivery.properties.headers().as_ref(), headers::ATTEMPTS)
}

/// The bodies of `deliveries`, as strings.
pub fn bodies(deliveries: &[Delivery]) -> Vec<String> {
    deliveries
        .iter()
        .map(|d| String::from_utf8_lossy(&d.data).into_owned())
        .collect()
}
