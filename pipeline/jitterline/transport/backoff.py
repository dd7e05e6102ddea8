"""When to try again: capped exponential backoff with jitter, and the peer's Retry-After.

Sans-I/O: nothing here sleeps or reads a clock; times come in as arguments and randomness
from a seeded ``random.Random``, so every schedule can be replayed in a test.

Jitter is *added* on top of the capped exponential step (``delay in [b, b * (1 +
jitter_ratio)]``): the schedule never retries sooner than the documented step, and clients
dropped together by one server restart still spread out, even once all of them sit at the
cap. The streak of attempts only resets after a connection stayed up for ``stable_after_s``;
a server that accepts and drops at once therefore still backs off.
"""

from __future__ import annotations

import logging
import math
import random
from dataclasses import dataclass
from email.utils import parsedate_to_datetime

from .. import checks
from ..errors import ConfigError

__all__ = [
    "MAX_RETRY_AFTER_S",
    "BackoffPolicy",
    "ReconnectSchedule",
    "parse_retry_after",
]

logger = logging.getLogger(__name__)

MAX_RETRY_AFTER_S = 600.0
"""A Retry-After above this is clamped (and logged): a typo or a hostile peer must not park
a session for a day; ``close()`` still interrupts any wait."""


@dataclass(frozen=True, slots=True)
class BackoffPolicy:
    """The delay schedule: ``initial_s`` multiplied by ``multiplier`` per failed attempt,
    capped at ``max_s``, plus up to ``jitter_ratio`` of that step at random."""

    initial_s: float = 1.0
    max_s: float = 30.0
    multiplier: float = 2.0
    jitter_ratio: float = 0.25

    def __post_init__(self) -> None:
        checks.number("initial_s", self.initial_s, low=0, above=True, unit="s", hint="try 1.0")
        checks.number("max_s", self.max_s, low=0, above=True, unit="s", hint="try 30.0")
        if self.max_s < self.initial_s:
            raise ConfigError(
                f"max_s={self.max_s} is below initial_s={self.initial_s}; "
                "the cap must be at least the first delay"
            )
        checks.number(
            "multiplier", self.multiplier, low=1.0, hint="try 2.0 (1.0 keeps it constant)"
        )
        checks.number("jitter_ratio", self.jitter_ratio, low=0.0, high=1.0, hint="try 0.25")

    def step_s(self, attempt: int) -> float:
        """The capped step before jitter for the ``attempt``-th consecutive failure (from 1)."""
        if attempt < 1:
            raise ConfigError(f"attempt={attempt} must count from 1")
        # Compare exponents, not powers: multiplier ** attempt overflows a float long before
        # a session gives up.
        if self.multiplier == 1.0:
            return self.initial_s
        doublings_to_cap = math.log(self.max_s / self.initial_s, self.multiplier)
        if attempt - 1 >= doublings_to_cap:
            return self.max_s
        return min(self.max_s, self.initial_s * self.multiplier ** (attempt - 1))

    def delay_s(self, attempt: int, rng: random.Random) -> float:
        """The step for ``attempt`` plus its random jitter."""
        step = self.step_s(attempt)
        return step + rng.uniform(0.0, self.jitter_ratio * step)


def parse_retry_after(value: str | None, now_wall_s: float) -> float | None:
    """Seconds to wait from a Retry-After header (RFC 9110 section 10.2.3), or None.

    Both forms are accepted: delay-seconds (``"2"``; a decimal such as ``"1.5"`` is
    tolerated) and an HTTP-date, which needs ``now_wall_s`` (epoch seconds) because it is an
    absolute time. A date in the past means "now" (0). Unparseable values give None so the
    caller falls back to its own backoff instead of failing.
    """
    if value is None:
        return None
    text = value.strip()
    if not text:
        return None
    seconds = _delay_seconds(text)
    if seconds is None:
        seconds = _http_date_seconds(text, now_wall_s)
    if seconds is None:
        logger.debug("ignoring unparseable Retry-After %r", text[:40])
        return None
    if seconds > MAX_RETRY_AFTER_S:
        logger.warning(
            "Retry-After of %.0f s clamped to %.0f s (MAX_RETRY_AFTER_S)",
            seconds,
            MAX_RETRY_AFTER_S,
        )
        return MAX_RETRY_AFTER_S
    return seconds


def _delay_seconds(text: str) -> float | None:
    try:
        seconds = float(text)
    except ValueError:
        return None
    if not math.isfinite(seconds) or seconds < 0:
        return None
    return seconds


def _http_date_seconds(text: str, now_wall_s: float) -> float | None:
    try:
        when = parsedate_to_datetime(text)
    except (TypeError, ValueError, IndexError):
        return None
    if when.tzinfo is None:  # RFC 9110 dates are GMT; "-0000" parses as naive
        return None
    return max(0.0, when.timestamp() - now_wall_s)


class ReconnectSchedule:
    """The reconnect state machine of one session, kept apart from its I/O.

    ``streak`` counts connection attempts since the last *stable* connection (one that
    stayed up ``stable_after_s``); it drives both the backoff step and ``max_attempts``, so
    a peer that accepts then drops at once is treated like one that refuses.
    """

    def __init__(
        self,
        policy: BackoffPolicy,
        rng: random.Random,
        *,
        stable_after_s: float,
        max_attempts: int | None = None,
    ) -> None:
        checks.number("stable_after_s", stable_after_s, low=0.0, unit="s", hint="try 10.0")
        if max_attempts is not None:
            checks.count("max_attempts", max_attempts, low=1, hint="or None to retry forever")
        self.policy = policy
        self.stable_after_s = stable_after_s
        self.max_attempts = max_attempts
        self.streak = 0
        self.last_delay_s = 0.0
        self._rng = rng
        self._connected_at_s: float | None = None

    def begin_attempt(self) -> int:
        """Count an attempt; returns the streak including it."""
        self.streak += 1
        return self.streak

    def connected(self, now_s: float) -> None:
        self._connected_at_s = now_s

    def disconnected(self, now_s: float) -> float:
        """Note a lost link; returns how long it was up, resetting the streak if stable."""
        if self._connected_at_s is None:
            return 0.0
        uptime_s = max(0.0, now_s - self._connected_at_s)
        self._connected_at_s = None
        if uptime_s >= self.stable_after_s:
            self.streak = 0
            self.last_delay_s = 0.0
        return uptime_s

    @property
    def exhausted(self) -> bool:
        return self.max_attempts is not None and self.streak >= self.max_attempts

    def next_delay_s(self, retry_after_s: float | None = None) -> float:
        """The wait before the next attempt: the backoff step, or the peer's Retry-After if
        that is longer (the peer knows its load; our jitter still applies below it)."""
        delay = self.policy.delay_s(max(1, self.streak), self._rng)
        if retry_after_s is not None:
            delay = max(delay, retry_after_s)
        self.last_delay_s = delay
        return delay
