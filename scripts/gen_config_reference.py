"""Generate docs/configuration.md: every ``KRAKO_*`` setting, its default and its meaning.

The tables are read from the settings classes themselves (``control_plane.settings.Settings``,
one table per group, ``node_agent.settings.AgentSettings`` when the agent is installed, with
its aliases, and the ``krako`` CLI's global options), so the reference cannot drift from the
code: tests/cli/test_config_reference.py fails when the committed file differs from what this
script writes.

    python scripts/gen_config_reference.py          # rewrite docs/configuration.md
    python scripts/gen_config_reference.py --check  # exit 1 if it is stale
"""

from __future__ import annotations

import argparse
import enum
import importlib
import json
import sys
import types
import typing
from collections.abc import Iterable
from decimal import Decimal
from pathlib import Path
from typing import Any

import annotated_types
from pydantic import AliasChoices, BaseModel
from pydantic.fields import FieldInfo
from pydantic_core import PydanticUndefined

REPO = Path(__file__).resolve().parents[1]
TARGET = REPO / "docs" / "configuration.md"
COMMAND = "python scripts/gen_config_reference.py"

if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))


# --------------------------------------------------------------------------- one field


def env_names(name: str, info: FieldInfo, prefix: str = "KRAKO_") -> list[str]:
    """The environment variables that set the field (an alias replaces the prefixed name)."""
    alias = info.validation_alias
    if isinstance(alias, AliasChoices):
        return [str(choice) for choice in alias.choices if isinstance(choice, str)]
    if isinstance(alias, str):
        return [alias]
    return [f"{prefix}{name}".upper()]


def variables_cell(names: list[str]) -> str:
    """The variable, then its aliases (older names still read)."""
    name, *aliases = names
    return "<br>".join([f"`{name}`", *(f"alias `{alias}`" for alias in aliases)])


def _value(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, enum.Enum):
        return str(value.value)
    if isinstance(value, (list, tuple)):
        return ",".join(_value(v) for v in value)
    if isinstance(value, dict):
        return json.dumps(value) if value else ""
    if isinstance(value, (Decimal, Path)):
        return str(value)
    return str(value)


def default_text(info: FieldInfo) -> str:
    if info.default_factory is not None:
        value = info.default_factory()  # type: ignore[call-arg]
    elif info.default is PydanticUndefined:
        return "(required)"
    else:
        value = info.default
    text = _value(value)
    return f"`{text}`" if text else "(none)"


def type_text(annotation: Any) -> str:
    """A reader's name for the type: ``float``, ``kv | json``, ``list of cpu | llm_pod``."""
    origin = typing.get_origin(annotation)
    args = typing.get_args(annotation)
    if origin in (typing.Union, types.UnionType):
        return " or ".join(type_text(a) for a in args if a is not type(None))
    if origin is typing.Literal:
        return " \\| ".join(str(a) for a in args)
    if origin in (list, tuple, set, frozenset) and args:
        return f"list of {type_text(args[0])}"
    if origin is dict:
        return "mapping"
    if isinstance(annotation, type):
        if issubclass(annotation, enum.Enum):
            return " \\| ".join(str(m.value) for m in annotation)
        names = {"SecretStr": "secret", "Path": "path", "Decimal": "decimal", "str": "string"}
        return names.get(annotation.__name__, annotation.__name__)
    return str(annotation)


def bounds_text(info: FieldInfo) -> str:
    parts = []
    for meta in info.metadata:
        if isinstance(meta, annotated_types.Ge):
            parts.append(f"≥ {meta.ge}")
        elif isinstance(meta, annotated_types.Gt):
            parts.append(f"> {meta.gt}")
        elif isinstance(meta, annotated_types.Le):
            parts.append(f"≤ {meta.le}")
        elif isinstance(meta, annotated_types.Lt):
            parts.append(f"< {meta.lt}")
    return ", ".join(parts)


def _cell(text: str) -> str:
    return " ".join(text.replace("|", "\\|").split())


# --------------------------------------------------------------------------- tables


def _row(cells: list[str]) -> str:
    return "| " + " | ".join(cells) + " |"


def _kind(info: FieldInfo) -> str:
    kind = type_text(info.annotation)
    bounds = bounds_text(info)
    return f"{kind} ({bounds})" if bounds else kind


def control_plane_sections() -> tuple[list[str], list[str]]:
    """One table per settings group of the control plane, and the undocumented settings."""
    from control_plane.settings import Settings, leaf_settings

    lines: list[str] = []
    undocumented: list[str] = []
    group_path: tuple[str, ...] | None = None
    for leaf in leaf_settings(Settings):
        path = leaf.path[:-1]
        if path != group_path:
            group_path = path
            doc = (leaf.group.__doc__ or "").strip().splitlines()[0]
            lines += [
                *([""] if lines else []),
                f"### `{'.'.join(path)}`",
                "",
                _cell(doc),
                "",
                "| variable | setting | type | default | description |",
                "|---|---|---|---|---|",
            ]
        description = _cell(leaf.info.description or "")
        if not description:
            undocumented.append(".".join(leaf.path))
        lines.append(
            _row(
                [
                    f"`{leaf.env}`",
                    f"`{'.'.join(leaf.path)}`",
                    _kind(leaf.info),
                    default_text(leaf.info),
                    description,
                ]
            )
        )
    return lines, undocumented


