"""deploy/ checked without Docker or a cluster: the compose file, every Kubernetes manifest,
the nginx configuration, the Dockerfile and the systemd units parse and say what they must."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

yaml = pytest.importorskip("yaml", reason="pyyaml is in the dev extras")

REPO = Path(__file__).resolve().parents[2]
DEPLOY = REPO / "deploy"
K8S = DEPLOY / "k8s"

MANIFESTS = sorted(p for p in K8S.glob("*.yaml") if p.name != "kustomization.yaml")


def _docs(path: Path) -> list[dict[str, Any]]:
    docs = [d for d in yaml.safe_load_all(path.read_text()) if d is not None]
    assert docs, f"{path} is empty"
    return docs


def _all_k8s() -> list[dict[str, Any]]:
    return [doc for path in MANIFESTS for doc in _docs(path)]


def _find(kind: str, name: str) -> dict[str, Any]:
    for doc in _all_k8s():
        if doc["kind"] == kind and doc["metadata"]["name"] == name:
            return doc
    raise AssertionError(f"no {kind} {name} in deploy/k8s")


def _containers(doc: dict[str, Any]) -> Iterator[dict[str, Any]]:
    spec = doc["spec"]["template"]["spec"]
    yield from spec.get("initContainers", [])
    yield from spec["containers"]


# --------------------------------------------------------------------------- Kubernetes


def test_there_are_manifests() -> None:
    names = {p.name for p in MANIFESTS}
    assert {"control-plane.yaml", "agent.yaml", "secret.yaml", "configmap.yaml", "rbac.yaml"} <= (
        names
    )


@pytest.mark.parametrize("path", MANIFESTS, ids=lambda p: p.name)
def test_every_manifest_has_the_required_fields(path: Path) -> None:
    for doc in _docs(path):
        assert isinstance(doc.get("apiVersion"), str) and doc["apiVersion"], path
        assert isinstance(doc.get("kind"), str) and doc["kind"], path
        assert doc.get("metadata", {}).get("name"), f"{path}: {doc['kind']} without a name"
        if doc["kind"] != "Namespace":
            assert doc["metadata"].get("namespace") == "krako", f"{path}: {doc['kind']}"


def test_kustomization_lists_every_manifest() -> None:
    kustomization = yaml.safe_load((K8S / "kustomization.yaml").read_text())
    assert kustomization["kind"] == "Kustomization"
    assert sorted(kustomization["resources"]) == sorted(p.name for p in MANIFESTS)


def test_workloads_take_their_tokens_from_the_secret() -> None:
    secret = _find("Secret", "krako-secrets")
    keys = set(secret.get("stringData", {})) | set(secret.get("data", {}))
    config = _find("ConfigMap", "krako-config")
    deployments = [d for d in _all_k8s() if d["kind"] == "Deployment"]
    assert {d["metadata"]["name"] for d in deployments} == {"krako-control-plane", "krako-agent"}
    for deployment in deployments:
        labels = deployment["spec"]["template"]["metadata"]["labels"]
        assert deployment["spec"]["selector"]["matchLabels"].items() <= labels.items()
        for container in _containers(deployment):
            assert container.get("image"), container["name"]
            refs = [
                e["valueFrom"]["secretKeyRef"]
                for e in container.get("env", [])
                if "secretKeyRef" in e.get("valueFrom", {})
            ]
            assert refs, f"{deployment['metadata']['name']}: no env from the Secret"
            for ref in refs:
                assert ref["name"] == "krako-secrets" and ref["key"] in keys, ref
            names = {e["name"] for e in container.get("env", [])}
            assert "KRAKO_NODE_JOIN_TOKEN" in names
            for source in container.get("envFrom", []):
                if "configMapRef" in source:
                    assert source["configMapRef"]["name"] == config["metadata"]["name"]
            security = container.get("securityContext", {})
            assert security.get("allowPrivilegeEscalation") is False
        pod = deployment["spec"]["template"]["spec"]
        assert pod["securityContext"]["runAsNonRoot"] is True


def test_control_plane_probes_ports_and_service() -> None:
    deployment = _find("Deployment", "krako-control-plane")
    [container] = list(_containers(deployment))
    assert container["command"] == ["krako-control-plane"]
    env = {e["name"] for e in container["env"]}
    assert {"KRAKO_ADMIN_TOKEN", "KRAKO_NODE_JOIN_TOKEN", "KRAKO_DATABASE_URL"} <= env
    assert container["livenessProbe"]["httpGet"]["path"] == "/healthz"
    assert container["readinessProbe"]["httpGet"]["path"] == "/readyz"
    port = container["ports"][0]
    assert port["containerPort"] == 8080
    assert port["containerPort"] == int(container["args"][container["args"].index("--port") + 1])
    for probe in ("livenessProbe", "readinessProbe"):
        assert container[probe]["httpGet"]["port"] in (port["name"], port["containerPort"])

    service = _find("Service", "krako-control-plane")
    selector = service["spec"]["selector"]
    assert selector.items() <= deployment["spec"]["template"]["metadata"]["labels"].items()
    assert service["spec"]["ports"][0]["targetPort"] in (port["name"], port["containerPort"])

    # the agents reach the control plane through this Service
    config = _find("ConfigMap", "krako-config")
    assert config["data"]["KRAKO_CONTROL_PLANE_URL"] == "http://krako-control-plane:8080"


def test_agent_deployment() -> None:
    deployment = _find("Deployment", "krako-agent")
    [container] = list(_containers(deployment))
    assert container["command"] == ["krako-agent"]
    pod = deployment["spec"]["template"]["spec"]
    assert pod["automountServiceAccountToken"] is False  # agents need no Kubernetes API
    # long enough for the agent's shutdown grace (30 s) and report grace (15 s)
    assert pod["terminationGracePeriodSeconds"] >= 45


def test_the_control_plane_may_scale_the_agent_deployment_and_nothing_else() -> None:
    deployment = _find("Deployment", "krako-control-plane")
    account = deployment["spec"]["template"]["spec"]["serviceAccountName"]
    _find("ServiceAccount", account)
    bindings = [d for d in _all_k8s() if d["kind"] == "RoleBinding"]
    [binding] = [
        b
        for b in bindings
        if any(s["kind"] == "ServiceAccount" and s["name"] == account for s in b["subjects"])
    ]
    assert binding["roleRef"]["kind"] == "Role"
    role = _find("Role", binding["roleRef"]["name"])
    scale_rules = [r for r in role["rules"] if "deployments/scale" in r["resources"]]
    assert scale_rules, "no rule on deployments/scale"
    for rule in scale_rules:
        assert rule["apiGroups"] == ["apps"]
        assert "patch" in rule["verbs"]
        assert rule["resourceNames"] == ["krako-agent"]
    for rule in role["rules"]:
        assert not {"create", "delete", "*"} & set(rule["verbs"]), rule
        assert rule.get("resourceNames") == ["krako-agent"], rule


# --------------------------------------------------------------------------- compose, nginx


def _compose() -> dict[str, Any]:
    return dict(yaml.safe_load((DEPLOY / "compose.yaml").read_text()))


def test_compose_has_postgres_two_replicas_a_proxy_and_two_agents() -> None:
    services = _compose()["services"]
    assert {"postgres", "control-plane-1", "control-plane-2", "proxy", "agent-1", "agent-2"} <= set(
        services
    )
    assert services["postgres"]["image"] == "postgres:15"
    for name in ("control-plane-1", "control-plane-2"):
        service = services[name]
        env = service["environment"]
        assert env["KRAKO_DATABASE_URL"].startswith("postgresql://")
        assert "@postgres:5432/" in env["KRAKO_DATABASE_URL"]
        assert "KRAKO_ADMIN_TOKEN" in env and "KRAKO_NODE_JOIN_TOKEN" in env
        assert service["depends_on"]["postgres"]["condition"] == "service_healthy"
        assert "/readyz" in " ".join(service["healthcheck"]["test"])
        assert service["build"]["target"] == "control-plane"
    for name in ("agent-1", "agent-2"):
        env = services[name]["environment"]
        assert env["KRAKO_CONTROL_PLANE_URL"] == "http://proxy:8080"
        assert "KRAKO_NODE_JOIN_TOKEN" in env
        assert services[name]["build"]["target"] == "agent"
    assert (
        services["agent-1"]["environment"]["KRAKO_NODE_ID"]
        != (services["agent-2"]["environment"]["KRAKO_NODE_ID"])
    )


def test_compose_builds_from_the_repository_with_this_dockerfile() -> None:
    for name, service in _compose()["services"].items():
        build = service.get("build")
        if build is None:
            continue
        context = (DEPLOY / build["context"]).resolve()
        assert (context / "pyproject.toml").exists(), name
        assert (context / build["dockerfile"]).resolve() == DEPLOY / "Dockerfile", name


def test_proxy_balances_both_replicas_with_long_poll_timeouts() -> None:
    proxy = _compose()["services"]["proxy"]
    [mount] = [v for v in proxy["volumes"] if "nginx.conf" in v]
    source = DEPLOY / mount.split(":")[0]
    assert source.exists()
    conf = source.read_text()
    upstream = re.search(r"upstream\s+(\w+)\s*\{(.*?)\}", conf, re.S)
    assert upstream is not None
    assert "control-plane-1:8080" in upstream.group(2)
    assert "control-plane-2:8080" in upstream.group(2)
    assert f"proxy_pass http://{upstream.group(1)};" in conf
    for directive in ("proxy_read_timeout", "proxy_send_timeout"):
        match = re.search(rf"{directive}\s+(\d+)s;", conf)
        assert match is not None, directive
        assert int(match.group(1)) > 30, f"{directive} must outlast a 30 s long-poll"
    assert "proxy_buffering off;" in conf  # the JSONL export streams
    assert "non_idempotent" not in conf  # a POST is never re-sent to the other replica


# --------------------------------------------------------------------------- Dockerfile


def test_dockerfile() -> None:
    text = (DEPLOY / "Dockerfile").read_text()
    lines = [line.strip() for line in text.splitlines()]
    assert "ARG PYTHON_IMAGE=python:3.11-slim" in lines
    stages = re.findall(r"^FROM\s+(\S+)(?:\s+AS\s+(\S+))?", text, re.M)
    assert {alias for _, alias in stages} >= {"build", "agent", "control-plane"}
    assert "pip install ." in text
    users = re.findall(r"^USER\s+(\S+)", text, re.M)
    assert users and all(not u.startswith(("root", "0")) for u in users)
    assert 'ENTRYPOINT ["krako-agent"]' in lines
    assert 'ENTRYPOINT ["krako-control-plane"]' in lines
    # what the build copies exists
    for source in re.findall(r"^COPY\s+(?!--from)(.+?)\s+\S+$", text, re.M):
        for part in source.split():
            assert (REPO / part).exists(), part
    # compose build targets exist in the Dockerfile
    aliases = {alias for _, alias in stages}
    for service in _compose()["services"].values():
        if "build" in service:
            assert service["build"]["target"] in aliases


# --------------------------------------------------------------------------- systemd


UNITS = sorted((DEPLOY / "systemd").glob("*.service"))


def test_the_agent_unit_and_its_env_example_exist() -> None:
    assert DEPLOY / "systemd" / "krako-agent.service" in UNITS
    example = (DEPLOY / "systemd" / "krako-agent.env.example").read_text()
    assert "KRAKO_CONTROL_PLANE_URL=" in example and "KRAKO_NODE_JOIN_TOKEN=" in example
    unit = (DEPLOY / "systemd" / "krako-agent.service").read_text()
    assert "EnvironmentFile=/etc/krako/agent.env" in unit
    assert re.search(r"^ExecStart=\S*/krako-agent\b", unit, re.M)
    stop = re.search(r"^TimeoutStopSec=(\d+)", unit, re.M)
    assert stop is not None and int(stop.group(1)) >= 45


@pytest.mark.parametrize("unit", UNITS, ids=lambda p: p.name)
def test_systemd_analyze_verify(unit: Path, tmp_path: Path) -> None:
    analyze = shutil.which("systemd-analyze")
    if analyze is None:
        pytest.skip("systemd-analyze is not installed here")
    # verify checks that ExecStart's program exists: point it at this environment's scripts
    # (the unit installs them in /opt/krako/bin)
    bindir = Path(sys.executable).parent
    text = unit.read_text()
    for program in re.findall(r"/opt/krako/bin/([\w-]+)", text):
        if not (bindir / program).exists():
            pytest.skip(f"{program} is not installed in {bindir}")
    copy = tmp_path / unit.name
    copy.write_text(text.replace("/opt/krako/bin/", f"{bindir}/"))
    result = subprocess.run(
        [analyze, "verify", str(copy)], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert unit.name not in result.stderr, result.stderr  # no warnings about the unit
