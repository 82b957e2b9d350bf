"""The end-to-end demo, run exactly as API.md writes it (real processes, one data dir each).

Each command must finish (a generous timeout turns a hang into a failure; how long the demo
takes is not asserted here), exit 0 and print an honest report: every unit terminal, ledger
lines, a wallet, and ``replay: identical``.
"""

from __future__ import annotations

import re
import signal
import socket
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.support.processes import clean_environ
from tests.support.waiting import wait_until

pytestmark = pytest.mark.slow

REPO_ROOT = Path(__file__).resolve().parents[2]
SCRIPT = "scripts/e2e_demo.py"


@dataclass
class Run:
    code: int
    out: str


def run_demo(args: list[str], data_dir: Path, timeout_s: float = 120.0) -> Run:
    env = clean_environ(KRAKO_DATA_DIR=str(data_dir))
    proc = subprocess.run(
        [sys.executable, SCRIPT, *args],
        cwd=REPO_ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout_s,
        check=False,
    )
    return Run(proc.returncode, proc.stdout + proc.stderr)


def assert_healthy_report(run: Run, data_dir: Path, units: int) -> None:
    assert run.code == 0, run.out
    assert f"data dir {data_dir / 'demo'} (SQLite)" in run.out, run.out
    assert f"Work units ({units})" in run.out, run.out
    assert f"units terminal: {units}/{units}" in run.out, run.out
    assert "replay: identical" in run.out, run.out
    assert "RESULT: OK" in run.out, run.out
    assert re.search(r"^wallet ten_\S+: total \d+\.\d{6} USD", run.out, re.M), run.out
    assert "Event timeline" in run.out and "Placements" in run.out, run.out
    assert "workunit.completed" in run.out, run.out


def ledger_lines(out: str) -> int:
    match = re.search(r"^ledger: (\d+) lines", out, re.M)
    assert match, out
    return int(match[1])


def test_cpu_burst(tmp_path: Path) -> None:
    run = run_demo(["--reset", "--burst", "3", "--polls", "6"], tmp_path)
    assert_healthy_report(run, tmp_path, units=3)
    assert ledger_lines(run.out) == 3  # one workunit_cpu line per completed unit
    assert run.out.count("workunit_cpu") >= 3
    assert "candidate agent-1: score" in run.out
    assert "agent agent-1: exit 0; polls=6, claimed=3, completed=3" in run.out


def test_llm_pod_with_stub(tmp_path: Path) -> None:
    run = run_demo(
        ["--reset", "--kind", "llm_pod", "--polls", "2", "--llm-provider", "stub"], tmp_path
    )
    assert_healthy_report(run, tmp_path, units=3)
    assert "LLM telemetry (3 invocations)" in run.out
    assert "stub/" in run.out
    # an llm_pod unit is billed twice over, never for the same thing: cpu and tokens
    assert ledger_lines(run.out) == 6
    assert "llm_tokens" in run.out and "workunit_cpu" in run.out


def test_multi_agent_race(tmp_path: Path) -> None:
    run = run_demo(["--reset", "--burst", "1", "--polls", "2", "--multi-agent"], tmp_path)
    assert_healthy_report(run, tmp_path, units=1)
    assert "offered to agent-1, agent-2" in run.out
    skipped = re.findall(
        r"^race: (agent-\d) skipped u1:\S+ \(reason=already_claimed\)", run.out, re.M
    )
    assert len(skipped) == 1, run.out
    claimed = re.findall(r"^agent (agent-\d): exit 0; .*claimed=1, completed=1", run.out, re.M)
    assert len(claimed) == 1 and claimed != skipped, run.out
    assert "Claims (1)" in run.out
    assert ledger_lines(run.out) == 1


def test_simulated_pressure(tmp_path: Path) -> None:
    run = run_demo(
        ["--reset", "--simulate-pressure", "auto", "--burst", "3", "--polls", "6"], tmp_path
    )
    # 3 burst + 3 pressure units, then a second wave of 14, then one p0 admitted in CRITICAL
    # (the p1 probe is refused with 429): 21 units, all run once the agent starts
    assert_healthy_report(run, tmp_path, units=21)
    assert ledger_lines(run.out) == 21
    section = run.out.split("Capacity", 1)[1].split("Replay check", 1)[0]
    for step in ("OPEN -> THROTTLED", "THROTTLED -> CRITICAL", "CRITICAL -> THROTTLED"):
        assert step in section, section
    assert "-> OPEN" in section, section
    assert "capacity.scale.requested" in section
    assert "in CRITICAL a p1 submission got 429" in run.out
    assert "in CRITICAL a p0 submission got 201" in run.out
    assert "now: mode OPEN" in section


def test_ctrl_c_stops_every_process(tmp_path: Path) -> None:
    env = clean_environ(KRAKO_DATA_DIR=str(tmp_path))
    proc = subprocess.Popen(
        [sys.executable, SCRIPT, "--reset", "--burst", "1", "--polls", "20", "--plain"],
        cwd=REPO_ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    assert proc.stdout is not None
    printed: list[str] = []

    def control_plane_port() -> int | None:
        assert proc.stdout is not None
        printed.append(proc.stdout.readline())  # blocks until the next line
        assert printed[-1] or proc.poll() is None, f"the demo exited:\n{''.join(printed)}"
        match = re.search(r"control plane http://127\.0\.0\.1:(\d+)", printed[-1])
        return int(match[1]) if match else None

    port = wait_until("the demo's control plane URL", control_plane_port, interval=0)
    # wait until the agent holds a long-poll, then interrupt
    log = tmp_path / "demo" / "logs" / "agent-1.log"
    wait_until(
        "the demo's agent registered",
        lambda: "event=registered" in _read(log),
        interval=0.1,
        context=lambda: "".join(printed),
    )
    proc.send_signal(signal.SIGINT)
    rest, _ = proc.communicate(timeout=30)
    header = "".join(printed)
    assert proc.returncode == 130, header + rest
    assert "interrupted: stopping the processes" in rest
    with pytest.raises(OSError), socket.create_connection(("127.0.0.1", port), timeout=1):
        pass
    assert "event=stopped" in _read(log), _read(log)


def _read(path: Path) -> str:
    try:
        return path.read_text(errors="replace")
    except OSError:
        return ""
