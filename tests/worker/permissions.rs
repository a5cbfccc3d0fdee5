//! The worker as a RabbitMQ user with exactly the permissions deploy/README.md lists, read from
//! that file: it declares its topology, dead-letters a bad message, delays and retries a
//! transient failure, and schedules a follow-up, all in a vhost of its own with the default
//! names. Without write on `amq.default` it stops and says which permission is missing.

use std::time::Duration;

use model_pruner::settings::Settings;

use crate::helpers::{TestApp, attempts, counted, header, settings};
use crate::support::eventually::eventually;
use crate::support::management::Management;
use crate::support::mlflow_fixtures::{RunSpec, now_ms};
use crate::support::world::{Layout, METRIC, World, keep, run_finished};
use model_pruner::broker::headers;

/// The three regular expressions (configure, write, read) of the `rabbitmqctl set_permissions`
/// line in deploy/README.md, verbatim.
fn documented_permissions() -> [String; 3] {
    let readme = include_str!("../../deploy/README.md");
    let line = readme
        .lines()
        .find(|l| l.trim_start().starts_with("rabbitmqctl set_permissions"))
        .expect("deploy/README.md has a set_permissions line");
    let quoted: Vec<String> = line
        .split('\'')
        .skip(1)
        .step_by(2)
        .map(str::to_owned)
        .collect();
    quoted
        .try_into()
        .unwrap_or_else(|q| panic!("three quoted permissions in {line:?}: {q:?}"))
}

/// The suite's settings with the default exchange and queue names, as `user` on `vhost`.
fn as_user(vhost: &str, user: &str, password: &str) -> Settings {
    let mut s = settings();
    let mut url = s.broker.url.expose().clone();
    url.set_username(user).unwrap();
    url.set_password(Some(password)).unwrap();
    url.set_path(&format!("/{vhost}"));
    s.broker.url = url.into();
    s.broker.exchange = "model-pruner".into();
    s.broker.work_queue = "model-pruner.work".into();
    s.broker.dead_letter_queue = "model-pruner.dead-letter".into();
    s.broker.delay_queue_prefix = "model-pruner.delay".into();
    s
}

#[tokio::test]
async fn a_worker_with_exactly_the_documented_permissions_dead_letters_retries_and_follows_up() {
    let management = Management::from_env();
    let id = format!("mp-perm-{:08x}", rand::random::<u32>());
    let [configure, write, read] = documented_permissions();
    management
        .user_on_vhost(&id, &id, "secret-pw", [&configure, &write, &read])
        .await;

    // MLflow unreachable: every pass fails transiently.
    let mut broken = as_user(&id, &id, "secret-pw");
    broken.mlflow.tracking_uri = "http://127.0.0.1:1".parse().unwrap();
    let mut app = TestApp::new(broken.clone()).await;
    app.start(broken);
    app.publish("run.finished", b"{not json").await;
    app.publish("run.finished", br#"{"experiment_id":"1","run_id":"r"}"#)
        .await;
    let wait = Duration::from_secs(20);
    let bad = app.next_dead_letter(wait).await;
    assert_eq!(
        header(&bad, headers::ERROR_KIND).as_deref(),
        Some("invalid_message")
    );
    let retried = app.next_dead_letter(wait).await;
    assert_eq!(
        header(&retried, headers::ERROR_CLASS).as_deref(),
        Some("transient")
    );
    assert_eq!(
        attempts(&retried),
        Some(3),
        "delayed twice, then dead-lettered"
    );
    app.stop(Duration::from_secs(30)).await.unwrap();

    // A pass that leaves a run in its grace window schedules a follow-up.
    let world = World::new("worker");
    let exp = world
        .mlflow
        .experiment_with_tags("worker-perm", &[("model_pruner.grace", "1h")])
        .await
        .unwrap();
    let best = RunSpec::new("best")
        .metric(METRIC, 0.9)
        .end_time(Some(1_700_000_000_000));
    world.model_run(&exp, Layout::Classic, best, 1).await;
    let fresh = RunSpec::new("fresh")
        .metric(METRIC, 0.1)
        .end_time(Some(now_ms()));
    let fresh = world.model_run(&exp, Layout::Classic, fresh, 1).await;
    let s = as_user(&id, &id, "secret-pw");
    let mut app = TestApp::new(s.clone()).await;
    app.start(s);
    let event = run_finished(&exp, &fresh, keep(1)).to_body();
    app.publish("run.finished", &event).await;
    eventually(
        Duration::from_secs(30),
        "no follow-up scheduled",
        async || counted(&app, "model_pruner_follow_ups_scheduled_total", None) >= 1.0,
    )
    .await;
    let readyz = format!("http://{}/readyz", app.address());
    let body = reqwest::get(&readyz).await.unwrap().text().await.unwrap();
    assert!(body.contains("broker: ok"), "{body}");
    app.cleanup().await;
    management.remove_user_and_vhost(&id, &id).await;
}

#[tokio::test]
async fn a_worker_without_write_on_the_default_exchange_names_the_missing_permission() {
    let management = Management::from_env();
    let id = format!("mp-perm-{:08x}", rand::random::<u32>());
    let own = r"^model-pruner(\..+)?$";
    management
        .user_on_vhost(&id, &id, "secret-pw", [own, own, own])
        .await;
    let s = as_user(&id, &id, "secret-pw");
    let worker = crate::support::app::start_worker(s, Default::default());
    let stopped = tokio::time::timeout(Duration::from_secs(30), worker.task)
        .await
        .expect("the worker stops instead of looping")
        .unwrap();
    let error = format!("{:#}", stopped.expect_err("a refused permission"));
    assert!(
        error.contains("permission") && error.contains("amq.default"),
        "{error}"
    );
    management.remove_user_and_vhost(&id, &id).await;
}
