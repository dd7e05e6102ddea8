"""What the recovery tests need to check "the first frame after a discontinuity plays within
its target delay plus one frame" through the whole chain: the target the buffer held when
that frame arrived, and that frame."""

from __future__ import annotations

from collections.abc import Callable, Iterable

from jitterline import AudioFrame, PipelineConfig, hookimpl
from jitterline.adjuster import BufferPolicy, GoalPolicy
from jitterline.frames import ArrivalMeasure

LOGGED_POLICY = "logged-goal"


class _LoggedGoal:
    """The default policy, answering as it does, with every answer written down."""

    name = LOGGED_POLICY

    def __init__(self, log: list[tuple[int, float, float]], target_ms: float | None) -> None:
        self._goal = GoalPolicy() if target_ms is None else GoalPolicy(start_ms=target_ms)
        self._log = log

    def update(self, measure: ArrivalMeasure) -> float:
        target_ms = self._goal.update(measure)
        self._log.append((measure.seq, measure.arrival_s, target_ms))
        return target_ms


class TargetLog:
    """A plugin registering ``logged-goal``: ``GoalPolicy`` plus the log of its targets.

    The adjuster answers each arrival after the buffer filed it, so the target a frame met
    is the (clamped) one answered for the arrival before it."""

    def __init__(self) -> None:
        self.answers: list[tuple[int, float, float]] = []  # (seq, arrival_s, target_ms)

    @hookimpl
    def jitterline_register_buffer_policies(
        self, register: Callable[[str, Callable[..., BufferPolicy]], None]
    ) -> None:
        register(LOGGED_POLICY, lambda target_ms=None: _LoggedGoal(self.answers, target_ms))

    def met_ms(self, frame: AudioFrame, config: PipelineConfig) -> float:
        """The target in force when ``frame`` arrived."""
        keys = [(seq, arrival_s) for seq, arrival_s, _ in self.answers]
        index = keys.index((frame.seq, frame.arrival_s))
        if index == 0:
            return config.start_buffer_ms
        wanted_ms = self.answers[index - 1][2]
        return min(config.max_buffer_ms, max(config.min_buffer_ms, wanted_ms))


def first_real_after(frames: Iterable[AudioFrame], at_s: float) -> AudioFrame:
    """The first played (not concealed) frame that arrived at or after ``at_s``."""
    return next(f for f in frames if not f.concealed and f.arrival_s >= at_s)


def wait_ms(frame: AudioFrame) -> float:
    """How long ``frame`` waited in the buffer: playout minus arrival."""
    assert frame.playout_s is not None
    return (frame.playout_s - frame.arrival_s) * 1000.0
