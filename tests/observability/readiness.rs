//! `/readyz` follows the broker: unready before the first connection and while the worker
//! reconnects after the broker closed its connection; `/healthz` answers all along.

use std::time::Duration;

use serde_json::Value;
use tokio_util::sync::CancellationToken;

use crate::app::TestApp;
use crate::scrape::{DEADLINE, Endpoint, settings};

#[tokio::test]
async fn the_listener_is_up_and_unready_while_the_broker_is_unreachable() {
    let mut s = settings();
    s.broker.url = "amqp://guest:guest@127.0.0.1:1/%2f".to_owned().into();
    let endpoint = Endpoint::of(&s);
    let shutdown = CancellationToken::new();
    let worker = tokio::spawn(model_pruner::worker::run(s, shutdown.clone()));

    endpoint
        .wait("/healthz", "the listener answers", |status, _| {
            status == 200
        })
        .await;
    let (status, body) = endpoint.get("/readyz").await.expect("/readyz answers");
    assert_eq!(status, 503, "{body}");
    assert!(body.starts_with("not ready: broker\n"), "{body}");
    assert!(body.contains("mlflow: "), "{body}");

    shutdown.cancel();
    tokio::time::timeout(DEADLINE, worker)
        .await
        .expect("the worker stops")
        .expect("no panic")
        .expect("a clean stop");
    assert!(
        endpoint.get("/healthz").await.is_none(),
        "the listener stops with the worker"
    );
}

#[tokio::test]
async fn readyz_turns_unready_when_the_broker_drops_the_connection_and_ready_again() {
    let s = settings();
    let endpoint = Endpoint::of(&s);
    let app = TestApp::spawn(s).await;
    endpoint
        .wait("/readyz", "ready once consuming", |status, body| {
            status == 200 && body.contains("broker: ok")
        })
        .await;

    let management = Management::from_env();
    let needle = format!("on {}", app.topology.work_queue);
    let Some(name) = management.connection(&needle).await else {
        eprintln!("skipped: RabbitMQ management API not reachable");
        app.cleanup().await;
        return;
    };
    // Poll /readyz while the broker closes the connection: the worker reconnects after a
    // backoff of at least 250 ms, so the 503 lasts long enough to be seen.
    let watch = async {
        endpoint
            .wait(
                "/readyz",
                "unready after the connection closed",
                |status, body| status == 503 && body.starts_with("not ready: broker\n"),
            )
            .await
    };
    let (body, ()) = tokio::join!(watch, management.close(&name));
    assert!(body.contains("broker: not ready"), "{body}");
    assert_eq!(
        endpoint.get("/healthz").await.map(|(s, _)| s),
        Some(200),
        "alive while reconnecting"
    );

    endpoint
        .wait("/readyz", "ready again after reconnecting", |status, _| {
            status == 200
        })
        .await;
    app.cleanup().await;
}

/// The RabbitMQ management API, from `RABBITMQ_MANAGEMENT_URL` (as `scripts/stack.sh env`
/// prints it).
struct Management {
    http: reqwest::Client,
    base: url::Url,
    user: String,
    pass: String,
}

impl Management {
    fn from_env() -> Management {
        let raw = std::env::var("RABBITMQ_MANAGEMENT_URL")
            .unwrap_or_else(|_| "http://guest:guest@127.0.0.1:15672".to_owned());
        let mut base: url::Url = raw.parse().expect("RABBITMQ_MANAGEMENT_URL is a URL");
        let (user, pass) = (
            base.username().to_owned(),
            base.password().unwrap_or("").to_owned(),
        );
        let _ = base.set_username("");
        let _ = base.set_password(None);
        Management {
            http: reqwest::Client::new(),
            base,
            user,
            pass,
        }
    }

    fn api(&self, segments: &[&str]) -> url::Url {
        let mut url = self.base.clone();
        url.path_segments_mut()
            .expect("an http URL")
            .clear()
            .push("api")
            .extend(segments);
        url
    }

    /// The name of the first connection whose client-given name contains `needle`; `None` if
    /// the API does not answer. The API lists a connection after its next statistics tick.
    async fn connection(&self, needle: &str) -> Option<String> {
        let deadline = tokio::time::Instant::now() + DEADLINE;
        loop {
            let list: Vec<Value> = self
                .http
                .get(self.api(&["connections"]))
                .basic_auth(&self.user, Some(&self.pass))
                .send()
                .await
                .ok()?
                .error_for_status()
                .ok()?
                .json()
                .await
                .ok()?;
            let found = list.iter().find_map(|c| {
                let name = c["client_properties"]["connection_name"].as_str()?;
                name.contains(needle)
                    .then(|| c["name"].as_str().map(str::to_owned))?
            });
            if found.is_some() {
                return found;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "connection {needle:?} not listed"
            );
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    }

    async fn close(&self, name: &str) {
        self.http
            .delete(self.api(&["connections", name]))
            .basic_auth(&self.user, Some(&self.pass))
            .header("X-Reason", "model-pruner readiness test")
            .send()
            .await
            .expect("management API")
            .error_for_status()
            .expect("connection closed by the broker");
    }
}
