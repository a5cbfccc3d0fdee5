//! MLflow written to while a pass runs, as on any busy tracking server: runs created between the
//! pages a pass reads, a version registered and a keep tag set after the ranking but before the
//! files go, proxied artifact URIs against a registry that names S3 paths, and a logged model
//! shared by a kept and a pruned run. A proxy holds the pass at a chosen request while the test
//! writes, so each scene happens every time.

use model_pruner::domain::event::Event;

use crate::support::mlflow_fixtures::{ModelSource, RunSpec, RunStatus, unique_name};
use crate::support::proxy::Proxy;
use crate::support::store_fixtures;
use crate::world::{Layout, METRIC, World, changed_while_listing, handle, keep, sweep};

/// `runs/search` on the tracking server, as the proxy sees it.
const RUNS_SEARCH: (&str, &str) = ("POST", "/runs/search");

#[tokio::test]
async fn runs_created_between_the_pages_of_a_pass_are_ranked_once() {
    let proxy = Proxy::mlflow().await;
    let mut w = World::new();
    w.settings.mlflow.tracking_uri = proxy.url().into();
    w.settings.mlflow.page_size = 3;
    let exp = w.experiment().await;
    // Run i has metric i: the newest two are the best.
    let values: Vec<f64> = (0..12).map(f64::from).collect();
    let runs = w.ranked_runs(&exp, Layout::Classic, &values).await;

    // Before each of the first four pages, a pipeline starts two more runs.
    let mut held = proxy.hold(RUNS_SEARCH, Some(4));
    let writer = async {
        for page in 0..4 {
            let release = held.recv().await.expect("the pass reads a page");
            for i in 0..2 {
                let spec = RunSpec::new(format!("new-{page}-{i}")).status(RunStatus::Running);
                exp.run(spec).await.expect("create a run");
            }
            release.send(()).expect("the pass waits");
        }
    };
    let engine = w.engine();
    let pass = handle(&engine, Event::ExperimentPrune(sweep(&exp, keep(2))));
    let (report, ()) = tokio::join!(pass, writer);
    let report = report.unwrap();

    assert_eq!(report.ranking.ranked, 12, "each finished run ranked once");
    assert!(
        report.ranking.repeated.is_empty(),
        "{:?}",
        report.ranking.repeated
    );
    let kept: Vec<&str> = report
        .ranking
        .runs
        .iter()
        .filter(|r| r.decision.label() == "keep")
        .map(|r| r.run.run_name.as_str())
        .collect();
    assert_eq!(kept, ["run-11", "run-10"]);
    w.assert_kept(&runs, &[10, 11]).await;
    assert_eq!(report.pruned.len(), 10);
}

#[tokio::test]
async fn a_version_registered_and_a_keep_tag_set_while_a_pass_runs_keep_their_models() {
    let proxy = Proxy::store().await;
    let mut w = World::new();
    w.settings.store.endpoint = Some(proxy.url().into());
    let exp = w.experiment().await;
    let runs = w
        .ranked_runs(&exp, Layout::Classic, &[0.1, 0.2, 0.3, 0.4, 0.5])
        .await;
    let logged = w
        .model_run(
            &exp,
            Layout::Logged,
            RunSpec::new("logged").metric(METRIC, 0.05),
            2,
        )
        .await;

    // The pass has ranked and planned; it is about to list the files it will delete. Every
    // listing is held (a pass lists in several walks at once) until the world has changed.
    let name = unique_name("registered-mid-pass");
    let change = async {
        w.mlflow
            .register_model_version(&name, ModelSource::Run(&runs[1].run.run_id, "model"))
            .await
            .expect("register a version");
        let model_id = &logged.run.model.as_ref().expect("logged model").model_id;
        w.mlflow
            .register_model_version(&name, ModelSource::LoggedModel(model_id))
            .await
            .expect("register a version");
        w.mlflow
            .set_tag(&runs[2].run.run_id, "model_pruner.keep", "true")
            .await
            .expect("set the keep tag");
    };
    let event = Event::ExperimentPrune(sweep(&exp, keep(1)));
    let report = changed_while_listing(&w, &proxy, event, change).await;
    w.mlflow.delete_registered_model(&name).await.unwrap();
    let report = report.unwrap();

    assert_eq!(
        report.ranking.count("protected"),
        3,
        "{:#?}",
        report.ranking
    );
    w.assert_kept(&runs, &[1, 2, 4]).await;
    assert!(
        w.objects(&logged).await > 0,
        "the registered logged model stays"
    );
    assert!(!w.marked(&logged).await);
}

