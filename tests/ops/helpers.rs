//! Isolated settings (random exchange and queue names), a broker connection to set up and
//! inspect queues, workers run in-process, and the `model-pruner` binary run with the same
//! names through `MODEL_PRUNER__BROKER__*`.

use std::process::Output;
use std::time::Duration;

use model_pruner::settings::Settings;
use tokio::process::Command;

use crate::support::app;
pub use crate::support::app::{TestApp, bodies, header};

/// Settings with unique names and small delays; `MODEL_PRUNER__*` from the environment apply.
pub fn settings() -> Settings {
    app::quick_retries(app::settings("mp-ops", Duration::from_millis(500)))
}

/// Fresh settings on the broker and queues of `first`.
pub fn same_queues(first: &Settings) -> Settings {
    app::same_queues(settings(), first)
}

/// The `model-pruner` binary with the broker names of `settings` (the rest of its settings
/// come from the environment, as `scripts/stack.sh env` sets it).
pub fn cli(settings: &Settings, args: &[&str]) -> Command {
    let b = &settings.broker;
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_model-pruner"));
    cmd.args(args)
        .env("MODEL_PRUNER__BROKER__EXCHANGE", &b.exchange)
        .env("MODEL_PRUNER__BROKER__WORK_QUEUE", &b.work_queue)
        .env(
            "MODEL_PRUNER__BROKER__DEAD_LETTER_QUEUE",
            &b.dead_letter_queue,
        )
        .env(
            "MODEL_PRUNER__BROKER__DELAY_QUEUE_PREFIX",
            &b.delay_queue_prefix,
        )
        .env("MODEL_PRUNER__RETRY__DELAYS", delays(settings))
        .env("MODEL_PRUNER__LOG__FORMAT", "pretty")
        .env("RUST_LOG", "off")
        .kill_on_drop(true);
    cmd
}

/// `retry.delays` as the environment writes them: `500ms,1m`.
fn delays(settings: &Settings) -> String {
    settings
        .retry
        .delays
        .iter()
        .map(|d| {
            humantime_serde::re::humantime::format_duration(**d)
                .to_string()
                .replace(' ', "")
        })
        .collect::<Vec<_>>()
        .join(",")
}

/// Runs the binary to completion.
pub async fn run_cli(settings: &Settings, args: &[&str]) -> Output {
    let out = cli(settings, args)
        .output()
        .await
        .expect("the model-pruner binary runs");
    if std::env::var_os("TEST_LOG").is_some() {
        eprintln!(
            "model-pruner {args:?}: {}\n{}{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    out
}

/// The exit code, stdout and stderr of a finished run.
pub fn outcome(out: &Output) -> (i32, String, String) {
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}
