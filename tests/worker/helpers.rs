//! A worker spawned with isolated settings (random exchange and queue names), and a second
//! connection to publish and inspect queues with.

use std::time::Duration;

use lapin::BasicProperties;
use lapin::message::Delivery;
use lapin::options::{
    BasicGetOptions, ExchangeDeleteOptions, QueueDeclareOptions, QueueDeleteOptions,
};
use lapin::types::FieldTable;
use model_pruner::broker::{Broker, Topology, headers};
use model_pruner::settings::Settings;
use model_pruner::worker;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

/// Settings with unique names and small delays; `MODEL_PRUNER__*` from the environment apply.
pub fn settings() -> Settings {
    if std::env::var_os("TEST_LOG").is_some() {
        model_pruner::telemetry::init(model_pruner::settings::LogFormat::Pretty);
    }
    let mut s = Settings::load(None).expect("settings load");
    let id = format!("mp-test-{:08x}", rand::random::<u32>());
    s.broker.exchange = id.clone();
    s.broker.work_queue = format!("{id}.work");
    s.broker.dead_letter_queue = format!("{id}.dead-letter");
    s.broker.delay_queue_prefix = format!("{id}.delay");
    s.broker.prefetch = 16;
    s.retry.delays = vec![Duration::from_secs(1).into()];
    s.retry.max_attempts = 3;
    s.retry.in_process_attempts = 1;
    s.retry.initial_backoff = Duration::from_millis(10);
    s.retry.max_backoff = Duration::from_millis(50);
    s.mlflow.request_timeout = Duration::from_secs(5);
    s.concurrency.shutdown_grace = Duration::from_secs(5);
    // A free port each: workers of parallel tests must not fight over metrics.listen.
    s.metrics.listen = "127.0.0.1:0".parse().unwrap();
    s
}

pub struct TestApp {
    pub topology: Topology,
    pub broker: Broker,
    shutdown: CancellationToken,
    workers: Vec<JoinHandle<anyhow::Result<()>>>,
}

impl TestApp {
    /// Declares the topology (so the test can publish at once) and starts the worker.
    pub async fn spawn(settings: Settings) -> TestApp {
        let mut app = TestApp::without_worker(&settings).await;
        app.start(settings);
        app
    }

    /// The test's connection and the declared topology, no worker yet.
    pub async fn without_worker(settings: &Settings) -> TestApp {
        let topology = Topology::from_settings(settings);
        let broker = Broker::connect(&settings.broker, "model-pruner worker tests")
            .await
            .expect("RabbitMQ at 127.0.0.1:5672");
        broker.declare(&topology).await.expect("declare topology");
        TestApp {
            topology,
            broker,
            shutdown: CancellationToken::new(),
            workers: Vec::new(),
        }
    }

    /// Starts a worker; call again (with the same queue names) for more workers.
    pub fn start(&mut self, settings: Settings) {
        let worker = tokio::spawn(worker::run(settings, self.shutdown.clone()));
        self.workers.push(worker);
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
            let got = self
                .broker
                .channel()
                .basic_get(queue.into(), BasicGetOptions { no_ack: true })
                .await
                .expect("basic.get");
            if let Some(m) = got {
                return Some(m.delivery);
            }
            if tokio::time::Instant::now() >= deadline {
                return None;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Ready messages in `queue` (unacked ones are not counted).
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

    /// Cancels the workers and returns what `run` returned (the first error, if any), failing
    /// if they take over `within`.
    pub async fn stop(&mut self, within: Duration) -> anyhow::Result<()> {
        self.shutdown.cancel();
        assert!(!self.workers.is_empty(), "a worker was started");
        let all = futures::future::join_all(self.workers.drain(..));
        tokio::time::timeout(within, all)
            .await
            .expect("the workers stop in time")
            .into_iter()
            .try_for_each(|r| r.expect("the worker task does not panic"))
    }

    /// Stops the worker if running, then deletes the queues and the exchange (best effort).
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
