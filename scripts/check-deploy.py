#!/usr/bin/env python3
"""Consistency checks of the deployment files that no schema expresses (run by check-deploy.sh).

1. The settings each deployment passes are settings the worker accepts: `model-pruner config
   check` must exit 0 with
   - the Dockerfile's ENV plus the compose worker's environment (interpolation defaults applied),
   - the Kubernetes ConfigMap's config.toml (as MODEL_PRUNER_CONFIG) plus the Deployment's env,
     secret references resolved from secret.example.yaml.
2. The files agree with each other: probes, ports and the PodMonitor point at the metrics port
   the settings listen on; grace periods exceed concurrency.shutdown_grace; KEDA watches the
   configured work queue through a TriggerAuthentication that reads an existing Secret key;
   selectors match the pod labels; kustomization.yaml lists every manifest.
3. The CRD-based resources (PodMonitor, ScaledObject, TriggerAuthentication), for which no
   schema ships offline, use only fields their documentation names.

Usage: check-deploy.py REPO_ROOT   (MODEL_PRUNER_BIN overrides `cargo run -- ...`)
"""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
import tempfile
import tomllib
from pathlib import Path
from urllib.parse import urlsplit

import yaml

ROOT = Path(sys.argv[1] if len(sys.argv) > 1 else ".").resolve()
DEPLOY = ROOT / "deploy"
K8S = DEPLOY / "kubernetes"
failures: list[str] = []


def check(ok: bool, message: str) -> None:
    if not ok:
        failures.append(message)


def log(message: str) -> None:
    print(f"[check-deploy] {message}", file=sys.stderr)


def duration_seconds(text: str) -> float:
    """'30s', '1m', '1m30s', '500ms' (humantime / compose durations) in seconds."""
    units = {"ms": 0.001, "s": 1, "m": 60, "h": 3600}
    parts = re.findall(r"(\d+(?:\.\d+)?)(ms|s|m|h)", text.replace(" ", ""))
    if not parts or "".join(n + u for n, u in parts) != text.replace(" ", ""):
        raise ValueError(f"unreadable duration {text!r}")
    return sum(float(n) * units[u] for n, u in parts)


def port_of(listen: str) -> int:
    return int(listen.rsplit(":", 1)[1])


def interpolate(value: str) -> str:
    """Compose interpolation: ${VAR:-default}, ${VAR-default}, ${VAR}, $$."""

    def repl(m: re.Match[str]) -> str:
        if m.group(0) == "$$":
            return "$"
        name, op, default = m.group(1), m.group(2), m.group(3) or ""
        current = os.environ.get(name)
        if op == ":-":
            return current or default
        if op == "-":
            return default if current is None else current
        return current or ""

    return re.sub(r"\$\$|\$\{(\w+)(?:(:?-)([^}]*))?\}", repl, value)


def dockerfile_env(path: Path) -> dict[str, str]:
    """KEY=VALUE pairs of the ENV instructions in the last stage of a Dockerfile."""
    text = re.sub(r"\\\n", " ", path.read_text())
    env: dict[str, str] = {}
    for line in text.splitlines():
        line = line.strip()
        if line.upper().startswith("FROM "):
            env = {}
        elif line.upper().startswith("ENV "):
            for word in shlex.split(line[4:]):
                key, _, value = word.partition("=")
                env[key] = value
    return env


def config_check(label: str, env: dict[str, str]) -> str:
    """Runs `model-pruner config check` with only `env`'s MODEL_PRUNER* variables set."""
    # The broker URL is a secret the worker parses only when it connects: look at it here.
    broker = urlsplit(env.get("MODEL_PRUNER__BROKER__URL", "amqp://default"))
    check(broker.scheme in {"amqp", "amqps"} and bool(broker.hostname),
          f"{label}: MODEL_PRUNER__BROKER__URL is not an amqp:// or amqps:// URL with a host")
    command = shlex.split(os.environ.get("MODEL_PRUNER_BIN", "")) or [
        "cargo", "run", "--quiet", "--bin", "model-pruner", "--",
    ]
    clean = {k: v for k, v in os.environ.items() if not k.startswith("MODEL_PRUNER")}
    clean.update(env)
    proc = subprocess.run(
        [*command, "config", "check"], cwd=ROOT, env=clean, capture_output=True, text=True
    )
    check(proc.returncode == 0, f"{label}: `config check` exited {proc.returncode}: "
          f"{proc.stderr.strip()}")
    if proc.returncode == 0:
        log(f"{label}: the worker accepts these settings")
    return proc.stdout


def load_docs(path: Path) -> list[dict]:
    return [d for d in yaml.safe_load_all(path.read_text()) if d]