#[tokio::test]
async fn under_proxied_artifacts_a_version_naming_the_models_s3_path_protects_it() {
    let w = World::proxied();
    let exp = w.experiment().await;
    assert!(
        exp.artifact_location.starts_with("mlflow-artifacts:"),
        "{}",
        exp.artifact_location
    );
    let runs = w.ranked_runs(&exp, Layout::Classic, &[0.1, 0.2, 0.3]).await;
    let s3_path = format!("s3://{}/{}", runs[0].bucket, runs[0].prefix);
    let name = unique_name("registered-s3-path");
    w.mlflow
        .register_model_version(&name, ModelSource::Uri(&s3_path))
        .await
        .expect("register a version by S3 path");

    let report = handle(&w.engine(), Event::ExperimentPrune(sweep(&exp, keep(1)))).await;
    w.mlflow.delete_registered_model(&name).await.unwrap();
    let report = report.unwrap();

    assert_eq!(
        report.ranking.count("protected"),
        1,
        "{:#?}",
        report.ranking
    );
    w.assert_kept(&runs, &[0, 2]).await;
}

#[tokio::test]
async fn a_run_the_last_look_keeps_is_never_recorded_as_being_deleted_by_a_sharer() {
    let w = World::new();
    let exp = w.experiment().await;
    // "carrier" logs a model that "sharer" outputs too; both rank below the one kept, so the
    // shared model is planned with the carrier (the last of its runs in plan order) and the
    // sharer's own classic files go on their own.
    let carrier = w
        .model_run(
            &exp,
            Layout::Logged,
            RunSpec::new("carrier").metric(METRIC, 0.1),
            3,
        )
        .await;
    let sharer = w
        .model_run(
            &exp,
            Layout::Classic,
            RunSpec::new("sharer").metric(METRIC, 0.2),
            3,
        )
        .await;
    let model = carrier.run.model.as_ref().expect("logged model");
    w.mlflow
        .log_model_output(&sharer.run.run_id, &model.model_id)
        .await
        .unwrap();
    let best = w
        .model_run(
            &exp,
            Layout::Classic,
            RunSpec::new("best").metric(METRIC, 0.9),
            3,
        )
        .await;
    // The carrier is registered: the last look keeps it, and with it the shared model.
    w.mlflow
        .register_model_version(
            &unique_name("carrier"),
            ModelSource::Run(&carrier.run.run_id, "model"),
        )
        .await
        .unwrap();

    let report = handle(&w.engine(), Event::ExperimentPrune(sweep(&exp, keep(1))))
        .await
        .unwrap();

    let tags = w.mlflow.run_tags(&carrier.run.run_id).await.unwrap();
    assert!(
        !tags.contains_key("model_pruner.deleting") && !tags.contains_key("model_pruner.deleted"),
        "a kept run carries no deletion record (the next pass would resume it): {tags:?}"
    );
    assert_eq!(
        w.objects(&carrier).await,
        3,
        "the registered model stays whole"
    );
    assert_eq!(w.objects(&sharer).await, 0, "the sharer's own files go");
    assert!(w.marked(&sharer).await);
    assert_eq!(w.objects(&best).await, 3);
    let pruned: Vec<&str> = report.pruned.iter().map(|p| p.run_id.as_str()).collect();
    assert_eq!(pruned, [sharer.run.run_id.as_str()]);
}

#[tokio::test]
async fn a_logged_model_shared_by_a_kept_and_a_pruned_run_stays() {
    let w = World::new();
    let exp = w.experiment().await;
    // "low" logs the model; "best" records the same model as its output too.
    let low = w
        .model_run(
            &exp,
            Layout::Logged,
            RunSpec::new("low").metric(METRIC, 0.1),
            3,
        )
        .await;
    let best = w
        .model_run(
            &exp,
            Layout::Classic,
            RunSpec::new("best").metric(METRIC, 0.9),
            3,
        )
        .await;
    let shared = low.run.model.as_ref().expect("logged model");
    w.mlflow
        .log_model_output(&best.run.run_id, &shared.model_id)
        .await
        .unwrap();
    let alone = w
        .model_run(
            &exp,
            Layout::Logged,
            RunSpec::new("alone").metric(METRIC, 0.2),
            3,
        )
        .await;

    let report = handle(&w.engine(), Event::ExperimentPrune(sweep(&exp, keep(1))))
        .await
        .unwrap();

    assert!(
        w.objects(&low).await > 0,
        "the shared model stays for the kept run"
    );
    let tags = w.mlflow.logged_model_tags(&shared.model_id).await.unwrap();
    assert!(!tags.contains_key("model_pruner.deleted"), "{tags:?}");
    assert!(w.objects(&best).await > 0);
    assert_eq!(w.objects(&alone).await, 0, "an unshared model goes");
    assert!(w.marked(&alone).await);
    let pruned: Vec<&str> = report.pruned.iter().map(|p| p.run_id.as_str()).collect();
    assert!(pruned.contains(&alone.run.run_id.as_str()), "{pruned:?}");
    assert_eq!(
        store_fixtures::count_objects(&w.s3, &low.bucket, &low.prefix)
            .await
            .unwrap(),
        3
    );
}
