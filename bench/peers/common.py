"""What every system's figures share: the progress line, the completion monitor and the three
workload shapes (one at a time, backlog drain, round trip), each driven through callables so a
peer module supplies only how to submit and how to count what is done."""

from __future__ import annotations

import statistics
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

from peers.procs import Children, cpu_seconds

Figure = dict[str, Any]


class Progress:
    """One status line (elapsed, units done), redrawn in place on a terminal and printed every
    few seconds otherwise, so a CI log shows that the run is alive without drowning in it."""

    def __init__(self, stream: TextIO = sys.stderr) -> None:
        self.stream = stream
        self.tty = stream.isatty()
        self.started = time.monotonic()
        self._last = 0.0
        self._width = 0
        self._lock = threading.Lock()

    def show(self, label: str, text: str, *, force: bool = False) -> None:
        now = time.monotonic()
        with self._lock:
            if not force and now - self._last < (0.25 if self.tty else 5.0):
                return
            self._last = now
            line = f"[{now - self.started:7.1f} s] {label}: {text}"
            if self.tty:
                pad = max(0, self._width - len(line))
                self.stream.write("\r" + line + " " * pad)
                self._width = len(line)
            else:
                self.stream.write(line + "\n")
            self.stream.flush()

    def note(self, text: str) -> None:
        """A line of its own (a phase starting, a peer skipped), kept in the scrollback."""
        with self._lock:
            if self.tty and self._width:
                self.stream.write("\r" + " " * self._width + "\r")
                self._width = 0
            self.stream.write(f"[{time.monotonic() - self.started:7.1f} s] {text}\n")
            self.stream.flush()

    def done(self) -> None:
        with self._lock:
            if self.tty and self._width:
                self.stream.write("\r" + " " * self._width + "\r")
                self.stream.flush()
                self._width = 0


Counter = Callable[[], int]
"""Returns how many units are done so far (cumulative); may block briefly (a long-poll)."""


@dataclass
class CompletionMonitor:
    """Counts completions in a thread while the main thread submits: when the first one was
    seen and when the last one was. ``count`` is called in a loop until ``total`` are done,
    ``deadline`` passes or :meth:`stop` is called."""

    count: Counter
    total: int
    label: str
    progress: Progress
    submitted: Callable[[], int]
    deadline: float
    done: int = 0
    first_at: float | None = None
    first_count: int = 0
    all_at: float | None = None
    error: BaseException | None = None
    started_at: float = 0.0
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None

    def start(self) -> None:
        self.started_at = time.perf_counter()
        self._thread = threading.Thread(target=self._run, name=f"monitor-{self.label}")
        self._thread.daemon = True
        self._thread.start()

    def stop(self) -> None:
        """End the thread now (the caller is unwinding: Ctrl-C, a failed submit)."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(10.0)
        self.progress.done()

    def _run(self) -> None:
        try:
            while not self._stop.is_set() and time.perf_counter() < self.deadline:
                n = self.count()
                now = time.perf_counter()
                if n and self.first_at is None:
                    self.first_at, self.first_count = now, n
                self.done = n
                if n >= self.total:
                    self.all_at = now
                    return
                self.progress.show(
                    self.label,
                    f"{now - self.started_at:6.1f} s, {self.submitted()} submitted, "
                    f"{n}/{self.total} done",
                )
        except BaseException as exc:  # reported by wait(); the thread must not die silently
            self.error = exc

    def wait(self) -> None:
        """Until all are done or the deadline passed."""
        assert self._thread is not None
        self._thread.join(max(0.0, self.deadline - time.perf_counter()) + 5.0)
        self.stop()
        if self.error is not None:
            raise RuntimeError(f"{self.label}: counting completions failed") from self.error


def one_at_a_time(
    submit: Callable[[int], None],
    count: Counter,
    *,
    units: int,
    time_limit: float,
    label: str,
    progress: Progress,
) -> Figure:
    """Figure 1: ``units`` submitted one call at a time while the workers run; the rate is from
    the first submit to the last completion. A run that hits ``time_limit`` says how far it
    got and its rate is over the time it had (``finished`` false)."""
    submitted = 0
    t0 = time.perf_counter()
    monitor = CompletionMonitor(
        count, units, label, progress, lambda: submitted, deadline=t0 + time_limit
    )
    monitor.start()
    try:
        for i in range(units):
            if time.perf_counter() > monitor.deadline:
                break
            submit(i)
            submitted += 1
        submit_s = time.perf_counter() - t0
    except BaseException:
        monitor.stop()
        raise
    monitor.wait()
    finished = monitor.all_at is not None
    seconds = (monitor.all_at if finished else time.perf_counter()) - t0
    return {
        "units": units,
        "submitted": submitted,
        "completed": monitor.done,
        "finished": finished,
        "time_limit_s": time_limit,
        "seconds": seconds,
        "submit_seconds": submit_s,
        "submit_per_s": submitted / submit_s if submit_s else 0.0,
        "units_per_s": monitor.done / seconds if seconds else 0.0,
    }


def drain(
    enqueue_all: Callable[[], None],
    start_workers: Callable[[], None],
    count: Counter,
    *,
    units: int,
    time_limit: float,
    label: str,
    progress: Progress,
) -> Figure:
    """Figure 2: the backlog is queued with no worker running, then the workers start. The
    headline rate is from the first completion seen to the last (worker start-up excluded, so
    a slow-starting pool is not penalised); the rate from the workers' start is kept too."""
    progress.note(f"{label}: queueing {units} units with no worker running")
    t0 = time.perf_counter()
    enqueue_all()
    enqueue_s = time.perf_counter() - t0
    t1 = time.perf_counter()
    monitor = CompletionMonitor(count, units, label, progress, lambda: units, t1 + time_limit)
    monitor.start()
    try:
        start_workers()
    except BaseException:
        monitor.stop()
        raise
    monitor.wait()
    finished = monitor.all_at is not None
    end = monitor.all_at if finished else time.perf_counter()
    first = monitor.first_at
    span = (end - first) if first is not None else 0.0
    drained = monitor.done - monitor.first_count
    return {
        "units": units,
        "enqueue_seconds": enqueue_s,
        "enqueue_units_per_s": units / enqueue_s if enqueue_s else 0.0,
        "completed": monitor.done,
        "finished": finished,
        "time_limit_s": time_limit,
        "first_completion_after_s": (first - t1) if first is not None else None,
        "seconds_first_to_last": span,
        "units_per_s": drained / span if span > 0 else 0.0,
        "seconds_from_worker_start": end - t1,
        "units_per_s_from_worker_start": monitor.done / (end - t1) if end > t1 else 0.0,
    }


