"""Running the inbound soak: the servers, the good sessions beside the faults, the tallies,
and the command."""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import logging
import secrets
import sys
import time
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import asdict
from typing import Any

from ..config import PipelineConfig
from ..emulator.players import PlayerOptions, PlayerResult, play
from ..errors import ConfigError, JitterlineError
from ..frames import FrameCounts
from ..plugins import PluginHost
from ..protocols import signatures
from ..runtime import Runtime
from ..server import Credentials, InboundServer, ServeOptions, Totals
from ..server.shell import add_counts
from ..soak import FaultResult, Resources
from ..transport import IOLoop
from .faults import ServeFault, pick_faults, throw
from .peers import (
    CLOSE_TIMEOUT_S,
    HANDSHAKE_TIMEOUT_S,
    OPEN_TIMEOUT_S,
    PATHS,
    POLL_S,
    REFUSAL_DELAY_S,
    Ledger,
    Soak,
    Summaries,
    Target,
)
from .report import ServeSoakReport

__all__ = ["CONCURRENCY", "main", "run_serve_soak"]

CONCURRENCY = 4
"""Faults in flight at once."""
_SETTLE_S = 5.0
_GOOD_OPEN_S = 10.0


async def _good_rounds(
    soak: Soak, *, sessions: int, duration_s: float, stop: asyncio.Event
) -> list[PlayerResult]:
    """Rounds of ``sessions`` players, AudioHook and Twilio in turn, until ``stop`` is set
    (the round running then finishes). The AudioHook players of a round hold a shared
    admission turn until the server opened all of them, so the flood never takes a slot
    one of them was about to take."""
    genesys = PlayerOptions(
        dialect="audiohook",
        duration_s=duration_s,
        api_key=soak.api_key,
        client_secret=base64.b64encode(soak.secret).decode(),
        ping_interval_s=1.0,
        keep_audio=False,
    )
    twilio = PlayerOptions(
        dialect="twilio",
        duration_s=duration_s,
        auth_token=soak.token,
        ping_interval_s=1.0,
        keep_audio=False,
    )
    results: list[PlayerResult] = []
    number = 0
    while True:
        organization = str(uuid.uuid4())  # tells this round's sessions apart on the server
        seeds = range(number * sessions, (number + 1) * sessions)
        async with soak.admission.shared():
            hooks = [
                asyncio.create_task(
                    play(soak.genesys.url, genesys, seed=seed, organization_id=organization)
                )
                for seed in seeds[::2]
            ]
            calls = [
                asyncio.create_task(play(soak.twilio.url, twilio, seed=seed))
                for seed in seeds[1::2]
            ]
            await _opened(soak, organization, hooks)
        results += await asyncio.gather(*hooks, *calls)
        number += 1
        if stop.is_set():
            return results


async def _opened(soak: Soak, organization: str, tasks: Sequence[asyncio.Task[Any]]) -> None:
    """Until the AudioHook server opened a session of every task (or the task ended),
    bounded."""

    def opened() -> int:
        return sum(
            1
            for session in soak.genesys.server.sessions.values()
            if session.opened
            and getattr(session.connection.proto if session.connection else None,
                        "organization_id", None) == organization
        )  # fmt: skip

    deadline_s = time.monotonic() + _GOOD_OPEN_S
    while time.monotonic() < deadline_s:
        done = sum(task.done() for task in tasks)
        if await soak.genesys.on_server(opened) + done >= len(tasks):
            return
        await asyncio.sleep(POLL_S)


def _good_problem(result: PlayerResult, docs: Sequence[Mapping[str, Any]]) -> str:
    """ "" when the session completed and its summaries count exactly what was sent."""
    if not result.completed:
        what = result.error or (f"refused {result.refused}" if result.refused else "")
        return f"{result.session_id}: not completed ({what or 'unknown'}: {result.error_detail})"
    by_channel = {str(doc["stream"]["channel"]): doc["frames"] for doc in docs}
    for channel in result.channels:
        frames = by_channel.get(channel.channel)
        if frames is None:
            return f"{result.session_id}/{channel.channel}: no summary"
        if not frames["balanced"] or frames["received"] != channel.sent or frames["malformed"]:
            return f"{result.session_id}/{channel.channel}: sent {channel.sent}, summary {frames}"
    return ""


