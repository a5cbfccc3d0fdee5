//! `scripts/run.sh demo` (scripts/demo.sh), the first thing README's quick start runs: a small
//! experiment logged with the real mlflow client is pruned end to end by a worker, and the
//! report says so.

use crate::helpers::{cli, outcome, settings};

#[tokio::test]
async fn the_demo_prunes_its_experiment_and_says_what_it_did() {
    let s = settings();
    // The environment cli() gives the binary: this test's queue names.
    let env: Vec<_> = cli(&s, &[])
        .as_std()
        .get_envs()
        .filter_map(|(k, v)| Some((k.to_owned(), v?.to_owned())))
        .collect();
    let out = tokio::process::Command::new(concat!(env!("CARGO_MANIFEST_DIR"), "/scripts/demo.sh"))
        .envs(env)
        .env("MODEL_PRUNER_BIN", env!("CARGO_BIN_EXE_model-pruner"))
        .output()
        .await
        .expect("scripts/demo.sh runs");
    let (code, stdout, stderr) = outcome(&out);
    assert_eq!(code, 0, "{stdout}{stderr}");
    let count = |outcome: &str| {
        stdout
            .lines()
            .filter(|l| l.starts_with("fine-tune-") && l.contains(&format!(" {outcome} ")))
            .count()
    };
    assert_eq!(
        (count("kept"), count("pruned"), count("protected")),
        (2, 3, 1),
        "{stdout}"
    );
    assert!(stdout.contains("(3 of 6 models deleted)"), "{stdout}");
}
