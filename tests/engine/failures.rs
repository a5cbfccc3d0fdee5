//! The failure paths of a pass and the inputs of its ranking: a mark MLflow refuses, a pass
//! stopped between two DeleteObjects, model folders that hold nothing, a metric or the policy
//! changed while a pass lists the store, runs held back by `older_than` beside a run without
//! the metric, and the retirement of an experiment that holds registered runs.

use model_pruner::domain::event::Event;
use model_pruner::domain::policy::{GroupKey, PolicyOverrides};
use model_pruner::domain::ranking::{Decision, Rule, SkipReason};
use model_pruner::engine::{PassReport, PruneError};

use crate::support::mlflow_fixtures::{
    ExperimentFixture, ModelSource, RunSpec, now_ms, unique_name,
};
use crate::support::proxy::{Action, DELETE_OBJECTS, Proxy};
use crate::support::store_fixtures;
use crate::support::world::ModelRun;
use crate::world::{
    Layout, METRIC, World, changed_while_listing, handle, keep, run_finished, sweep,
};

fn rule_of<'a>(report: &'a PassReport, run_id: &str) -> (&'a Decision, Rule) {
    let r = report
        .ranking
        .runs
        .iter()
        .find(|r| r.run.run_id == run_id)
        .expect("the run is in the ranking");
    (&r.decision, r.rule)
}

#[tokio::test]
async fn a_trainer_s_own_model_deleted_param_neither_stops_nor_jams_pruning() {
    // Trainers of the EmbeddingStudio family log model_deleted = 0 at upload; MLflow params are
    // immutable, so the pass must mark such runs by their tags alone.
    let w = World::new();
    let exp = w.experiment().await;
    let mut runs = Vec::new();
    for (i, acc) in [0.9, 0.2, 0.1].into_iter().enumerate() {
        let spec = RunSpec::new(format!("trainer-{i}"))
            .metric(METRIC, acc)
            .param("model_deleted", "0")
            .end_time(Some(1_700_000_000_000 + i as i64));
        runs.push(w.model_run(&exp, Layout::Classic, spec, 2).await);
    }
    let engine = w.engine();
    let report = handle(&engine, run_finished(&exp, &runs[2], keep(1)))
        .await
        .unwrap();
    assert_eq!(report.pruned.len(), 2, "{:?}", report.unmarked);
    assert!(report.unmarked.is_empty(), "{:?}", report.unmarked);
    for loser in &runs[1..] {
        assert_eq!(w.objects(loser).await, 0);
        assert!(w.tagged_deleted(loser).await);
        let params = w.mlflow.run_params(&loser.run.run_id).await.unwrap();
        assert_eq!(
            params["model_deleted"], "0",
            "the trainer's param is left as it was"
        );
    }
    assert_eq!(w.objects(&runs[0]).await, 2);
    // The next event of the experiment finds nothing to redo and does not fail.
    let again = handle(&engine, run_finished(&exp, &runs[0], keep(1)))
        .await
        .unwrap();
    assert!(again.pruned.is_empty());
    assert_eq!(again.ranking.count("delete"), 0);
}

#[tokio::test]
async fn a_reason_longer_than_mlflow_s_tag_limit_is_cut_not_refused() {
    let w = World::new();
    let exp = w.experiment().await;
    // A group value near MLflow's 8,000-character tag limit makes the reason longer than it.
    let long = "b".repeat(7_990);
    let mut runs = Vec::new();
    for (i, acc) in [0.9, 0.1].into_iter().enumerate() {
        let spec = RunSpec::new(format!("grouped-{i}"))
            .metric(METRIC, acc)
            .tag("base", long.clone())
            .end_time(Some(1_700_000_000_000 + i as i64));
        runs.push(w.model_run(&exp, Layout::Classic, spec, 2).await);
    }
    let policy = PolicyOverrides {
        group_by: Some(GroupKey::Tag("base".into()).to_string()),
        ..keep(1)
    };
    let report = handle(&w.engine(), run_finished(&exp, &runs[1], policy))
        .await
        .unwrap();
    assert_eq!(report.pruned.len(), 1);
    w.assert_kept(&runs, &[0]).await;
    let tags = w.mlflow.run_tags(&runs[1].run.run_id).await.unwrap();
    let reason = &tags["model_pruner.reason"];
    assert!(
        reason.starts_with("rank 2 of 2 in group tags.base"),
        "{reason}"
    );
    assert!(
        reason.len() <= 1_000 && reason.ends_with('…'),
        "{}",
        reason.len()
    );
}

