"""``PipelineConfig``: the settings of one stream's stages, shared by the CLI, captures and
the library."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from . import checks
from .adjuster import DEFAULT_POLICY
from .errors import ConfigError

__all__ = ["CONCEALMENTS", "MAX_BUFFER_MS", "PipelineConfig"]

CONCEALMENTS = ("silence", "repeat", "speech")
"""The ``conceal`` modes, in the order ``--conceal`` lists them."""

MAX_BUFFER_MS = 10_000.0
"""The largest playout delay the jitter buffer accepts; a policy asking for more is clamped
to ``max_buffer_ms``, so the bound is checked here, where the user sets it."""


@dataclass(frozen=True, slots=True)
class PipelineConfig:
    """Everything that shapes one stream's processing; the CLI options map onto it.

    It is also the ``config`` object of a capture's header, so a replay runs with the
    settings of its live run; a capture reader ignores keys it does not know (older
    captures carry ``tick_ms`` and ``guard_ms``, which playout timers at each slot's due
    time made unnecessary).

    ``conceal`` picks what plays for a missing frame of a PCM stream: ``silence``,
    ``repeat`` (the previous frame again) or ``speech`` (a faded pitch-period repeat, see
    ``jitterline.concealment``); Opus streams always use the decoder's own concealment.
    """

    dialect: str = "appfoundry"
    buffer_policy: str = DEFAULT_POLICY
    buffer_ms: float | None = None
    min_buffer_ms: float = 20.0
    max_buffer_ms: float = 1000.0
    window_frames: int = 500
    window_s: float = 10.0
    capacity_frames: int = 512
    conceal: Literal["silence", "repeat", "speech"] = "silence"
    stats_every_s: float = 1.0

    @property
    def start_buffer_ms(self) -> float:
        """The buffer target before the first frame: ``buffer_ms``, else NetEq's 80 ms."""
        if self.buffer_ms is not None:
            return self.buffer_ms
        return min(max(80.0, self.min_buffer_ms), self.max_buffer_ms)

    def __post_init__(self) -> None:
        if self.conceal not in CONCEALMENTS:
            raise ConfigError(
                f"conceal={self.conceal!r} is not one of {', '.join(CONCEALMENTS)}; pick one"
            )
        positive = (
            ("min_buffer_ms", self.min_buffer_ms, "ms", "try 20"),
            ("window_s", self.window_s, "s", "try 10"),
            ("stats_every_s", self.stats_every_s, "s", "try 1"),
        )
        for name, value, unit, hint in positive:
            checks.number(name, value, low=0.0, above=True, unit=unit, hint=hint)
        checks.number(
            "max_buffer_ms",
            self.max_buffer_ms,
            low=0.0,
            high=MAX_BUFFER_MS,
            unit="ms",
            hint=f"the jitter buffer holds at most {MAX_BUFFER_MS:.0f} ms",
        )
        if self.max_buffer_ms < self.min_buffer_ms:
            raise ConfigError(
                f"max_buffer_ms={self.max_buffer_ms} is below min_buffer_ms={self.min_buffer_ms}; "
                "raise --max-buffer-ms or lower --min-buffer-ms"
            )
        if self.buffer_ms is not None:
            checks.number(
                "buffer_ms",
                self.buffer_ms,
                low=self.min_buffer_ms,
                high=self.max_buffer_ms,
                unit="ms",
                hint="adjust --buffer-ms or the min/max bounds",
            )
