"""The committed openapi/openapi.json is what the app serves, and it documents the contract:
every operation has a stable id, a summary, a description and its problem replies."""

from __future__ import annotations

import importlib.util
import json
import re
from functools import cache
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

from tests.api.conftest import Api

ROOT = Path(__file__).resolve().parents[2]
COMMITTED = ROOT / "openapi" / "openapi.json"
STALE = (
    "openapi/openapi.json differs from what the app serves; "
    "run `python scripts/export_openapi.py` and commit the result"
)

# The routes of API.md: the document must keep every one of them.
CONTRACT: list[tuple[str, str]] = [
    ("post", "/v1/tenants"),
    ("get", "/v1/tenants/me"),
    ("post", "/v1/workunits"),
    ("post", "/v1/workunits/batch"),
    ("get", "/v1/workunits/{unit_id}"),
    ("get", "/v1/workunits"),
    ("get", "/v1/workunits/{unit_id}/events"),
    ("post", "/v1/workunits/{unit_id}/cancel"),
    ("post", "/v1/workunits/{unit_id}/claim"),
    ("post", "/v1/workunits/{unit_id}/llm-invocations"),
    ("post", "/v1/workunits/{unit_id}/complete"),
    ("post", "/v1/workunits/{unit_id}/fail"),
    ("post", "/v1/nodes"),
    ("post", "/v1/nodes/{node_id}/heartbeat"),
    ("post", "/v1/nodes/{node_id}/poll"),
    ("post", "/v1/nodes/{node_id}/drain"),
    ("get", "/v1/nodes"),
    ("get", "/v1/nodes/{node_id}"),
    ("get", "/v1/events"),
    ("get", "/v1/capacity"),
    ("put", "/v1/capacity/mode"),
    ("delete", "/v1/capacity/mode"),
    ("get", "/healthz"),
    ("get", "/readyz"),
    ("get", "/metrics"),
]

# Component schemas that have neither a description nor an example yet. The list may only
# shrink: a new schema must be documented (a docstring or json_schema_extra examples), and a
# schema that gains documentation must be removed from here.
UNDOCUMENTED_SCHEMAS = {
    # FastAPI's own validation models (our 422 replies are Problem documents)
    "HTTPValidationError",
    "ValidationError",
    # enums of shared/enums.py (their values are the documentation)
    "CapacityMode",
    "EventType",
    "LineItemType",
    "NodeHealth",
    "Priority",
    "WorkUnitKind",
    "WorkUnitStatus",
    # models still to document (shared/wire.py)
    "Page_Node_",
    "Page_WorkUnit_",
}

# Request bodies without an example yet; the list may only shrink (as above).
BODIES_WITHOUT_EXAMPLE: set[str] = set()

METHODS = {"get", "post", "put", "patch", "delete"}


def _load_script() -> ModuleType:
    spec = importlib.util.spec_from_file_location(
        "export_openapi", ROOT / "scripts" / "export_openapi.py"
    )
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@cache
def _generated() -> str:
    text: str = _load_script().render(_load_script().build_spec())
    return text


def _spec() -> dict[str, Any]:
    result: dict[str, Any] = json.loads(_generated())
    return result


def _operations() -> list[tuple[str, str, dict[str, Any]]]:
    return [
        (method, path, op)
        for path, item in _spec()["paths"].items()
        for method, op in item.items()
        if method in METHODS
    ]


def test_committed_document_is_current() -> None:
    assert COMMITTED.exists(), STALE
    committed = COMMITTED.read_text(encoding="utf-8")
    assert committed == _generated(), STALE
    assert committed.endswith("}\n")


def test_the_app_serves_the_committed_document(api: Api) -> None:
    """What a running control plane serves (real settings, real database) is the file."""
    r = api.client.get("/openapi.json")
    assert r.status_code == 200
    assert r.json() == json.loads(COMMITTED.read_text(encoding="utf-8")), STALE
    assert api.client.get("/docs").status_code == 200


def test_every_contract_route_is_documented() -> None:
    paths = _spec()["paths"]
    missing = [(m, p) for m, p in CONTRACT if m not in paths.get(p, {})]
    assert not missing, f"routes of API.md missing from the OpenAPI document: {missing}"


