//! The worker survives its connection being closed by the broker (as in a RabbitMQ restart):
//! it reconnects, redeclares the topology and resumes consuming.

use std::time::Duration;

use serde_json::Value;

use crate::helpers::{TestApp, header, settings};
use model_pruner::broker::headers;

/// The management API, from `RABBITMQ_MANAGEMENT_URL` (as `scripts/stack.sh env` prints it).
fn management() -> url::Url {
    let raw = std::env::var("RABBITMQ_MANAGEMENT_URL")
        .unwrap_or_else(|_| "http://guest:guest@127.0.0.1:15672".to_owned());
    raw.parse().expect("RABBITMQ_MANAGEMENT_URL is a URL")
}

fn api(base: &url::Url, segments: &[&str]) -> (url::Url, String, String) {
    let mut url = base.clone();
    let (user, pass) = (
        url.username().to_owned(),
        url.password().unwrap_or("").to_owned(),
    );
    let _ = url.set_username("");
    let _ = url.set_password(None);
    url.path_segments_mut()
        .expect("an http URL")
        .clear()
        .push("api")
        .extend(segments);
    (url, user, pass)
}

/// Names of the broker connections whose client-given name contains `needle`.
async fn connections(http: &reqwest::Client, base: &url::Url, needle: &str) -> Option<Vec<String>> {
    let (url, user, pass) = api(base, &["connections"]);
    let list: Vec<Value> = http
        .get(url)
        .basic_auth(user, Some(pass))
        .send()
        .await
        .ok()?
        .error_for_status()
        .ok()?
        .json()
        .await
        .ok()?;
    Some(
        list.iter()
            .filter(|c| {
                c["client_properties"]["connection_name"]
                    .as_str()
                    .is_some_and(|n| n.contains(needle))
            })
            .filter_map(|c| c["name"].as_str().map(str::to_owned))
            .collect(),
    )
}

#[tokio::test]
async fn worker_resumes_consuming_after_the_broker_closes_its_connection() {
    let http = reqwest::Client::new();
    let base = management();
    let app = TestApp::spawn(settings()).await;
    let needle = format!("on {}", app.topology.work_queue);

    // The management API lists a new connection after its next statistics tick (~5 s).
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    let name = loop {
        match connections(&http, &base, &needle).await {
            None => {
                eprintln!("skipped: RabbitMQ management API not reachable at {base}");
                app.cleanup().await;
                return;
            }
            Some(names) if !names.is_empty() => break names[0].clone(),
            Some(_) => {}
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "worker connection not listed"
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    };
    let (url, user, pass) = api(&base, &["connections", &name]);
    http.delete(url)
        .basic_auth(user, Some(pass))
        .header("X-Reason", "model-pruner reconnect test")
        .send()
        .await
        .unwrap()
        .error_for_status()
        .expect("connection closed by the broker");

    tokio::time::sleep(Duration::from_millis(500)).await;
    app.publish("run.finished", b"after reconnect").await;
    let dead = app.next_dead_letter(Duration::from_secs(30)).await;
    assert_eq!(dead.data, b"after reconnect");
    assert_eq!(
        header(&dead, headers::ERROR_KIND).as_deref(),
        Some("invalid_message")
    );
    app.cleanup().await;
}
