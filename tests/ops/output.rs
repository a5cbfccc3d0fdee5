//! What a person reads from `plan` and `prune`: rounded metrics, sizes in units, the policy
//! once with its source, rows that say what happened, a JSON shape that reads well (errors
//! included), experiments by name, and a real prune that asks first on a terminal.

use serde_json::Value;

use crate::helpers::{cli, outcome, run_cli, settings};
use crate::support::world::{Layout, ModelRun, World};

/// An experiment of four classic runs (1 file each) whose metrics print long as floats.
async fn experiment(
    world: &World,
) -> (
    crate::support::mlflow_fixtures::ExperimentFixture,
    Vec<ModelRun>,
) {
    let exp = world.experiment().await;
    // 0.1 + 0.2 is 0.30000000000000004 as a float.
    let values = [0.9, 0.1 + 0.2, 0.2, 0.1];
    let runs = world
        .ranked_runs_with_files(&exp, Layout::Classic, &values, |_| 1)
        .await;
    (exp, runs)
}

#[tokio::test]
async fn plan_and_prune_print_what_a_person_reads_and_json_a_script_reads() {
    let world = World::new("ops-output");
    let (exp, runs) = experiment(&world).await;
    let s = settings();
    let id = exp.id.as_str();

    let plan = ["plan", "--experiment-id", id, "--keep-top", "1"];
    let (code, stdout, err) = outcome(&run_cli(&s, &plan).await);
    assert_eq!(code, 0, "{stdout}{err}");
    let header: Vec<&str> = stdout.lines().take(2).collect();
    assert!(
        header[0].contains(&format!("{id} ({:?})", exp.name)),
        "{stdout}"
    );
    assert!(header[0].contains("dry run"), "{stdout}");
    assert_eq!(
        header[1], "policy: accuracy max, keep_top 1 (from keep_top: options; the rest: settings)",
        "{stdout}"
    );
    assert!(stdout.contains(" 0.3 "), "rounded: {stdout}");
    assert!(!stdout.contains("0.30000000000000004"), "{stdout}");
    assert!(
        !stdout.contains("by accuracy max"),
        "the policy once: {stdout}"
    );
    let would = stdout
        .lines()
        .filter(|l| l.contains("  would delete  "))
        .count();
    assert_eq!(would, 3, "{stdout}");
    let summary = stdout
        .lines()
        .find(|l| l.contains("would free"))
        .unwrap_or_default();
    assert!(
        summary.contains("4 ranked: 1 keep, 3 would delete; would free 3 models, 3 objects, "),
        "{stdout}"
    );
    assert!(
        summary.ends_with(" B") || summary.ends_with("KiB"),
        "bytes in units: {summary}"
    );

    let mut json_plan = plan.to_vec();
    json_plan.push("--json");
    let (code, stdout, err) = outcome(&run_cli(&s, &json_plan).await);
    assert_eq!(code, 0, "{err}");
    let report: Value = serde_json::from_str(&stdout).expect("one JSON document");
    assert_eq!(report["experiment_name"], exp.name.as_str());
    assert_eq!(report["policy_sources"]["event"][0], "keep_top");
    let first = &report["ranking"]["runs"][0];
    assert_eq!(first["decision"], "keep", "{first}");
    assert_eq!(first["outcome"], "keep", "{first}");
    assert_eq!(first["run"]["metric"], 0.9);
    let location = &report["planned"][0]["locations"][0];
    assert!(
        location["location"].as_str().unwrap().starts_with("s3://"),
        "{location}"
    );
    assert_eq!(report["freed"]["models"], 3);

    // Not a terminal: a real prune asks nothing, and its rows say what happened.
    let prune = ["prune", "--experiment-id", id, "--keep-top", "1"];
    let (code, stdout, err) = outcome(&run_cli(&s, &prune).await);
    assert_eq!(code, 0, "{stdout}{err}");
    let deleted = stdout.lines().filter(|l| l.contains("  deleted  ")).count();
    assert_eq!(deleted, 3, "{stdout}");
    assert!(!stdout.contains("would"), "{stdout}");
    assert!(
        stdout.contains("4 ranked: 1 kept, 3 deleted; freed 3 models, 3 objects, "),
        "{stdout}"
    );
    for run in &runs[1..] {
        assert_eq!(world.objects(run).await, 0);
    }
}

