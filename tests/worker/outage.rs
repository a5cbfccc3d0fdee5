//! The broker closes the worker's connection in the middle of a stream of events: after the
//! reconnect every event is still processed and acked, and exactly the top N models remain.

use std::time::Duration;

use serde_json::Value;

use crate::helpers::{TestApp, settings};
use crate::world::{World, management, run_finished, wait_drained};

/// Names of the broker connections whose client-given name contains `needle`, once listed.
async fn connections(http: &reqwest::Client, needle: &str) -> Vec<String> {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        let (url, user, pass) = management(&["connections"]);
        let list: Vec<Value> = http
            .get(url)
            .basic_auth(user, Some(pass))
            .send()
            .await
            .and_then(reqwest::Response::error_for_status)
            .expect("management API")
            .json()
            .await
            .expect("connections as JSON");
        let names: Vec<String> = list
            .iter()
            .filter(|c| {
                c["client_properties"]["connection_name"]
                    .as_str()
                    .is_some_and(|n| n.contains(needle))
            })
            .filter_map(|c| c["name"].as_str().map(str::to_owned))
            .collect();
        if !names.is_empty() {
            return names;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "worker connection not listed"
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

#[tokio::test]
async fn events_published_around_a_forced_connection_close_are_all_processed() {
    let http = reqwest::Client::new();
    let world = World::new();
    let exp = world.experiment().await;
    let values = [0.1, 0.2, 0.3, 0.4, 0.5, 0.6];
    let runs = world.ranked_runs(&exp, &values, |_| 3).await;
    let app = TestApp::spawn(settings()).await;
    let names = connections(&http, &format!("on {}", app.topology.work_queue)).await;

    let events: Vec<Vec<u8>> = (0..20)
        .map(|i| run_finished(&exp, &runs[i % runs.len()], 2))
        .collect();
    for body in &events[..10] {
        app.publish("run.finished", body).await;
    }
    for name in names {
        let (url, user, pass) = management(&["connections", &name]);
        http.delete(url)
            .basic_auth(user, Some(pass))
            .header("X-Reason", "model-pruner outage test")
            .send()
            .await
            .and_then(reqwest::Response::error_for_status)
            .expect("connection closed by the broker");
    }
    for body in &events[10..] {
        app.publish("run.finished", body).await;
    }

    world
        .wait_pruned(&runs, &[4, 5], Duration::from_secs(90))
        .await;
    wait_drained(&app, Duration::from_secs(90)).await;
    world.assert_kept(&runs, &[4, 5]).await;
    let dead = app.topology.dead_letter_queue.clone();
    assert_eq!(app.queue_len(&dead).await, 0, "nothing was dead-lettered");
    app.cleanup().await;
    exp.delete().await.expect("delete experiment");
}
