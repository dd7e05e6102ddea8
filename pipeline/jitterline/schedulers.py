"""Two lean ReactiveX schedulers: the runtime's event loop, and virtual time for replays.

Every played frame costs one timer (the jitter buffer's next slot), so a timer's price is
paid hundreds of times a second per process. RxPY's own schedulers are general: its
``AsyncIOScheduler`` wraps each ``call_later`` in four disposables (~12 us on top of the
loop's own ~3 us), and its ``HistoricalScheduler`` keeps time as ``datetime``, converts on
every call and takes a lock per item (~9 us to schedule, as much again to run). These do
the same work with one small object per timer and float seconds throughout, and honour the
same contract: ``schedule*`` return a disposable that cancels the work (and whatever
disposable the action returned), ``now`` is a ``datetime``. ``LoopScheduler`` spreads
periodic work (see ``schedule_periodic``); ``VirtualScheduler``'s comes from
``PeriodicScheduler``.

Both are single-threaded by design: a ``LoopScheduler`` is used from its loop's thread
(the runtime runs every stream there), a ``VirtualScheduler`` from the thread that runs
it. ``python -m benchmarks pipeline`` measures the pipeline on both virtual schedulers.
"""

from __future__ import annotations

import asyncio
import heapq
import math
from datetime import datetime, timedelta, timezone
from typing import Any, TypeVar

from reactivex import abc, typing
from reactivex.scheduler.periodicscheduler import PeriodicScheduler

__all__ = ["EPOCH", "LoopScheduler", "VirtualScheduler"]

_TState = TypeVar("_TState")

_GOLDEN = 0.6180339887498949  # (sqrt(5) - 1) / 2: k * _GOLDEN mod 1 spreads evenly for any k
_GRID_S = 0.01  # periodic work starts on this grid: 50 slots in the second half of a 1 s period

EPOCH = datetime(1970, 1, 1, tzinfo=timezone.utc)
"""Where virtual time starts: ``VirtualScheduler`` time ``t`` is ``EPOCH + t`` as a datetime."""


class _Timer(abc.DisposableBase):
    """One scheduled action: cancelled before it runs, or its own disposable after."""

    __slots__ = ("cancelled", "handle", "inner")

    def __init__(self) -> None:
        self.cancelled = False
        self.handle: asyncio.TimerHandle | None = None
        self.inner: abc.DisposableBase | None = None

    def dispose(self) -> None:
        self.cancelled = True
        if self.handle is not None:
            self.handle.cancel()
            self.handle = None
        if self.inner is not None:
            self.inner.dispose()
            self.inner = None


def _run(
    scheduler: abc.SchedulerBase,
    timer: _Timer,
    action: typing.ScheduledAction[Any],
    state: Any,
) -> None:
    if timer.cancelled:
        return
    timer.handle = None
    result = action(scheduler, state)
    if result is not None and isinstance(result, abc.DisposableBase):  # an ABC check: ~1 us
        timer.inner = result