# -- running ------------------------------------------------------------------------------------


def run_serve_soak(
    faults: Sequence[ServeFault],
    *,
    seed: int = 0,
    good_sessions: int = 10,
    duration_s: float = 5.0,
) -> ServeSoakReport:
    """Serve AudioHook and Twilio on loopback, throw ``faults`` beside rounds of
    ``good_sessions`` good sessions of ``duration_s`` each; see the module docstring."""
    if good_sessions < 1:
        raise ConfigError(f"--good {good_sessions} must be at least 1; try 10")
    secret, token = secrets.token_bytes(32), secrets.token_hex(16)
    ioloop = IOLoop(name="jitterline-serve-soak").start()
    runtime = Runtime(PluginHost(load_entrypoints=False), ioloop=ioloop)
    summaries = Summaries()
    credentials = {
        "audiohook": Credentials(api_keys=signatures.KeySet({"soak-key": secret})),
        "twilio": Credentials(twilio_token=token),
    }
    servers = [
        InboundServer(
            runtime,
            _options(dialect, credentials[dialect], max_sessions=good_sessions + CONCURRENCY + 2),
            PipelineConfig(dialect=dialect),
            writer=summaries,
            run={"command": "serve_soak", "dialect": dialect},
        )
        for dialect in ("audiohook", "twilio")
    ]
    try:
        for server in servers:
            ioloop.run(server.start()).result(10.0)
        soak = Soak(Target(servers[0], summaries), Target(servers[1], summaries), secret, token)
        results, good, before, after = asyncio.run(
            _soak(soak, faults, good_sessions=good_sessions, duration_s=duration_s)
        )
        active = runtime.call(lambda: sum(len(server.sessions) for server in servers))
        totals = runtime.call(lambda: _merged([server.totals for server in servers]))
    finally:
        for server in servers:
            ioloop.run(server.close()).result(CLOSE_TIMEOUT_S + 10.0)
        ioloop.stop()
    return ServeSoakReport(
        seed=seed,
        results=results,
        before=before,
        after=after,
        good=_good_figures(good, summaries),
        server=_identity(soak.ledger, good, totals),
        accounting=_accounting(summaries, totals),
        active_at_end=active,
    )


def _options(dialect: str, credentials: Credentials, *, max_sessions: int) -> ServeOptions:
    return ServeOptions(
        port=0,
        dialect=dialect,
        path=PATHS[dialect],
        max_sessions=max_sessions,
        credentials=credentials,
        refusal_delay_s=REFUSAL_DELAY_S,
        handshake_timeout_s=HANDSHAKE_TIMEOUT_S,
        open_timeout_s=OPEN_TIMEOUT_S,
        close_timeout_s=CLOSE_TIMEOUT_S,
    )


def _merged(totals: Sequence[Totals]) -> Totals:
    """The servers' counters added up (one process serving both dialects)."""
    merged = Totals()
    for one in totals:
        merged.completed += one.completed
        merged.probes += one.probes
        merged.failed += one.failed
        merged.refused.update(one.refused)
        merged.add_frames(one.frames)
    return merged


async def _soak(
    soak: Soak, faults: Sequence[ServeFault], *, good_sessions: int, duration_s: float
) -> tuple[list[FaultResult], list[PlayerResult], Resources, Resources]:
    # One good session of each dialect first: imports, codec tables and each server's
    # first pipeline are made before the resources are measured.
    warm = asyncio.Event()
    warm.set()
    good = await _good_rounds(soak, sessions=2, duration_s=1.0, stop=warm)
    before = Resources.now()
    stop = asyncio.Event()
    streaming = asyncio.create_task(
        _good_rounds(soak, sessions=good_sessions, duration_s=duration_s, stop=stop)
    )
    turns = asyncio.Semaphore(CONCURRENCY)
    try:
        results = list(await asyncio.gather(*(throw(soak, f, turns) for f in faults)))
    finally:
        stop.set()
        good += await streaming
    after = await _settled(soak, before)
    return results, good, before, after


