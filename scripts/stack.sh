#!/usr/bin/env bash
# Local service stack for model-pruner: RabbitMQ, an MLflow tracking server and
# a Garage S3 store, all on loopback. See `scripts/stack.sh --help`.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
STACK="${MODEL_PRUNER_STACK_DIR:-$ROOT/.stack}"
CACHE="${MODEL_PRUNER_CACHE:-$HOME/.cache/model-pruner}"
VENV="$CACHE/venv"
# MLflow 2.x in a virtualenv of its own (2.22 is the last 2.x line; it needs SQLAlchemy < 2.1).
VENV2="$CACHE/venv-mlflow2"

# Pinned tool versions (the venv / binary are cached in $CACHE and ~/.cargo/bin).
MLFLOW_SPEC="${MODEL_PRUNER_MLFLOW_SPEC:-mlflow==3.17.2}"
BOTO3_SPEC="${MODEL_PRUNER_BOTO3_SPEC:-boto3}"
# pika publishes what lapin refuses to send (header names that are not UTF-8) in the tests.
PIKA_SPEC="${MODEL_PRUNER_PIKA_SPEC:-pika==1.3.2}"
# The PostgreSQL driver of MLflow's tracking store (production servers run on PostgreSQL).
PSYCOPG_SPEC="${MODEL_PRUNER_PSYCOPG_SPEC:-psycopg2-binary==2.9.13}"
MLFLOW2_SPEC="${MODEL_PRUNER_MLFLOW2_SPEC:-mlflow==2.22.5}"
SQLALCHEMY2_SPEC="sqlalchemy<2.1"
GARAGE_VERSION="2.5.0"

# Fixed, test-only credentials. Garage key ids are "GK" + 24 hex chars, secrets 64 hex chars.
S3_ACCESS_KEY_ID="GK31c2f218a2e44f485b94239e"
S3_SECRET_ACCESS_KEY="2cf13ed840a7e5823fba345fd1259e92343f40a37dc41b409a869f8ecb068e25"
S3_KEY_NAME="model-pruner"
S3_REGION="garage"
S3_BUCKETS=(mlflow foreign)
GARAGE_RPC_SECRET="1a8cfe839eb07f6690ce62af9e9e8616363ef17b52883058413af94086a0422f"
GARAGE_ADMIN_TOKEN="78b9b44bff619b87188c92a92e23c449"

HOST="127.0.0.1"
AMQP_PORT=5672
RABBIT_MGMT_PORT=15672
RABBIT_PROMETHEUS_PORT=15692
MLFLOW_PORT=5000
# A second tracking server with proxied artifacts (mlflow-artifacts:/ URIs), for the tests of
# how the pruner maps them; its own database, artifacts under s3://mlflow/proxied/.
PROXIED_MLFLOW_PORT=5001
PROXIED_DESTINATION="s3://mlflow/proxied"
# An MLflow 2.x tracking server (no logged-models API), artifacts in s3://mlflow/v2/.
MLFLOW2_PORT=5002
S3_PORT=9000
GARAGE_RPC_PORT=3901
GARAGE_ADMIN_PORT=3903

AMQP_URL="amqp://guest:guest@$HOST:$AMQP_PORT/%2f"
MLFLOW_URL="http://$HOST:$MLFLOW_PORT"
PROXIED_MLFLOW_URL="http://$HOST:$PROXIED_MLFLOW_PORT"
MLFLOW2_URL="http://$HOST:$MLFLOW2_PORT"
S3_URL="http://$HOST:$S3_PORT"

GARAGE_CONF="$STACK/garage/garage.toml"
GARAGE_NODE_ID=""
LOGS="$STACK/logs"
RUN="$STACK/run"

log() { printf '[stack] %s\n' "$*" >&2; }
die() {
  printf '[stack] ERROR: %s\n' "$*" >&2
  exit 1
}

