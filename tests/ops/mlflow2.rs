//! The commands against an MLflow 2.x tracking server: `plan`, `prune` and `audit` read it
//! without logged models, and say once what they found.

use serde_json::Value;

use crate::helpers::{cli, outcome, settings};
use crate::support::world::{Layout, World, mlflow2_uri};

#[tokio::test]
async fn plan_prune_and_audit_work_on_an_mlflow_2_server() {
    let world = World::mlflow2("ops");
    let exp = world.experiment().await;
    let runs = world
        .ranked_runs_with_files(&exp, Layout::Classic, &[0.9, 0.5, 0.7], |_| 1)
        .await;
    let s = settings();
    let run = |args: &[&str]| {
        let mut cmd = cli(&s, args);
        cmd.env("MODEL_PRUNER__MLFLOW__TRACKING_URI", mlflow2_uri())
            .env("RUST_LOG", "info");
        cmd
    };
    let id = exp.id.as_str();

    let (code, stdout, err) = outcome(
        &run(&["plan", "--experiment-id", id, "--keep-top", "1"])
            .output()
            .await
            .unwrap(),
    );
    assert_eq!(code, 0, "{stdout}{err}");
    assert!(stdout.contains("2 would delete"), "{stdout}");
    assert!(
        err.contains("no logged-models API (MLflow 2.x)"),
        "said once: {err}"
    );

    let (code, stdout, err) = outcome(
        &run(&["prune", "--experiment-id", id, "--keep-top", "1"])
            .output()
            .await
            .unwrap(),
    );
    assert_eq!(code, 0, "{stdout}{err}");
    world.assert_kept(&runs, &[0]).await;

    let audit = ["audit", "--experiment-id", id, "--keep-top", "1", "--json"];
    let (code, stdout, err) = outcome(&run(&audit).output().await.unwrap());
    assert_eq!(code, 0, "consistent after the prune: {stdout}{err}");
    let report: Value = serde_json::from_str(&stdout).unwrap();
    assert_eq!(report["pruned_runs_verified"], 2, "{stdout}");
}
