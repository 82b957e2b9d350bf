"""The JSONL file sink of the ledger (``KRAKO_LEDGER_JSONL_PATH``).

The file holds the ledger as canonical JSONL (``canonical.canonical_line``, one line each, in
the canonical order ``(source_seq, key)``): byte for byte what ``canonical.ledger_jsonl`` gives
for the database ledger, so the same text a replay rebuilds from the log.

The database is the truth and the file follows it. ``sync`` appends the lines of events past
the last one in the file (its position is read back from the file itself, so nothing else
needs to be stored), flushes and fsyncs. A file that does not fit the database is rebuilt from
the database ledger atomically (a temporary file, fsynced, then renamed over it), for example:

- a truncated last line (a crash in the middle of a write);
- a last line the database does not hold, or not the same lines for its event (the file is
  from another database, or was edited);
- at the first sync of a process, a line count that differs from the database's up to the
  file's last event.

A crash between a commit and the write loses nothing: the next sync appends what is missing.
Only whole events are written, so a complete file always ends at an event boundary.

Several writers (threads, replicas on one machine) exclude each other with an exclusive
``flock`` on ``<path>.lock``; each re-reads the position when the file changed under it.
``verify`` (run by replay) compares the SHA-256 of the whole file with an expected ledger
digest and rebuilds the file when they differ.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import threading
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path

from sqlalchemy import Connection

from control_plane.billing import ledger
from control_plane.billing.domain.canonical import canonical_line
from control_plane.billing.domain.rules import LedgerLine
from control_plane.db.engine import Database

_CHUNK = 1 << 16
_WRITE_BATCH = 2000


class SinkOutcome(StrEnum):
    """What a sync or a verification did to the file."""

    IDENTICAL = "identical"
    """The file already held the expected lines (nothing was rewritten)."""
    APPENDED = "appended"
    """Lines of new events were appended."""
    REBUILT = "rebuilt"
    """The file did not fit and was rewritten from the database ledger."""


@dataclass(frozen=True, slots=True)
class SinkResult:
    outcome: SinkOutcome
    appended: int
    last_seq: int
    reason: str = ""


@dataclass(frozen=True, slots=True)
class _Tail:
    """The end of the file: its size, and the parsed lines of its last event."""

    size: int
    complete: bool
    last_seq: int
    last_lines: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class _Known:
    """What this process last saw of the file (trusted while inode and size are unchanged)."""

    inode: int
    size: int
    last_seq: int


class LedgerSink:
    """Keeps ``path`` equal to the database ledger's canonical JSONL."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self._mutex = threading.Lock()
        self._known: _Known | None = None
        self._checked = False

    # ----------------------------------------------------------------- locking

    @contextmanager
    def locked(self) -> Iterator[None]:
        """Exclusive use of the file: a thread lock and ``flock`` on ``<path>.lock``."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with self._mutex:
            fd = os.open(f"{self.path}.lock", os.O_RDWR | os.O_CREAT, 0o644)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX)
                yield
            finally:
                os.close(fd)  # releases the flock

    # ----------------------------------------------------------------- syncing

    def sync(self, db: Database) -> SinkResult:
        """Append what the database ledger holds past the file's last event (or rebuild)."""
        with self.locked(), ledger.read_snapshot(db) as conn:
            return self.sync_in(conn)

    def sync_in(self, conn: Connection) -> SinkResult:
        """``sync`` on the caller's read connection; the caller holds ``locked()``."""
        last_seq, problem = self._position(conn)
        if problem:
            return self.rebuild_in(conn, problem)
        appended = 0
        seq = last_seq
        with self.path.open("ab") as f:
            for chunk in _chunks(ledger.iter_lines(conn, after_seq=last_seq), _WRITE_BATCH):
                f.write("".join(canonical_line(ln) + "\n" for ln in chunk).encode())
                appended += len(chunk)
                seq = chunk[-1].source_seq
            if appended:
                f.flush()
                os.fsync(f.fileno())
        self._remember(seq)
        outcome = SinkOutcome.APPENDED if appended else SinkOutcome.IDENTICAL
        return SinkResult(outcome, appended, seq)

    def rebuild_in(self, conn: Connection, reason: str = "rebuild requested") -> SinkResult:
        """Rewrite the whole file from the database ledger: temporary file, fsync, rename."""
        tmp = self.path.with_name(f".{self.path.name}.{os.getpid()}.tmp")
        count, seq = 0, 0
        try:
            with tmp.open("wb") as f:
                for chunk in _chunks(ledger.iter_lines(conn), _WRITE_BATCH):
                    f.write("".join(canonical_line(ln) + "\n" for ln in chunk).encode())
                    count += len(chunk)
                    seq = chunk[-1].source_seq
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, self.path)
        finally:
            tmp.unlink(missing_ok=True)
        _fsync_dir(self.path.parent)
        self._remember(seq)
        self._checked = True
        return SinkResult(SinkOutcome.REBUILT, count, seq, reason)

    def verify_in(self, conn: Connection, expected_sha256: str) -> SinkResult:
        """Bring the file up to the caller's read (``sync_in``), then compare the SHA-256 of
        its bytes with ``expected_sha256`` (the replayed ledger's canonical JSONL); rebuild
        it from the database when they differ. The caller holds ``locked()``."""
        synced = self.sync_in(conn)
        if file_sha256(self.path) == expected_sha256:
            outcome = (
                SinkOutcome.REBUILT
                if synced.outcome is SinkOutcome.REBUILT
                else SinkOutcome.IDENTICAL
            )
            return SinkResult(outcome, synced.appended, synced.last_seq, synced.reason)
        return self.rebuild_in(conn, "the file differs from the replayed ledger")

    # ----------------------------------------------------------------- position

    def _remember(self, last_seq: int) -> None:
        st = self.path.stat()
        self._known = _Known(st.st_ino, st.st_size, last_seq)

    def _position(self, conn: Connection) -> tuple[int, str]:
        """``(last seq in the file, "")``, or ``(0, why the file must be rebuilt)``."""
        try:
            st = self.path.stat()
        except FileNotFoundError:
            return 0, "" if ledger.count_lines(conn) == 0 else "no file"
        known = self._known
        if known is not None and (known.inode, known.size) == (st.st_ino, st.st_size):
            return known.last_seq, ""
        tail = _read_tail(self.path, st.st_size)
        if tail.size == 0:
            self._checked = True
            return 0, ""
        if not tail.complete:
            return 0, "the last line is truncated"
        expected = [canonical_line(ln) for ln in ledger.lines_at(conn, tail.last_seq)]
        if not expected:
            return 0, f"the database holds no line of the file's last event (seq {tail.last_seq})"
        # The file's last event must hold exactly the database's lines of that event.
        if list(tail.last_lines) != expected:
            return 0, f"the lines of the file's last event (seq {tail.last_seq}) differ"
        if not self._checked:
            in_file = _count_lines(self.path)
            in_db = ledger.count_lines(conn, tail.last_seq)
            if in_file != in_db:
                why = f"{in_file} lines in the file up to seq {tail.last_seq}, {in_db} in the db"
                return 0, why
            self._checked = True
        return tail.last_seq, ""