class LoopScheduler(PeriodicScheduler):
    """An asyncio event loop as a ReactiveX scheduler; one ``call_later`` per action."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        super().__init__()
        self._loop = loop
        self._periodic = 0  # periodic actions scheduled so far (their phases: see below)

    def schedule(
        self, action: typing.ScheduledAction[_TState], state: _TState | None = None
    ) -> abc.DisposableBase:
        timer = _Timer()
        self._loop.call_soon(_run, self, timer, action, state)
        return timer

    def schedule_relative(
        self,
        duetime: typing.RelativeTime,
        action: typing.ScheduledAction[_TState],
        state: _TState | None = None,
    ) -> abc.DisposableBase:
        seconds = duetime if isinstance(duetime, float) else self.to_seconds(duetime)
        if seconds <= 0:
            return self.schedule(action, state)
        timer = _Timer()
        timer.handle = self._loop.call_later(seconds, _run, self, timer, action, state)
        return timer

    def schedule_absolute(
        self,
        duetime: typing.AbsoluteTime,
        action: typing.ScheduledAction[_TState],
        state: _TState | None = None,
    ) -> abc.DisposableBase:
        return self.schedule_relative(self.to_datetime(duetime) - self.now, action, state)

    def schedule_periodic(
        self,
        period: typing.RelativeTime,
        action: typing.ScheduledPeriodicAction[_TState],
        state: _TState | None = None,
    ) -> abc.DisposableBase:
        """Run ``action`` every ``period``, on the loop's clock, without drift.

        Streams that start together would otherwise tick together: a runtime that connects
        200 streams at once would take their 200 snapshots (~0.3 ms each) in one burst per
        period, holding every stream's audio behind it. So the k-th periodic action on this
        scheduler first runs at a phase spread by the golden ratio over the second half of
        its period (any N of them stay evenly spread), then every ``period`` after. Phases
        fall on a ``_GRID_S`` grid of the loop's clock, so that the actions of one slot
        share a wake-up (100 silent streams cost 100 wake-ups a second otherwise, for
        their snapshots alone). A loop that fell behind by more than a period skips the
        missed runs rather than bunching. An action that raises stops its repetition, as
        ``PeriodicScheduler``'s does.
        """
        seconds = self.to_seconds(period)
        self._periodic += 1
        phase = 0.5 + 0.5 * (self._periodic * _GOLDEN % 1.0)
        timer = _Timer()
        loop = self._loop
        carried = [state]

        def run(due: float) -> None:
            if timer.cancelled:
                return
            try:
                carried[0] = action(carried[0])
            except Exception:
                timer.dispose()
                raise
            if timer.cancelled:  # the action ended its own repetition
                return
            due += seconds
            behind = loop.time() - due
            if behind > 0:  # skip what was missed, keeping the phase
                due += math.ceil(behind / seconds) * seconds
            timer.handle = loop.call_at(due, run, due)

        first = math.ceil((loop.time() + seconds * phase) / _GRID_S) * _GRID_S
        timer.handle = loop.call_at(first, run, first)
        return timer


class VirtualScheduler(PeriodicScheduler):
    """Virtual time in float seconds since ``EPOCH``: a heap of due actions run in time
    order (ties in the order they were scheduled), the clock jumping to each.

    ``start`` runs until nothing is left or an action calls ``stop``; ``advance_to`` runs
    what is due up to a time and leaves the clock there, for a test or a feeder that
    delivers its own items in between. ``seconds`` is the clock as a float, which
    ``stages.scheduler_clock`` reads without a ``datetime`` round trip.
    """

    def __init__(self, start_s: float = 0.0) -> None:
        super().__init__()
        self.seconds = start_s
        self._queue: list[tuple[float, int, _Timer, typing.ScheduledAction[Any], Any]] = []
        self._order = 0
        self._running = False

    @property
    def now(self) -> datetime:
        return EPOCH + timedelta(seconds=self.seconds)

    def schedule(
        self, action: typing.ScheduledAction[_TState], state: _TState | None = None
    ) -> abc.DisposableBase:
        return self._at(self.seconds, action, state)

    def schedule_relative(
        self,
        duetime: typing.RelativeTime,
        action: typing.ScheduledAction[_TState],
        state: _TState | None = None,
    ) -> abc.DisposableBase:
        seconds = duetime if isinstance(duetime, float) else self.to_seconds(duetime)
        return self._at(self.seconds + max(seconds, 0.0), action, state)

    def schedule_absolute(
        self,
        duetime: typing.AbsoluteTime,
        action: typing.ScheduledAction[_TState],
        state: _TState | None = None,
    ) -> abc.DisposableBase:
        if isinstance(duetime, datetime):
            at_s = (duetime - EPOCH).total_seconds()
        else:
            at_s = float(duetime)
        return self._at(max(at_s, self.seconds), action, state)

    def _at(
        self, at_s: float, action: typing.ScheduledAction[Any], state: Any
    ) -> abc.DisposableBase:
        timer = _Timer()
        self._order += 1
        heapq.heappush(self._queue, (at_s, self._order, timer, action, state))
        return timer

    def start(self) -> None:
        """Run every due action in time order until none is left or ``stop`` is called."""
        self._running = True
        queue = self._queue
        while self._running and queue:
            at_s, _, timer, action, state = heapq.heappop(queue)
            if not timer.cancelled:
                self.seconds = at_s
                _run(self, timer, action, state)
        self._running = False

    def stop(self) -> None:
        self._running = False

    def advance_to(self, at_s: float) -> None:
        """Run what is due at or before ``at_s``, then set the clock to ``at_s``."""
        queue = self._queue
        while queue and queue[0][0] <= at_s:
            due_s, _, timer, action, state = heapq.heappop(queue)
            if not timer.cancelled:
                self.seconds = due_s
                _run(self, timer, action, state)
        self.seconds = max(self.seconds, at_s)