def round_trips(
    one: Callable[[], None],
    *,
    samples: int,
    warmup: int,
    label: str,
    progress: Progress,
    method: str,
) -> Figure:
    """Figure 3: ``one()`` submits a unit and returns once the client has seen it completed;
    timed one after another on an otherwise idle system, after ``warmup`` untimed ones."""
    for _ in range(warmup):
        one()
    times: list[float] = []
    for i in range(samples):
        t = time.perf_counter()
        one()
        times.append((time.perf_counter() - t) * 1000)
        progress.show(label, f"round trip {i + 1}/{samples}")
    progress.done()
    return {
        "samples": samples,
        "warmup": warmup,
        "method": method,
        "p50_ms": statistics.median(times),
        "p99_ms": percentile(times, 99),
        "mean_ms": statistics.fmean(times),
        "min_ms": min(times),
        "max_ms": max(times),
        "samples_ms": [round(t, 3) for t in times],
    }


def percentile(values: list[float], pct: float) -> float:
    """Nearest-rank-interpolated percentile that works for any sample size >= 1."""
    if len(values) == 1:
        return values[0]
    cuts = statistics.quantiles(values, n=100, method="inclusive")
    return cuts[int(pct) - 1]


def idle_cpu_per_s(pid: int, seconds: float) -> float:
    """CPU seconds per second a server burns doing nothing (its timers and sweeps)."""
    c0, t0 = cpu_seconds(pid), time.perf_counter()
    time.sleep(seconds)
    return (cpu_seconds(pid) - c0) / (time.perf_counter() - t0)


def cpu_per_command(
    pid: int, run: Callable[[], int], *, idle_per_s: float, settle_s: float = 0.3
) -> Figure:
    """Server CPU (utime + stime of ``pid``) spent while ``run()`` issues its commands, plus a
    short settle so work a command leaves for a background task is counted, minus the idle
    rate over the same window; divided by the number of commands ``run()`` returns."""
    c0, t0 = cpu_seconds(pid), time.perf_counter()
    n = run()
    wall = time.perf_counter() - t0
    time.sleep(settle_s)
    c1, t1 = cpu_seconds(pid), time.perf_counter()
    gross = c1 - c0
    net = max(0.0, gross - idle_per_s * (t1 - t0))
    return {
        "commands": n,
        "cpu_s_gross": gross,
        "cpu_s_net": net,
        "idle_cpu_per_s": idle_per_s,
        "window_s": t1 - t0,
        "wall_s": wall,
        "commands_per_s": n / wall if wall else 0.0,
        "cpu_ms_per_command": net / n * 1000 if n else 0.0,
    }


@dataclass
class Workload:
    """The sizes of one run (the issue's workload unless ``--quick`` or flags shrink it)."""

    units: int = 5000
    round_trips: int = 200
    warmup: int = 5
    commands: int = 1000
    batch_units: int = 5000
    time_limit: float = 300.0
    workers: int = 2
    concurrency: int = 16


@dataclass
class RunContext:
    """What every peer module needs from the run: where to put files, how to start processes,
    where the shared database servers are, and the environment children inherit."""

    workdir: Path
    children: Children
    progress: Progress
    run_id: str
    pg_url: str
    env: dict[str, str]


def create_pg_database(admin_url: str, name: str) -> str:
    """Create a throwaway database on the server of ``admin_url``; returns its URL."""
    import psycopg

    with psycopg.connect(admin_url, autocommit=True, connect_timeout=5) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    return admin_url.rsplit("/", 1)[0] + "/" + name


def drop_pg_database(admin_url: str, name: str) -> None:
    import psycopg

    with psycopg.connect(admin_url, autocommit=True, connect_timeout=5) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def warm_up(
    submit: Callable[[int], None], count: Counter, n: int, *, what: str, timeout: float = 60.0
) -> Counter:
    """Run ``n`` units through a freshly started system (connections opened, workers past
    their first poll) before a timed figure; returns ``count`` with those ``n`` taken off."""
    for i in range(n):
        submit(-1 - i)
    deadline = time.monotonic() + timeout
    base = count()
    while base < n:
        if time.monotonic() > deadline:
            raise RuntimeError(f"{what}: {base}/{n} warm-up units done after {timeout:.0f} s")
        base = count()
    return lambda: count() - base
