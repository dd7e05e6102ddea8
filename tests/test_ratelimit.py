"""The outbound token bucket on virtual time."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from jitterline.errors import ConfigError
from jitterline.transport import TokenBucket


def test_burst_goes_out_back_to_back_then_the_next_waits_one_interval() -> None:
    bucket = TokenBucket(10.0, 3, now_s=0.0)
    assert [bucket.try_acquire(0.0) for _ in range(3)] == [0.0, 0.0, 0.0]
    assert bucket.try_acquire(0.0) == pytest.approx(0.1)


def test_wait_is_in_seconds_not_tokens() -> None:
    bucket = TokenBucket(4.0, 1, now_s=0.0)
    bucket.try_acquire(0.0)
    assert bucket.try_acquire(0.125) == pytest.approx(0.125)  # half a token left to accrue


def test_a_refused_acquire_takes_nothing() -> None:
    bucket = TokenBucket(10.0, 1, now_s=0.0)
    bucket.try_acquire(0.0)
    for _ in range(5):
        assert bucket.try_acquire(0.05) > 0
    assert bucket.try_acquire(0.1) == 0.0


def test_idle_time_refills_only_up_to_the_burst() -> None:
    bucket = TokenBucket(10.0, 5, now_s=0.0)
    for _ in range(5):
        bucket.try_acquire(0.0)
    assert bucket.available(3600.0) == 5.0


def test_clock_stepping_back_does_not_drain_the_bucket() -> None:
    bucket = TokenBucket(10.0, 2, now_s=10.0)
    assert bucket.available(5.0) == 2.0
    assert bucket.try_acquire(5.0) == 0.0


@settings(max_examples=100, deadline=None)
@given(
    rate=st.floats(0.5, 100.0),
    burst=st.integers(1, 20),
    gaps=st.lists(st.floats(0.0, 0.5), min_size=1, max_size=200),
)
def test_sends_never_exceed_burst_plus_rate_times_elapsed(
    rate: float, burst: int, gaps: list[float]
) -> None:
    bucket = TokenBucket(rate, burst, now_s=0.0)
    now_s = 0.0
    sent = 0
    for gap in gaps:
        now_s += gap
        wait_s = bucket.try_acquire(now_s)
        if wait_s == 0.0:
            sent += 1
        else:
            assert wait_s <= 1.0 / rate + 1e-9
    assert sent <= burst + rate * now_s + 1e-6


@pytest.mark.parametrize(("rate", "burst"), [(0.0, 1), (float("inf"), 1), (10.0, 0), (1.0, True)])
def test_bucket_refuses_settings_that_would_stall_or_flood(rate: float, burst: int) -> None:
    with pytest.raises(ConfigError):
        TokenBucket(rate, burst, now_s=0.0)