async def _settled(soak: Soak, before: Resources) -> Resources:
    """Resources once the servers let go of every session and descriptors came back
    (bounded)."""
    deadline_s = time.monotonic() + _SETTLE_S
    now = Resources.now()
    while time.monotonic() < deadline_s:
        active = await soak.genesys.on_server(
            lambda: len(soak.genesys.server.sessions) + len(soak.twilio.server.sessions)
        )
        now = Resources.now()
        if active == 0 and now.descriptors <= before.descriptors:
            break
        await asyncio.sleep(POLL_S)
    return now


def _good_figures(results: Sequence[PlayerResult], summaries: Summaries) -> dict[str, Any]:
    problems = [
        problem
        for result in results
        if (problem := _good_problem(result, summaries.by_session.get(result.session_id, [])))
    ]
    counted = sum(
        int(doc["frames"]["received"])
        for result in results
        for doc in summaries.by_session.get(result.session_id, [])
    )
    return {
        "sessions": len(results),
        "completed": sum(result.completed for result in results),
        "frames_sent": sum(result.frames_sent for result in results),
        "frames_counted": counted,
        "affected": problems,
    }


def _identity(ledger: Ledger, good: Sequence[PlayerResult], totals: Totals) -> dict[str, Any]:
    """Every upgrade a client saw is one session the server made and ended (completed,
    probe or failed); every refusal a client saw, one the server counted."""
    upgrades = ledger.upgraded + sum(result.opened for result in good)
    refusals_seen = sum(ledger.refused.values()) + sum(r.refused.isdigit() for r in good)
    sessions = totals.completed + totals.probes + totals.failed
    counted = sum(totals.refused.values())
    return {
        "identity": upgrades == sessions and refusals_seen == counted,
        "upgrades_seen": upgrades,
        "sessions": sessions,
        "completed": totals.completed,
        "probes": totals.probes,
        "failed": totals.failed,
        "refusals_seen": refusals_seen,
        "refusals_counted": counted,
        "refused_by_reason": dict(sorted(totals.refused.items())),
    }


def _accounting(summaries: Summaries, totals: Totals) -> dict[str, Any]:
    """Every summary balances, and their sum is the server's totals (which balance)."""
    docs = [doc for found in summaries.by_session.values() for doc in found]
    summed = FrameCounts()
    for doc in docs:
        frames = doc["frames"]
        summed = add_counts(
            summed,
            FrameCounts(**{name: frames[name] for name in FrameCounts.__dataclass_fields__}),
        )
    balanced = (
        all(doc["frames"]["balanced"] for doc in docs)
        and totals.frames.balanced
        and summed == totals.frames
    )
    return {"balanced": balanced, "summaries": len(docs), "frames": asdict(totals.frames)}


# -- the command ------------------------------------------------------------------------------


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m jitterline.serve_soak",
        description="Throw mixed faults at real AudioHook and Twilio servers on loopback "
        "while good sessions stream; report answers, good sessions, accounting and leaks "
        "(docs/reliability.md).",
    )
    parser.add_argument("--faults", type=int, default=100, metavar="N", help="faults (100)")
    parser.add_argument("--seed", type=int, default=0, metavar="S", help="pick seed (0)")
    parser.add_argument(
        "--good", type=int, default=10, metavar="G", help="good sessions per round (10)"
    )
    parser.add_argument(
        "--duration", type=float, default=5.0, metavar="S", help="each good session's audio (5)"
    )
    parser.add_argument("--json", metavar="FILE", help="also write the report as JSON")
    args = parser.parse_args(argv)
    errors_only = logging.StreamHandler(sys.stderr)
    errors_only.setLevel(logging.ERROR)
    errors_only.setFormatter(logging.Formatter("%(levelname)s %(name)s: %(message)s"))
    logging.getLogger().addHandler(errors_only)
    try:
        report = run_serve_soak(
            pick_faults(args.faults, args.seed),
            seed=args.seed,
            good_sessions=args.good,
            duration_s=args.duration,
        )
    except JitterlineError as exc:
        print(f"serve soak: error: {exc}", file=sys.stderr)
        return 2
    print(report.render())
    if args.json:
        with open(args.json, "w", encoding="utf-8") as out:
            json.dump(report.to_json(), out, indent=2)
            out.write("\n")
    return 0 if report.ok else 1
