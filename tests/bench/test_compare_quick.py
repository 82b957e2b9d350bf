"""``bench/compare.py`` end to end on a tiny workload: Krako only, SQLite only, real processes.

It checks that the harness runs, exits 0 and writes every figure with a positive value; it
never asserts a speed (the figures of so small a run mean nothing)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.slow
@pytest.mark.timeout(120)
def test_compare_quick_krako_sqlite(tmp_path: Path) -> None:
    out = tmp_path / "compare.json"
    argv = [
        sys.executable, str(ROOT / "bench" / "compare.py"),
        "--systems", "krako", "--backends", "sqlite",
        "--units", "50", "--round-trips", "5",
        # enough commands that each CPU figure spans many 10 ms clock ticks
        "--commands", "100",
        "--time-limit", "60",
        "--json", str(out),
    ]  # fmt: skip
    proc = subprocess.run(argv, cwd=tmp_path, capture_output=True, text=True, timeout=110)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert str(out) in proc.stdout
    report = json.loads(out.read_text())
    assert report["errors"] == {}
    figures = report["figures"]
    row = "krako/sqlite"

    for key in ("e2e", "drain"):
        figure = figures[key][row]
        assert figure["finished"] is True, figure
        assert figure["completed"] == 50
        assert figure["units_per_s"] > 0
    assert figures["e2e"][row]["submitted"] == 50

    round_trip = figures["round_trip"][row]
    assert len(round_trip["samples_ms"]) == 5
    assert 0 < round_trip["p50_ms"] <= round_trip["p99_ms"]

    cpu = figures["cpu_per_command"]
    assert cpu["baseline"]["cpu_ms_per_command"] > 0
    for kind in ("submit", "claim", "complete"):
        assert cpu[row][kind]["commands"] == 100
        assert cpu[row][kind]["cpu_ms_per_command"] > 0, (kind, cpu[row][kind])
        assert cpu[row][kind]["ratio_to_baseline"] > 0

    assert figures["batch_submit"][row]["units_per_s"] > 0

    env = report["environment"]
    assert env["cpu_count"] >= 1
    assert env["python"] and env["date"]
    assert "krako" in env["packages"]
