#!/usr/bin/env bash
# Runs model-pruner against the local stack: starts RabbitMQ, MLflow and the S3 store if needed,
# exports their settings and starts the worker (or the subcommand given as arguments).
#   scripts/run.sh                      # the worker
#   scripts/run.sh plan --experiment-id 1
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

scripts/stack.sh up
eval "$(scripts/stack.sh env)"
# The stack's bucket is "mlflow"; the worker's metrics listener stays on loopback here.
export MODEL_PRUNER__METRICS__LISTEN="${MODEL_PRUNER__METRICS__LISTEN:-127.0.0.1:9464}"

if [[ $# -eq 0 ]]; then
  set -- worker
fi
exec cargo run --release --quiet -- "$@"
