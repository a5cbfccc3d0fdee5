//! `audit`: planted inconsistencies are reported, `--fix` has a worker prune what a pass can
//! repair, and a consistent experiment exits 0.

use std::time::Duration;

use serde_json::Value;

use crate::helpers::{TestApp, outcome, run_cli, same_queues, settings};
use crate::support::mlflow_fixtures::RunSpec;
use crate::support::store_fixtures;
use crate::support::world::{Layout, World};

/// The kinds of the findings, sorted.
fn kinds(report: &Value) -> Vec<String> {
    let mut k: Vec<String> = report["findings"]
        .as_array()
        .expect("findings")
        .iter()
        .map(|f| f["kind"].as_str().unwrap().to_owned())
        .collect();
    k.sort();
    k
}

#[tokio::test]
async fn audit_reports_planted_inconsistencies_and_fix_prunes_beyond_the_top_n() {
    let world = World::new("ops");
    let tags = [("model_pruner.keep_top", "1")];
    let exp = world
        .mlflow
        .experiment_with_tags("ops-audit", &tags)
        .await
        .unwrap();
    let runs = world
        .ranked_runs_with_files(&exp, Layout::Classic, &[0.9, 0.5, 0.7], |_| 2)
        .await;
    // A run marked deleted whose files are still there, and an object of no known run.
    let marked = world
        .model_run(
            &exp,
            Layout::Classic,
            RunSpec::new("marked")
                .metric("accuracy", 0.1)
                .tag("model_pruner.deleted", "true"),
            2,
        )
        .await;
    let (bucket, root) = exp
        .artifact_location
        .strip_prefix("s3://")
        .and_then(|r| r.split_once('/'))
        .expect("an s3:// experiment location");
    let orphan = format!("{root}/stray-folder/file.bin");
    store_fixtures::put_object(&world.s3, bucket, &orphan, b"x".to_vec())
        .await
        .unwrap();

    let mut app = TestApp::new(settings()).await;
    let s = app.settings();
    let audit = ["audit", "--experiment-id", exp.id.as_str(), "--json"];
    let (code, stdout, err) = outcome(&run_cli(s, &audit).await);
    assert_eq!(code, 3, "{stdout}{err}");
    let report: Value = serde_json::from_str(&stdout).unwrap();
    assert_eq!(
        kinds(&report),
        [
            "beyond_top_n",
            "beyond_top_n",
            "orphan",
            "unfinished_deletion"
        ],
        "{stdout}"
    );
    let text = report.to_string();
    assert!(text.contains(&marked.run.run_id), "{text}");
    assert!(text.contains("stray-folder/"), "{text}");
    let stray = report["findings"]
        .as_array()
        .unwrap()
        .iter()
        .find(|f| f["kind"] == "orphan")
        .unwrap();
    // Beside this experiment's runs, but not named like a run: maybe a nested experiment's root.
    assert_eq!(stray["removable"], false, "{stray}");
    assert!(
        stray["checked"]
            .as_str()
            .unwrap()
            .contains("not named like an MLflow run id"),
        "{stray}"
    );
    assert!(text.contains(&runs[1].run.run_id) && text.contains(&runs[2].run.run_id));

    // --fix publishes the prune; the unfinished deletion and the orphan still need a human.
    app.start(same_queues(app.settings()));
    let fix = ["audit", "--experiment-id", exp.id.as_str(), "--fix"];
    let (code, stdout, err) = outcome(&run_cli(app.settings(), &fix).await);
    assert_eq!(code, 3, "{stdout}{err}");
    assert!(
        stdout.contains("fix: published experiment.prune"),
        "{stdout}"
    );
    world
        .wait_pruned(&runs, &[0], Duration::from_secs(60))
        .await;
    let (code, stdout, _) = outcome(&run_cli(app.settings(), &audit).await);
    assert_eq!(code, 3);
    let report: Value = serde_json::from_str(&stdout).unwrap();
    assert_eq!(
        kinds(&report),
        ["orphan", "unfinished_deletion"],
        "{stdout}"
    );

    // Removed by hand: consistent, and the pruned runs are verified empty.
    world.delete_prefix(&marked.bucket, &marked.prefix).await;
    world.delete_prefix(bucket, &orphan).await;
    let (code, stdout, _) = outcome(&run_cli(app.settings(), &audit).await);
    assert_eq!(code, 0, "{stdout}");
    let report: Value = serde_json::from_str(&stdout).unwrap();
    assert_eq!(report["pruned_runs_verified"], 3, "{stdout}");
    app.cleanup().await;
}

