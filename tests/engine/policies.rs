//! The retention rules beside the top N, on the real tracking server and store: the latest
//! runs kept, the top N per group, and age-based candidacy. Each names its rule in the report
//! and in the pruned runs' `model_pruner.reason`.

use model_pruner::domain::policy::PolicyOverrides;
use model_pruner::domain::ranking::{Decision, Rule};
use model_pruner::engine::PassReport;

use crate::support::mlflow_fixtures::{ExperimentFixture, RunSpec, now_ms};
use crate::support::world::ModelRun;
use crate::world::{Layout, METRIC, World, handle, keep, run_finished};

/// The rule that decided `run` in `report`.
fn rule(report: &PassReport, run: &ModelRun) -> (Rule, &'static str) {
    let ranked = report
        .ranking
        .runs
        .iter()
        .find(|r| r.run.run_id == run.run.run_id)
        .expect("the run is in the report");
    (ranked.rule, ranked.decision.label())
}

async fn reason(w: &World, run: &ModelRun) -> String {
    let tags = w.mlflow.run_tags(&run.run.run_id).await.unwrap();
    tags.get("model_pruner.reason").cloned().unwrap_or_default()
}

#[tokio::test]
async fn keep_latest_keeps_the_newest_runs_besides_the_best() {
    let w = World::new();
    let exp = w.experiment().await;
    // Ended in this order: runs 3 and 4 are the two latest, run 1 the best.
    let runs = w
        .ranked_runs(
            &exp,
            Layout::Classic,
            &[Some(0.5), Some(0.9), Some(0.1), Some(0.2), Some(0.3)],
        )
        .await;
    let policy = PolicyOverrides {
        keep_latest: Some(2),
        ..keep(1)
    };
    let report = handle(&w.engine(), run_finished(&exp, &runs[4], policy))
        .await
        .unwrap();
    w.assert_kept(&runs, &[1, 3, 4]).await;
    assert_eq!(rule(&report, &runs[1]), (Rule::Rank, "keep"));
    assert_eq!(rule(&report, &runs[3]), (Rule::Latest, "keep"));
    assert_eq!(rule(&report, &runs[4]), (Rule::Latest, "keep"));
    assert_eq!(rule(&report, &runs[0]), (Rule::Rank, "delete"));
    assert_eq!(
        reason(&w, &runs[0]).await,
        "rank 2 of 5 by accuracy max, keep_top 1, keep_latest 2"
    );
}

/// A run with `base_model` set to `base` (none: the param is not logged) and `accuracy`.
async fn based(
    w: &World,
    exp: &ExperimentFixture,
    i: i64,
    base: Option<&str>,
    acc: f64,
) -> ModelRun {
    let mut spec = RunSpec::new(format!("run-{i}"))
        .metric(METRIC, acc)
        .end_time(Some(1_700_000_000_000 + i));
    if let Some(base) = base {
        spec = spec.param("base_model", base);
    }
    w.model_run(exp, Layout::Classic, spec, 2).await
}

#[tokio::test]
async fn group_by_from_the_experiment_s_tags_keeps_the_best_of_each_base_model() {
    let w = World::new();
    let exp = w
        .mlflow
        .experiment_with_tags(
            "engine-group",
            &[
                ("model_pruner.group_by", "params.base_model"),
                ("model_pruner.keep_top", "1"),
            ],
        )
        .await
        .unwrap();
    let runs = vec![
        based(&w, &exp, 0, Some("bert"), 0.9).await,
        based(&w, &exp, 1, Some("bert"), 0.5).await,
        based(&w, &exp, 2, Some("roberta"), 0.3).await,
        based(&w, &exp, 3, Some("roberta"), 0.2).await,
        based(&w, &exp, 4, None, 0.4).await,
        based(&w, &exp, 5, None, 0.1).await,
    ];
    let report = handle(
        &w.engine(),
        run_finished(&exp, &runs[0], PolicyOverrides::default()),
    )
    .await
    .unwrap();
    // The best bert and roberta runs stay, though roberta's best is below bert's second.
    w.assert_kept(&runs, &[0, 2, 4]).await;
    assert_eq!(rule(&report, &runs[2]), (Rule::Group, "keep"));
    assert_eq!(
        reason(&w, &runs[1]).await,
        "rank 2 of 2 in group params.base_model = \"bert\" by accuracy max, keep_top 1 per \
         params.base_model"
    );
    assert_eq!(
        reason(&w, &runs[5]).await,
        "rank 2 of 2 among the runs without params.base_model by accuracy max, keep_top 1 per \
         params.base_model"
    );
    let mut ungrouped = vec![runs[4].run.run_id.clone(), runs[5].run.run_id.clone()];
    ungrouped.sort();
    assert_eq!(report.ranking.ungrouped, ungrouped);
}

#[tokio::test]
async fn older_than_leaves_recent_runs_alone_and_the_floor_does_not_count() {
    let w = World::new();
    let exp = w.experiment().await;
    let now = now_ms();
    let run = |i: i64, acc: f64, end: i64| {
        RunSpec::new(format!("run-{i}"))
            .metric(METRIC, acc)
            .end_time(Some(end))
    };
    let day = 86_400_000;
    let runs = vec![
        // Old, but outside the floor: does not count towards the top.
        w.model_run(&exp, Layout::Classic, run(0, 0.99, now - 3 * day), 2)
            .await,
        w.model_run(&exp, Layout::Classic, run(1, 0.6, now - 3 * day), 2)
            .await,
        w.model_run(&exp, Layout::Classic, run(2, 0.5, now - 2 * day), 2)
            .await,
        // Finished an hour ago: not a candidate under older_than 1d, whatever its metric.
        w.model_run(&exp, Layout::Classic, run(3, 0.1, now - day / 24), 2)
            .await,
    ];
    let policy = PolicyOverrides {
        older_than: Some("1d".into()),
        max_metric: Some(0.95),
        ..keep(1)
    };
    let report = handle(&w.engine(), run_finished(&exp, &runs[3], policy))
        .await
        .unwrap();
    w.assert_kept(&runs, &[1, 3]).await;
    assert_eq!(rule(&report, &runs[0]), (Rule::Floor, "delete"));
    assert_eq!(rule(&report, &runs[3]), (Rule::Age, "skipped"));
    assert!(matches!(
        report
            .ranking
            .runs
            .iter()
            .find(|r| r.run.run_id == runs[2].run.run_id)
            .unwrap()
            .decision,
        Decision::Delete
    ));
    assert!(
        reason(&w, &runs[0])
            .await
            .ends_with("outside the floor: accuracy 0.99 > max_metric 0.95"),
        "{}",
        reason(&w, &runs[0]).await
    );
}
