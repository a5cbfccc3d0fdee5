//! Exactly the top N stay, in both layouts, for max and min, with NaN, missing values and ties.

use model_pruner::domain::policy::PolicyOverrides;

use crate::support::mlflow_fixtures::RunSpec;
use crate::world::{Layout, METRIC, World, handle, keep, run_finished};

async fn top_n_kept_and_rest_deleted_and_tagged(layout: Layout) {
    let w = World::new();
    let exp = w.experiment().await;
    let runs = w
        .ranked_runs(
            &exp,
            layout,
            &[Some(0.5), Some(0.9), Some(0.1), Some(0.7), Some(0.3)],
        )
        .await;
    let report = handle(&w.engine(), run_finished(&exp, &runs[4], keep(2)))
        .await
        .unwrap();
    assert_eq!(report.pruned.len(), 3);
    assert_eq!(report.objects_deleted(), 9);
    w.assert_kept(&runs, &[1, 3]).await;

    if layout == Layout::Logged {
        let model = runs[0].run.model.as_ref().unwrap();
        let tags = w.mlflow.logged_model_tags(&model.model_id).await.unwrap();
        assert_eq!(
            tags.get("model_pruner.deleted").map(String::as_str),
            Some("true")
        );
        assert_eq!(
            tags.get("model_pruner.reason").map(String::as_str),
            Some("rank 3 of 5 by accuracy max, keep_top 2")
        );
    }
}

#[tokio::test]
async fn classic_layout_keeps_exactly_the_top_n() {
    top_n_kept_and_rest_deleted_and_tagged(Layout::Classic).await;
}

#[tokio::test]
async fn logged_model_layout_keeps_exactly_the_top_n() {
    top_n_kept_and_rest_deleted_and_tagged(Layout::Logged).await;
}

#[tokio::test]
async fn min_direction_from_experiment_tags_keeps_the_lowest_loss() {
    let w = World::new();
    let exp = w
        .mlflow
        .experiment_with_tags(
            "engine-min",
            &[
                ("model_pruner.metric", "loss"),
                ("model_pruner.direction", "min"),
                ("model_pruner.keep_top", "1"),
            ],
        )
        .await
        .unwrap();
    let mut runs = Vec::new();
    for (i, loss) in [0.3, 0.1, 0.2].into_iter().enumerate() {
        let spec = RunSpec::new(format!("r{i}"))
            .metric("loss", loss)
            .end_time(Some(i as i64 + 1));
        runs.push(w.model_run(&exp, Layout::Classic, spec, 2).await);
    }
    let report = handle(
        &w.engine(),
        run_finished(&exp, &runs[0], PolicyOverrides::default()),
    )
    .await
    .unwrap();
    assert_eq!(report.policy.to_string(), "loss min, keep_top 1");
    w.assert_kept(&runs, &[1]).await;
}

#[tokio::test]
async fn nan_is_deleted_before_any_number_and_missing_metric_is_kept() {
    let w = World::new();
    let exp = w.experiment().await;
    let runs = w
        .ranked_runs(
            &exp,
            Layout::Logged,
            &[Some(f64::NAN), Some(0.01), None, Some(0.02)],
        )
        .await;
    let report = handle(&w.engine(), run_finished(&exp, &runs[0], keep(2)))
        .await
        .unwrap();
    w.assert_kept(&runs, &[1, 2, 3]).await;
    let missing: Vec<_> = report
        .ranking
        .missing_metric()
        .map(|r| r.run.run_id.clone())
        .collect();
    assert_eq!(missing, [runs[2].run.run_id.clone()]);
}

#[tokio::test]
async fn ties_go_to_the_run_that_ended_first() {
    let w = World::new();
    let exp = w.experiment().await;
    let mut runs = Vec::new();
    for (i, end) in [300, 100, 200].into_iter().enumerate() {
        let spec = RunSpec::new(format!("tie{i}"))
            .metric(METRIC, 0.5)
            .end_time(Some(end));
        runs.push(w.model_run(&exp, Layout::Classic, spec, 1).await);
    }
    handle(&w.engine(), run_finished(&exp, &runs[0], keep(1)))
        .await
        .unwrap();
    w.assert_kept(&runs, &[1]).await;
}

#[tokio::test]
async fn a_model_of_2500_files_is_deleted_completely() {
    let w = World::new();
    let exp = w.experiment().await;
    let big = w
        .model_run(
            &exp,
            Layout::Classic,
            RunSpec::new("big").metric(METRIC, 0.1),
            2500,
        )
        .await;
    let best = w
        .model_run(
            &exp,
            Layout::Classic,
            RunSpec::new("best").metric(METRIC, 0.9),
            1,
        )
        .await;
    assert_eq!(w.objects(&big).await, 2500);
    let report = handle(&w.engine(), run_finished(&exp, &best, keep(1)))
        .await
        .unwrap();
    assert_eq!(report.objects_deleted(), 2500);
    assert_eq!(w.objects(&big).await, 0);
    assert!(w.marked(&big).await);
    assert_eq!(w.objects(&best).await, 1);
}

#[tokio::test]
async fn batches_spanning_several_runs_delete_every_file_and_credit_each_run() {
    let mut w = World::new();
    // 4 keys a request: the losers' 3 files each straddle batch boundaries.
    w.settings.store.delete_batch_size = 4;
    w.settings.concurrency.parallel_deletions = 2;
    let exp = w.experiment().await;
    let values: Vec<Option<f64>> = (1..=7).map(|i| Some(0.1 * f64::from(i))).collect();
    let runs = w.ranked_runs(&exp, Layout::Classic, &values).await;
    let report = handle(&w.engine(), run_finished(&exp, &runs[6], keep(2)))
        .await
        .unwrap();
    let pruned: Vec<(&str, u64)> = report
        .pruned
        .iter()
        .map(|p| (p.run_id.as_str(), p.objects))
        .collect();
    let expected: Vec<(&str, u64)> = report
        .planned
        .iter()
        .map(|p| (p.run_id.as_str(), 3))
        .collect();
    assert_eq!(pruned.len(), 5);
    assert_eq!(
        pruned, expected,
        "every loser, in plan order, with its own files"
    );
    w.assert_kept(&runs, &[5, 6]).await;
}
