//! An MLflow 2.x tracking server (the stack's 2.22, no logged-models API): classic models are
//! ranked and pruned, and registry versions protect them, created with or without `run_id`;
//! a 3.x server is never taken for one.

use model_pruner::domain::classify::ErrorClass;
use model_pruner::domain::event::{Event, ExperimentPrune};

use crate::python_client::run_python;
use crate::support::mlflow_fixtures::{ModelSource, RunSpec, unique_name};
use crate::support::proxy::{Action, Proxy};
use crate::support::store_fixtures;
use crate::world::{Layout, METRIC, World, handle, keep, mlflow2_uri, sweep};

#[tokio::test]
async fn classic_models_are_pruned_and_registry_versions_protect_them_on_mlflow_2() {
    let w = World::mlflow2();
    let exp = w.experiment().await;
    let mut runs = Vec::new();
    for (i, value) in [0.9, 0.8, 0.7, 0.6, 0.5].into_iter().enumerate() {
        let spec = RunSpec::new(format!("run-{i}")).metric(METRIC, value);
        runs.push(w.model_run(&exp, Layout::Classic, spec, 2).await);
    }
    // One version names its run, one only the model's S3 folder (as older clients register).
    let name = unique_name("registered-v2");
    w.mlflow
        .register_model_version(&name, ModelSource::Run(&runs[3].run.run_id, "model"))
        .await
        .unwrap();
    let folder = format!("s3://{}/{}", runs[4].bucket, runs[4].prefix);
    w.mlflow
        .register_model_version(&name, ModelSource::Uri(&folder))
        .await
        .unwrap();

    let engine = w.engine();
    let report = handle(&engine, Event::ExperimentPrune(sweep(&exp, keep(2)))).await;
    let again = handle(&engine, Event::ExperimentPrune(sweep(&exp, keep(2)))).await;
    w.mlflow.delete_registered_model(&name).await.unwrap();
    let report = report.expect("a pass on MLflow 2.x");
    assert_eq!(
        report.ranking.count("protected"),
        2,
        "{:#?}",
        report.ranking
    );
    assert_eq!(report.pruned.len(), 1);
    assert_eq!(report.pruned[0].run_id, runs[2].run.run_id);
    w.assert_kept(&runs, &[0, 1, 3, 4]).await;
    assert!(w.marked(&runs[2]).await);
    let again = again.expect("a second pass");
    assert!(again.pruned.is_empty(), "a repeated sweep is harmless");
}

/// A training script on the real MLflow 2.x client: classic `model/` folders, the worst
/// model registered through `mlflow.register_model`.
const SCRIPT: &str = r#"
import json, os, tempfile, uuid
import mlflow

exp = mlflow.create_experiment(f"python2-{uuid.uuid4().hex[:8]}")
runs = []
for acc in [0.2, 0.9, 0.5, 0.7]:
    with mlflow.start_run(experiment_id=exp) as run:
        mlflow.log_metric("accuracy", acc)
        with tempfile.TemporaryDirectory() as d:
            for n in range(3):
                with open(os.path.join(d, f"weights-{n}.bin"), "w") as f:
                    f.write("w" * 100)
            mlflow.log_artifacts(d, "model")
        mlflow.log_param("model_uploaded", 1)
        runs.append({"run_id": run.info.run_id, "uri": run.info.artifact_uri + "/model"})
name = f"python2-{uuid.uuid4().hex[:8]}"
mlflow.register_model(f"runs:/{runs[0]['run_id']}/model", name)
print(json.dumps({"experiment_id": exp, "runs": runs, "registered": name, "version": mlflow.__version__}))
"#;

#[tokio::test]
async fn a_training_script_on_the_mlflow_2_client_is_pruned_to_its_top_n() {
    let logged = tokio::task::spawn_blocking(|| {
        let tracking = [("MLFLOW_TRACKING_URI", mlflow2_uri())];
        run_python("MODEL_PRUNER_PYTHON2", SCRIPT, &tracking)
    })
    .await
    .unwrap();
    assert!(
        logged["version"].as_str().unwrap().starts_with("2."),
        "{logged}"
    );
    let w = World::mlflow2();
    let exp = logged["experiment_id"].as_str().unwrap();
    let event = Event::ExperimentPrune(ExperimentPrune {
        experiment_id: exp.to_owned(),
        policy: keep(1),
        delete_experiment: false,
        dry_run: false,
        force: false,
    });
    let report = handle(&w.engine(), event).await;
    w.mlflow
        .delete_registered_model(logged["registered"].as_str().unwrap())
        .await
        .unwrap();
    let report = report.expect("a pass on MLflow 2.x");
    let remaining = |uri: &str| {
        let (bucket, prefix) = uri
            .strip_prefix("s3://")
            .and_then(|r| r.split_once('/'))
            .expect("an s3:// URI");
        let (s3, bucket, prefix) = (w.s3.clone(), bucket.to_owned(), format!("{prefix}/"));
        async move {
            store_fixtures::count_objects(&s3, &bucket, &prefix)
                .await
                .unwrap()
        }
    };
    let runs = logged["runs"].as_array().unwrap();
    let mut left = Vec::new();
    for run in runs {
        left.push(remaining(run["uri"].as_str().unwrap()).await);
    }
    // Kept: the best (0.9) and the registered one (0.2); pruned: 0.5 and 0.7.
    assert_eq!(left, [3, 3, 0, 0], "{:#?}", report.ranking);
}

#[tokio::test]
async fn a_404_from_logged_models_in_front_of_an_mlflow_3_server_is_not_taken_for_2_x() {
    // An ingress or an old replica answering the logged-models path with its own 404: the
    // server says 3.x at /version, so its logged models are not assumed away; the pass fails
    // as transient and deletes nothing.
    let proxy = Proxy::mlflow().await;
    let mut w = World::new();
    w.settings.mlflow.tracking_uri = proxy.url().into();
    let exp = w.experiment().await;
    let runs = w.ranked_runs(&exp, Layout::Logged, &[0.9, 0.8, 0.7]).await;
    proxy.rule(
        ("POST", "logged-models/search"),
        Action::Fail(404, "NotFound"),
        None,
    );
    let error = handle(&w.engine(), Event::ExperimentPrune(sweep(&exp, keep(1))))
        .await
        .expect_err("no pass without the logged models");
    assert_eq!(error.class(), ErrorClass::Transient, "{error}");
    w.assert_kept(&runs, &[0, 1, 2]).await;
}