#[tokio::test]
async fn failures_under_json_are_json_and_usage_errors_exit_2() {
    let s = settings();
    let (code, stdout, err) =
        outcome(&run_cli(&s, &["plan", "--experiment-id", "987654321", "--json"]).await);
    assert_eq!(code, 1, "{err}");
    let error: Value = serde_json::from_str(&stdout).expect("a JSON error on stdout");
    assert_eq!(error["error"]["exit_code"], 1, "{stdout}");
    assert!(
        error["error"]["message"]
            .as_str()
            .unwrap()
            .contains("987654321"),
        "{stdout}"
    );
    assert!(err.contains("987654321"), "a person still reads it: {err}");

    let bad = ["plan", "--experiment-id", "1", "--grace", "2", "--json"];
    let (code, stdout, _) = outcome(&run_cli(&s, &bad).await);
    assert_eq!(code, 2);
    let error: Value = serde_json::from_str(&stdout).expect("a JSON usage error");
    assert!(
        error["error"]["message"]
            .as_str()
            .unwrap()
            .contains("--grace"),
        "{stdout}"
    );
}

#[tokio::test]
async fn experiments_are_found_by_name_and_a_metric_typo_lists_the_metrics() {
    let world = World::new("ops-by-name");
    let (exp, runs) = experiment(&world).await;
    let s = settings();
    let by_name = ["plan", "--experiment-name", exp.name.as_str(), "--json"];
    let (code, stdout, err) = outcome(&run_cli(&s, &by_name).await);
    assert_eq!(code, 0, "{err}");
    let report: Value = serde_json::from_str(&stdout).unwrap();
    assert_eq!(report["experiment_id"], exp.id.as_str());

    let missing = ["plan", "--experiment-name", "no such experiment here"];
    let (code, _, err) = outcome(&run_cli(&s, &missing).await);
    assert_eq!(code, 1);
    assert!(err.contains("no experiment is named"), "{err}");

    // A mistyped metric: the error lists what the runs log.
    let typo = [
        "plan",
        "--experiment-id",
        exp.id.as_str(),
        "--metric",
        "acuracy",
    ];
    let (code, _, err) = outcome(&run_cli(&s, &typo).await);
    assert_eq!(code, 1);
    assert!(err.contains("the latest runs log: accuracy"), "{err}");

    let both = ["plan", "--experiment-name", "x", "--experiment-id", "1"];
    let (code, _, _) = outcome(&run_cli(&s, &both).await);
    assert_eq!(code, 2, "one or the other");
    for run in &runs {
        assert_eq!(world.objects(run).await, 1, "a plan deletes nothing");
    }
}

/// `model-pruner args...` on a terminal (util-linux `script` gives it one), `answer` typed in.
async fn on_a_terminal(
    s: &model_pruner::settings::Settings,
    args: &[&str],
    answer: &str,
) -> (i32, String) {
    use tokio::io::AsyncWriteExt;
    let line = std::iter::once(env!("CARGO_BIN_EXE_model-pruner"))
        .chain(args.iter().copied())
        .collect::<Vec<_>>()
        .join(" ");
    let template = cli(s, &[]);
    let mut cmd = tokio::process::Command::new("script");
    cmd.args(["-qefc", &line, "/dev/null"])
        .envs(
            template
                .as_std()
                .get_envs()
                .filter_map(|(k, v)| Some((k.to_owned(), v?.to_owned()))),
        )
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .kill_on_drop(true);
    let mut child = cmd.spawn().expect("script runs");
    let mut stdin = child.stdin.take().unwrap();
    stdin.write_all(answer.as_bytes()).await.unwrap();
    drop(stdin);
    let out = child.wait_with_output().await.unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
    )
}

#[tokio::test]
async fn a_real_prune_on_a_terminal_shows_the_plan_and_asks_first() {
    let world = World::new("ops-confirm");
    let (exp, runs) = experiment(&world).await;
    let s = settings();
    let prune = [
        "prune",
        "--experiment-id",
        exp.id.as_str(),
        "--keep-top",
        "1",
    ];

    let (code, screen) = on_a_terminal(&s, &prune, "n\n").await;
    assert_eq!(code, 1, "{screen}");
    assert!(screen.contains("would delete"), "the plan first: {screen}");
    assert!(
        screen.contains("delete 3 models (3 objects, ") && screen.contains("[y/N]"),
        "{screen}"
    );
    assert!(screen.contains("nothing deleted"), "{screen}");
    for run in &runs {
        assert_eq!(world.objects(run).await, 1, "declined: nothing deleted");
    }

    let (code, screen) = on_a_terminal(&s, &prune, "y\n").await;
    assert_eq!(code, 0, "{screen}");
    assert!(screen.contains("freed 3 models"), "{screen}");
    assert!(
        screen.contains("requests to MLflow") && screen.contains("deleted and marked"),
        "progress while the pass runs: {screen}"
    );
    world.assert_kept(&runs, &[0]).await;

    // --yes asks nothing, even on a terminal.
    let mut yes = prune.to_vec();
    yes.push("--yes");
    let (code, screen) = on_a_terminal(&s, &yes, "").await;
    assert_eq!(code, 0, "{screen}");
    assert!(!screen.contains("[y/N]"), "{screen}");
}
