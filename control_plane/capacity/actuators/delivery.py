"""Sending scale requests from a worker thread, with retries: the base of the webhook and
kubernetes actuators."""

from __future__ import annotations

import logging
import random
import threading
import time
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from control_plane.capacity.actuators import ScaleAction

log = logging.getLogger("krako.autoscaler")


class Delivery:
    """Sends scale requests from a worker thread, so a slow receiver never delays a tick.

    Requests that pile up while one is being sent are coalesced to the newest (it carries the
    target in force). Each is tried ``retries + 1`` times with jittered exponential backoff;
    one that still fails is logged and kept: the next scale request supersedes it, and
    without one it is sent again after ``redeliver_after_s``. Subclasses make one attempt
    (``_attempt``) and say whether it worked, may be retried, or must not be retried.
    """

    name = "delivery"

    def __init__(
        self,
        *,
        retries: int,
        backoff_s: float,
        backoff_max_s: float = 30.0,
        redeliver_after_s: float = 60.0,
    ) -> None:
        self.retries = retries
        self.backoff_s = backoff_s
        self.backoff_max_s = backoff_max_s
        self.redeliver_after_s = redeliver_after_s
        self._cv = threading.Condition()
        self._pending: ScaleAction | None = None
        self._failed: tuple[ScaleAction, float] | None = None
        self._busy = False
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.delivered: list[str] = []  # event ids, in delivery order (for operators and tests)
        self.failed_attempts = 0

    def _attempt(self, action: ScaleAction) -> str:
        """One try: ``ok``, ``retry`` (worth trying again) or ``fail`` (pointless to)."""
        raise NotImplementedError

    def _close_client(self) -> None:
        return None

    def actuate(self, desired_nodes: int, request: ScaleAction | None) -> None:
        with self._cv:
            if request is not None:
                self._pending = request
                self._failed = None
            elif self._failed is not None and self._pending is None:
                action, at = self._failed
                if time.monotonic() - at >= self.redeliver_after_s:
                    self._pending, self._failed = action, None
            if self._pending is None:
                return
            if self._thread is None:
                self._thread = threading.Thread(
                    target=self._run, name=f"krako-autoscaler-{self.name}", daemon=True
                )
                self._thread.start()
            self._cv.notify_all()

    def flush(self, timeout_s: float) -> bool:
        """Wait until nothing is pending or being sent; returns whether it got there."""
        deadline = time.monotonic() + timeout_s
        with self._cv:
            while self._pending is not None or self._busy:
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self._cv.wait(left)
        return True

    def close(self) -> None:
        self._stop.set()
        with self._cv:
            self._cv.notify_all()
        if self._thread is not None:
            self._thread.join(timeout=5.0)
        self._close_client()

    def _run(self) -> None:
        while not self._stop.is_set():
            with self._cv:
                while self._pending is None and not self._stop.is_set():
                    self._cv.wait()
                if self._stop.is_set():
                    return
                action, self._pending = self._pending, None
                self._busy = True
            assert action is not None
            try:
                outcome = self._deliver(action)
            except Exception:  # never let the worker die
                log.exception("%s: sending %s crashed", self.name, action.event_id)
                outcome = "failed"
            with self._cv:
                self._busy = False
                if outcome == "delivered":
                    self.delivered.append(action.event_id)
                elif outcome == "failed" and self._pending is None:
                    self._failed = (action, time.monotonic())
                self._cv.notify_all()

    def _deliver(self, action: ScaleAction) -> str:
        """One request with its retries: ``delivered``, ``failed`` or ``superseded``."""
        for attempt in range(self.retries + 1):
            if attempt:
                delay = min(self.backoff_max_s, self.backoff_s * 2 ** (attempt - 1))
                if self._stop.wait(delay * random.uniform(0.5, 1.0)):
                    return "failed"
                with self._cv:
                    if self._pending is not None:  # a newer request carries the target now
                        log.info("%s: %s superseded by a newer request", self.name, action.event_id)
                        return "superseded"
            outcome = self._attempt(action)
            if outcome == "ok":
                log.info(
                    "%s: sent %s (%d -> %d nodes)",
                    self.name,
                    action.event_id,
                    action.from_nodes,
                    action.to_nodes,
                )
                return "delivered"
            self.failed_attempts += 1
            if outcome == "fail":
                return "failed"
        log.error(
            "%s: %s not sent after %d attempts; kept for the next scale request",
            self.name,
            action.event_id,
            self.retries + 1,
        )
        return "failed"


def retryable(status: int) -> bool:
    return status >= 500 or status in (408, 425, 429)
