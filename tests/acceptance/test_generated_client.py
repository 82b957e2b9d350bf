"""A Python client generated from the committed ``openapi/openapi.json`` (openapi-python-client)
drives a real control plane: create a tenant, submit a unit, play the node, read the unit back.
It proves the document is complete enough for the SDKs users will generate from it."""

from __future__ import annotations

import importlib
import os
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

from tests.acceptance.conftest import ADMIN, JOIN, StartControlPlane

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[2]
PACKAGE = "krako_generated_client"


@pytest.fixture(scope="module")
def generated(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Callable[[str], ModuleType]]:
    out = tmp_path_factory.mktemp("sdk") / PACKAGE
    tool = Path(sys.executable).parent / "openapi-python-client"
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
    result = subprocess.run(
        [
            str(tool),
            "generate",
            "--path",
            str(ROOT / "openapi" / "openapi.json"),
            "--output-path",
            str(out),
            "--meta",
            "none",
        ],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "Unable to parse" not in result.stdout + result.stderr, result.stdout
    sys.path.insert(0, str(out.parent))
    try:
        yield lambda name: importlib.import_module(f"{PACKAGE}.{name}")
    finally:
        sys.path.remove(str(out.parent))
        for mod in [m for m in sys.modules if m.startswith(PACKAGE)]:
            del sys.modules[mod]


def test_generated_client_submits_and_reads_back(
    generated: Callable[[str], ModuleType], control_plane: StartControlPlane
) -> None:
    cp = control_plane()
    client_mod = generated("client")
    models = generated("models")
    create_tenant = generated("api.tenants.create_tenant")
    submit = generated("api.workunits.submit_work_unit")
    get_unit = generated("api.workunits.get_work_unit")
    register = generated("api.nodes.register_node")
    poll = generated("api.nodes.node_poll")
    complete = generated("api.workunits.complete_work_unit")

    admin = client_mod.AuthenticatedClient(base_url=cp.url, token=ADMIN)
    tenant = create_tenant.sync(client=admin, body=models.TenantCreate(name="sdk"))
    assert isinstance(tenant, models.TenantCreated), tenant
    as_tenant = client_mod.AuthenticatedClient(base_url=cp.url, token=tenant.api_key)

    body = models.WorkUnitSubmit(
        kind=models.WorkUnitKind.CPU,
        execution_session_id="sdk-session",
        payload=models.WorkUnitSubmitPayload.from_dict({"handler": "noop"}),
    )
    unit = submit.sync(client=as_tenant, body=body, idempotency_key="sdk-1")
    assert isinstance(unit, models.WorkUnit), unit
    assert unit.status.value == "queued" and unit.attempt == 1

    joiner = client_mod.AuthenticatedClient(base_url=cp.url, token=JOIN)
    reg = register.sync(
        client=joiner,
        body=models.NodeRegister(
            node_id="sdk-node", supported_kinds=[models.WorkUnitKind.CPU], max_concurrency=2
        ),
    )
    assert isinstance(reg, models.NodeRegistration), reg
    as_node = client_mod.AuthenticatedClient(base_url=cp.url, token=reg.node_token)
    reply = poll.sync(
        "sdk-node",
        client=as_node,
        body=models.PollRequest(max_units=1, wait_s=5.0, claim=True),
    )
    assert isinstance(reply, models.PollReply), reply
    [claim] = reply.claims
    assert claim.work_unit.id == unit.id
    done = complete.sync(
        unit.id,
        client=as_node,
        body=models.CompleteRequest(claim_token=claim.claim_token, cpu_ms=3),
    )
    assert isinstance(done, models.WorkUnit), done

    read: Any = get_unit.sync(unit.id, client=as_tenant, wait_s=5.0)
    assert isinstance(read, models.WorkUnit), read
    assert read.id == unit.id and read.status.value == "completed"
    # errors come back as the Problem model
    missing = get_unit.sync("wu_missing", client=as_tenant)
    assert isinstance(missing, models.Problem) and missing.code == "not_found"
