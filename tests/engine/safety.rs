//! The guard rails: safety valve, refused locations, dry runs, repeated events, bad ids, a
//! misnamed metric, and retiring an experiment.

use model_pruner::domain::classify::ErrorClass;
use model_pruner::domain::event::Event;
use model_pruner::domain::policy::PolicyOverrides;
use model_pruner::engine::PruneError;

use crate::support::mlflow_fixtures::unique_name;
use crate::support::store_fixtures;
use crate::world::{Layout, World, handle, keep, run_finished, sweep};

#[tokio::test]
async fn the_safety_valve_stops_a_large_run_finished_pass_but_not_a_forced_sweep() {
    let mut w = World::new();
    w.settings.policy.max_deletions_per_pass = 2;
    let exp = w.experiment().await;
    let runs = w
        .ranked_runs(
            &exp,
            Layout::Classic,
            &[Some(1.0), Some(2.0), Some(3.0), Some(4.0)],
        )
        .await;
    let engine = w.engine();

    let err = handle(&engine, run_finished(&exp, &runs[0], keep(1)))
        .await
        .unwrap_err();
    assert!(
        matches!(
            err,
            PruneError::SafetyValve {
                count: 3,
                max: 2,
                ..
            }
        ),
        "{err}"
    );
    assert_eq!(err.class(), ErrorClass::Permanent);
    w.assert_kept(&runs, &[0, 1, 2, 3]).await;

    let unforced = handle(&engine, Event::ExperimentPrune(sweep(&exp, keep(1)))).await;
    assert!(matches!(unforced, Err(PruneError::SafetyValve { .. })));

    let mut forced = sweep(&exp, keep(1));
    forced.force = true;
    handle(&engine, Event::ExperimentPrune(forced))
        .await
        .unwrap();
    w.assert_kept(&runs, &[3]).await;
}

#[tokio::test]
async fn a_model_in_a_bucket_outside_the_allowed_list_is_refused_and_nothing_is_deleted() {
    let w = World::new();
    let exp = w
        .mlflow
        .experiment_at(
            "engine-foreign",
            &format!("s3://foreign/{}", unique_name("exp")),
        )
        .await
        .unwrap();
    let runs = w
        .ranked_runs(&exp, Layout::Classic, &[Some(0.1), Some(0.9), Some(0.5)])
        .await;
    assert_eq!(runs[0].bucket, "foreign");
    let err = handle(&w.engine(), run_finished(&exp, &runs[0], keep(1)))
        .await
        .unwrap_err();
    assert!(matches!(err, PruneError::Location { .. }), "{err}");
    assert!(err.to_string().contains("allowed_buckets"), "{err}");
    assert_eq!(err.class(), ErrorClass::Permanent);
    w.assert_kept(&runs, &[0, 1, 2]).await;
}

#[tokio::test]
async fn a_dry_run_reports_the_plan_and_changes_nothing() {
    let w = World::new();
    let exp = w.experiment().await;
    let runs = w
        .ranked_runs(&exp, Layout::Logged, &[Some(0.1), Some(0.9)])
        .await;
    let mut event = sweep(&exp, keep(1));
    event.dry_run = true;
    let report = handle(&w.engine(), Event::ExperimentPrune(event))
        .await
        .unwrap();
    assert_eq!(report.planned.len(), 1);
    assert_eq!(report.planned[0].run_id, runs[0].run.run_id);
    assert!(report.pruned.is_empty());
    w.assert_kept(&runs, &[0, 1]).await;
}

#[tokio::test]
async fn a_repeated_event_is_harmless() {
    let w = World::new();
    let exp = w.experiment().await;
    let runs = w
        .ranked_runs(&exp, Layout::Classic, &[Some(0.1), Some(0.9), Some(0.5)])
        .await;
    let engine = w.engine();
    let event = run_finished(&exp, &runs[0], keep(1));
    let first = handle(&engine, event.clone()).await.unwrap();
    assert_eq!(first.pruned.len(), 2);
    let second = handle(&engine, event).await.unwrap();
    assert!(second.pruned.is_empty());
    assert_eq!(second.ranking.count("skipped"), 2);
    w.assert_kept(&runs, &[1]).await;
}

