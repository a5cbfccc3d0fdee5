#!/usr/bin/env bash
# The product at work on the local stack, in about a minute: a training script logs six runs
# with the real mlflow client (the worst one's model registered), model-pruner prints its plan,
# a worker starts, the "pipeline" publishes run.finished for each run, and once the worker has
# handled them this prints what was deleted, kept and freed.
#
#   scripts/run.sh demo          # starts the stack, builds, runs this
#
# Needs the stack's settings in the environment (scripts/run.sh exports them). MODEL_PRUNER_BIN
# picks the binary (scripts/run.sh sets its dev build; otherwise cargo builds one);
# MODEL_PRUNER__BROKER__* the queues.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
: "${MODEL_PRUNER_PYTHON:?run it as scripts/run.sh demo (the stack settings are missing)}"

step() { printf '\n== %s\n' "$*"; }
python() { "$MODEL_PRUNER_PYTHON" "$@"; }

bin="${MODEL_PRUNER_BIN:-}"
if [[ -z "$bin" ]]; then
  cargo build --quiet --bin model-pruner
  bin=target/debug/model-pruner
fi
work="$(mktemp -d)"
worker=""
cleanup() {
  if [[ -n "$worker" ]]; then kill -TERM "$worker" 2>/dev/null || true; wait "$worker" 2>/dev/null || true; fi
  rm -rf "$work"
}
trap cleanup EXIT

step "1. A training script logs six runs with the mlflow client; the worst model is registered"
if ! python scripts/demo/log_experiment.py >"$work/logged" 2>"$work/logged.err"; then
  cat "$work/logged.err" >&2
  exit 1
fi
tail -n 1 "$work/logged" >"$work/runs.json"
exp="$(python -c 'import json,sys; print(json.load(open(sys.argv[1]))["experiment_id"])' "$work/runs.json")"
python scripts/demo/sizes.py "$work/runs.json" >"$work/before.json"
echo "experiment $exp; its tags ask to keep the top 2 by accuracy"

step "2. model-pruner plan --experiment-id $exp (changes nothing)"
"$bin" plan --experiment-id "$exp"

step "3. A worker starts, and the pipeline publishes one run.finished per run"
port="$(python -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')"
MODEL_PRUNER__METRICS__LISTEN="127.0.0.1:$port" MODEL_PRUNER__LOG__FORMAT=pretty \
  "$bin" worker >"$work/worker.log" 2>&1 &
worker=$!
for _ in $(seq 1 60); do
  curl -sf "http://127.0.0.1:$port/readyz" >/dev/null && break
  kill -0 "$worker" 2>/dev/null || { cat "$work/worker.log" >&2; echo "the worker stopped" >&2; exit 1; }
  sleep 0.5
done
curl -sf "http://127.0.0.1:$port/readyz" >/dev/null || { cat "$work/worker.log" >&2; exit 1; }
python -c 'import json,sys; [print(r["run_id"]) for r in json.load(open(sys.argv[1]))["runs"]]' \
  "$work/runs.json" >"$work/run_ids"
while read -r run; do
  "$bin" publish run-finished --experiment-id "$exp" --run-id "$run"
done <"$work/run_ids"

step "4. Waiting for the worker to handle the six events"
settled() {
  curl -sf "http://127.0.0.1:$port/metrics" |
    awk '/^model_pruner_messages_finished_total/ { n += $NF } END { print n + 0 }'
}
for _ in $(seq 1 120); do
  [[ "$(settled)" -ge 6 ]] && break
  sleep 0.5
done
if [[ "$(settled)" -lt 6 ]]; then
  cat "$work/worker.log" >&2
  echo "the worker did not handle the events within a minute" >&2
  exit 1
fi
echo "handled $(settled) events (model_pruner_messages_finished_total on the worker's /metrics)"

step "5. What model-pruner did"
python scripts/demo/report.py "$work/runs.json" "$work/before.json"
