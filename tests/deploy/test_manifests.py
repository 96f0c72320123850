"""The container deployment, checked offline: the Kubernetes manifests against the
Kubernetes schemas (kubernetes-validate), the compose file parsed and checked for what it
must hold, the Dockerfile's contract (non-root, ``legion`` as entrypoint)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import kubernetes_validate  # type: ignore[import-untyped]
import pytest
import yaml  # type: ignore[import-untyped]

ROOT = Path(__file__).parents[2]
KUBE = ROOT / "deploy" / "kubernetes"
VERSION = "1.30.0"


def documents() -> list[dict[str, Any]]:
    docs: list[dict[str, Any]] = []
    for path in sorted(KUBE.glob("*.yaml")):
        docs.extend(d for d in yaml.safe_load_all(path.read_text()) if d)
    return docs


def by_kind(kind: str) -> list[dict[str, Any]]:
    return [d for d in documents() if d["kind"] == kind]


@pytest.mark.parametrize(
    "doc",
    [d for d in documents() if d["apiVersion"] != "keda.sh/v1alpha1"],
    ids=lambda d: f"{d['kind']}/{d['metadata']['name']}",
)
def test_manifests_validate_against_the_kubernetes_schemas(doc: dict[str, Any]) -> None:
    kubernetes_validate.validate(doc, VERSION, strict=True)


def test_a_schema_violation_is_caught() -> None:
    (workers,) = [d for d in by_kind("Deployment") if d["metadata"]["name"] == "legion-worker"]
    bad = {**workers, "spec": {**workers["spec"], "replicas": "three"}}
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(bad, VERSION, strict=True)


def test_workers_drain_within_their_grace_period() -> None:
    (workers,) = [d for d in by_kind("Deployment") if d["metadata"]["name"] == "legion-worker"]
    pod = workers["spec"]["template"]["spec"]
    args = pod["containers"][0]["args"]
    drain = float(args[args.index("--drain-timeout") + 1])
    assert pod["terminationGracePeriodSeconds"] > drain
    assert pod["securityContext"]["runAsNonRoot"] is True


def test_serve_is_probed_on_healthz_and_exposed() -> None:
    (serve,) = [d for d in by_kind("Deployment") if d["metadata"]["name"] == "legion-serve"]
    (container,) = serve["spec"]["template"]["spec"]["containers"]
    assert container["readinessProbe"]["httpGet"]["path"] == "/healthz"
    assert container["livenessProbe"]["httpGet"]["path"] == "/livez"
    (service,) = by_kind("Service")
    assert service["spec"]["selector"] == serve["spec"]["selector"]["matchLabels"]


def test_keda_scales_the_workers_on_workers_desired() -> None:
    (scaled,) = by_kind("ScaledObject")
    assert scaled["spec"]["scaleTargetRef"]["name"] == "legion-worker"
    (trigger,) = scaled["spec"]["triggers"]
    assert trigger["type"] == "prometheus"
    assert "legion_workers_desired" in trigger["metadata"]["query"]
    assert 1 <= scaled["spec"]["minReplicaCount"] <= scaled["spec"]["maxReplicaCount"]
    assert by_kind("PodDisruptionBudget") and by_kind("Secret")


def test_compose_runs_postgres_serve_autoscaled_workers_and_the_simulator() -> None:
    doc = yaml.safe_load((ROOT / "deploy" / "compose.yaml").read_text())
    services = doc["services"]
    assert set(services) == {"postgres", "sim", "serve", "worker"}
    for name, service in services.items():
        assert "image" in service or "build" in service, name
        assert isinstance(service.get("command", []), list), name
    worker = services["worker"]["command"]
    assert worker[0] == "worker" and "--autoscale" in worker
    assert services["worker"]["stop_signal"] == "SIGTERM"
    assert services["serve"]["command"][0] == "serve"
    assert services["sim"]["command"][0] == "sim"
    for svc in ("serve", "worker"):
        assert services[svc]["depends_on"]["postgres"]["condition"] == "service_healthy"
    # The image is legion's own, made here: every service that runs it builds it (one
    # that named it alone could be pulled for, from a registry that has none).
    for name, service in services.items():
        if service.get("image") == "legion:latest":
            assert service["build"]["dockerfile"] == "Dockerfile", name
    # The metrics the README points at reach the host (keyless: its loopback alone).
    assert "127.0.0.1:9100:9100" in services["serve"]["ports"]


def test_every_server_listening_beyond_loopback_says_so() -> None:
    # legion's servers refuse a non-loopback --host without --allow-remote: the compose
    # file's simulator exited at start, and every LLM call of its workers failed.
    compose = yaml.safe_load((ROOT / "deploy" / "compose.yaml").read_text())["services"]
    commands = [s["command"] for s in compose.values() if "command" in s]
    for doc in by_kind("Deployment"):
        commands += [c["args"] for c in doc["spec"]["template"]["spec"]["containers"]]
    listening = [c for c in commands if "--host" in c]
    assert len(listening) == 3  # compose's serve and sim, Kubernetes' serve
    for args in listening:
        if args[args.index("--host") + 1] not in ("127.0.0.1", "localhost", "::1"):
            assert "--allow-remote" in args, args


def test_the_image_runs_legion_as_a_non_root_user() -> None:
    lines = [
        line.split(None, 1)
        for line in (ROOT / "Dockerfile").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    ]
    final = lines[max(i for i, (op, _) in enumerate(lines) if op == "FROM") :]
    ops = {op: arg for op, arg in final}
    assert ops["ENTRYPOINT"] == '["legion"]'
    assert ops["USER"] not in ("root", "0")
    assert "slim" in ops["FROM"]
