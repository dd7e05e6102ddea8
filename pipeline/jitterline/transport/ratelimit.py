"""A token bucket for outbound messages.

The bucket never waits: ``try_acquire`` either takes a token or says how many seconds until
one is there, and the caller decides how to wait (the session folds it into its socket poll
timeout). Its lock guards arithmetic only, so no thread ever sleeps while holding it; the
tutorial's limiter slept ``1 - tokens`` seconds, mixing token and second units.
"""

from __future__ import annotations

import threading

from .. import checks

__all__ = ["TokenBucket"]


class TokenBucket:
    """``rate_per_s`` tokens a second, holding at most ``burst``; starts full at ``now_s``."""

    def __init__(self, rate_per_s: float, burst: int, *, now_s: float) -> None:
        self.rate_per_s = checks.number(
            "rate_per_s",
            rate_per_s,
            low=0.0,
            above=True,
            hint="the default is 10 messages a second",
        )
        checks.count("burst", burst, low=1, hint="it counts messages sent back to back")
        self.burst = burst
        self._tokens = float(burst)
        self._updated_s = now_s
        self._lock = threading.Lock()

    def try_acquire(self, now_s: float) -> float:
        """Take one token if there is one and return 0.0; otherwise return the seconds until
        one accrues (always > 0) and take nothing."""
        with self._lock:
            self._refill(now_s)
            if self._tokens >= 1.0:
                self._tokens -= 1.0
                return 0.0
            return (1.0 - self._tokens) / self.rate_per_s

    def available(self, now_s: float) -> float:
        """Tokens in the bucket at ``now_s`` (fractional while refilling)."""
        with self._lock:
            self._refill(now_s)
            return self._tokens

    def _refill(self, now_s: float) -> None:
        # A clock that steps back (virtual time rewound) must not drain the bucket.
        elapsed_s = max(0.0, now_s - self._updated_s)
        self._tokens = min(float(self.burst), self._tokens + elapsed_s * self.rate_per_s)
        self._updated_s = max(self._updated_s, now_s)
