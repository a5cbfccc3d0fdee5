//! `config check --connect`: each system tried as the worker will use it, a line each, and a
//! failure naming the settings to look at.

use crate::helpers::{TestApp, cli, outcome, settings};

#[tokio::test]
async fn the_local_stack_passes_and_a_wrong_tracking_uri_or_store_key_is_named() {
    let app = TestApp::new(settings()).await;
    let s = app.settings();
    let args = ["config", "check", "--connect"];

    let out = cli(s, &args).output().await.unwrap();
    let (code, stdout, err) = outcome(&out);
    assert_eq!(code, 0, "{stdout}{err}");
    for line in [
        "# mlflow: ok",
        "# store: ok: bucket \"mlflow\" can be listed",
        "# broker: ok",
    ] {
        assert!(stdout.contains(line), "{line} in {stdout}");
    }

    // A wrong base path: the server answers, with a page that is not MLflow's API.
    let base = s
        .mlflow
        .tracking_uri
        .expose()
        .as_str()
        .trim_end_matches('/')
        .to_owned();
    let out = cli(s, &args)
        .env(
            "MODEL_PRUNER__MLFLOW__TRACKING_URI",
            format!("{base}/mlflow"),
        )
        .env("MODEL_PRUNER__STORE__SECRET_ACCESS_KEY", "not-the-secret")
        .output()
        .await
        .unwrap();
    let (code, stdout, err) = outcome(&out);
    assert_eq!(code, 1, "{stdout}{err}");
    let line = |system: &str| {
        stdout
            .lines()
            .find(|l| l.starts_with(&format!("# {system}: FAILED")))
            .unwrap_or_else(|| panic!("no failed {system} line in {stdout}"))
            .to_owned()
    };
    let mlflow = line("mlflow");
    assert!(
        mlflow.contains("base path") && mlflow.contains("mlflow.tracking_uri"),
        "{mlflow}"
    );
    let store = line("store");
    assert!(store.contains("store.access_key_id"), "{store}");
    assert!(
        !stdout.contains("not-the-secret"),
        "secrets are never printed"
    );
    assert!(stdout.contains("# broker: ok"), "{stdout}");
    app.cleanup().await;
}

#[tokio::test]
async fn completions_are_printed_without_settings() {
    let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_model-pruner"))
        .args(["completions", "bash"])
        .env("MODEL_PRUNER__BROKER__URL", "not a url")
        .output()
        .await
        .unwrap();
    let (code, stdout, err) = outcome(&out);
    assert_eq!(code, 0, "{err}");
    for word in ["model-pruner", "dlq", "migrate-queues", "--experiment-id"] {
        assert!(stdout.contains(word), "{word} in the bash completions");
    }
}
