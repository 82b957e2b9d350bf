"""Admission by capacity mode (the truth table) and the token bucket."""

from __future__ import annotations

import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from control_plane.scheduling.admission import (
    TokenBucket,
    admits_priority,
    max_schedulable_priority,
    retry_after_header,
    retry_after_s,
    submission_allowed,
    take,
)
from shared.enums import CapacityMode, Priority

OPEN, THROTTLED, CRITICAL = CapacityMode.OPEN, CapacityMode.THROTTLED, CapacityMode.CRITICAL

# mode -> (priorities scheduled, priorities accepted at submission)
TRUTH = {
    OPEN: (set(range(10)), set(range(10))),
    THROTTLED: ({0, 1}, set(range(10))),
    CRITICAL: ({0}, {0}),
}


@pytest.mark.parametrize("mode", list(CapacityMode))
@pytest.mark.parametrize("level", range(10))
def test_truth_table(mode: CapacityMode, level: int) -> None:
    scheduled, accepted = TRUTH[mode]
    assert admits_priority(mode, level) is (level in scheduled)
    assert admits_priority(mode, Priority.from_level(level)) is (level in scheduled)
    assert admits_priority(mode.value, level) is (level in scheduled)  # type: ignore[arg-type]
    assert submission_allowed(mode, level) is (level in accepted)
    assert submission_allowed(mode, Priority.from_level(level)) is (level in accepted)
    assert (level <= max_schedulable_priority(mode)) is (level in scheduled)


def test_retry_after_is_whole_seconds_and_grows_with_pressure() -> None:
    values = [retry_after_s(m) for m in (OPEN, THROTTLED, CRITICAL)]
    assert all(isinstance(v, int) and v >= 1 for v in values)
    assert values == sorted(values)
    assert retry_after_header(0.01) == 1
    assert retry_after_header(2.2) == 3
    assert retry_after_header(0) == 1


@pytest.mark.parametrize("bad", [-1, 10, 99])
def test_unknown_priority_is_refused(bad: int) -> None:
    with pytest.raises(ValueError):
        admits_priority(OPEN, bad)
    with pytest.raises(ValueError):
        submission_allowed(OPEN, bad)


def test_bucket_burst_then_rate() -> None:
    bucket = TokenBucket.full(burst=3, now=100.0)
    results = []
    for _ in range(4):
        ok, bucket, retry = take(bucket, 100.0, rate_per_s=2.0, burst=3)
        results.append((ok, retry))
    assert results == [(True, 0.0), (True, 0.0), (True, 0.0), (False, 0.5)]
    ok, bucket, retry = take(bucket, 100.5, rate_per_s=2.0, burst=3)
    assert ok and retry == 0.0
    # refill is capped at burst
    ok, bucket, _ = take(bucket, 1000.0, rate_per_s=2.0, burst=3, n=3)
    assert ok and bucket.tokens == 0.0
    ok, _, retry = take(bucket, 1000.0, rate_per_s=2.0, burst=3, n=2)
    assert not ok and retry == 1.0


def test_refusal_takes_nothing_and_clock_steps_back_safely() -> None:
    bucket = TokenBucket(0.5, 10.0)
    ok, after, _ = take(bucket, 10.0, rate_per_s=1.0, burst=5)
    assert not ok and after == bucket
    ok, after, retry = take(TokenBucket(1.0, 10.0), 5.0, rate_per_s=1.0, burst=5)
    assert ok and after == TokenBucket(0.0, 10.0) and retry == 0.0


def test_bucket_bad_arguments() -> None:
    with pytest.raises(ValueError):
        take(TokenBucket(1.0, 0.0), 0.0, rate_per_s=0.0, burst=1)
    with pytest.raises(ValueError):
        take(TokenBucket(1.0, 0.0), 0.0, rate_per_s=1.0, burst=1, n=2)


@settings(max_examples=300, deadline=None)
@given(
    rate=st.floats(0.1, 100.0),
    burst=st.integers(1, 50),
    steps=st.lists(st.tuples(st.floats(0.0, 3.0), st.integers(0, 5)), max_size=80),
)
def test_bucket_never_allows_more_than_burst_plus_rate(rate, burst, steps) -> None:
    now = 0.0
    bucket = TokenBucket.full(burst, now)
    allowed = 0
    for dt, n in steps:
        now += dt
        n = min(n, burst)
        ok, bucket, retry = take(bucket, now, rate, burst, n)
        assert 0.0 <= bucket.tokens <= burst
        if ok:
            allowed += n
            assert retry == 0.0
        else:
            assert retry > 0.0
            # waiting as told is enough
            ok_later, _, _ = take(bucket, now + retry * (1 + 1e-9) + 1e-9, rate, burst, n)
            assert ok_later
        assert allowed <= burst + rate * now + 1e-6 * max(1.0, allowed)
    assert math.isfinite(bucket.tokens)