#[tokio::test]
async fn a_pass_stopped_between_two_deletes_is_completed_and_its_half_deleted_run_never_ranks() {
    let proxy = Proxy::store().await;
    let mut w = World::new();
    w.settings.store.endpoint = Some(proxy.url().into());
    w.settings.store.delete_batch_size = 2;
    w.settings.concurrency.parallel_deletions = 1;
    let exp = w.experiment().await;
    let runs = w
        .ranked_runs_with_files(&exp, Layout::Classic, &[0.9, 0.5, 0.4, 0.3], |_| 4)
        .await;

    // The first DeleteObjects goes through, every later one is refused: the pass stops with
    // two keys of one run gone and two still there.
    proxy.rule(
        DELETE_OBJECTS,
        Action::Stall(std::time::Duration::ZERO),
        Some(1),
    );
    proxy.rule(DELETE_OBJECTS, Action::Fail(403, "AccessDenied"), None);
    let engine = w.engine();
    let err = handle(&engine, Event::ExperimentPrune(sweep(&exp, keep(1))))
        .await
        .unwrap_err();
    assert!(matches!(err, PruneError::Store { .. }), "{err}");
    let mut half = None;
    for (i, run) in runs.iter().enumerate() {
        let objects = w.objects(run).await;
        let tags = w.mlflow.run_tags(&run.run.run_id).await.unwrap();
        assert!(
            !tags.contains_key("model_pruner.deleted"),
            "run {i}: {tags:?}"
        );
        if objects == 2 {
            assert!(
                tags.contains_key("model_pruner.deleting"),
                "run {i}: {tags:?}"
            );
            half = Some(i);
        } else {
            assert_eq!(objects, 4, "run {i}");
            // Recorded or not, nothing of it was sent: it ranks again next time.
            assert!(
                !tags.contains_key("model_pruner.deleting"),
                "run {i}: {tags:?}"
            );
        }
    }
    let half = half.expect("one run lost two of its four files");
    assert_ne!(half, 0, "the best run is never planned");

    // Then keep_top is raised so that every run fits: the half-deleted run does not take a
    // slot as if its model were whole; its deletion is completed, the whole ones stay.
    w.settings.store.endpoint = crate::world::settings().store.endpoint;
    let report = handle(&w.engine(), Event::ExperimentPrune(sweep(&exp, keep(4))))
        .await
        .unwrap();
    let (decision, rule) = rule_of(&report, &runs[half].run.run_id);
    assert_eq!((decision, rule), (&Decision::Delete, Rule::Resume));
    let kept: Vec<usize> = (0..runs.len()).filter(|&i| i != half).collect();
    w.assert_kept(&runs, &kept).await;
}

/// A classic model whose files a trainer logged under `artifacts/weights/`, marked uploaded.
async fn weights_run(w: &World, exp: &ExperimentFixture, i: usize, acc: f64) -> ModelRun {
    let spec = RunSpec::new(format!("weights-{i}"))
        .metric(METRIC, acc)
        .end_time(Some(1_700_000_000_000 + i as i64));
    let mut run = w.model_run(exp, Layout::Classic, spec, 0).await;
    run.prefix = run
        .prefix
        .replace("/artifacts/model/", "/artifacts/weights/");
    store_fixtures::upload_files(&w.s3, &run.bucket, &run.prefix, 2)
        .await
        .unwrap();
    run
}

#[tokio::test]
async fn a_registered_run_with_an_empty_folder_is_protected_not_a_wrong_layout() {
    let w = World::new();
    let exp = w.experiment().await;
    let best = w
        .model_run(
            &exp,
            Layout::Classic,
            RunSpec::new("best").metric(METRIC, 0.9),
            2,
        )
        .await;
    // Flagged as uploaded, nothing under its model folder, and registered: the only run
    // planned, in an experiment never pruned.
    let registered = w
        .model_run(
            &exp,
            Layout::Classic,
            RunSpec::new("registered").metric(METRIC, 0.1),
            0,
        )
        .await;
    w.mlflow
        .register_model_version(
            &unique_name("empty-registered"),
            ModelSource::Run(&registered.run.run_id, "model"),
        )
        .await
        .unwrap();

    let report = handle(&w.engine(), Event::ExperimentPrune(sweep(&exp, keep(1))))
        .await
        .expect("a kept run is no sign of a wrong layout");

    assert_eq!(
        report.ranking.count("protected"),
        1,
        "{:#?}",
        report.ranking
    );
    assert!(report.pruned.is_empty());
    assert!(!w.marked(&registered).await);
    assert_eq!(w.objects(&best).await, 2);
}

