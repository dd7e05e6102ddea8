"""The runtime's ``LoopScheduler`` on a real asyncio loop: periodic work that streams started
together do not run together, keeps its period, and stops when disposed or when it raises."""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import Callable

import pytest

from jitterline.schedulers import LoopScheduler

PERIOD_S = 0.2


async def _ticks(count: int, run_for_s: float) -> list[list[float]]:
    """Start ``count`` periodic actions at the same moment; each one's run times, as
    offsets from that moment."""
    loop = asyncio.get_running_loop()
    scheduler = LoopScheduler(loop)
    start = loop.time()
    runs: list[list[float]] = [[] for _ in range(count)]

    def recorder(into: list[float]) -> Callable[[object], None]:
        return lambda _: into.append(loop.time())

    timers = [scheduler.schedule_periodic(PERIOD_S, recorder(times)) for times in runs]
    await asyncio.sleep(run_for_s)
    for timer in timers:
        timer.dispose()
    return [[at - start for at in times] for times in runs]


def test_actions_started_together_first_run_spread_over_the_second_half_of_the_period() -> None:
    runs = asyncio.run(_ticks(40, 0.45))
    firsts = sorted(times[0] for times in runs)
    assert firsts[0] >= PERIOD_S * 0.5 and firsts[-1] <= PERIOD_S * 1.0 + 0.05
    # On the 10 ms grid: the second half of 200 ms has 10 slots, and 40 actions spread
    # evenly share them, 4 or so to a wake-up (runs of one wake-up are < 5 ms apart).
    wakeups = [[firsts[0]]]
    for earlier, later in itertools.pairwise(firsts):
        if later - earlier > 0.005:
            wakeups.append([])
        wakeups[-1].append(later)
    assert 9 <= len(wakeups) <= 11
    assert max(len(wakeup) for wakeup in wakeups) <= 6


def test_each_action_then_runs_once_a_period_without_drift() -> None:
    (times,) = asyncio.run(_ticks(1, 1.2))
    assert len(times) >= 4
    intervals = [later - earlier for earlier, later in itertools.pairwise(times)]
    # A slow machine may run one late; the schedule after it does not slip.
    assert sum(intervals) / len(intervals) == pytest.approx(PERIOD_S, abs=0.02)
    assert times[-1] - times[0] == pytest.approx(PERIOD_S * (len(times) - 1), abs=0.03)


def test_state_is_carried_from_one_run_to_the_next() -> None:
    async def main() -> list[int]:
        seen: list[int] = []

        def action(state: int | None) -> int:
            seen.append(state or 0)
            return (state or 0) + 1

        timer = LoopScheduler(asyncio.get_running_loop()).schedule_periodic(0.02, action, 0)
        await asyncio.sleep(0.2)
        timer.dispose()
        return seen

    seen = asyncio.run(main())
    assert seen[:3] == [0, 1, 2]


def test_disposed_action_never_runs_again() -> None:
    async def main() -> tuple[int, int]:
        runs: list[float] = []
        timer = LoopScheduler(asyncio.get_running_loop()).schedule_periodic(
            0.02, lambda _: runs.append(0.0)
        )
        await asyncio.sleep(0.1)
        timer.dispose()
        seen = len(runs)
        await asyncio.sleep(0.1)
        return seen, len(runs)

    seen, later = asyncio.run(main())
    assert seen >= 1 and later == seen


def test_an_action_that_raises_stops_repeating_and_the_loop_reports_it() -> None:
    async def main() -> tuple[int, list[str]]:
        loop = asyncio.get_running_loop()
        reported: list[str] = []
        loop.set_exception_handler(lambda _, context: reported.append(str(context["exception"])))
        calls = [0]

        def action(_: object) -> None:
            calls[0] += 1
            raise ValueError("sink broke")

        LoopScheduler(loop).schedule_periodic(0.02, action)
        await asyncio.sleep(0.15)
        return calls[0], reported

    calls, reported = asyncio.run(main())
    assert calls == 1
    assert reported == ["sink broke"]
