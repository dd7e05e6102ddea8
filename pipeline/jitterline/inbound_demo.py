"""``jitterline demo --dialect audiohook|audioconnector|twilio``: both sides on loopback.

The platforms that stream contact-center audio connect *to us*, so the demo of an
inbound dialect runs a real ``serve`` (an ``InboundServer`` on the runtime's loop, on
127.0.0.1 and a free port, no credentials) and plays the platform against it with the
local endpoint's player (``emulator.players.play_demo``: AudioHook stereo, Audio Connector,
Twilio), through the chosen impairment profile. When the played session has ended the
protocol's way, the server is drained and each channel's summary is what ``serve`` itself
would have written.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, cast

from .config import PipelineConfig
from .emulator.players import PlayerDialect, PlayerResult, play_demo
from .plugins import PluginHost
from .runtime import Runtime
from .server.config import ServeOptions
from .server.report import SummaryWriter
from .server.shell import InboundServer

__all__ = ["INBOUND_DIALECTS", "InboundDemo", "run_inbound_demo"]

INBOUND_DIALECTS = ("audiohook", "audioconnector", "twilio")
_START_TIMEOUT_S = 10.0
_DRAIN_TIMEOUT_S = 30.0


class _Collect(SummaryWriter):
    """Keeps each channel's summary (and logs it, as ``serve`` does)."""

    def __init__(self) -> None:
        super().__init__(None)
        self.summaries: list[dict[str, Any]] = []

    def write(self, summary: Mapping[str, Any]) -> None:
        super().write(summary)
        self.summaries.append(dict(summary))


@dataclass(frozen=True, slots=True)
class InboundDemo:
    """The demo's outcome: one summary per channel as ``serve`` wrote it, and what the
    played platform saw (opened, completed, refused, errors, pong RTTs)."""

    summaries: tuple[dict[str, Any], ...]
    player: PlayerResult


def run_inbound_demo(
    host: PluginHost,
    config: PipelineConfig,
    *,
    dialect: str,
    profile: str,
    seed: int,
    duration_s: float,
    run: Mapping[str, Any],
) -> InboundDemo:
    """Serve ``dialect`` on loopback, play one impaired session against it, drain."""
    runtime = Runtime(host)
    options = ServeOptions(dialect=dialect, drain_timeout_s=5.0)
    collect = _Collect()
    server = InboundServer(runtime, options, config, writer=collect, run=run)
    port = runtime.ioloop.run(server.start()).result(_START_TIMEOUT_S)
    url = f"ws://127.0.0.1:{port}{options.path}"
    try:
        player = asyncio.run(
            play_demo(url, cast(PlayerDialect, dialect), profile, seed, duration_s)
        )
    finally:
        runtime.ioloop.run(server.drain()).result(_DRAIN_TIMEOUT_S)
    return InboundDemo(tuple(collect.summaries), player)
