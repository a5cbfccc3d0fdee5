//! A worker with isolated settings (random exchange and queue names, a free metrics port) and
//! a second connection to publish and read the dead-letter queue with.

use std::time::Duration;

use lapin::BasicProperties;
use lapin::options::{BasicGetOptions, ExchangeDeleteOptions, QueueDeleteOptions};
use lapin::types::FieldTable;
use model_pruner::broker::{Broker, Topology, headers};
use model_pruner::settings::Settings;
use model_pruner::worker;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

/// Settings with unique names, quick retries and a free loopback port for `/metrics`;
/// `MODEL_PRUNER__*` from the environment apply.
pub fn settings() -> Settings {
    if std::env::var_os("TEST_LOG").is_some() {
        model_pruner::telemetry::init(model_pruner::settings::LogFormat::Pretty);
    }
    let mut s = Settings::load(None).expect("settings load");
    let id = format!("mp-obs-{:08x}", rand::random::<u32>());
    s.broker.exchange = id.clone();
    s.broker.work_queue = format!("{id}.work");
    s.broker.dead_letter_queue = format!("{id}.dead-letter");
    s.broker.delay_queue_prefix = format!("{id}.delay");
    s.retry.delays = vec![Duration::from_secs(1).into()];
    s.retry.in_process_attempts = 1;
    s.mlflow.request_timeout = Duration::from_secs(5);
    s.concurrency.shutdown_grace = Duration::from_secs(5);
    // A port the OS just handed out and took back; the worker binds it right after.
    let probe = std::net::TcpListener::bind("127.0.0.1:0").expect("a free port");
    s.metrics.listen = probe.local_addr().unwrap();
    s
}

pub struct TestApp {
    pub topology: Topology,
    broker: Broker,
    shutdown: CancellationToken,
    worker: JoinHandle<anyhow::Result<()>>,
}

impl TestApp {
    /// Declares the topology (so the test can publish at once) and starts the worker.
    pub async fn spawn(settings: Settings) -> TestApp {
        let topology = Topology::from_settings(&settings);
        let broker = Broker::connect(&settings.broker, "model-pruner observability tests")
            .await
            .expect("RabbitMQ at 127.0.0.1:5672");
        broker.declare(&topology).await.expect("declare topology");
        let shutdown = CancellationToken::new();
        let worker = tokio::spawn(worker::run(settings, shutdown.clone()));
        TestApp {
            topology,
            broker,
            shutdown,
            worker,
        }
    }

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

    /// Publishes straight into the work queue, with `routing_key` in the worker's header.
    pub async fn publish_to_work_queue(&self, routing_key: &str, body: &[u8]) {
        let mut h = FieldTable::default();
        headers::set_str(&mut h, headers::ROUTING_KEY, routing_key);
        self.broker
            .publish_to_queue(
                &self.topology.work_queue,
                body,
                BasicProperties::default().with_headers(h),
            )
            .await
            .expect("publish to the work queue");
    }

    /// Takes the next dead letter's body, waiting up to `timeout`.
    pub async fn next_dead_letter(&self, timeout: Duration) -> Vec<u8> {
        let deadline = tokio::time::Instant::now() + timeout;
        let queue = self.topology.dead_letter_queue.as_str();
        loop {
            let got = self
                .broker
                .channel()
                .basic_get(queue.into(), BasicGetOptions { no_ack: true })
                .await
                .expect("basic.get");
            if let Some(m) = got {
                return m.delivery.data;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "no dead letter within {timeout:?}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Stops the worker, then deletes the queues and the exchange (best effort).
    pub async fn cleanup(self) {
        self.shutdown.cancel();
        let stopped = tokio::time::timeout(Duration::from_secs(30), self.worker).await;
        assert!(
            matches!(stopped, Ok(Ok(Ok(())))),
            "the worker stops cleanly: {stopped:?}"
        );
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
