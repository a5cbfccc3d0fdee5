//! `dlq list | replay | purge`: nothing lost, nothing reordered, only what matches moved.

use std::collections::BTreeSet;
use std::time::Duration;

use lapin::BasicProperties;
use model_pruner::broker::headers;
use model_pruner::domain::event::{Event, ExperimentPrune, RunFinished};
use model_pruner::domain::policy::PolicyOverrides;
use serde_json::Value;

use crate::helpers::{TestApp, bodies, cli, header, outcome, run_cli, same_queues, settings};
use crate::support::eventually::eventually;
use crate::support::world::{Layout, World};

fn letter(experiment: &str, run: usize) -> String {
    format!(r#"{{"experiment_id":"{experiment}","run_id":"r{run:02}"}}"#)
}

fn run_ids(bodies: &[String]) -> Vec<String> {
    bodies
        .iter()
        .map(|b| {
            let v: Value = serde_json::from_str(b).unwrap();
            v["run_id"].as_str().unwrap().to_owned()
        })
        .collect()
}

#[tokio::test]
async fn replay_after_a_fixed_fault_processes_the_dead_letters_the_worker_wrote() {
    let world = World::new("ops");
    let exp = world.mlflow.experiment("ops-dlq").await.unwrap();
    let runs = world
        .ranked_runs_with_files(&exp, Layout::Classic, &[0.9, 0.5, 0.7], |_| 2)
        .await;
    let mut app = TestApp::new(settings()).await;
    let dlq = app.topology.dead_letter_queue.clone();

    // An unreachable MLflow: every attempt fails transiently until the message is dead.
    let mut broken = same_queues(app.settings());
    broken.mlflow.tracking_uri = "http://127.0.0.1:1".parse().unwrap();
    app.start(broken);
    let finished = Event::RunFinished(RunFinished {
        experiment_id: exp.id.clone(),
        run_id: runs[1].run.run_id.clone(),
        policy: PolicyOverrides {
            keep_top: Some(1),
            ..PolicyOverrides::default()
        },
    });
    app.publish("run.finished", &finished.to_body()).await;
    let other = Event::ExperimentPrune(ExperimentPrune {
        experiment_id: "999999999".into(),
        policy: PolicyOverrides::default(),
        delete_experiment: false,
        dry_run: true,
        force: false,
    });
    app.publish("experiment.prune", &other.to_body()).await;
    app.wait_len(&dlq, 2, Duration::from_secs(60)).await;
    let _ = app.stop(Duration::from_secs(30)).await;

    let (code, stdout, err) = outcome(&run_cli(app.settings(), &["dlq", "list", "--json"]).await);
    assert_eq!(code, 0, "{err}");
    let listed: Vec<Value> = serde_json::from_str(&stdout).expect("a JSON array");
    assert_eq!(listed.len(), 2, "{stdout}");
    let ours = listed
        .iter()
        .find(|l| l["experiment_id"] == exp.id.as_str())
        .expect("the experiment's dead letter is listed");
    assert_eq!(ours["routing_key"], "run.finished");
    assert_eq!(ours["run_id"], runs[1].run.run_id.as_str());
    assert_eq!(ours["error_class"], "transient");
    assert_eq!(ours["attempts"], 3);
    assert!(
        ours["error_message"]
            .as_str()
            .is_some_and(|m| !m.is_empty())
    );
    assert!(ours["age_seconds"].as_i64().is_some_and(|a| a >= 0));
    let (code, table, _) = outcome(&run_cli(app.settings(), &["dlq", "list"]).await);
    assert_eq!(code, 0);
    assert!(
        table.contains(&exp.id) && table.contains("transient/"),
        "{table}"
    );
    assert!(table.contains("2 of 2 dead letters"), "{table}");

    app.start(same_queues(app.settings()));
    let args = ["dlq", "replay", "--experiment-id", exp.id.as_str()];
    let (code, stdout, err) = outcome(&run_cli(app.settings(), &args).await);
    assert_eq!(code, 0, "{stdout}{err}");
    assert!(
        stdout.contains("replayed 1") && stdout.contains("skipped 1"),
        "{stdout}"
    );
    world
        .wait_pruned(&runs, &[0], Duration::from_secs(60))
        .await;

    let left = app.drain(&dlq).await;
    assert_eq!(bodies(&left), [String::from_utf8(other.to_body()).unwrap()]);
    app.cleanup().await;
}

#[tokio::test]
async fn an_interrupted_replay_loses_nothing() {
    let app = TestApp::new(settings()).await;
    let (dlq, work) = (&app.topology.dead_letter_queue, &app.topology.work_queue);
    for i in 0..10 {
        app.dead_letter("run.finished", &letter("e", i), "transient", "mlflow")
            .await;
    }
    let mut child = cli(app.settings(), &["dlq", "replay", "--rate", "2/s"])
        .spawn()
        .unwrap();
    // Killed mid-replay: once some letters moved (2 a second), while others wait.
    app.wait_len(work, 3, Duration::from_secs(20)).await;
    child.start_kill().unwrap();
    child.wait().await.unwrap();

    // The broker requeues what the killed connection held; wait for every message to be back.
    eventually(Duration::from_secs(20), "messages lost", async || {
        app.queue_len(dlq).await + app.queue_len(work).await >= 10
    })
    .await;
    let left = run_ids(&bodies(&app.drain(dlq).await));
    let moved = run_ids(&bodies(&app.drain(work).await));
    assert!(
        !moved.is_empty() && !left.is_empty(),
        "moved {moved:?}, left {left:?}"
    );
    assert!(left.len() + moved.len() <= 11, "at most one duplicate");
    let all: BTreeSet<_> = left.iter().chain(&moved).cloned().collect();
    assert_eq!(all.len(), 10, "moved {moved:?}, left {left:?}");
    let mut sorted = left.clone();
    sorted.sort();
    assert_eq!(left, sorted, "the rest keeps its order");
    app.cleanup().await;
}

#[tokio::test]
async fn list_leaves_every_dead_letter_in_place_and_in_order() {
    let app = TestApp::new(settings()).await;
    let dlq = &app.topology.dead_letter_queue;
    for i in 0..5 {
        app.dead_letter("run.finished", &letter("e", i), "permanent", "unknown_run")
            .await;
    }
    let (code, stdout, _) =
        outcome(&run_cli(app.settings(), &["dlq", "list", "--limit", "3"]).await);
    assert_eq!(code, 0);
    assert!(
        stdout.contains("r02") && !stdout.contains("r03"),
        "{stdout}"
    );
    assert!(stdout.contains("3 of 5 dead letters"), "{stdout}");
    assert!(stdout.contains("planted by a test"), "{stdout}");

    let (code, stdout, _) = outcome(&run_cli(app.settings(), &["dlq", "list", "--json"]).await);
    assert_eq!(code, 0);
    let listed: Vec<Value> = serde_json::from_str(&stdout).unwrap();
    let positions: Vec<_> = listed
        .iter()
        .map(|l| l["position"].as_u64().unwrap())
        .collect();
    assert_eq!(positions, [1, 2, 3, 4, 5]);

    let left = run_ids(&bodies(&app.drain(dlq).await));
    assert_eq!(left, ["r00", "r01", "r02", "r03", "r04"]);
    app.cleanup().await;
}

#[tokio::test]
async fn purge_removes_only_matching_dead_letters_and_keeps_the_order() {
    let app = TestApp::new(settings()).await;
    let dlq = &app.topology.dead_letter_queue;
    for i in 0..6 {
        let experiment = if i % 2 == 0 { "a" } else { "b" };
        app.dead_letter("run.finished", &letter(experiment, i), "permanent", "x")
            .await;
    }
    let s = app.settings();
    let (code, _, _) = outcome(&run_cli(s, &["dlq", "purge", "--experiment-id", "a"]).await);
    assert_eq!(code, 2, "--yes is required");
    let args = ["dlq", "purge", "--experiment-id", "a", "--dry-run"];
    let (code, stdout, _) = outcome(&run_cli(s, &args).await);
    assert_eq!(code, 0);
    assert!(stdout.contains("would remove 3"), "{stdout}");
    assert_eq!(app.queue_len(dlq).await, 6);

    let args = ["dlq", "purge", "--experiment-id", "a", "--yes"];
    let (code, stdout, _) = outcome(&run_cli(s, &args).await);
    assert_eq!(code, 0);
    assert!(
        stdout.contains("removed 3 dead letters, 3 left"),
        "{stdout}"
    );
    let left = run_ids(&bodies(&app.drain(dlq).await));
    assert_eq!(left, ["r01", "r03", "r05"]);
    app.cleanup().await;
}

#[tokio::test]
async fn replay_by_error_class_sends_fresh_copies_and_keeps_the_rest_in_order() {
    let app = TestApp::new(settings()).await;
    let (dlq, work) = (&app.topology.dead_letter_queue, &app.topology.work_queue);
    for i in 0..4 {
        let class = if i % 2 == 0 { "permanent" } else { "transient" };
        app.dead_letter("experiment.prune", &letter("e", i), class, "x")
            .await;
    }
    let s = app.settings();
    let args = ["dlq", "replay", "--error-class", "permanent", "--dry-run"];
    let (code, stdout, _) = outcome(&run_cli(s, &args).await);
    assert_eq!(code, 0);
    assert!(stdout.contains("would replay 2"), "{stdout}");
    assert_eq!(app.queue_len(work).await, 0);

    let args = ["dlq", "replay", "--error-class", "permanent"];
    let (code, stdout, _) = outcome(&run_cli(s, &args).await);
    assert_eq!(code, 0, "{stdout}");
    let moved = app.drain(work).await;
    assert_eq!(run_ids(&bodies(&moved)), ["r00", "r02"]);
    for d in &moved {
        assert_eq!(d.routing_key.as_str(), "experiment.prune");
        assert_eq!(header(d, headers::ATTEMPTS), None, "a fresh attempt count");
        assert_eq!(header(d, headers::ERROR_CLASS), None);
        assert_eq!(
            header(d, "trace-id").as_deref(),
            Some("t-1"),
            "other headers kept"
        );
    }

    // A dead letter without its routing key cannot be replayed: it stays, and the exit is 1.
    app.broker
        .publish_to_queue(dlq, letter("e", 9).as_bytes(), BasicProperties::default())
        .await
        .unwrap();
    let (code, stdout, _) = outcome(&run_cli(s, &["dlq", "replay"]).await);
    assert_eq!(code, 1, "{stdout}");
    assert!(
        stdout.contains("replayed 2") && stdout.contains("failed 1"),
        "{stdout}"
    );
    let moved = run_ids(&bodies(&app.drain(work).await));
    assert_eq!(moved, ["r01", "r03"]);
    assert_eq!(run_ids(&bodies(&app.drain(dlq).await)), ["r09"]);
    app.cleanup().await;
}