def unknown_keys(obj: dict, allowed: set[str], where: str) -> None:
    extra = set(obj) - allowed
    check(not extra, f"{where}: fields not in the documented schema: {sorted(extra)}")


# ------------------------------------------------------------------------------- compose

def check_compose() -> None:
    compose_file = DEPLOY / "docker-compose.yml"
    compose = yaml.safe_load(compose_file.read_text())
    services = compose["services"]

    for name, svc in services.items():
        build = svc.get("build")
        if build:
            context = DEPLOY / (build if isinstance(build, str) else build.get("context", "."))
            dockerfile = context / (build.get("dockerfile", "Dockerfile")
                                    if isinstance(build, dict) else "Dockerfile")
            check(dockerfile.is_file(), f"compose {name}: build file {dockerfile} is missing")
        for volume in svc.get("volumes", []):
            source = volume.split(":", 1)[0] if isinstance(volume, str) else volume.get("source")
            if source and source.startswith("."):
                check((DEPLOY / source).exists(),
                      f"compose {name}: bind mount source {source} does not exist (relative to "
                      "deploy/)")
        for dep in (svc.get("depends_on") or {}):
            check(dep in services, f"compose {name}: depends_on unknown service {dep}")

    worker = services["worker"]
    env = dockerfile_env(ROOT / "Dockerfile")
    env.update({k: interpolate(str(v)) for k, v in worker.get("environment", {}).items()})
    out = config_check("compose worker", env)
    effective = tomllib.loads(out) if out else {}
    if effective:
        grace = duration_seconds(effective["concurrency"]["shutdown_grace"])
        stop = duration_seconds(worker.get("stop_grace_period", "10s"))
        check(stop > grace, f"compose worker: stop_grace_period {stop}s must exceed "
              f"concurrency.shutdown_grace {grace}s")
        port = port_of(effective["metrics"]["listen"])
        dockerfile = (ROOT / "Dockerfile").read_text()
        check(f"EXPOSE {port}" in dockerfile and f":{port}/healthz" in dockerfile,
              f"Dockerfile: EXPOSE and HEALTHCHECK must use the metrics port {port}")
    check(worker.get("deploy", {}).get("replicas", 1) >= 2,
          "compose worker: run at least two replicas (the multi-worker setup is the point)")


# ---------------------------------------------------------------------------- kubernetes

# Fields named in the KEDA 2.x docs (ScaledObject spec, TriggerAuthentication, rabbitmq scaler)
# and the Prometheus Operator API docs (PodMonitor spec, PodMetricsEndpoint).
SCALED_OBJECT_SPEC = {
    "scaleTargetRef", "pollingInterval", "cooldownPeriod", "initialCooldownPeriod",
    "idleReplicaCount", "minReplicaCount", "maxReplicaCount", "fallback", "advanced",
    "triggers",
}
TRIGGER = {"type", "metadata", "authenticationRef", "name", "useCachedMetrics", "metricType"}
RABBITMQ_METADATA = {
    "host", "hostFromEnv", "protocol", "mode", "value", "activationValue", "queueName",
    "vhostName", "usernameFromEnv", "passwordFromEnv", "useRegex", "excludeUnacknowledged",
    "pageSize", "operation", "timeout", "unsafeSsl",
}
TRIGGER_AUTH_SPEC = {
    "secretTargetRef", "env", "hashiCorpVault", "azureKeyVault", "podIdentity",
    "configMapTargetRef", "awsSecretManager", "gcpSecretManager",
}
PODMONITOR_SPEC = {
    "jobLabel", "podTargetLabels", "podMetricsEndpoints", "selector", "namespaceSelector",
    "sampleLimit", "targetLimit", "labelLimit", "labelNameLengthLimit",
    "labelValueLengthLimit", "keepDroppedTargets", "attachMetadata", "scrapeProtocols",
    "scrapeClass", "selectorMechanism", "bodySizeLimit", "fallbackScrapeProtocol",
    "scrapeClassicHistograms", "convertClassicHistogramsToNHCB", "nativeHistogramBucketLimit",
    "nativeHistogramMinBucketFactor",
}
POD_METRICS_ENDPOINT = {
    "port", "portNumber", "targetPort", "path", "scheme", "params", "interval",
    "scrapeTimeout", "honorLabels", "honorTimestamps", "trackTimestampsStaleness",
    "metricRelabelings", "relabelings", "proxyUrl", "followRedirects", "enableHttp2",
    "filterRunning", "basicAuth", "oauth2", "authorization", "tlsConfig",
    "bearerTokenSecret", "noProxy", "proxyFromEnvironment", "proxyConnectHeader",
}


