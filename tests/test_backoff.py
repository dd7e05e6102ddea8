"""Reconnect timing: capped exponential backoff with jitter, stability reset, Retry-After.

All on virtual time with a seeded rng: no sleeping, no clock.
"""

from __future__ import annotations

import random
from datetime import datetime, timezone
from email.utils import format_datetime

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from jitterline.errors import ConfigError
from jitterline.transport import (
    MAX_RETRY_AFTER_S,
    BackoffPolicy,
    ReconnectSchedule,
    parse_retry_after,
)

NOW_WALL_S = 1_700_000_000.0


def test_default_steps_double_from_one_second_to_the_thirty_second_cap() -> None:
    policy = BackoffPolicy()
    steps = [policy.step_s(attempt) for attempt in range(1, 9)]
    assert steps == [1.0, 2.0, 4.0, 8.0, 16.0, 30.0, 30.0, 30.0]


def test_step_stays_at_the_cap_after_thousands_of_failures_without_overflow() -> None:
    assert BackoffPolicy().step_s(10_000) == 30.0


def test_jitter_is_added_on_top_of_the_step_and_bounded_by_the_ratio() -> None:
    policy = BackoffPolicy(initial_s=1.0, max_s=30.0, jitter_ratio=0.25)
    rng = random.Random(7)
    delays = [policy.delay_s(6, rng) for _ in range(200)]
    assert min(delays) >= 30.0
    assert max(delays) <= 37.5
    assert len(set(delays)) == 200  # clients at the cap still spread out


def test_same_seed_gives_the_same_schedule() -> None:
    policy = BackoffPolicy()
    first = [policy.delay_s(n, random.Random(3)) for n in range(1, 6)]
    again = [policy.delay_s(n, random.Random(3)) for n in range(1, 6)]
    assert first == again


@st.composite
def policies(draw: st.DrawFn) -> BackoffPolicy:
    initial_s = draw(st.floats(0.001, 10.0))
    return BackoffPolicy(
        initial_s=initial_s,
        max_s=initial_s * draw(st.floats(1.0, 100.0)),
        multiplier=draw(st.floats(1.0, 5.0)),
        jitter_ratio=draw(st.floats(0.0, 1.0)),
    )


@settings(max_examples=200, deadline=None)
@given(policy=policies(), attempt=st.integers(1, 10_000), seed=st.integers(0, 2**32))
def test_delay_is_never_below_the_step_nor_above_the_jittered_cap(
    policy: BackoffPolicy, attempt: int, seed: int
) -> None:
    step = policy.step_s(attempt)
    delay = policy.delay_s(attempt, random.Random(seed))
    assert policy.initial_s <= step <= policy.max_s
    assert step <= delay <= step * (1 + policy.jitter_ratio)


@pytest.mark.parametrize(
    "kwargs",
    [
        {"initial_s": 0.0},
        {"initial_s": float("nan")},
        {"max_s": 0.5},
        {"multiplier": 0.5},
        {"jitter_ratio": 1.5},
    ],
)
def test_policy_refuses_a_schedule_that_cannot_work(kwargs: dict[str, float]) -> None:
    with pytest.raises(ConfigError):
        BackoffPolicy(**kwargs)


def _schedule(max_attempts: int | None = None) -> ReconnectSchedule:
    policy = BackoffPolicy(initial_s=1.0, max_s=8.0, jitter_ratio=0.0)
    return ReconnectSchedule(
        policy, random.Random(0), stable_after_s=10.0, max_attempts=max_attempts
    )


def test_refused_attempts_back_off_further_each_time() -> None:
    schedule = _schedule()
    delays = []
    for _ in range(5):
        schedule.begin_attempt()
        delays.append(schedule.next_delay_s())
    assert delays == [1.0, 2.0, 4.0, 8.0, 8.0]


def test_connection_that_drops_at_once_keeps_backing_off() -> None:
    schedule = _schedule()
    delays = []
    for n in range(4):
        schedule.begin_attempt()
        schedule.connected(now_s=100.0 * n)
        schedule.disconnected(now_s=100.0 * n + 0.5)  # accepted, dropped half a second later
        delays.append(schedule.next_delay_s())
    assert delays == [1.0, 2.0, 4.0, 8.0]


def test_connection_that_stayed_up_resets_the_backoff_to_the_first_step() -> None:
    schedule = _schedule()
    for _ in range(4):
        schedule.begin_attempt()
        schedule.next_delay_s()
    schedule.begin_attempt()
    schedule.connected(now_s=50.0)
    uptime_s = schedule.disconnected(now_s=62.0)
    assert uptime_s == 12.0
    assert schedule.streak == 0
    assert schedule.next_delay_s() == 1.0


def test_max_attempts_counts_attempts_since_the_last_stable_connection() -> None:
    schedule = _schedule(max_attempts=3)
    schedule.begin_attempt()
    schedule.begin_attempt()
    assert not schedule.exhausted
    schedule.connected(now_s=0.0)
    schedule.disconnected(now_s=30.0)  # stable: streak starts over
    schedule.begin_attempt()
    schedule.begin_attempt()
    assert not schedule.exhausted
    schedule.begin_attempt()
    assert schedule.exhausted


def test_retry_after_longer_than_the_backoff_wins() -> None:
    schedule = _schedule()
    schedule.begin_attempt()
    assert schedule.next_delay_s(retry_after_s=2.0) == 2.0
    assert schedule.last_delay_s == 2.0


def test_backoff_longer_than_a_short_retry_after_wins() -> None:
    schedule = _schedule()
    for _ in range(4):
        schedule.begin_attempt()
    assert schedule.next_delay_s(retry_after_s=0.5) == 8.0


def test_retry_after_in_seconds() -> None:
    assert parse_retry_after("2", NOW_WALL_S) == 2.0
    assert parse_retry_after(" 120 ", NOW_WALL_S) == 120.0
    assert parse_retry_after("1.5", NOW_WALL_S) == 1.5


def test_retry_after_as_http_date_counts_from_our_wall_clock() -> None:
    when = datetime.fromtimestamp(NOW_WALL_S + 7, tz=timezone.utc)
    assert parse_retry_after(format_datetime(when, usegmt=True), NOW_WALL_S) == 7.0


def test_retry_after_date_in_the_past_means_now() -> None:
    assert parse_retry_after("Wed, 21 Oct 2015 07:28:00 GMT", NOW_WALL_S) == 0.0


@pytest.mark.parametrize("value", [None, "", "soon", "-3", "nan", "inf", "Tue, 99 Foo"])
def test_unusable_retry_after_falls_back_to_the_backoff(value: str | None) -> None:
    assert parse_retry_after(value, NOW_WALL_S) is None


def test_absurd_retry_after_is_clamped() -> None:
    assert parse_retry_after("86400", NOW_WALL_S) == MAX_RETRY_AFTER_S
