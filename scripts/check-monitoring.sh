#!/usr/bin/env bash
# Checks the monitoring files in deploy/:
#   1. promtool check rules   deploy/prometheus/alerts.yml
#   2. promtool test rules    deploy/prometheus/alerts.test.yml (unit tests of every alert)
#   3. promtool check config  deploy/prometheus/prometheus.yml
#   4. every model_pruner_* metric that the dashboard and the rules name is one the worker
#      exports (the Rust test deploy::deploy_files_name_only_metrics_the_worker_exports).
# The dashboard and the rules against a real Prometheus scraping a real worker are checked by
# tests/observability/dashboard.rs, part of the test suite.
# promtool comes from Debian's `prometheus` package, installed when missing.
# Set SKIP_CARGO=1 to skip step 4 (for instance when the test suite runs it anyway).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

log() { printf '[monitoring] %s\n' "$*" >&2; }

if ! command -v promtool >/dev/null 2>&1; then
  log "installing promtool (Debian package prometheus)"
  if ! apt-cache policy prometheus 2>/dev/null | grep -q 'Candidate: [0-9]'; then
    apt-get update -qq
  fi
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends prometheus >/dev/null
  # The package starts a Prometheus server on :9090; only promtool is wanted here.
  if command -v systemctl >/dev/null 2>&1; then systemctl stop prometheus 2>/dev/null || true; fi
fi

log "promtool check rules"
promtool check rules deploy/prometheus/alerts.yml
log "promtool test rules"
promtool test rules deploy/prometheus/alerts.test.yml
log "promtool check config"
# Relative rule_files resolve against the config's folder, as in the container.
promtool check config deploy/prometheus/prometheus.yml

if [[ "${SKIP_CARGO:-}" != "1" ]]; then
  log "dashboard and rules name only exported metrics"
  cargo nextest run --test observability --no-fail-fast deploy::deploy_files_name_only_metrics_the_worker_exports
fi
log "ok"