#[tokio::test]
async fn a_deletion_interrupted_before_the_mark_is_finished_by_the_next_pass() {
    let w = World::new();
    let exp = w.experiment().await;
    let runs = w
        .ranked_runs(&exp, Layout::Classic, &[Some(0.1), Some(0.9)])
        .await;
    // Half the files of the loser are already gone, as after a crash mid-deletion.
    let keys = store_fixtures::upload_files(&w.s3, &runs[0].bucket, &runs[0].prefix, 3)
        .await
        .unwrap()
        .keys;
    w.s3.delete_object()
        .bucket(&runs[0].bucket)
        .key(&keys[0])
        .send()
        .await
        .unwrap();
    handle(&w.engine(), run_finished(&exp, &runs[1], keep(1)))
        .await
        .unwrap();
    w.assert_kept(&runs, &[1]).await;
}

#[tokio::test]
async fn an_unknown_experiment_is_a_permanent_error() {
    let w = World::new();
    let event = Event::parse(
        "run.finished",
        br#"{"experiment_id":"987654321","run_id":"nope"}"#,
    )
    .unwrap();
    let err = handle(&w.engine(), event).await.unwrap_err();
    assert!(matches!(err, PruneError::UnknownExperiment { .. }), "{err}");
    assert_eq!(err.class(), ErrorClass::Permanent);
}

#[tokio::test]
async fn a_run_of_another_experiment_is_a_permanent_error_and_nothing_is_deleted() {
    let w = World::new();
    let exp = w.experiment().await;
    let other = w.experiment().await;
    let runs = w
        .ranked_runs(&exp, Layout::Classic, &[Some(0.1), Some(0.9)])
        .await;
    let stranger = w.ranked_runs(&other, Layout::Classic, &[Some(0.5)]).await;
    let err = handle(&w.engine(), run_finished(&exp, &stranger[0], keep(1)))
        .await
        .unwrap_err();
    assert!(
        matches!(err, PruneError::RunNotInExperiment { .. }),
        "{err}"
    );
    w.assert_kept(&runs, &[0, 1]).await;
}

#[tokio::test]
async fn a_metric_no_run_logged_fails_naming_metric_and_experiment() {
    let w = World::new();
    let exp = w.experiment().await;
    let runs = w
        .ranked_runs(&exp, Layout::Classic, &[Some(0.1), Some(0.9)])
        .await;
    let policy = PolicyOverrides {
        metric: Some("acuracy".into()),
        keep_top: Some(0),
        ..Default::default()
    };
    let err = handle(&w.engine(), run_finished(&exp, &runs[0], policy))
        .await
        .unwrap_err();
    let msg = err.to_string();
    assert!(
        msg.contains("\"acuracy\"") && msg.contains(&exp.id),
        "{msg}"
    );
    w.assert_kept(&runs, &[0, 1]).await;
}

#[tokio::test]
async fn retiring_an_experiment_deletes_every_model_then_the_experiment() {
    let w = World::new();
    let exp = w.experiment().await;
    let runs = w
        .ranked_runs(&exp, Layout::Logged, &[Some(0.1), Some(0.9)])
        .await;
    let mut event = sweep(&exp, keep(0));
    event.delete_experiment = true;
    let engine = w.engine();
    let report = handle(&engine, Event::ExperimentPrune(event.clone()))
        .await
        .unwrap();
    assert!(report.experiment_deleted);
    w.assert_kept(&runs, &[]).await;
    assert_eq!(
        w.mlflow.experiment_lifecycle(&exp.id).await.unwrap(),
        "deleted"
    );
    // Redelivered: still fine.
    handle(&engine, Event::ExperimentPrune(event))
        .await
        .unwrap();
}

#[tokio::test]
async fn an_experiment_with_models_left_is_not_deleted() {
    let w = World::new();
    let exp = w.experiment().await;
    let runs = w
        .ranked_runs(&exp, Layout::Classic, &[Some(0.1), Some(0.9)])
        .await;
    let mut event = sweep(&exp, keep(1));
    event.delete_experiment = true;
    let err = handle(&w.engine(), Event::ExperimentPrune(event))
        .await
        .unwrap_err();
    assert!(
        matches!(err, PruneError::ExperimentNotEmpty { .. }),
        "{err}"
    );
    assert_eq!(
        w.mlflow.experiment_lifecycle(&exp.id).await.unwrap(),
        "active"
    );
    w.assert_kept(&runs, &[1]).await;
}

#[tokio::test]
async fn an_invalid_policy_names_its_source() {
    let w = World::new();
    let exp = w
        .mlflow
        .experiment_with_tags("engine-badtag", &[("model_pruner.direction", "up")])
        .await
        .unwrap();
    let runs = w.ranked_runs(&exp, Layout::Classic, &[Some(0.1)]).await;
    let err = handle(
        &w.engine(),
        run_finished(&exp, &runs[0], PolicyOverrides::default()),
    )
    .await
    .unwrap_err();
    assert!(err.to_string().contains("experiment's tags"), "{err}");
}
