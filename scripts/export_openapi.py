"""Write openapi/openapi.json: the OpenAPI document the control plane serves at /openapi.json.

The document is built from ``create_app(settings).openapi()`` with placeholder tokens (no
database is opened), so it is the same on every machine; tests/api/test_openapi.py fails when
the committed file differs from what the app serves.

    python scripts/export_openapi.py          # rewrite openapi/openapi.json
    python scripts/export_openapi.py --check  # exit 1 if it is stale
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
OUTPUT = ROOT / "openapi" / "openapi.json"

if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from control_plane.app import create_app  # noqa: E402
from control_plane.settings import Settings  # noqa: E402

PLACEHOLDER_ADMIN = "openapi-export-admin-token"
PLACEHOLDER_JOIN = "openapi-export-join-token"


def build_spec() -> dict[str, Any]:
    """The app's OpenAPI document, independent of this machine's ``KRAKO_*`` environment."""
    saved = {k: os.environ.pop(k) for k in list(os.environ) if k.startswith("KRAKO_")}
    try:
        settings = Settings(
            _env_file=None,  # type: ignore[call-arg]
            api={"admin_token": PLACEHOLDER_ADMIN, "node_join_token": PLACEHOLDER_JOIN},
        )
    finally:
        os.environ.update(saved)
    return create_app(settings).openapi()


def render(spec: dict[str, Any]) -> str:
    """The committed form: sorted keys, two-space indent, UTF-8, a trailing newline."""
    return json.dumps(spec, sort_keys=True, indent=2, ensure_ascii=False) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--check", action="store_true", help="exit 1 if the file is stale")
    parser.add_argument("--output", type=Path, default=OUTPUT, help="where to write")
    args = parser.parse_args(argv)
    text = render(build_spec())
    output: Path = args.output
    if args.check:
        current = output.read_text(encoding="utf-8") if output.exists() else ""
        if current != text:
            print(f"{output} is stale: run python scripts/export_openapi.py", file=sys.stderr)
            return 1
        print(f"{output} is up to date")
        return 0
    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_text(text, encoding="utf-8")
    print(f"wrote {output} ({len(text):,} bytes)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