/// A run id of the tracking server that is not in the experiment, as a folder name.
#[tokio::test]
async fn orphans_not_tied_to_this_server_are_never_offered_for_removal() {
    let world = World::new("ops");
    let exp = world.mlflow.experiment("ops-audit-foreign").await.unwrap();
    let other = world.mlflow.experiment("ops-audit-other").await.unwrap();
    let (bucket, root) = exp
        .artifact_location
        .strip_prefix("s3://")
        .and_then(|r| r.split_once('/'))
        .expect("an s3:// experiment location");
    // What a wrong store.artifacts_destination shows: a run folder this server does not know,
    // and no folder of this experiment's own runs beside it (the root is another server's).
    let foreign = format!("{root}/0123456789abcdef0123456789abcdef/artifacts/model/x.bin");
    store_fixtures::put_object(&world.s3, bucket, &foreign, b"x".to_vec())
        .await
        .unwrap();
    let s = settings();
    let audit = ["audit", "--experiment-id", exp.id.as_str()];
    let (code, stdout, err) = outcome(&run_cli(&s, &audit).await);
    assert_eq!(code, 3, "{stdout}{err}");
    assert!(stdout.contains("unverified orphan"), "{stdout}");
    assert!(stdout.contains("store.artifacts_destination"), "{stdout}");
    assert!(
        !stdout.contains("aws s3 rm"),
        "no removal advised: {stdout}"
    );

    // Beside a folder of the experiment's own run, a folder named for a run of another
    // experiment on this server is that run's, not an orphan to remove.
    world
        .model_run(
            &exp,
            Layout::Classic,
            RunSpec::new("own").metric("accuracy", 0.5),
            1,
        )
        .await;
    let elsewhere = other.run(RunSpec::new("elsewhere")).await.unwrap();
    let misplaced = format!("{root}/{}/artifacts/x.bin", elsewhere.run_id);
    store_fixtures::put_object(&world.s3, bucket, &misplaced, b"x".to_vec())
        .await
        .unwrap();
    let json = ["audit", "--experiment-id", exp.id.as_str(), "--json"];
    let (_, stdout, err) = outcome(&run_cli(&s, &json).await);
    let report: Value = serde_json::from_str(&stdout).unwrap_or_else(|_| panic!("{stdout}{err}"));
    let findings = report["findings"].as_array().unwrap();
    let about = |needle: &str| {
        findings
            .iter()
            .find(|f| f["location"].as_str().is_some_and(|l| l.contains(needle)))
            .unwrap_or_else(|| panic!("{needle}: {stdout}"))
    };
    let misplaced = about(&elsewhere.run_id);
    assert_eq!(misplaced["removable"], false, "{misplaced}");
    assert!(
        misplaced["checked"]
            .as_str()
            .unwrap()
            .contains(&format!("experiment {}", other.id)),
        "{misplaced}"
    );
    let foreign = about("0123456789abcdef0123456789abcdef");
    // With the experiment's own run beside it the root is this experiment's, and the server has
    // no such run: a leftover (a run purged from MLflow), removable; the advice names the one
    // thing it cannot check, another server writing there.
    assert_eq!(foreign["removable"], true, "{foreign}");
    assert!(
        foreign["checked"]
            .as_str()
            .unwrap()
            .contains("no other tracking server"),
        "{foreign}"
    );
}

#[tokio::test]
async fn audit_of_an_unknown_experiment_is_an_error() {
    let s = settings();
    let (code, _, err) = outcome(&run_cli(&s, &["audit", "--experiment-id", "987654321"]).await);
    assert_eq!(code, 1, "the audit failed: {err}");
}
