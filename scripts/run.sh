#!/usr/bin/env bash
# Runs model-pruner against the local stack: starts RabbitMQ, MLflow and the S3 store if needed,
# exports their settings and starts the worker (or the subcommand given as arguments).
#   scripts/run.sh                      # the worker
#   scripts/run.sh demo                 # a small experiment pruned end to end (scripts/demo.sh)
#   scripts/run.sh plan --experiment-id 1
# The binary is cargo's dev build, the one scripts/test.sh builds too (the Docker image and
# scripts/bench.sh use release builds); it compiles while the stack installs and starts.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

log() { printf '[run] %s\n' "$*" >&2; }

mkdir -p target
log "cargo build --bin model-pruner (in the background; log target/run-build.log)"
cargo build --bin model-pruner >target/run-build.log 2>&1 &
build=$!
trap 'kill "$build" 2>/dev/null || true' INT TERM
scripts/stack.sh up
if ! wait "$build"; then
  tail -n 50 target/run-build.log >&2
  log "the build failed"
  exit 1
fi
eval "$(scripts/stack.sh env)"
# The stack's bucket is "mlflow"; the worker's metrics listener stays on loopback here.
export MODEL_PRUNER__METRICS__LISTEN="${MODEL_PRUNER__METRICS__LISTEN:-127.0.0.1:9464}"
export MODEL_PRUNER_BIN="$PWD/target/debug/model-pruner"

if [[ $# -eq 0 ]]; then
  set -- worker
fi
if [[ "$1" == demo ]]; then
  exec scripts/demo.sh
fi
exec "$MODEL_PRUNER_BIN" "$@"
