//! Registry-backed, pinned and unfinished runs are never deleted, whatever their rank.

use crate::support::mlflow_fixtures::{ModelSource, RunSpec, RunStatus, unique_name};
use crate::world::{Layout, METRIC, World, handle, keep, run_finished};

#[tokio::test]
async fn registry_versions_and_keep_tag_protect_runs_outside_the_top_n() {
    let w = World::new();
    let exp = w.experiment().await;
    let runs = vec![
        w.model_run(
            &exp,
            Layout::Classic,
            RunSpec::new("best").metric(METRIC, 0.9),
            1,
        )
        .await,
        w.model_run(
            &exp,
            Layout::Classic,
            RunSpec::new("reg-run").metric(METRIC, 0.1),
            1,
        )
        .await,
        w.model_run(
            &exp,
            Layout::Logged,
            RunSpec::new("reg-model").metric(METRIC, 0.2),
            1,
        )
        .await,
        w.model_run(
            &exp,
            Layout::Logged,
            RunSpec::new("pinned")
                .metric(METRIC, 0.3)
                .tag("model_pruner.keep", "true"),
            1,
        )
        .await,
        w.model_run(
            &exp,
            Layout::Classic,
            RunSpec::new("plain").metric(METRIC, 0.4),
            1,
        )
        .await,
    ];
    let name = unique_name("registered");
    w.mlflow
        .register_model_version(&name, ModelSource::Run(&runs[1].run.run_id, "model"))
        .await
        .unwrap();
    let model_id = &runs[2].run.model.as_ref().unwrap().model_id;
    w.mlflow
        .register_model_version(&name, ModelSource::LoggedModel(model_id))
        .await
        .unwrap();

    let report = handle(&w.engine(), run_finished(&exp, &runs[0], keep(1))).await;
    w.mlflow.delete_registered_model(&name).await.unwrap();
    let report = report.unwrap();
    assert_eq!(report.ranking.count("protected"), 3);
    w.assert_kept(&runs, &[0, 1, 2, 3]).await;
}

#[tokio::test]
async fn runs_that_are_not_finished_are_never_touched() {
    let w = World::new();
    let exp = w.experiment().await;
    let mut runs = vec![
        w.model_run(
            &exp,
            Layout::Classic,
            RunSpec::new("ok").metric(METRIC, 0.9),
            1,
        )
        .await,
    ];
    for status in [
        RunStatus::Running,
        RunStatus::Failed,
        RunStatus::Killed,
        RunStatus::Scheduled,
    ] {
        let spec = RunSpec::new(format!("{status:?}"))
            .metric(METRIC, 0.0)
            .status(status);
        runs.push(w.model_run(&exp, Layout::Classic, spec, 1).await);
    }
    let report = handle(&w.engine(), run_finished(&exp, &runs[0], keep(0)))
        .await
        .unwrap();
    assert_eq!(report.ranking.count("skipped"), 4);
    w.assert_kept(&runs, &[1, 2, 3, 4]).await;
}
