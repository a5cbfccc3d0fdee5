//! `report` and `sweep` over several experiments: different policies by tag, one in a bucket
//! outside `store.allowed_buckets`, one without the metric. What the report says a pass would
//! free is what the sweeps then free, measured in the store; `sweep --all` selects only the
//! experiments that opted in.

use std::time::Duration;

use serde_json::Value;

use crate::helpers::{TestApp, cli, outcome, settings};
use crate::support::mlflow_fixtures::{ExperimentFixture, RunSpec};
use crate::support::store_fixtures;
use crate::support::world::{Layout, ModelRun, World};

/// Objects and bytes under the models of `runs`.
async fn stored(world: &World, runs: &[&ModelRun]) -> (u64, u64) {
    let (mut objects, mut bytes) = (0, 0);
    for run in runs {
        let (o, b) = store_fixtures::usage(&world.s3, &run.bucket, &run.prefix)
            .await
            .unwrap();
        objects += o;
        bytes += b;
    }
    (objects, bytes)
}

async fn create(world: &World, tags: &[(&str, &str)], location: Option<&str>) -> ExperimentFixture {
    world
        .mlflow
        .create_experiment("ops-fleet", tags, location)
        .await
        .unwrap()
}

#[tokio::test]
async fn the_report_says_what_the_sweeps_then_free_and_sweep_all_takes_only_opted_in() {
    let world = World::new("ops-fleet");
    let mark = format!("fleet-{}", std::process::id());
    let tagged = |extra: &[(&'static str, &'static str)]| {
        let mut tags = vec![("fleet_test", mark.as_str())];
        tags.extend_from_slice(extra);
        tags
    };
    // keep 1 by tag; keep the 2 lowest by tag; untagged (the settings keep 1); a foreign
    // bucket; no run logs the metric.
    let top1 = create(&world, &tagged(&[("model_pruner.keep_top", "1")]), None).await;
    let low2 = create(
        &world,
        &tagged(&[
            ("model_pruner.keep_top", "2"),
            ("model_pruner.direction", "min"),
        ]),
        None,
    )
    .await;
    let untagged = create(&world, &tagged(&[]), None).await;
    let foreign_root = format!("s3://foreign/fleet-{}", std::process::id());
    let foreign = create(
        &world,
        &tagged(&[("model_pruner.keep_top", "1")]),
        Some(&foreign_root),
    )
    .await;
    let no_metric = create(&world, &tagged(&[("model_pruner.keep_top", "1")]), None).await;
    let runs = |exp: ExperimentFixture, files: &'static [usize]| {
        let world = &world;
        async move {
            let values = [0.9, 0.5, 0.7, 0.1];
            world
                .ranked_runs_with_files(&exp, Layout::Classic, &values, |i| files[i])
                .await
        }
    };
    let top1_runs = runs(top1.clone(), &[1, 2, 3, 4]).await;
    let low2_runs = runs(low2.clone(), &[2, 2, 2, 2]).await;
    let untagged_runs = runs(untagged.clone(), &[1, 1, 1, 1]).await;
    let foreign_runs = runs(foreign.clone(), &[1, 1, 1, 1]).await;
    let no_metric_runs = vec![
        world
            .model_run(
                &no_metric,
                Layout::Classic,
                RunSpec::new("a").metric("loss", 1.0),
                1,
            )
            .await,
        world
            .model_run(
                &no_metric,
                Layout::Classic,
                RunSpec::new("b").metric("loss", 2.0),
                1,
            )
            .await,
    ];

    let mut s = settings();
    s.policy.keep_top = 1;
    let filter = format!("tags.fleet_test = '{mark}'");
    let command = |args: &[&str]| {
        let mut cmd = cli(&s, args);
        cmd.env("MODEL_PRUNER__POLICY__KEEP_TOP", "1");
        cmd
    };

    let textfile = std::env::temp_dir().join(format!("{mark}.prom"));
    let textfile_arg = textfile.to_str().unwrap();
    let json = [
        "report",
        "--filter",
        &filter,
        "--json",
        "--textfile",
        textfile_arg,
    ];
    let (code, stdout, err) = outcome(&command(&json).output().await.unwrap());
    assert_eq!(code, 0, "nothing skipped: {stdout}{err}");
    let report: Value = serde_json::from_str(&stdout).unwrap();
    let lines = report["experiments"].as_array().unwrap();
    assert_eq!(lines.len(), 5, "{stdout}");
    let line = |exp: &ExperimentFixture| {
        lines
            .iter()
            .find(|l| l["experiment_id"] == exp.id.as_str())
            .unwrap_or_else(|| panic!("{} in {stdout}", exp.id))
    };
    // Largest reclaimable first.
    assert_eq!(lines[0]["experiment_id"], top1.id.as_str(), "{stdout}");
    let problems = |exp| line(exp)["problems"].to_string();
    assert!(problems(&foreign).contains("foreign"), "{stdout}");
    assert!(problems(&no_metric).contains("accuracy"), "{stdout}");
    assert_eq!(
        line(&top1)["policy_sources"]["experiment_tag"][0],
        "keep_top"
    );
    assert_eq!(line(&top1)["stored"]["models"], 4);
    let reclaim = &report["totals"]["reclaimable"];
    // Pruned: top1 all but 0.9; low2 (keeping the lowest two, 0.1 and 0.5) 0.9 and 0.7;
    // untagged (the settings' keep 1) all but 0.9.
    let doomed: Vec<&ModelRun> = top1_runs[1..]
        .iter()
        .chain([&low2_runs[0], &low2_runs[2]])
        .chain(&untagged_runs[1..])
        .collect();
    let (_, expected_bytes) = stored(&world, &doomed).await;
    assert_eq!(reclaim["models"], 3 + 2 + 3, "{stdout}");
    assert_eq!(reclaim["bytes"], expected_bytes, "{stdout}");
    let gauges = std::fs::read_to_string(&textfile).unwrap();
    std::fs::remove_file(&textfile).unwrap();
    assert!(
        gauges.contains(&format!(
            "model_pruner_report_reclaimable_bytes {expected_bytes}\n"
        )),
        "{gauges}"
    );

    // The CSV and the table say the same.
    let (code, csv, _) = outcome(
        &command(&["report", "--filter", &filter, "--csv"])
            .output()
            .await
            .unwrap(),
    );
    assert_eq!(code, 0);
    assert_eq!(csv.lines().count(), 1 + 5, "{csv}");

    // --all selects only experiments that opted in with a policy tag.
    let (code, stdout, err) = outcome(
        &command(&["sweep", "--all", "--dry-run"])
            .output()
            .await
            .unwrap(),
    );
    assert_eq!(code, 0, "{err}");
    for opted in [&top1, &low2, &foreign, &no_metric] {
        assert!(
            stdout.contains(&format!("experiment {} (", opted.id)),
            "{stdout}"
        );
    }
    assert!(
        !stdout.contains(&format!("experiment {} (", untagged.id)),
        "{stdout}"
    );

    // The sweep of the filter, carried out by a worker, frees what the report said.
    let swept: Vec<&ModelRun> = top1_runs
        .iter()
        .chain(&low2_runs)
        .chain(&untagged_runs)
        .collect();
    let before = stored(&world, &swept).await;
    let app = TestApp::spawn(s.clone()).await;
    let (code, stdout, err) = outcome(
        &command(&["sweep", "--filter", &filter, "--rate", "50"])
            .output()
            .await
            .unwrap(),
    );
    assert_eq!(code, 0, "{stdout}{err}");
    assert!(
        stdout.contains("published 5 experiment.prune events"),
        "{stdout}"
    );
    world
        .wait_pruned(&top1_runs, &[0], Duration::from_secs(60))
        .await;
    world
        .wait_pruned(&low2_runs, &[1, 3], Duration::from_secs(60))
        .await;
    world
        .wait_pruned(&untagged_runs, &[0], Duration::from_secs(60))
        .await;
    let after = stored(&world, &swept).await;
    assert_eq!(
        before.1 - after.1,
        expected_bytes,
        "freed what the report said"
    );
    world.assert_kept(&foreign_runs, &[0, 1, 2, 3]).await;
    world.assert_kept(&no_metric_runs, &[0, 1]).await;
    app.cleanup().await;
}

#[tokio::test]
async fn a_filter_mlflow_cannot_read_is_a_usage_error_naming_it() {
    let s = settings();
    for command in ["report", "sweep"] {
        let args = [command, "--filter", "tags.team === 'nlp'"];
        let (code, _, err) = outcome(&cli(&s, &args).output().await.unwrap());
        assert_eq!(code, 2, "{command}: {err}");
        assert!(err.contains("--filter \"tags.team === 'nlp'\""), "{err}");
    }
}
