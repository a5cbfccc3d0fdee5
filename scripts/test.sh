#!/usr/bin/env bash
# The project's test command (what README shows and .ci/run calls):
# starts the local stack, exports its settings, runs the whole test suite.
# Extra arguments go to `cargo nextest run` (e.g. a test-name filter).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

log() { printf '[test] %s\n' "$*" >&2; }

if [[ "${CI:-}" == "true" ]]; then
  # CI runs in a throw-away clone: stop the MLflow/Garage it started when done.
  trap 'scripts/stack.sh down || true' EXIT
fi
if [[ "${CI:-}" == "true" ]]; then
  log "cargo fmt --all -- --check"
  cargo fmt --all -- --check
fi

# The test build needs neither Garage nor MLflow: it runs while the stack installs and starts.
# cargo nextest, the bench smoke run and check-deploy then reuse it.
mkdir -p target
build_log=target/test-build.log
log "cargo test --workspace --all-targets --no-run (in the background; log $build_log)"
cargo test --workspace --all-targets --no-run >"$build_log" 2>&1 &
build=$!
trap 'kill "$build" 2>/dev/null || true' INT TERM
scripts/stack.sh up
if ! wait "$build"; then
  tail -n 50 "$build_log" >&2
  log "the test build failed"
  exit 1
fi
eval "$(scripts/stack.sh env)"
# Workers started by tests bind their metrics listener to a free port, never 9464.
export MODEL_PRUNER__METRICS__LISTEN=127.0.0.1:0

if [[ "${CI:-}" == "true" ]]; then
  log "cargo clippy --all-targets -- -D warnings"
  cargo clippy --all-targets -- -D warnings
fi

if ! cargo nextest --version >/dev/null 2>&1; then
  log "installing cargo-nextest"
  cargo install cargo-nextest --locked
fi

log "scripts/check-deploy.sh"
scripts/check-deploy.sh
log "scripts/check-monitoring.sh"
SKIP_CARGO=1 scripts/check-monitoring.sh

log "benchmark smoke run (tiny sizes; no timing is asserted)"
cargo test --bench pruner -- --smoke --out target/bench/smoke

# Tests named broker_wide change RabbitMQ's own settings (a short consumer_timeout): they run
# on their own, after the rest, so no other test's channel is opened under those settings.
status=0
log "cargo nextest run --workspace --all-targets --no-fail-fast -E 'not test(/broker_wide/)' $*"
cargo nextest run --workspace --all-targets --no-fail-fast --no-tests=pass \
  -E 'not test(/broker_wide/)' "$@" || status=$?
log "cargo nextest run --workspace --all-targets --no-fail-fast -E 'test(/broker_wide/)' $*"
cargo nextest run --workspace --all-targets --no-fail-fast --no-tests=pass \
  -E 'test(/broker_wide/)' "$@" || status=$?
exit "$status"