#[tokio::test]
async fn model_folders_that_hold_nothing_are_reported_and_never_marked() {
    let w = World::new();
    let exp = w.experiment().await;
    let runs = vec![
        weights_run(&w, &exp, 0, 0.9).await,
        weights_run(&w, &exp, 1, 0.2).await,
        weights_run(&w, &exp, 2, 0.1).await,
    ];
    let engine = w.engine();
    let err = handle(&engine, Event::ExperimentPrune(sweep(&exp, keep(1))))
        .await
        .unwrap_err();
    assert!(matches!(err, PruneError::EmptyFolders { .. }), "{err}");
    let msg = err.to_string();
    assert!(msg.contains("another artifact path"), "{msg}");
    assert!(
        msg.contains(&runs[1].run.run_id) && msg.contains(&runs[2].run.run_id),
        "{msg}"
    );
    for run in &runs {
        assert_eq!(w.objects(run).await, 2);
        let tags = w.mlflow.run_tags(&run.run.run_id).await.unwrap();
        assert!(!tags.contains_key("model_pruner.deleted"), "{tags:?}");
        let params = w.mlflow.run_params(&run.run.run_id).await.unwrap();
        assert!(!params.contains_key("model_deleted"), "{params:?}");
    }

    // Beside a run whose files are where they should be: that one is pruned, the empty one
    // is reported with its own rule and left unmarked.
    let whole = w
        .model_run(
            &exp,
            Layout::Classic,
            RunSpec::new("whole")
                .metric(METRIC, 0.05)
                .end_time(Some(1_700_000_000_010)),
            2,
        )
        .await;
    let report = handle(&engine, Event::ExperimentPrune(sweep(&exp, keep(1))))
        .await
        .unwrap();
    assert_eq!(report.pruned.len(), 1);
    assert_eq!(report.pruned[0].run_id, whole.run.run_id);
    let (decision, rule) = rule_of(&report, &runs[1].run.run_id);
    assert_eq!(rule, Rule::Empty);
    assert!(
        matches!(decision, Decision::Skipped { reason: SkipReason::EmptyFolder { folder } } if folder.ends_with("/artifacts/model/")),
        "{decision:?}"
    );
    assert!(!w.tagged_deleted(&runs[1]).await);
    assert!(w.tagged_deleted(&whole).await);
}

#[tokio::test]
async fn a_metric_relogged_while_the_pass_lists_the_store_keeps_the_run() {
    let proxy = Proxy::store().await;
    let mut w = World::new();
    w.settings.store.endpoint = Some(proxy.url().into());
    let exp = w.experiment().await;
    let runs = w.ranked_runs(&exp, Layout::Classic, &[0.9, 0.5, 0.1]).await;

    // Ranked and planned; while the files are listed, an evaluation job logs a new best value
    // on the worst run.
    let change = async {
        w.mlflow
            .log_metric(&runs[2].run.run_id, METRIC, 0.99, now_ms())
            .await
            .expect("log the metric");
    };
    let report = changed_while_listing(
        &w,
        &proxy,
        Event::ExperimentPrune(sweep(&exp, keep(1))),
        change,
    )
    .await;
    let report = report.unwrap();

    let (decision, rule) = rule_of(&report, &runs[2].run.run_id);
    assert_eq!(rule, Rule::Changed);
    assert!(
        matches!(decision, Decision::Skipped { reason: SkipReason::Changed { what } } if what.contains("0.99")),
        "{decision:?}"
    );
    w.assert_kept(&runs, &[0, 2]).await;
}

#[tokio::test]
async fn keep_top_raised_on_the_experiment_while_the_pass_lists_keeps_every_run() {
    let proxy = Proxy::store().await;
    let mut w = World::new();
    w.settings.store.endpoint = Some(proxy.url().into());
    let exp = w
        .mlflow
        .experiment_with_tags("engine-raised", &[("model_pruner.keep_top", "1")])
        .await
        .unwrap();
    let runs = w.ranked_runs(&exp, Layout::Classic, &[0.9, 0.5, 0.1]).await;
    let change = async {
        w.mlflow
            .post(
                "experiments/set-experiment-tag",
                serde_json::json!({"experiment_id": exp.id, "key": "model_pruner.keep_top", "value": "3"}),
            )
            .await
            .expect("raise keep_top");
    };
    let report = changed_while_listing(
        &w,
        &proxy,
        Event::ExperimentPrune(sweep(&exp, PolicyOverrides::default())),
        change,
    )
    .await;
    let report = report.unwrap();
    assert!(report.pruned.is_empty());
    assert_eq!(report.ranking.count("delete"), 0);
    w.assert_kept(&runs, &[0, 1, 2]).await;
    // The next pass ranks under the new policy.
    let next = handle(
        &w.engine(),
        Event::ExperimentPrune(sweep(&exp, PolicyOverrides::default())),
    )
    .await
    .unwrap();
    assert_eq!(next.ranking.count("keep"), 3);
}