def settings_table(
    model: type[BaseModel], flags: dict[str, str] | None = None
) -> tuple[list[str], list[str]]:
    """The markdown rows of a flat settings class, and the fields that have no description."""
    header = ["| variable | type | default | description |", "|---|---|---|---|"]
    if flags is not None:
        header = [
            "| variable | flag | type | default | description |",
            "|---|---|---|---|---|",
        ]
    rows = list(header)
    undocumented = []
    for name, info in model.model_fields.items():
        description = _cell(info.description or "")
        if not description:
            undocumented.append(f"{model.__name__}.{name}")
        cells = [variables_cell(env_names(name, info)), _kind(info), default_text(info)]
        cells.append(description)
        if flags is not None:
            flag = flags.get(name)
            cells.insert(1, f"`{flag}`" if flag else "")
        rows.append(_row(cells))
    return rows, undocumented


def _agent() -> tuple[type[BaseModel] | None, dict[str, str]]:
    """The agent's settings class and its command-line flags, if the agent is installed."""
    try:
        module = importlib.import_module("node_agent.settings")
        model = module.AgentSettings
    except (ImportError, AttributeError):
        return None, {}
    flags: dict[str, str] = {}
    try:
        for flag in importlib.import_module("node_agent.cli").FLAGS:
            flags[flag.field] = flag.flags[0]
    except (ImportError, AttributeError):
        pass
    return model, flags


def cli_rows() -> list[str]:
    """The ``krako`` CLI's global options that come from the environment."""
    import typer.main

    from krako_cli.main import app

    command = typer.main.get_command(app)
    rows = ["| variable | flag | default | description |", "|---|---|---|---|"]
    for param in command.params:
        # duck-typed: typer may bring its own copy of click's classes
        envvar = getattr(param, "envvar", None)
        if not envvar:
            continue
        envvars: Iterable[str] = [envvar] if isinstance(envvar, str) else list(envvar)
        default = _value(param.default)
        rows.append(
            "| "
            + " | ".join(
                [
                    "<br>".join(f"`{e}`" for e in envvars),
                    f"`{param.opts[0]}`",
                    f"`{default}`" if default else "(none)",
                    _cell(getattr(param, "help", None) or ""),
                ]
            )
            + " |"
        )
    return rows


def render() -> tuple[str, list[str]]:
    """The whole document, and the settings that have no description (to be fixed)."""
    cp_sections, undocumented = control_plane_sections()
    lines = [
        "# Configuration reference",
        "",
        f"<!-- Generated by `{COMMAND}` from the settings classes; do not edit by hand. -->",
        "",
        "Every setting is an environment variable (a `.env` file in the working directory is "
        "read too). Booleans accept `1`/`0` or `true`/`false`; lists are comma separated; "
        "durations are in seconds.",
        "",
        "## Control plane (`krako-control-plane`)",
        "",
        "From `control_plane.settings.Settings`, one group per table (the setting column is "
        "its place in `Settings`, for example `settings.leases.lease_s`); each variable keeps "
        "its flat name. Outside `KRAKO_DEV=1` the process refuses to start without "
        "`KRAKO_ADMIN_TOKEN` and `KRAKO_NODE_JOIN_TOKEN` (16 characters at least), and it "
        "never starts when the two are equal. `--host` and `--port` are command-line flags "
        "only.",
        "",
        *cp_sections,
        "",
    ]
    model, flags = _agent()
    if model is not None:
        rows, missing = settings_table(model, flags)
        undocumented += missing
        lines += [
            "## Node agent (`krako-agent`)",
            "",
            "From `node_agent.settings.AgentSettings`. A command-line flag overrides the "
            "variable, which overrides `.env`, which overrides the default. The agent shares "
            "the `KRAKO_` namespace with the control plane (one `.env`, one ConfigMap), so "
            "settings only the agent reads are named `KRAKO_AGENT_*`; an alias is an older "
            "name that is still read (when both are set, the first listed wins). "
            "`KRAKO_NODE_JOIN_TOKEN` is the same secret on both sides.",
            "",
            *rows,
            "",
        ]
    lines += [
        "## CLI (`krako`)",
        "",
        "Global options of the command line for people; each command also takes `--json`.",
        "",
        *cli_rows(),
        "",
    ]
    return "\n".join(lines), undocumented


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--check", action="store_true", help="exit 1 if the file is stale")
    args = parser.parse_args(argv)
    text, undocumented = render()
    for name in undocumented:
        print(f"note: {name} has no description", file=sys.stderr)
    current = TARGET.read_text(encoding="utf-8") if TARGET.exists() else None
    if args.check:
        if current != text:
            print(f"{TARGET.relative_to(REPO)} is stale: run {COMMAND}", file=sys.stderr)
            return 1
        return 0
    TARGET.parent.mkdir(parents=True, exist_ok=True)
    TARGET.write_text(text, encoding="utf-8")
    print(f"wrote {TARGET.relative_to(REPO)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
