"""Admission: what the capacity mode lets through, and per-tenant rate limits (pure).

Capacity modes (DESIGN.md, "Scheduling and admission"):

============  ===========================  ===========================
mode          scheduled (placed on nodes)   accepted (new submissions)
============  ===========================  ===========================
OPEN          every priority                every priority
THROTTLED     p0 and p1 (the rest held)     every priority
CRITICAL      p0 only                       p0 only (429 + Retry-After)
============  ===========================  ===========================

Held units stay queued and are scheduled once the mode allows them again.

The token bucket is a pure value: the caller stores ``TokenBucket`` (per tenant) and passes
the control plane's clock in; ``take`` returns the decision and the bucket to store.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from shared.enums import CapacityMode, Priority

__all__ = [
    "TokenBucket",
    "admits_priority",
    "max_schedulable_priority",
    "retry_after_header",
    "retry_after_s",
    "submission_allowed",
    "take",
]

_LOWEST = 9

#: the lowest priority level (highest number) each mode schedules
_MAX_SCHEDULED: dict[CapacityMode, int] = {
    CapacityMode.OPEN: _LOWEST,
    CapacityMode.THROTTLED: 1,
    CapacityMode.CRITICAL: 0,
}

#: the lowest priority level each mode accepts at submission
_MAX_ACCEPTED: dict[CapacityMode, int] = {
    CapacityMode.OPEN: _LOWEST,
    CapacityMode.THROTTLED: _LOWEST,
    CapacityMode.CRITICAL: 0,
}

# Roughly how long each mode is expected to last (the autoscaler holds a mode for at least
# its min_hold_s); clients are told to come back after that.
_RETRY_AFTER_S: dict[CapacityMode, int] = {
    CapacityMode.OPEN: 1,
    CapacityMode.THROTTLED: 10,
    CapacityMode.CRITICAL: 30,
}


def _level(priority: int | Priority) -> int:
    level = priority.level if isinstance(priority, Priority) else int(priority)
    if not 0 <= level <= _LOWEST:
        raise ValueError(f"priority level must be 0..{_LOWEST}, got {priority!r}")
    return level


def max_schedulable_priority(mode: CapacityMode) -> int:
    """The lowest priority level (highest number) that ``mode`` schedules: a bound for the
    queue query (``priority <= max_schedulable_priority(mode)``)."""
    return _MAX_SCHEDULED[CapacityMode(mode)]


def admits_priority(mode: CapacityMode, priority: int | Priority) -> bool:
    """Whether units of ``priority`` (a level, 0 = p0, or a ``Priority``) may be scheduled
    in ``mode``: OPEN all, THROTTLED p0 and p1, CRITICAL p0 only."""
    return _level(priority) <= _MAX_SCHEDULED[CapacityMode(mode)]


def submission_allowed(mode: CapacityMode, priority: int | Priority) -> bool:
    """Whether a new submission of ``priority`` is accepted in ``mode``: CRITICAL refuses
    everything below p0 (429 ``admission_rejected``); OPEN and THROTTLED accept all."""
    return _level(priority) <= _MAX_ACCEPTED[CapacityMode(mode)]


def retry_after_s(mode: CapacityMode) -> int:
    """Whole seconds for the ``Retry-After`` of a submission refused in ``mode``."""
    return _RETRY_AFTER_S[CapacityMode(mode)]


@dataclass(frozen=True, slots=True)
class TokenBucket:
    """A token bucket: ``tokens`` available as of ``updated_at`` (seconds, caller's clock)."""

    tokens: float
    updated_at: float

    @classmethod
    def full(cls, burst: float, now: float) -> TokenBucket:
        """A bucket holding ``burst`` tokens at ``now`` (a tenant's first request)."""
        return cls(float(burst), now)


def take(
    bucket: TokenBucket, now: float, rate_per_s: float, burst: float, n: int = 1
) -> tuple[bool, TokenBucket, float]:
    """Try to take ``n`` tokens at ``now``.

    The bucket first refills at ``rate_per_s`` up to ``burst``. Returns ``(allowed, bucket,
    retry_after_s)``: when allowed, the tokens are taken and ``retry_after_s`` is 0; when not,
    nothing is taken and ``retry_after_s`` is how long until ``n`` tokens are there. A clock
    that steps back (another replica) refills nothing and never moves ``updated_at`` back.
    ``n`` above ``burst`` can never succeed and raises ``ValueError`` (split the request).
    """
    if rate_per_s <= 0:
        raise ValueError("rate_per_s must be positive")
    if n < 0:
        raise ValueError("n must not be negative")
    if n > burst:
        raise ValueError(f"cannot take {n} tokens from a bucket of burst {burst}")
    elapsed = now - bucket.updated_at
    if elapsed > 0:
        tokens = min(float(burst), bucket.tokens + elapsed * rate_per_s)
        at = now
    else:
        tokens = min(float(burst), bucket.tokens)
        at = bucket.updated_at
    if tokens >= n:
        return True, TokenBucket(tokens - n, at), 0.0
    return False, TokenBucket(tokens, at), (n - tokens) / rate_per_s


def retry_after_header(seconds: float) -> int:
    """``Retry-After`` is whole seconds: round up, and at least 1."""
    return max(1, math.ceil(seconds))
