"""The live status of ``jitterline serve``: a few lines whatever the number of sessions.

A table with a row per session stops being readable at a few dozen calls, so the status
is totals (active, completed, probes, failed, refused sessions; frames received, played,
late, lost) and the worst few running sessions, ranked by verdict and then by their late
plus loss rate: the ones a human should look at. A line per session only on request
(``--status-sessions``). Lines go to stderr every ``every_s`` seconds, rendered on the
loop thread from the session table (no lock: the table only changes on that thread).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Iterable
from dataclasses import dataclass
from typing import TextIO

from .diagnosis import diagnose
from .frames import FrameCounts, Stats
from .server.shell import InboundServer, ServedSession, Totals, add_counts

__all__ = ["ServeStatus", "SessionRow", "rank", "render"]

_SEVERITY = {"loss": 4, "server_delay": 3, "network_jitter": 2, "client_buffering": 1}


@dataclass(frozen=True, slots=True)
class SessionRow:
    """One running channel as the status shows it."""

    session_id: str
    channel: str
    verdict: str
    frames: FrameCounts

    @property
    def late_rate(self) -> float:
        return self.frames.late_rate

    @property
    def loss_rate(self) -> float:
        return self.frames.loss_rate

    @property
    def badness(self) -> tuple[int, float]:
        return (_SEVERITY.get(self.verdict, 0), self.late_rate + self.loss_rate)

    def line(self) -> str:
        name = f"{self.session_id}/{self.channel}" if self.channel else self.session_id
        return (
            f"  {name}: {self.verdict}, {self.frames.received} frames, "
            f"late {self.late_rate:.1%}, loss {self.loss_rate:.1%}"
        )


def rows(sessions: Iterable[ServedSession]) -> list[SessionRow]:
    """Every running channel with a snapshot; channels without audio yet are left out."""
    result = []
    for session in sessions:
        name = session.identity.session_id if session.connection is not None else ""
        for stats in session.latest.values():
            result.append(_row(name, stats))
    return result


def _row(name: str, stats: Stats) -> SessionRow:
    return SessionRow(
        session_id=name,
        channel=stats.channel,
        verdict=diagnose(stats).verdict,
        frames=stats.frames,
    )


def rank(session_rows: Iterable[SessionRow], worst: int) -> list[SessionRow]:
    """The ``worst`` rows that are not healthy, worst first."""
    unhealthy = [row for row in session_rows if row.badness != (0, 0.0)]
    return sorted(unhealthy, key=lambda row: row.badness, reverse=True)[:worst]


def render(
    totals: Totals,
    active: int,
    session_rows: list[SessionRow],
    *,
    draining: bool = False,
    worst: int = 3,
    every_session: bool = False,
) -> list[str]:
    """The status lines: totals (frames of the completed sessions and the running ones'
    latest snapshots), then the worst sessions (or every one on request)."""
    frames = totals.frames
    for row in session_rows:
        frames = add_counts(frames, row.frames)
    refused = sum(totals.refused.values())
    state = "draining" if draining else "serving"
    lines = [
        f"jitterline serve: {state} | sessions {active} active, {totals.completed} completed, "
        f"{totals.probes} probes, {totals.failed} failed, {refused} refused | frames "
        f"{frames.received} received, {frames.played} played, {frames.late} late, "
        f"{frames.lost} lost"
    ]
    shown = sorted(session_rows, key=lambda row: row.session_id) if every_session else None
    picked = shown if shown is not None else rank(session_rows, worst)
    if picked and shown is None:
        lines.append(f"  worst {len(picked)}:")
    lines.extend(row.line() for row in picked)
    return lines


class ServeStatus:
    """Writes ``render``'s lines for ``server`` to ``stream`` every ``every_s`` seconds."""

    def __init__(
        self,
        server: InboundServer,
        stream: TextIO,
        *,
        every_s: float = 5.0,
        worst: int = 3,
        every_session: bool = False,
    ) -> None:
        self._server = server
        self._stream = stream
        self._every_s = every_s
        self._worst = worst
        self._every_session = every_session
        self._task: asyncio.Task[None] | None = None

    def lines(self) -> list[str]:
        server = self._server
        return render(
            server.totals,
            len(server.sessions),
            rows(server.sessions.values()),
            draining=server.draining,
            worst=self._worst,
            every_session=self._every_session,
        )

    def show(self) -> None:
        self._stream.write("\n".join(self.lines()) + "\n")
        self._stream.flush()

    def start(self) -> None:
        """On the loop thread: show the status every ``every_s`` seconds."""
        self._task = asyncio.get_running_loop().create_task(self._run())

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        self.show()

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(self._every_s)
            self.show()