#[tokio::test]
async fn runs_too_recent_beside_a_run_without_the_metric_fail_nothing() {
    let w = World::new();
    let exp = w.experiment().await;
    let now = now_ms();
    let mut runs = Vec::new();
    for (i, acc) in [Some(0.9), Some(0.1), None].into_iter().enumerate() {
        let mut spec = RunSpec::new(format!("young-{i}")).end_time(Some(now));
        if let Some(acc) = acc {
            spec = spec.metric(METRIC, acc);
        }
        runs.push(w.model_run(&exp, Layout::Classic, spec, 1).await);
    }
    let policy = PolicyOverrides {
        older_than: Some("1h".into()),
        ..keep(1)
    };
    let report = handle(&w.engine(), run_finished(&exp, &runs[0], policy))
        .await
        .unwrap();
    assert_eq!(report.ranking.missing_metric().count(), 1);
    assert_eq!(report.ranking.ranked, 0);
    // Both too young: a pass should look again when the first comes of age.
    assert!(
        report
            .ranking
            .next_look()
            .is_some_and(|at| at.millis() >= now + 3_600_000)
    );
    w.assert_kept(&runs, &[0, 1, 2]).await;
}

#[tokio::test]
async fn an_experiment_with_registered_runs_is_not_retired() {
    let w = World::new();
    let exp = w.experiment().await;
    let runs = w.ranked_runs(&exp, Layout::Classic, &[0.9, 0.1]).await;
    // A run without a model marker whose folder a version was registered from by its S3 path.
    let bare = exp
        .run(RunSpec::new("bare").metric(METRIC, 0.5))
        .await
        .unwrap();
    let name = unique_name("retire-registered");
    let source = format!("{}/model", bare.artifact_uri);
    w.mlflow
        .register_model_version(&name, ModelSource::Uri(&source))
        .await
        .unwrap();
    w.mlflow
        .register_model_version(&name, ModelSource::Run(&runs[0].run.run_id, "model"))
        .await
        .unwrap();

    let mut event = sweep(&exp, keep(0));
    event.delete_experiment = true;
    let err = handle(&w.engine(), Event::ExperimentPrune(event))
        .await
        .unwrap_err();
    w.mlflow.delete_registered_model(&name).await.unwrap();
    let PruneError::ExperimentNotEmpty { remaining, .. } = &err else {
        panic!("{err}");
    };
    let all = remaining.join("\n");
    assert!(all.contains(&runs[0].run.run_id), "{all}");
    assert!(all.contains(&source), "{all}");
    assert_eq!(
        w.mlflow.experiment_lifecycle(&exp.id).await.unwrap(),
        "active"
    );
    // The unprotected run was pruned all the same; the registered one kept its files.
    w.assert_kept(&runs, &[0]).await;
}

#[tokio::test]
async fn a_keeper_trashed_while_the_pass_lists_keeps_the_run_that_takes_its_slot() {
    let proxy = Proxy::store().await;
    let mut w = World::new();
    w.settings.store.endpoint = Some(proxy.url().into());
    let exp = w.experiment().await;
    let runs = w.ranked_runs(&exp, Layout::Classic, &[0.9, 0.5, 0.1]).await;
    // While the files are listed, someone moves the best run to MLflow's trash: with keep_top
    // 1, the second run is now the top one and must keep its model.
    let change = async {
        w.mlflow
            .delete_run(&runs[0].run.run_id)
            .await
            .expect("trash the keeper");
    };
    let report = changed_while_listing(
        &w,
        &proxy,
        Event::ExperimentPrune(sweep(&exp, keep(1))),
        change,
    )
    .await;
    let report = report.unwrap();
    let (decision, rule) = rule_of(&report, &runs[1].run.run_id);
    assert_eq!(rule, Rule::Changed);
    assert!(
        matches!(decision, Decision::Skipped { reason: SkipReason::Changed { what } } if what.contains(&runs[0].run.run_id)),
        "{decision:?}"
    );
    assert_eq!(w.objects(&runs[1]).await, 3);
    assert!(!w.tagged_deleted(&runs[1]).await);
    // The next pass ranks the new state: the second run keeps its model, the third goes.
    handle(&w.engine(), Event::ExperimentPrune(sweep(&exp, keep(1))))
        .await
        .unwrap();
    assert_eq!(w.objects(&runs[1]).await, 3);
    assert_eq!(w.objects(&runs[2]).await, 0);
}