usage() {
  cat <<EOF
Usage: scripts/stack.sh COMMAND

Local services for model-pruner, on loopback:
  RabbitMQ  amqp://$HOST:$AMQP_PORT (guest/guest), management http://$HOST:$RABBIT_MGMT_PORT, metrics http://$HOST:$RABBIT_PROMETHEUS_PORT
  MLflow    $MLFLOW_URL (tracking store PostgreSQL on $PG_HOST:$PG_PORT with $MLFLOW_PG_WORKERS server
            workers, artifacts in s3://mlflow/pg/; sqlite and s3://mlflow/ when no PostgreSQL
            answers; MODEL_PRUNER_MLFLOW_BACKEND=sqlite|postgresql chooses)
            $PROXIED_MLFLOW_URL (proxied artifacts: mlflow-artifacts:/ in $PROXIED_DESTINATION)
            $MLFLOW2_URL (${MLFLOW2_SPEC#mlflow==}, sqlite backend, artifacts in s3://mlflow/v2/)
  Garage    $S3_URL (S3 API, region $S3_REGION, buckets: ${S3_BUCKETS[*]})

Commands:
  up       install what is missing, start what is not running, wait until all answer
  down     stop MLflow and Garage (RabbitMQ is the machine's service and stays up)
  status   one line per service: up/down and address
  env      print export lines; use: eval "\$(scripts/stack.sh env)"
  help     this message

Data, logs, pid files and configs: $STACK  (logs in $LOGS)
Install cache: \${MODEL_PRUNER_CACHE:-\$HOME/.cache/model-pruner} = $CACHE
  (MLflow virtualenvs: $VENV and $VENV2; Garage: cargo install garage --version $GARAGE_VERSION)
EOF
}

# ---------------------------------------------------------------- helpers

tcp_open() { timeout 2 bash -c ": </dev/tcp/$1/$2" 2>/dev/null; }

# HTTP status code of a GET ("000" when nothing answers).
http_code() {
  local code
  code="$(curl -s -o /dev/null -w '%{http_code}' --max-time 3 "$@" 2>/dev/null)" || true
  printf '%s' "${code:-000}"
}

# wait_until NAME TIMEOUT_SECONDS LOGFILE COMMAND...: poll COMMAND until it succeeds.
# With WAIT_PIDFILE=path set, fail at once if that process dies.
wait_until() {
  local name="$1" timeout="$2" logfile="$3"
  shift 3
  local deadline=$((SECONDS + timeout)) out
  out="$(mktemp)"
  until "$@" >"$out" 2>&1; do
    local why=""
    if [[ -n "${WAIT_PIDFILE:-}" ]] && ! pid_alive "$WAIT_PIDFILE"; then
      why="the process exited"
    elif ((SECONDS >= deadline)); then
      why="timed out after ${timeout}s"
    fi
    if [[ -n "$why" ]]; then
      log "$why waiting for $name"
      if [[ -s "$out" ]]; then
        log "last output of the check ($*):"
        tail -n 15 "$out" >&2 || true
      fi
      if [[ -n "$logfile" && -f "$logfile" ]]; then
        log "last lines of $logfile:"
        tail -n 40 "$logfile" >&2 || true
      fi
      rm -f "$out"
      die "$name did not become ready"
    fi
    sleep 0.5
  done
  rm -f "$out"
}

pid_alive() {
  local pidfile="$1" pid
  [[ -f "$pidfile" ]] || return 1
  pid="$(cat "$pidfile" 2>/dev/null)" || return 1
  [[ "$pid" =~ ^[0-9]+$ ]] && kill -0 "$pid" 2>/dev/null
}

# start_daemon NAME LOGFILE COMMAND...: run in its own session, record the pid.
start_daemon() {
  local name="$1" logfile="$2"
  shift 2
  mkdir -p "$RUN" "$LOGS"
  printf '\n==== %s: starting %s\n' "$(date -Is)" "$*" >>"$logfile"
  # Close the lock fds (8, 9) so the daemon does not hold our flock forever.
  setsid nohup "$@" >>"$logfile" 2>&1 </dev/null 8>&- 9>&- &
  echo $! >"$RUN/$name.pid"
  log "$name started (pid $!, log $logfile)"
}

# stop_daemon NAME: TERM the process group from the pid file, KILL after 15s.
stop_daemon() {
  local name="$1" pidfile="$RUN/$1.pid" pid
  if ! pid_alive "$pidfile"; then
    rm -f "$pidfile"
    return 1
  fi
  pid="$(cat "$pidfile")"
  log "stopping $name (pid $pid)"
  kill -TERM -- "-$pid" 2>/dev/null || kill -TERM "$pid" 2>/dev/null || true
  local deadline=$((SECONDS + 15))
  while kill -0 "$pid" 2>/dev/null; do
    if ((SECONDS >= deadline)); then
      log "$name did not stop in 15s, killing"
      kill -KILL -- "-$pid" 2>/dev/null || kill -KILL "$pid" 2>/dev/null || true
      break
    fi
    sleep 0.2
  done
  rm -f "$pidfile"
}

# Serialise installs into the shared cache (several clones may run `up` at once).
# with_install_lock NAME CMD...: runs CMD holding $CACHE/install-NAME.lock, so clones running
# `up` at once install each tool once; different tools install side by side.
with_install_lock() {
  local name="$1"
  shift
  mkdir -p "$CACHE"
  (
    flock -w 3600 9 || die "could not lock $CACHE/install-$name.lock"
    "$@"
  ) 9>"$CACHE/install-$name.lock"
}

# install_tools: builds Garage and installs MLflow's virtualenv at the same time, when missing
# (a compile on the CPUs and a download-bound pip install do not wait for each other).
install_tools() {
  local pids=() failed=0 pid
  if ! garage_bin >/dev/null; then
    with_install_lock garage install_garage &
    pids+=("$!")
  fi
  if ! mlflow_installed; then
    with_install_lock mlflow install_mlflow &
    pids+=("$!")
  fi
  if ! mlflow2_installed; then
    with_install_lock mlflow2 install_mlflow2 &
    pids+=("$!")
  fi
  for pid in "${pids[@]}"; do
    wait "$pid" || failed=1
  done
  [[ "$failed" == 0 ]] || die "installing Garage or MLflow failed (logs in $CACHE)"
}

# ---------------------------------------------------------------- RabbitMQ

rabbit_up() { tcp_open "$HOST" "$AMQP_PORT"; }
rabbit_mgmt_up() { [[ "$(http_code -u guest:guest "http://$HOST:$RABBIT_MGMT_PORT/api/overview")" == 200 ]]; }
rabbit_prometheus_up() { [[ "$(http_code "http://$HOST:$RABBIT_PROMETHEUS_PORT/metrics")" == 200 ]]; }

ensure_rabbitmq() {
  if ! rabbit_up; then
    if ! command -v rabbitmq-server >/dev/null 2>&1; then
      log "installing rabbitmq-server (apt)"
      apt-get update -q >&2
      DEBIAN_FRONTEND=noninteractive apt-get install -y -q rabbitmq-server >&2
    fi
    if ! rabbit_up; then
      log "starting RabbitMQ (rabbitmq-server -detached)"
      rabbitmq-server -detached >&2 || true
      wait_until "RabbitMQ on $HOST:$AMQP_PORT" 120 /var/log/rabbitmq/startup_err \
        rabbitmq-diagnostics -q check_port_connectivity
    fi
  fi
  if ! rabbit_mgmt_up; then
    log "enabling rabbitmq_management"
    rabbitmq-plugins enable rabbitmq_management >&2
    wait_until "RabbitMQ management API on $HOST:$RABBIT_MGMT_PORT" 60 "" rabbit_mgmt_up
  fi
  # Queue depth and consumers for the dashboard check (tests/observability/dashboard.rs).
  if ! rabbit_prometheus_up; then
    log "enabling rabbitmq_prometheus"
    rabbitmq-plugins enable rabbitmq_prometheus >&2
    wait_until "RabbitMQ metrics on $HOST:$RABBIT_PROMETHEUS_PORT" 60 "" rabbit_prometheus_up
  fi
  log "RabbitMQ up: amqp://$HOST:$AMQP_PORT, management http://$HOST:$RABBIT_MGMT_PORT"
}

# ---------------------------------------------------------------- MLflow

mlflow_installed() {
  [[ -x "$VENV/bin/mlflow" && -f "$VENV/.model-pruner-installed" ]] &&
    [[ "$(cat "$VENV/.model-pruner-installed")" == "$MLFLOW_SPEC $BOTO3_SPEC $PIKA_SPEC $PSYCOPG_SPEC" ]]
}

install_mlflow() {
  mlflow_installed && return 0
  if [[ ! -x "$VENV/bin/python" ]]; then
    log "creating virtualenv $VENV"
    "${PYTHON:-python3}" -m venv "$VENV" >&2
  fi
  log "installing $MLFLOW_SPEC $BOTO3_SPEC $PIKA_SPEC $PSYCOPG_SPEC into $VENV (a few minutes; log $CACHE/mlflow-install.log)"
  if ! "$VENV/bin/pip" install -q "$MLFLOW_SPEC" "$BOTO3_SPEC" "$PIKA_SPEC" "$PSYCOPG_SPEC" >>"$CACHE/mlflow-install.log" 2>&1; then
    tail -n 30 "$CACHE/mlflow-install.log" >&2
    die "pip install of MLflow failed"
  fi
  "$VENV/bin/python" -c 'import mlflow, boto3, pika, psycopg2' || die "mlflow/boto3/pika/psycopg2 not importable after install"
  printf '%s' "$MLFLOW_SPEC $BOTO3_SPEC $PIKA_SPEC $PSYCOPG_SPEC" >"$VENV/.model-pruner-installed"
}

mlflow2_installed() {
  [[ -x "$VENV2/bin/mlflow" && -f "$VENV2/.model-pruner-installed" ]] &&
    [[ "$(cat "$VENV2/.model-pruner-installed")" == "$MLFLOW2_SPEC $SQLALCHEMY2_SPEC $BOTO3_SPEC" ]]
}

install_mlflow2() {
  mlflow2_installed && return 0
  if [[ ! -x "$VENV2/bin/python" ]]; then
    log "creating virtualenv $VENV2"
    "${PYTHON:-python3}" -m venv "$VENV2" >&2
  fi
  log "installing $MLFLOW2_SPEC into $VENV2 (a few minutes; log $CACHE/mlflow2-install.log)"
  if ! "$VENV2/bin/pip" install -q "$MLFLOW2_SPEC" "$SQLALCHEMY2_SPEC" "$BOTO3_SPEC" >>"$CACHE/mlflow2-install.log" 2>&1; then
    tail -n 30 "$CACHE/mlflow2-install.log" >&2
    die "pip install of MLflow 2.x failed"
  fi
  "$VENV2/bin/python" -c 'import mlflow, boto3' || die "mlflow 2.x/boto3 not importable after install"
  printf '%s' "$MLFLOW2_SPEC $SQLALCHEMY2_SPEC $BOTO3_SPEC" >"$VENV2/.model-pruner-installed"
}

# mlflow_answers URL: the tracking server at URL answers its health and search endpoints.
mlflow_answers() {
  [[ "$(http_code "$1/health")" == 200 ]] &&
    [[ "$(http_code "$1/api/2.0/mlflow/experiments/search?max_results=1")" == 200 ]]
}
mlflow_up() { mlflow_answers "$MLFLOW_URL"; }
proxied_mlflow_up() { mlflow_answers "$PROXIED_MLFLOW_URL"; }
mlflow2_up() { mlflow_answers "$MLFLOW2_URL"; }

# launch_mlflow_server NAME PORT URL ARGS...: start the server NAME unless it answers on URL
# or is still starting; with SERVER_VENV=$VENV2, the MLflow 2.x one.
launch_mlflow_server() {
  local name="$1" port="$2" url="$3"
  shift 3
  if mlflow_answers "$url"; then
    return 0
  fi
  if pid_alive "$RUN/$name.pid"; then
    log "$name (pid $(cat "$RUN/$name.pid")) is still starting"
    return 0
  fi
  if tcp_open "$HOST" "$port"; then
    die "port $port is taken by something that does not answer as MLflow ($url/health)"
  fi
  if [[ "${SERVER_VENV:-$VENV}" == "$VENV2" ]]; then
    mlflow2_installed || with_install_lock mlflow2 install_mlflow2
  else
    mlflow_installed || with_install_lock mlflow install_mlflow
  fi
  start_mlflow "$name" "$port" "$@"
}

# await_mlflow_server NAME URL
await_mlflow_server() {
  local name="$1" url="$2"
  if ! mlflow_answers "$url"; then
    WAIT_PIDFILE="$RUN/$name.pid" wait_until "$name on $url" 180 "$LOGS/$name.log" mlflow_answers "$url"
  fi
  log "$name up: $url"
}

# The tracking store of the 3.x servers: PostgreSQL with several server workers, as production
# servers run, when a PostgreSQL server answers on $PG_HOST:$PG_PORT (and psql is installed);
# sqlite with one server worker otherwise. MODEL_PRUNER_MLFLOW_BACKEND=sqlite|postgresql
# chooses. The choice is recorded when the servers start ($RUN/mlflow-backend), so `env` and
# `status` describe the servers that run, whatever answers later.
PG_HOST="${MODEL_PRUNER_PG_HOST:-127.0.0.1}"
PG_PORT="${MODEL_PRUNER_PG_PORT:-5432}"
PG_USER="${MODEL_PRUNER_PG_USER:-postgres}"
MLFLOW_PG_WORKERS="${MODEL_PRUNER_MLFLOW_WORKERS:-4}"

postgresql_answers() {
  command -v psql >/dev/null 2>&1 &&
    psql -h "$PG_HOST" -p "$PG_PORT" -U "$PG_USER" -d postgres -Atqc 'select 1' >/dev/null 2>&1
}

mlflow_backend() {
  case "${MODEL_PRUNER_MLFLOW_BACKEND:-}" in
    sqlite) printf 'sqlite' ;;
    postgresql)
      postgresql_answers ||
        die "MODEL_PRUNER_MLFLOW_BACKEND=postgresql: no PostgreSQL answers as $PG_USER on $PG_HOST:$PG_PORT (psql needed)"
      printf 'postgresql'
      ;;
    "")
      if [[ -s "$RUN/mlflow-backend" ]] && { pid_alive "$RUN/mlflow.pid" || pid_alive "$RUN/mlflow-proxied.pid"; }; then
        cat "$RUN/mlflow-backend"
      elif postgresql_answers; then
        printf 'postgresql'
      else
        printf 'sqlite'
      fi
      ;;
    *) die "MODEL_PRUNER_MLFLOW_BACKEND must be sqlite or postgresql" ;;
  esac
}

# backend_args NAME: --backend-store-uri (and --workers) of the 3.x server NAME; creates its
# PostgreSQL database on first use.
backend_args() {
  local name="$1" db
  if [[ "$(mlflow_backend)" == postgresql ]]; then
    db="mp_${name//-/_}"
    if [[ -z "$(psql -h "$PG_HOST" -p "$PG_PORT" -U "$PG_USER" -d postgres -Atqc \
      "select 1 from pg_database where datname = '$db'")" ]]; then
      log "creating PostgreSQL database $db"
      psql -h "$PG_HOST" -p "$PG_PORT" -U "$PG_USER" -d postgres -qc "create database $db" >&2
    fi
    printf '%s\n' --backend-store-uri "postgresql+psycopg2://$PG_USER@$PG_HOST:$PG_PORT/$db" --workers "$MLFLOW_PG_WORKERS"
  else
    printf '%s\n' --backend-store-uri "sqlite:///$STACK/mlflow/$name.db" --workers 1
  fi
}

# Artifact roots by tracking store: a PostgreSQL database outlives .stack/ and starts its
# experiment ids at 1 again, so its servers write under roots of their own, never onto files a
# sqlite-era server of the same .stack/ left under the same ids.
artifact_root() { [[ "$(mlflow_backend)" == postgresql ]] && printf 's3://mlflow/pg/' || printf 's3://mlflow/'; }
proxied_destination() { [[ "$(mlflow_backend)" == postgresql ]] && printf '%s-pg' "$PROXIED_DESTINATION" || printf '%s' "$PROXIED_DESTINATION"; }

ensure_mlflow() {
  local main proxied root destination backend
  mlflow_backend >/dev/null # fails here, not in a subshell below, when PostgreSQL is asked for and absent
  backend="$(mlflow_backend)"
  if [[ -s "$RUN/mlflow-backend" && "$(cat "$RUN/mlflow-backend")" != "$backend" ]] &&
    { pid_alive "$RUN/mlflow.pid" || pid_alive "$RUN/mlflow-proxied.pid"; }; then
    die "MLflow runs on $(cat "$RUN/mlflow-backend"), not $backend: scripts/stack.sh down first"
  fi
  log "MLflow 3.x tracking store: $backend"
  root="$(artifact_root)"
  destination="$(proxied_destination)"
  mapfile -t main < <(backend_args mlflow)
  mapfile -t proxied < <(backend_args mlflow-proxied)
  # --no-serve-artifacts: clients and the pruner talk to S3 directly; runs get
  # artifact URIs s3://mlflow/<experiment_id>/<run_id>/artifacts (no mlflow-artifacts:).
  launch_mlflow_server mlflow "$MLFLOW_PORT" "$MLFLOW_URL" \
    "${main[@]}" --app-name model-pruner-stack \
    --default-artifact-root "$root" \
    --no-serve-artifacts
  # Proxied artifacts, as most production servers run: runs get artifact URIs
  # mlflow-artifacts:/<experiment_id>/<run_id>/artifacts, stored under $PROXIED_DESTINATION.
  launch_mlflow_server mlflow-proxied "$PROXIED_MLFLOW_PORT" "$PROXIED_MLFLOW_URL" \
    "${proxied[@]}" --app-name model-pruner-stack \
    --artifacts-destination "$destination"
  printf '%s\n' "$backend" >"$RUN/mlflow-backend"
  # MLflow 2.x, as many teams still run it: classic models only, no logged-models API.
  SERVER_VENV="$VENV2" launch_mlflow_server mlflow2 "$MLFLOW2_PORT" "$MLFLOW2_URL" \
    --backend-store-uri "sqlite:///$STACK/mlflow/mlflow2.db" \
    --default-artifact-root "s3://mlflow/v2/" \
    --no-serve-artifacts --workers 1
  await_mlflow_server mlflow "$MLFLOW_URL"
  await_mlflow_server mlflow-proxied "$PROXIED_MLFLOW_URL"
  await_mlflow_server mlflow2 "$MLFLOW2_URL"
}

# start_mlflow NAME PORT ARGS...
start_mlflow() {
  local name="$1" port="$2"
  shift 2
  mkdir -p "$STACK/mlflow"
  # MLFLOW_SERVER_ENABLE_JOB_EXECUTION=false: skip the huey job runner (8 extra
  # processes for GenAI jobs the pruner never uses). PYTHONPATH: the app of --app-name
  # model-pruner-stack (scripts/mlflow-app/model_pruner_stack_app.py says why).
  start_daemon "$name" "$LOGS/$name.log" env \
    MLFLOW_S3_ENDPOINT_URL="$S3_URL" \
    AWS_ACCESS_KEY_ID="$S3_ACCESS_KEY_ID" \
    AWS_SECRET_ACCESS_KEY="$S3_SECRET_ACCESS_KEY" \
    AWS_DEFAULT_REGION="$S3_REGION" \
    MLFLOW_SERVER_ENABLE_JOB_EXECUTION=false \
    PYTHONPATH="$ROOT/scripts/mlflow-app" \
    "${SERVER_VENV:-$VENV}/bin/mlflow" server \
    --host "$HOST" --port "$port" \
    "$@"
}

# ---------------------------------------------------------------- Garage

garage_bin() {
  if command -v garage >/dev/null 2>&1; then
    command -v garage
  elif [[ -x "${CARGO_HOME:-$HOME/.cargo}/bin/garage" ]]; then
    printf '%s' "${CARGO_HOME:-$HOME/.cargo}/bin/garage"
  else
    return 1
  fi
}

# Garage is a test fixture, built for build time: only the sqlite metadata engine the config
# uses (no lmdb, k2v or metrics), optimisation level 1 and many codegen units, in a target
# folder of its own under $CACHE (kept until the install succeeds, so a failed one resumes).
install_garage() {
  garage_bin >/dev/null && return 0
  log "installing garage $GARAGE_VERSION with cargo (about 6 minutes on 2 cores; log $CACHE/garage-install.log)"
  if ! CARGO_PROFILE_RELEASE_OPT_LEVEL=1 CARGO_PROFILE_RELEASE_CODEGEN_UNITS=256 \
    CARGO_PROFILE_RELEASE_DEBUG=0 CARGO_TARGET_DIR="$CACHE/garage-target" \
    cargo install garage --version "$GARAGE_VERSION" --locked \
    --no-default-features --features bundled-libs,sqlite >>"$CACHE/garage-install.log" 2>&1; then
    tail -n 30 "$CACHE/garage-install.log" >&2
    die "cargo install garage failed"
  fi
  rm -rf "$CACHE/garage-target"
}

write_garage_config() {
  mkdir -p "$STACK/garage/meta" "$STACK/garage/data"
  local tmp="$GARAGE_CONF.tmp"
  cat >"$tmp" <<EOF
# Written by scripts/stack.sh: single-node Garage for local tests.
metadata_dir = "$STACK/garage/meta"
data_dir = "$STACK/garage/data"
db_engine = "sqlite"
replication_factor = 1

rpc_bind_addr = "$HOST:$GARAGE_RPC_PORT"
rpc_public_addr = "$HOST:$GARAGE_RPC_PORT"
rpc_secret = "$GARAGE_RPC_SECRET"

[s3_api]
s3_region = "$S3_REGION"
api_bind_addr = "$HOST:$S3_PORT"
root_domain = ".s3.garage.localhost"

[admin]
api_bind_addr = "$HOST:$GARAGE_ADMIN_PORT"
admin_token = "$GARAGE_ADMIN_TOKEN"
EOF
  chmod 600 "$tmp"
  if cmp -s "$tmp" "$GARAGE_CONF"; then rm -f "$tmp"; else mv -f "$tmp" "$GARAGE_CONF"; fi
}

gcli() { "$GARAGE" -c "$GARAGE_CONF" "$@"; }

garage_s3_up() { [[ "$(http_code "$S3_URL/")" != 000 ]]; }
# The CLI must be told the node id. It reads it from metadata_dir by default, but
# the node answering on the port may have been started by another checkout, so
# ask the admin API (same fixed token) which node runs there.
garage_rpc_up() {
  local id
  id="$(curl -s --max-time 3 -H "Authorization: Bearer $GARAGE_ADMIN_TOKEN" \
    "http://$HOST:$GARAGE_ADMIN_PORT/v2/GetClusterStatus" |
    grep -o '"id": *"[0-9a-f]\{64\}"' | head -n1 | grep -o '[0-9a-f]\{64\}')" || return 1
  GARAGE_NODE_ID="$id"
  export GARAGE_RPC_HOST="$id@$HOST:$GARAGE_RPC_PORT"
  gcli status
}

garage_bootstrap() {
  # Layout: assign this node a role and apply, once.
  if ! gcli layout show 2>/dev/null | grep -Eq 'Current cluster layout version: [1-9]'; then
    local node_id="$GARAGE_NODE_ID"
    log "garage: assigning layout to node ${node_id:0:16}"
    {
      gcli layout assign -z dc1 -c 1G "$node_id"
      gcli layout apply --version 1
    } >>"$LOGS/garage-bootstrap.log" 2>&1 || {
      tail -n 20 "$LOGS/garage-bootstrap.log" >&2
      die "garage layout assign/apply failed"
    }
  fi
  if ! gcli key info "$S3_KEY_NAME" >/dev/null 2>&1; then
    log "garage: importing key $S3_ACCESS_KEY_ID as $S3_KEY_NAME"
    gcli key import --yes -n "$S3_KEY_NAME" "$S3_ACCESS_KEY_ID" "$S3_SECRET_ACCESS_KEY" >/dev/null
  fi
  local bucket
  for bucket in "${S3_BUCKETS[@]}"; do
    if ! gcli bucket info "$bucket" >/dev/null 2>&1; then
      log "garage: creating bucket $bucket"
      gcli bucket create "$bucket" >/dev/null
    fi
    # Idempotent: grant the fixed key full rights on every bucket.
    gcli bucket allow --read --write --owner "$bucket" --key "$S3_KEY_NAME" >/dev/null
  done
}

# A real S3 round trip with the fixed key: put, list, delete in every bucket.
s3_smoke() {
  AWS_ACCESS_KEY_ID="$S3_ACCESS_KEY_ID" AWS_SECRET_ACCESS_KEY="$S3_SECRET_ACCESS_KEY" \
    "$VENV/bin/python" - "$S3_URL" "$S3_REGION" "${S3_BUCKETS[@]}" <<'EOF'
import sys, boto3
from botocore.config import Config
url, region, buckets = sys.argv[1], sys.argv[2], sys.argv[3:]
s3 = boto3.client("s3", endpoint_url=url, region_name=region,
                  config=Config(s3={"addressing_style": "path"}, retries={"max_attempts": 2}))
for b in buckets:
    key = ".stack-smoke/ping"
    s3.put_object(Bucket=b, Key=key, Body=b"ping")
    keys = [o["Key"] for o in s3.list_objects_v2(Bucket=b, Prefix=".stack-smoke/").get("Contents", [])]
    assert key in keys, (b, keys)
    s3.delete_object(Bucket=b, Key=key)
EOF
}

ensure_garage() {
  if ! GARAGE="$(garage_bin)"; then
    with_install_lock garage install_garage
    GARAGE="$(garage_bin)" || die "garage binary not found after install"
  fi
  write_garage_config
  if ! garage_s3_up; then
    if pid_alive "$RUN/garage.pid"; then
      log "Garage (pid $(cat "$RUN/garage.pid")) is still starting; waiting"
    elif tcp_open "$HOST" "$S3_PORT"; then
      die "port $S3_PORT is taken by something that does not answer HTTP"
    else
      start_daemon garage "$LOGS/garage.log" "$GARAGE" -c "$GARAGE_CONF" server
    fi
    WAIT_PIDFILE="$RUN/garage.pid" wait_until "Garage S3 API on $S3_URL" 60 "$LOGS/garage.log" garage_s3_up
  fi
  wait_until "Garage RPC on $HOST:$GARAGE_RPC_PORT" 60 "$LOGS/garage.log" garage_rpc_up
  garage_bootstrap
  mlflow_installed || with_install_lock mlflow install_mlflow
  wait_until "Garage S3 put/list/delete with key $S3_KEY_NAME" 60 "$LOGS/garage.log" s3_smoke
  log "Garage up: $S3_URL (buckets: ${S3_BUCKETS[*]})"
}

# ---------------------------------------------------------------- commands

cmd_up() {
  mkdir -p "$STACK" "$LOGS" "$RUN"
  exec 8>"$STACK/.lock"
  flock -w 3600 8 || die "another 'stack.sh up/down' holds $STACK/.lock"
  ensure_rabbitmq
  install_tools
  # Garage first: MLflow's artifact root lives in it.
  ensure_garage
  ensure_mlflow
  log "stack is up (eval \"\$(scripts/stack.sh env)\" to use it)"
}

cmd_down() {
  mkdir -p "$STACK"
  exec 8>"$STACK/.lock"
  flock -w 60 8 || die "another 'stack.sh up/down' holds $STACK/.lock"
  local name
  for name in mlflow mlflow-proxied mlflow2 garage; do
    if stop_daemon "$name"; then
      log "$name stopped"
    else
      log "$name: not running from this checkout (no live pid file in $RUN)"
    fi
  done
  local url
  for url in "$MLFLOW_URL" "$PROXIED_MLFLOW_URL" "$MLFLOW2_URL"; do
    if mlflow_answers "$url"; then log "note: something still answers on $url (not started by this checkout)"; fi
  done
  if garage_s3_up; then log "note: something still answers on $S3_URL (not started by this checkout)"; fi
  log "RabbitMQ left running: it is the machine's service"
}

status_line() {
  local name="$1" ok="$2" addr="$3" extra="${4:-}"
  printf '%-9s %-5s %s%s\n' "$name" "$ok" "$addr" "${extra:+  $extra}"
}

cmd_status() {
  local extra
  if rabbit_up; then
    if rabbit_mgmt_up; then extra="(management http://$HOST:$RABBIT_MGMT_PORT)"; else extra="(management down)"; fi
    status_line rabbitmq up "amqp://$HOST:$AMQP_PORT" "$extra"
  else
    status_line rabbitmq down "amqp://$HOST:$AMQP_PORT"
  fi
  extra=""
  if pid_alive "$RUN/mlflow.pid"; then extra="(pid $(cat "$RUN/mlflow.pid"))"; fi
  if mlflow_up; then status_line mlflow up "$MLFLOW_URL" "$extra"; else status_line mlflow down "$MLFLOW_URL" "$extra"; fi
  extra="(proxied artifacts; tracking store: $(mlflow_backend))"
  if proxied_mlflow_up; then status_line mlflow up "$PROXIED_MLFLOW_URL" "$extra"; else status_line mlflow down "$PROXIED_MLFLOW_URL" "$extra"; fi
  extra="(${MLFLOW2_SPEC#mlflow==})"
  if mlflow2_up; then status_line mlflow up "$MLFLOW2_URL" "$extra"; else status_line mlflow down "$MLFLOW2_URL" "$extra"; fi
  extra=""
  if pid_alive "$RUN/garage.pid"; then extra="(pid $(cat "$RUN/garage.pid"))"; fi
  if garage_s3_up; then status_line garage up "$S3_URL" "$extra"; else status_line garage down "$S3_URL" "$extra"; fi
}

cmd_env() {
  cat <<EOF
export MODEL_PRUNER__BROKER__URL='$AMQP_URL'
export MODEL_PRUNER__MLFLOW__TRACKING_URI='$MLFLOW_URL'
export MODEL_PRUNER__STORE__ENDPOINT='$S3_URL'
export MODEL_PRUNER__STORE__REGION='$S3_REGION'
export MODEL_PRUNER__STORE__ACCESS_KEY_ID='$S3_ACCESS_KEY_ID'
export MODEL_PRUNER__STORE__SECRET_ACCESS_KEY='$S3_SECRET_ACCESS_KEY'
export MODEL_PRUNER__STORE__FORCE_PATH_STYLE='true'
export MLFLOW_TRACKING_URI='$MLFLOW_URL'
export MLFLOW_S3_ENDPOINT_URL='$S3_URL'
export AWS_ACCESS_KEY_ID='$S3_ACCESS_KEY_ID'
export AWS_SECRET_ACCESS_KEY='$S3_SECRET_ACCESS_KEY'
export AWS_DEFAULT_REGION='$S3_REGION'
export AMQP_URL='$AMQP_URL'
export RABBITMQ_MANAGEMENT_URL='http://guest:guest@$HOST:$RABBIT_MGMT_PORT'
export RABBITMQ_PROMETHEUS_URL='http://$HOST:$RABBIT_PROMETHEUS_PORT'
export MODEL_PRUNER_PYTHON='$VENV/bin/python'
export MODEL_PRUNER_TEST_PROXIED_MLFLOW_URI='$PROXIED_MLFLOW_URL'
export MODEL_PRUNER_TEST_PROXIED_DESTINATION='$(proxied_destination)'
export MODEL_PRUNER_TEST_MLFLOW2_URI='$MLFLOW2_URL'
export MODEL_PRUNER_TEST_MLFLOW_BACKEND='$(mlflow_backend)'
export MODEL_PRUNER_PYTHON2='$VENV2/bin/python'
EOF
}

main() {
  case "${1:-}" in
    up) cmd_up ;;
    down) cmd_down ;;
    status) cmd_status ;;
    env) cmd_env ;;
    -h | --help | help) usage ;;
    "")
      usage >&2
      exit 2
      ;;
    *)
      log "unknown command: $1"
      usage >&2
      exit 2
      ;;
  esac
}

# Allow `source scripts/stack.sh` (functions only) for debugging.
if [[ "${BASH_SOURCE[0]}" == "$0" ]]; then
  main "$@"
fi
