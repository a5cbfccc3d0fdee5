//! `publish`: a confirmed, routed, persistent event, or a clear failure and exit code.

use lapin::ExchangeKind;
use lapin::options::{ExchangeDeclareOptions, ExchangeDeleteOptions};
use lapin::types::FieldTable;
use model_pruner::broker::Broker;
use model_pruner::domain::event::Event;

use crate::helpers::{TestApp, outcome, run_cli, settings};

#[tokio::test]
async fn published_events_follow_the_contract_and_reach_the_work_queue() {
    let app = TestApp::new(settings()).await;
    let s = app.settings();

    let out = run_cli(
        s,
        &[
            "publish",
            "run-finished",
            "--experiment-id",
            "12",
            "--run-id",
            "9f1c",
            "--metric",
            "loss",
            "--direction",
            "min",
            "--keep-top",
            "3",
        ],
    )
    .await;
    assert_eq!(outcome(&out).0, 0, "{:?}", outcome(&out));
    let out = run_cli(
        s,
        &[
            "publish",
            "prune-experiment",
            "--experiment-id",
            "12",
            "--keep-top",
            "0",
            "--delete-experiment",
            "--force",
        ],
    )
    .await;
    assert_eq!(outcome(&out).0, 0, "{:?}", outcome(&out));

    let got = app.drain(&app.topology.work_queue).await;
    assert_eq!(got.len(), 2);
    for d in &got {
        assert_eq!(*d.properties.delivery_mode(), Some(2), "persistent");
        let event = Event::parse(d.routing_key.as_str(), &d.data).expect("contract");
        assert_eq!(event.experiment_id(), "12");
    }
    let Ok(Event::RunFinished(e)) = Event::parse("run.finished", &got[0].data) else {
        panic!("run.finished first");
    };
    assert_eq!((e.run_id.as_str(), e.policy.keep_top), ("9f1c", Some(3)));
    let Ok(Event::ExperimentPrune(e)) = Event::parse("experiment.prune", &got[1].data) else {
        panic!("experiment.prune second");
    };
    assert!(e.delete_experiment && e.force && !e.dry_run);
    app.cleanup().await;
}

#[tokio::test]
async fn unrouted_or_missing_exchange_fails_with_exit_1() {
    let s = settings();
    let args = ["publish", "prune-experiment", "--experiment-id", "12"];
    let (code, _, err) = outcome(&run_cli(&s, &args).await);
    assert_eq!(code, 1);
    assert!(err.contains("does not exist"), "{err}");

    // The exchange exists but no queue is bound: the broker returns the message.
    let broker = Broker::connect(&s.broker, "ops tests").await.unwrap();
    broker
        .channel()
        .exchange_declare(
            s.broker.exchange.as_str().into(),
            ExchangeKind::Topic,
            ExchangeDeclareOptions::default(),
            FieldTable::default(),
        )
        .await
        .unwrap();
    let (code, _, err) = outcome(&run_cli(&s, &args).await);
    let _ = broker
        .channel()
        .exchange_delete(
            s.broker.exchange.as_str().into(),
            ExchangeDeleteOptions::default(),
        )
        .await;
    assert_eq!(code, 1);
    assert!(err.contains("could not route"), "{err}");
}

#[tokio::test]
async fn an_event_breaking_the_contract_is_a_usage_error() {
    let s = settings();
    let out = run_cli(
        &s,
        &[
            "publish",
            "run-finished",
            "--experiment-id",
            " ",
            "--run-id",
            "r",
        ],
    )
    .await;
    assert_eq!(outcome(&out).0, 2);
    let out = run_cli(&s, &["publish", "run-finished", "--experiment-id", "1"]).await;
    assert_eq!(outcome(&out).0, 2, "missing --run-id");
}

#[tokio::test]
async fn a_policy_the_worker_would_refuse_is_refused_before_anything_is_sent() {
    let app = TestApp::new(settings()).await;
    let s = app.settings();
    for (option, value) in [("--grace", "2"), ("--group-by", "base_model")] {
        let publish = [
            "publish",
            "prune-experiment",
            "--experiment-id",
            "12",
            option,
            value,
        ];
        let (code, _, err) = outcome(&run_cli(s, &publish).await);
        assert_eq!(code, 2, "publish {option} {value}: {err}");
        assert!(err.contains(option), "{err}");
        // Same rule, same exit, for the commands that act themselves.
        let plan = ["plan", "--experiment-id", "12", option, value];
        let (code, _, err) = outcome(&run_cli(s, &plan).await);
        assert_eq!(code, 2, "plan {option} {value}: {err}");
        assert!(err.contains(option), "{err}");
    }
    assert_eq!(app.queue_len(&app.topology.work_queue).await, 0);
    app.cleanup().await;
}

#[tokio::test]
async fn plan_warns_of_the_safety_valve_and_prune_names_force() {
    let world = crate::support::world::World::new("ops");
    let exp = world.mlflow.experiment("ops-valve").await.unwrap();
    let runs = world
        .ranked_runs_with_files(
            &exp,
            crate::support::world::Layout::Classic,
            &[0.9, 0.8, 0.7, 0.6],
            |_| 1,
        )
        .await;
    let app = TestApp::new(settings()).await;
    let s = app.settings();
    let args = |command: &'static str| {
        [
            command,
            "--experiment-id",
            exp.id.as_str(),
            "--keep-top",
            "1",
        ]
    };
    let with_valve = |command| {
        let mut cmd = crate::helpers::cli(s, &args(command));
        cmd.env("MODEL_PRUNER__POLICY__MAX_DELETIONS_PER_PASS", "2");
        cmd
    };

    let (code, _, err) = outcome(&with_valve("plan").output().await.unwrap());
    assert_eq!(code, 0, "{err}");
    assert!(
        err.contains("3 models to delete is more than policy.max_deletions_per_pass = 2"),
        "{err}"
    );
    let (code, _, err) = outcome(&with_valve("prune").output().await.unwrap());
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("--force"), "{err}");
    for run in &runs {
        assert_eq!(world.objects(run).await, 1, "nothing deleted");
    }
    app.cleanup().await;
}