def test_every_operation_is_documented() -> None:
    seen: dict[str, str] = {}
    problems: list[str] = []
    for method, path, op in _operations():
        where = f"{method.upper()} {path}"
        op_id = op.get("operationId", "")
        if not re.fullmatch(r"[a-z][a-z0-9_]*", op_id):
            problems.append(f"{where}: operationId {op_id!r} is not a stable snake_case id")
        elif op_id in seen:
            problems.append(f"{where}: operationId {op_id!r} also used by {seen[op_id]}")
        seen[op_id] = where
        if not op.get("summary", "").strip():
            problems.append(f"{where}: no summary")
        if len(op.get("description", "").strip()) < 10:
            problems.append(f"{where}: no description")
        if not op.get("tags"):
            problems.append(f"{where}: no tag")
        statuses = set(op.get("responses", {}))
        if not any(s.startswith("2") for s in statuses):
            problems.append(f"{where}: no 2xx response")
        for status, response in op.get("responses", {}).items():
            if not response.get("description"):
                problems.append(f"{where}: response {status} without a description")
        if path.startswith("/v1/"):
            # every /v1 route is authenticated: 401 and 403 are part of its contract
            for status in ("401", "403"):
                if status not in statuses:
                    problems.append(f"{where}: {status} not documented")
                    continue
                schema = json.dumps(op["responses"][status].get("content", {}))
                if "#/components/schemas/Problem" not in schema:
                    problems.append(f"{where}: {status} is not documented as a Problem")
            takes_input = "requestBody" in op or any(
                p.get("in") == "query" for p in op.get("parameters", [])
            )
            if takes_input and "422" not in statuses:
                problems.append(f"{where}: takes input but documents no 422")
    assert not problems, "\n".join(problems)


def test_request_bodies_have_examples() -> None:
    """A generated SDK's users read these: every JSON request body has an example."""
    schemas = _spec()["components"]["schemas"]
    lacking: list[str] = []
    for method, path, op in _operations():
        content = op.get("requestBody", {}).get("content", {}).get("application/json")
        if content is None:
            continue
        ref = content.get("schema", {}).get("$ref", "")
        schema = schemas.get(ref.rsplit("/", 1)[-1], content.get("schema", {}))
        has_example = bool(
            schema.get("examples") or schema.get("example") or content.get("example")
        )
        has_example = has_example or any(
            prop.get("examples") or prop.get("example")
            for prop in schema.get("properties", {}).values()
        )
        if not has_example:
            lacking.append(f"{method.upper()} {path}")
    new = sorted(set(lacking) - BODIES_WITHOUT_EXAMPLE)
    assert not new, f"request bodies without an example: {new}"
    fixed = sorted(BODIES_WITHOUT_EXAMPLE - set(lacking))
    assert not fixed, f"now with an example: remove from BODIES_WITHOUT_EXAMPLE: {fixed}"


def test_component_schemas_are_documented() -> None:
    schemas = _spec()["components"]["schemas"]
    undocumented = {
        name
        for name, schema in schemas.items()
        if not (schema.get("description") or schema.get("examples") or schema.get("example"))
    }
    new = sorted(undocumented - UNDOCUMENTED_SCHEMAS)
    assert not new, f"schemas without a description or example (add a docstring): {new}"
    fixed = sorted(UNDOCUMENTED_SCHEMAS & (set(schemas) - undocumented))
    assert not fixed, f"now documented: remove from UNDOCUMENTED_SCHEMAS in this test: {fixed}"


@pytest.mark.parametrize("name", ["Problem", "WorkUnit", "ClaimReply"])
def test_key_schemas_have_examples(name: str) -> None:
    schema = _spec()["components"]["schemas"][name]
    assert schema.get("examples"), f"{name} has no example"


def test_bearer_security_schemes_are_declared() -> None:
    schemes = _spec()["components"]["securitySchemes"]
    assert set(schemes) == {"adminToken", "tenantToken", "nodeToken", "nodeJoinToken"}
    for scheme in schemes.values():
        assert scheme["type"] == "http" and scheme["scheme"] == "bearer"
        assert scheme["description"]
    ops = {(method, path): op for method, path, op in _operations()}
    assert ops[("post", "/v1/workunits")]["security"] == [{"tenantToken": []}]
    assert ops[("post", "/v1/tenants")]["security"] == [{"adminToken": []}]
    assert ops[("post", "/v1/nodes")]["security"] == [{"nodeJoinToken": []}]
    assert ops[("post", "/v1/nodes/{node_id}/heartbeat")]["security"] == [{"nodeToken": []}]
    assert {"tenantToken": []} in ops[("get", "/v1/workunits")]["security"]
    assert {"adminToken": []} in ops[("get", "/v1/workunits")]["security"]
    for method, path, op in _operations():
        if path.startswith("/v1/"):
            assert op.get("security"), f"{method.upper()} {path} declares no security"
        else:
            assert "security" not in op, f"{method.upper()} {path} needs no token"