def _chunks(lines: Iterable[LedgerLine], size: int) -> Iterator[list[LedgerLine]]:
    """Lines in chunks of about ``size``, cut only between events."""
    chunk: list[LedgerLine] = []
    for line in lines:
        if len(chunk) >= size and line.source_seq != chunk[-1].source_seq:
            yield chunk
            chunk = []
        chunk.append(line)
    if chunk:
        yield chunk


def _read_tail(path: Path, size: int) -> _Tail:
    """The last event's lines, read backwards from the end (never the whole file)."""
    if size == 0:
        return _Tail(0, True, 0, ())
    with path.open("rb") as f:
        f.seek(size - 1)
        complete = f.read(1) == b"\n"
        if not complete:
            return _Tail(size, False, 0, ())
        buf = b""
        pos = size
        lines: list[str] = []
        last_seq: int | None = None
        while True:
            # gather whole lines from the end until one belongs to an earlier event
            parts = buf.split(b"\n")
            # parts[-1] is b"" (the buffer ends with a newline); parts[0] may be partial
            whole = parts[1:-1] if pos > 0 else parts[:-1]
            found_earlier = False
            collected: list[str] = []
            for raw in reversed(whole):
                text = raw.decode("utf-8", errors="replace")
                seq = _seq_of(text)
                if seq is None:
                    return _Tail(size, False, 0, ())
                if last_seq is None:
                    last_seq = seq
                if seq != last_seq:
                    found_earlier = True
                    break
                collected.append(text)
            if found_earlier or pos == 0:
                lines = list(reversed(collected))
                return _Tail(size, True, last_seq or 0, tuple(lines))
            step = min(_CHUNK, pos)
            pos -= step
            f.seek(pos)
            buf = f.read(step) + buf


def _seq_of(line: str) -> int | None:
    try:
        obj = json.loads(line)
        seq = obj["source_seq"]
        return seq if isinstance(seq, int) and not isinstance(seq, bool) else None
    except (ValueError, KeyError, TypeError):
        return None


def _count_lines(path: Path) -> int:
    n = 0
    with path.open("rb") as f:
        while block := f.read(1 << 20):
            n += block.count(b"\n")
    return n


def file_sha256(path: Path) -> str:
    """SHA-256 hex of a file's bytes (of ``b""`` when it does not exist)."""
    h = hashlib.sha256()
    try:
        with path.open("rb") as f:
            while block := f.read(1 << 20):
                h.update(block)
    except FileNotFoundError:
        pass
    return h.hexdigest()


def _fsync_dir(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
