//! Real events through a real worker, and the metrics they move.

use std::time::{SystemTime, UNIX_EPOCH};

use lapin::types::FieldTable;
use model_pruner::settings::Settings;

use crate::scrape::{DEADLINE, Endpoint, delta, settings};
use crate::support::app::TestApp;
use crate::support::mlflow_fixtures::{Mlflow, RunSpec};
use crate::support::store_fixtures;

const FINISHED: &str = "model_pruner_messages_finished_total";
const DEAD_LETTERS: &str = "model_pruner_dead_letters_total";
const METRIC: &str = "accuracy";

/// Starts a worker with `s` and waits until `/readyz` says it consumes.
async fn consuming_worker(s: Settings) -> (Endpoint, TestApp) {
    let app = TestApp::spawn(s).await;
    let endpoint = Endpoint::at(app.address());
    endpoint
        .wait("/readyz", "the worker consumes", |status, _| status == 200)
        .await;
    (endpoint, app)
}

#[tokio::test]
async fn a_message_of_unknown_kind_counts_as_received_and_dead_lettered_as_permanent() {
    let mut s = settings();
    // The engine is never called for an invalid message: an unreachable MLflow proves it.
    s.mlflow.tracking_uri = "http://127.0.0.1:1".parse().unwrap();
    let (endpoint, app) = consuming_worker(s).await;
    let before = endpoint.metrics().await;
    // Routing keys outside the contract share the kind "unknown": no label per typo.
    let kind = ("kind", "unknown");
    let dead = [kind, ("outcome", "dead_lettered")];

    // Straight to the work queue: delivered with the queue's name as routing key.
    app.publish_to_work_queue(br#"{"experiment_id":"1"}"#, FieldTable::default())
        .await;
    app.next_dead_letter(DEADLINE).await;
    let in_flight = before.value("model_pruner_messages_in_flight", &[]);
    let after = endpoint
        .metrics_until("the dead letter is counted and settled", |m| {
            let settled = m.value("model_pruner_messages_in_flight", &[]) == in_flight;
            delta(&before, m, FINISHED, &dead) >= 1.0 && settled
        })
        .await;

    let d = |name, labels: &[(&str, &str)]| delta(&before, &after, name, labels);
    assert_eq!(d("model_pruner_messages_received_total", &[kind]), 1.0);
    assert_eq!(d(FINISHED, &dead), 1.0);
    assert_eq!(d(FINISHED, &[kind]), 1.0, "no other outcome");
    let class = [("class", "permanent"), ("reason", "unknown_routing_key")];
    assert_eq!(d(DEAD_LETTERS, &class), 1.0);
    let processed = d("model_pruner_processing_duration_seconds_count", &[kind]);
    assert_eq!(processed, 1.0);
    assert_eq!(d("model_pruner_passes_total", &[]), 0.0, "no pass ran");
    assert_eq!(d("model_pruner_requests_total", &[]), 0.0, "nothing asked");
    app.finish().await;
}

#[tokio::test]
async fn an_unknown_experiment_fails_its_pass_and_counts_the_mlflow_answer() {
    let s = settings();
    let (endpoint, app) = consuming_worker(s).await;
    let before = endpoint.metrics().await;
    let kind = ("kind", "run.finished");
    let dead = [kind, ("outcome", "dead_lettered")];

    let body = br#"{"experiment_id":"987654321987","run_id":"0123456789abcdef"}"#;
    app.publish("run.finished", body).await;
    app.next_dead_letter(DEADLINE).await;
    let after = endpoint
        .metrics_until("the dead letter is counted", |m| {
            delta(&before, m, FINISHED, &dead) >= 1.0
        })
        .await;

    let d = |name, labels: &[(&str, &str)]| delta(&before, &after, name, labels);
    assert_eq!(d(FINISHED, &dead), 1.0);
    let class = [("class", "permanent"), ("reason", "unknown_experiment")];
    assert_eq!(d(DEAD_LETTERS, &class), 1.0);
    assert_eq!(
        d("model_pruner_passes_total", &[("outcome", "failed")]),
        1.0
    );
    let get = [("target", "mlflow"), ("operation", "experiments/get")];
    let answered = [get[0], get[1], ("status", "4xx")];
    assert_eq!(d("model_pruner_requests_total", &answered), 1.0);
    assert_eq!(d("model_pruner_pass_duration_seconds_count", &[]), 1.0);
    assert_eq!(d("model_pruner_request_duration_seconds_count", &get), 1.0);
    assert_eq!(d("model_pruner_retries_total", &[]), 0.0, "4xx: no retry");

    let (status, ready) = endpoint.get("/readyz").await.unwrap();
    assert_eq!(status, 200, "{ready}");
    assert!(ready.contains("mlflow: ok (last answer"), "{ready}");
    app.finish().await;
}

#[tokio::test]
async fn a_sweep_counts_its_ranking_and_what_it_deleted() {
    let mut s = settings();
    s.policy.metric = METRIC.into();
    s.policy.keep_top = 1;
    let mlflow = Mlflow::from_env().expect("MLflow settings");
    let s3 = store_fixtures::client().expect("S3 settings");
    let exp = mlflow
        .experiment("observability")
        .await
        .expect("experiment");
    let mut uploaded = Vec::new();
    for (name, accuracy) in [("best", 0.9), ("worst", 0.1)] {
        let spec = RunSpec::new(name)
            .metric(METRIC, accuracy)
            .param("model_uploaded", "1");
        let run = exp.run(spec).await.expect("run");
        let (bucket, prefix) = run
            .artifact_uri
            .strip_prefix("s3://")
            .and_then(|r| r.split_once('/'))
            .expect("an s3:// artifact URI");
        let files = store_fixtures::upload_files(&s3, bucket, &format!("{prefix}/model/"), 3)
            .await
            .expect("upload");
        uploaded.push(files);
    }

    let (endpoint, app) = consuming_worker(s).await;
    let before = endpoint.metrics().await;
    let started = SystemTime::now().duration_since(UNIX_EPOCH).unwrap();
    let ok = [("kind", "experiment.prune"), ("outcome", "ok")];
    let event = format!(r#"{{"experiment_id":"{}"}}"#, exp.id);
    app.publish("experiment.prune", event.as_bytes()).await;
    let after = endpoint
        .metrics_until("the sweep is acked", |m| {
            delta(&before, m, FINISHED, &ok) >= 1.0
        })
        .await;

    let d = |name, labels: &[(&str, &str)]| delta(&before, &after, name, labels);
    assert_eq!(d("model_pruner_passes_total", &[("outcome", "ok")]), 1.0);
    assert_eq!(d("model_pruner_runs_evaluated_total", &[]), 2.0);
    assert_eq!(d("model_pruner_runs_total", &[("decision", "kept")]), 1.0);
    assert_eq!(d("model_pruner_runs_total", &[("decision", "pruned")]), 1.0);
    assert_eq!(d("model_pruner_models_deleted_total", &[]), 1.0);
    assert_eq!(d("model_pruner_objects_deleted_total", &[]), 3.0);
    let worst = &uploaded[1];
    assert_eq!(
        d("model_pruner_deleted_bytes_total", &[]),
        worst.bytes as f64
    );
    let delete = [
        ("target", "store"),
        ("operation", "DeleteObjects"),
        ("status", "2xx"),
    ];
    assert_eq!(d("model_pruner_requests_total", &delete), 1.0);
    let last = after.value("model_pruner_last_successful_pass_timestamp_seconds", &[]);
    assert!(last >= started.as_secs() as f64, "{last} vs {started:?}");

    let (_, ready) = endpoint.get("/readyz").await.unwrap();
    assert!(ready.contains("store: ok (last answer"), "{ready}");
    app.finish().await;
    let _ = exp.delete().await;
}