def check_kubernetes() -> None:
    kustomization = yaml.safe_load((K8S / "kustomization.yaml").read_text())
    listed = set(kustomization.get("resources", []))
    for resource in sorted(listed):
        check((K8S / resource).is_file(), f"kustomization.yaml lists missing {resource}")
    for path in sorted(K8S.glob("*.yaml")):
        if path.name not in {"kustomization.yaml", "secret.example.yaml"}:
            check(path.name in listed, f"kustomization.yaml does not list {path.name}")

    docs: dict[tuple[str, str], dict] = {}
    for path in sorted(K8S.glob("*.yaml")):
        if path.name != "kustomization.yaml":
            for doc in load_docs(path):
                docs[(doc["kind"], doc["metadata"]["name"])] = doc
    by_kind = lambda kind: [d for (k, _), d in docs.items() if k == kind]  # noqa: E731

    (deployment,) = by_kind("Deployment")
    (configmap,) = by_kind("ConfigMap")
    (secret,) = by_kind("Secret")
    pod = deployment["spec"]["template"]
    pod_labels = pod["metadata"]["labels"]
    (container,) = pod["spec"]["containers"]
    secret_keys = set(secret.get("stringData", {})) | set(secret.get("data", {}))

    def selects(selector: dict, what: str) -> None:
        labels = selector.get("matchLabels", {})
        check(labels and all(pod_labels.get(k) == v for k, v in labels.items()),
              f"{what}: selector {labels} does not match the pod labels {pod_labels}")

    # Settings: ConfigMap file + Deployment env (+ Secret values) must load.
    mounts = {v["name"]: v["mountPath"] for v in container.get("volumeMounts", [])}
    config_volume = next(v for v in pod["spec"]["volumes"]
                         if v.get("configMap", {}).get("name") == configmap["metadata"]["name"])
    env: dict[str, str] = {}
    config_path = None
    for var in container.get("env", []):
        if "value" in var:
            env[var["name"]] = var["value"]
        ref = var.get("valueFrom", {}).get("secretKeyRef")
        if ref:
            check(ref["name"] == secret["metadata"]["name"],
                  f"Deployment env {var['name']}: Secret {ref['name']} is not the template's")
            if ref["key"] in secret_keys:
                env[var["name"]] = str(secret["stringData"][ref["key"]])
            else:
                check(ref.get("optional", False),
                      f"Deployment env {var['name']}: key {ref['key']} not in the Secret")
    config_path = env.get("MODEL_PRUNER_CONFIG", "")
    mount = mounts.get(config_volume["name"], "")
    file_name = os.path.relpath(config_path, mount) if config_path.startswith(mount) else None
    check(file_name in configmap["data"],
          f"MODEL_PRUNER_CONFIG={config_path} is not a key of the ConfigMap mounted at {mount}")
    effective: dict = {}
    if file_name in configmap["data"]:
        with tempfile.TemporaryDirectory() as tmp:
            local = Path(tmp) / file_name
            local.write_text(configmap["data"][file_name])
            env["MODEL_PRUNER_CONFIG"] = str(local)
            out = config_check("kubernetes ConfigMap + Deployment env + Secret template", env)
            effective = tomllib.loads(out) if out else {}

    # Ports, probes, grace period.
    ports = {p["name"]: p["containerPort"] for p in container.get("ports", [])}
    if effective:
        metrics_port = port_of(effective["metrics"]["listen"])
        check(ports.get("metrics") == metrics_port,
              f"container port 'metrics' must be metrics.listen's port {metrics_port}")
        grace = duration_seconds(effective["concurrency"]["shutdown_grace"])
        termination = pod["spec"].get("terminationGracePeriodSeconds", 30)
        check(termination > grace, f"terminationGracePeriodSeconds {termination} must exceed "
              f"concurrency.shutdown_grace {grace}s")
    for probe, path in (("livenessProbe", "/healthz"), ("readinessProbe", "/readyz")):
        http = container.get(probe, {}).get("httpGet", {})
        check(http.get("path") == path and http.get("port") in ("metrics", ports.get("metrics")),
              f"{probe} must GET {path} on the metrics port")
    sc = container.get("securityContext", {})
    check(sc.get("readOnlyRootFilesystem") is True and pod["spec"].get(
        "securityContext", {}).get("runAsNonRoot") is True,
        "the worker must run non-root with a read-only root filesystem")

    for svc in by_kind("Service"):
        selects({"matchLabels": svc["spec"]["selector"]}, "Service")
        for p in svc["spec"]["ports"]:
            check(p.get("targetPort") in ports or p.get("targetPort") in ports.values(),
                  f"Service port {p.get('name')}: targetPort is not a container port")
    for pdb in by_kind("PodDisruptionBudget"):
        selects(pdb["spec"]["selector"], "PodDisruptionBudget")

    # CronJobs (the nightly sweep): the same Secret and ConfigMap as the worker.
    for cron in by_kind("CronJob"):
        job_pod = cron["spec"]["jobTemplate"]["spec"]["template"]["spec"]
        for c in job_pod["containers"]:
            for var in c.get("env", []):
                ref = var.get("valueFrom", {}).get("secretKeyRef")
                if ref:
                    check(ref["name"] == secret["metadata"]["name"]
                          and (ref["key"] in secret_keys or ref.get("optional", False)),
                          f"CronJob env {var['name']}: {ref['name']}/{ref['key']} not in the Secret")
            check(c.get("args", [None])[0] in {"sweep", "report"},
                  "CronJob: runs model-pruner sweep or report")
        for v in job_pod.get("volumes", []):
            if "configMap" in v:
                check(v["configMap"]["name"] == configmap["metadata"]["name"],
                      "CronJob: mounts the worker's ConfigMap")

    # PodMonitor (monitoring.coreos.com/v1).
    for pm in by_kind("PodMonitor"):
        check(pm["apiVersion"] == "monitoring.coreos.com/v1", "PodMonitor: apiVersion")
        unknown_keys(pm["spec"], PODMONITOR_SPEC, "PodMonitor spec")
        selects(pm["spec"]["selector"], "PodMonitor")
        for ep in pm["spec"]["podMetricsEndpoints"]:
            unknown_keys(ep, POD_METRICS_ENDPOINT, "PodMonitor podMetricsEndpoints[]")
            check(ep.get("port") in ports, f"PodMonitor: port {ep.get('port')} is not a "
                  "named container port")

    # KEDA (keda.sh/v1alpha1).
    auths = {a["metadata"]["name"]: a for a in by_kind("TriggerAuthentication")}
    for auth in auths.values():
        check(auth["apiVersion"] == "keda.sh/v1alpha1", "TriggerAuthentication: apiVersion")
        unknown_keys(auth["spec"], TRIGGER_AUTH_SPEC, "TriggerAuthentication spec")
        for ref in auth["spec"].get("secretTargetRef", []):
            check(set(ref) == {"parameter", "name", "key"},
                  f"TriggerAuthentication secretTargetRef fields: {sorted(ref)}")
            check(ref["name"] == secret["metadata"]["name"] and ref["key"] in secret_keys,
                  f"TriggerAuthentication reads {ref['name']}/{ref['key']}, not in the Secret")
    for so in by_kind("ScaledObject"):
        check(so["apiVersion"] == "keda.sh/v1alpha1", "ScaledObject: apiVersion")
        spec = so["spec"]
        unknown_keys(spec, SCALED_OBJECT_SPEC, "ScaledObject spec")
        check(spec["scaleTargetRef"]["name"] == deployment["metadata"]["name"],
              "ScaledObject scaleTargetRef must name the Deployment")
        check(0 <= spec.get("minReplicaCount", 0) <= spec.get("maxReplicaCount", 100),
              "ScaledObject: minReplicaCount must not exceed maxReplicaCount")
        for trigger in spec["triggers"]:
            unknown_keys(trigger, TRIGGER, "ScaledObject triggers[]")
            if trigger["type"] != "rabbitmq":
                continue
            meta = trigger["metadata"]
            unknown_keys(meta, RABBITMQ_METADATA, "rabbitmq trigger metadata")
            check(all(isinstance(v, str) for v in meta.values()),
                  "rabbitmq trigger metadata values must be strings")
            check(meta.get("mode") in {"QueueLength", "MessageRate"}, "rabbitmq trigger mode")
            check(meta.get("protocol", "auto") in {"auto", "amqp", "http"},
                  "rabbitmq trigger protocol")
            if effective:
                check(meta.get("queueName") == effective["broker"]["work_queue"],
                      f"rabbitmq trigger queueName {meta.get('queueName')} is not "
                      f"broker.work_queue {effective['broker']['work_queue']}")
            ref = trigger.get("authenticationRef", {}).get("name")
            check("host" in meta or ref in auths,
                  f"rabbitmq trigger: authenticationRef {ref} is no TriggerAuthentication here")


def main() -> int:
    check_compose()
    check_kubernetes()
    for failure in failures:
        log(f"FAIL {failure}")
    if not failures:
        log("consistency checks passed")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
