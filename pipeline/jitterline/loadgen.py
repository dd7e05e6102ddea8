"""``jitterline load``: many players on one asyncio loop against any server, and what it
answered.

Sessions start at ``--rate`` per second (a ramp, as calls arrive at a contact center) until
``--sessions`` have started; each plays ``--duration`` seconds of audio as Genesys or Twilio
would (``emulator.players``), with the impairment profile's seed offset by its index so
sessions differ yet a run repeats. The report counts sessions opened, refused (by HTTP
status, or AudioHook ``unauthorized``), failed (by error kind) and completed, the frames
sent, the pong RTT percentiles, and the generator's own send lag: how late, against its
plan, it put audio on the wire. A lag comparable to a frame means the generator, not the
server, was the bottleneck; the report says so, and ``--workers N`` spreads the sessions
over N processes.

Exit codes (an interface, see docs/load.md): 0 every session completed; 1 at least one
session failed (connect error, timeout, dropped, protocol violation, ``disconnect``
error); 5 none failed but the server refused at least one; 2 usage error; 130
interrupted (Ctrl-C ends every running session the protocol's way, and the report covers
them). Credentials come from the
environment only (``JITTERLINE_LOAD_API_KEY``, ``JITTERLINE_LOAD_CLIENT_SECRET``,
``JITTERLINE_TWILIO_AUTH_TOKEN``), never from the command line, where ``ps`` and shell
history would show them.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import multiprocessing
import os
import signal
import sys
import time
from collections.abc import Callable, Mapping
from concurrent.futures import ProcessPoolExecutor, wait
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, TextIO
from urllib.parse import urlsplit

from .emulator.impairments import PROFILES
from .emulator.players import (
    CLOSE_GRACE_S,
    PLAYER_DIALECTS,
    Histogram,
    PlayerOptions,
    PlayerResult,
    play,
)
from .errors import ConfigError
from .transport import is_loopback_host, redact_url

__all__ = [
    "API_KEY_ENV",
    "CLIENT_SECRET_ENV",
    "EXIT_FAILED",
    "EXIT_INTERRUPTED",
    "EXIT_OK",
    "EXIT_REFUSED",
    "TWILIO_AUTH_TOKEN_ENV",
    "LoadReport",
    "LoadTally",
    "add_parser",
    "run_load",
]

logger = logging.getLogger(__name__)

API_KEY_ENV = "JITTERLINE_LOAD_API_KEY"
CLIENT_SECRET_ENV = "JITTERLINE_LOAD_CLIENT_SECRET"
TWILIO_AUTH_TOKEN_ENV = "JITTERLINE_TWILIO_AUTH_TOKEN"

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_REFUSED = 5
EXIT_INTERRUPTED = 130

PROGRESS_EVERY_S = 5.0
QUANTILES = (("p50", 0.5), ("p95", 0.95), ("p99", 0.99))


# -- sans-I/O: adding up the sessions ---------------------------------------------------------


@dataclass(frozen=True, slots=True)
class LoadReport:
    """What the server answered to a load run, and whether the generator kept up."""

    started: int
    finished: int
    opened: int
    completed: int
    probes: int
    refused: Mapping[str, int]
    errors: Mapping[str, int]
    frames_sent: int
    frames_lost: int
    duplicates_sent: int
    frames_paused: int
    rtt: Histogram = field(compare=False)
    send_lag: Histogram = field(compare=False)
    loop_lag: Histogram = field(compare=False)
    frame_ms: float
    elapsed_s: float

    @property
    def failed(self) -> int:
        return sum(self.errors.values())

    @property
    def kept_up(self) -> bool:
        """The generator's own lateness (loop lag) p99 stayed under half a frame: what the
        server saw is the server's doing, not the generator's."""
        p99 = self.loop_lag.quantile_ms(0.99)
        return p99 is None or p99 < self.frame_ms / 2.0

    @property
    def held_back(self) -> bool:
        """Audio left a frame or more late (send lag p99) while the generator's loop kept
        up: the server was not reading fast enough (TCP backpressure) or the profile's
        head-of-line delay is that large."""
        p99 = self.send_lag.quantile_ms(0.99)
        return self.kept_up and p99 is not None and p99 >= self.frame_ms

    @property
    def exit_code(self) -> int:
        """0 all completed; 1 any failed (or did not finish); 5 refusals only."""
        refused = sum(self.refused.values())
        if self.failed or self.completed + refused < self.started:
            return EXIT_FAILED
        return EXIT_REFUSED if refused else EXIT_OK

    def as_json(self) -> dict[str, Any]:
        return {
            "sessions": {
                "started": self.started,
                "finished": self.finished,
                "opened": self.opened,
                "completed": self.completed,
                "probes": self.probes,
                "refused": dict(sorted(self.refused.items())),
                "failed": self.failed,
                "errors": dict(sorted(self.errors.items())),
            },
            "frames": {
                "sent": self.frames_sent,
                "lost_by_profile": self.frames_lost,
                "duplicates_sent": self.duplicates_sent,
                "paused": self.frames_paused,
            },
            "pong_rtt_ms": _percentiles(self.rtt),
            "send_lag_ms": {**_percentiles(self.send_lag), "held_back": self.held_back},
            "loop_lag_ms": {**_percentiles(self.loop_lag), "kept_up": self.kept_up},
            "frame_ms": self.frame_ms,
            "elapsed_s": round(self.elapsed_s, 3),
            "exit_code": self.exit_code,
        }


class LoadTally:
    """Adds up ``PlayerResult`` values as sessions finish; memory is bounded by the
    histograms' ranges and the number of distinct refusal statuses and error kinds."""

    def __init__(self, frame_ms: float) -> None:
        self.frame_ms = frame_ms
        self.started = self.finished = self.opened = self.completed = self.probes = 0
        self.frames_sent = self.frames_lost = self.duplicates = self.paused = 0
        self.refused: dict[str, int] = {}
        self.errors: dict[str, int] = {}
        self.rtt = Histogram()
        self.send_lag = Histogram()
        self.loop_lag = Histogram()

    def add(self, result: PlayerResult) -> None:
        self.finished += 1
        self.opened += result.opened
        self.completed += result.completed
        self.probes += result.probe
        if result.refused:
            self.refused[result.refused] = self.refused.get(result.refused, 0) + 1
        if result.error:
            self.errors[result.error] = self.errors.get(result.error, 0) + 1
        for channel in result.channels:
            self.frames_sent += channel.sent
            self.frames_lost += channel.lost
            self.duplicates += channel.duplicates
            self.paused += channel.paused
        for rtt_ms in result.rtts_ms:
            self.rtt.add(rtt_ms)
        self.send_lag.merge(result.send_lag)
        self.loop_lag.merge(result.loop_lag)

    def merge(self, other: LoadTally) -> None:
        """Add another process's tally (``--workers``)."""
        for name in ("started", "finished", "opened", "completed", "probes"):
            setattr(self, name, getattr(self, name) + getattr(other, name))
        for name in ("frames_sent", "frames_lost", "duplicates", "paused"):
            setattr(self, name, getattr(self, name) + getattr(other, name))
        for mine, theirs in ((self.refused, other.refused), (self.errors, other.errors)):
            for key, count in theirs.items():
                mine[key] = mine.get(key, 0) + count
        self.rtt.merge(other.rtt)
        self.send_lag.merge(other.send_lag)
        self.loop_lag.merge(other.loop_lag)

    def report(self, elapsed_s: float) -> LoadReport:
        return LoadReport(
            started=self.started,
            finished=self.finished,
            opened=self.opened,
            completed=self.completed,
            probes=self.probes,
            refused=dict(self.refused),
            errors=dict(self.errors),
            frames_sent=self.frames_sent,
            frames_lost=self.frames_lost,
            duplicates_sent=self.duplicates,
            frames_paused=self.paused,
            rtt=self.rtt,
            send_lag=self.send_lag,
            loop_lag=self.loop_lag,
            frame_ms=self.frame_ms,
            elapsed_s=elapsed_s,
        )


def _percentiles(histogram: Histogram) -> dict[str, float | int | None]:
    shown: dict[str, float | int | None] = {"count": histogram.count}
    for name, q in QUANTILES:
        value = histogram.quantile_ms(q)
        shown[name] = None if value is None else round(value, 3)
    shown["max"] = round(histogram.max_ms, 3) if histogram.count else None
    return shown


# -- the asyncio shell ------------------------------------------------------------------------


async def run_load(
    url: str,
    options: PlayerOptions,
    *,
    sessions: int | range,
    rate_per_s: float,
    tally: LoadTally,
    progress: Callable[[LoadTally, float], None] | None = None,
) -> None:
    """Start players, ``rate_per_s`` a second, and add each result to ``tally`` as it
    finishes (so an interrupted run still reports what finished). ``sessions`` is a count,
    or the indices this process plays (a worker's share); session ``i`` starts ``i /
    rate_per_s`` after the start and plays with seed ``options.seed + i``."""
    loop = asyncio.get_running_loop()
    start_s = loop.time()
    running: set[asyncio.Task[PlayerResult]] = set()
    stop = asyncio.Event()
    reporter = None if progress is None else asyncio.create_task(_report_every(tally, progress))
    try:
        for index in range(sessions) if isinstance(sessions, int) else sessions:
            delay_s = start_s + index / rate_per_s - loop.time()
            if delay_s > 0:
                await asyncio.sleep(delay_s)
            session_options = replace(options, seed=options.seed + index)
            task = asyncio.create_task(play(url, session_options, stop=stop))
            tally.started += 1
            running.add(task)
            task.add_done_callback(lambda done: _finished(done, tally, running))
        while running:
            await asyncio.wait(set(running))
    except asyncio.CancelledError:  # Ctrl-C: end every session the protocol's way, bounded
        stop.set()
        if running:
            await asyncio.wait(set(running), timeout=CLOSE_GRACE_S)
        raise
    finally:
        if reporter is not None:
            reporter.cancel()
        for task in running:
            task.cancel()


def _finished(
    task: asyncio.Task[PlayerResult], tally: LoadTally, running: set[asyncio.Task[PlayerResult]]
) -> None:
    running.discard(task)
    if task.cancelled():
        return
    error = task.exception()
    if error is not None:  # a bug in the player: counted, never lost
        logger.error("player failed: %s: %s", type(error).__name__, error)
        tally.finished += 1
        tally.errors["internal"] = tally.errors.get("internal", 0) + 1
        return
    tally.add(task.result())


async def _report_every(tally: LoadTally, progress: Callable[[LoadTally, float], None]) -> None:
    start_s = time.monotonic()
    while True:
        await asyncio.sleep(PROGRESS_EVERY_S)
        progress(tally, time.monotonic() - start_s)


# -- the command ------------------------------------------------------------------------------


EXAMPLES = f"""credentials come only from the environment:
  {API_KEY_ENV} (X-API-KEY), {CLIENT_SECRET_ENV} (base64; signs the upgrade),
  {TWILIO_AUTH_TOKEN_ENV} (X-Twilio-Signature)
examples:
  jitterline load ws://127.0.0.1:8080/audiohook --dialect audiohook --sessions 100 \\
      --rate 20 --duration 30
  jitterline load wss://bot.example.com/connector --dialect audioconnector --profile wifi
  jitterline load ws://127.0.0.1:8080/twilio --dialect twilio --sessions 200 --json -
exit codes: 0 all completed, 1 some failed, 5 some refused (none failed), 2 usage,
  130 interrupted
profiles: {", ".join(PROFILES)}"""


def add_parser(commands: Any) -> argparse.ArgumentParser:
    """Register ``load`` on the CLI's subcommands (``argparse`` sub-parsers action)."""
    parser: argparse.ArgumentParser = commands.add_parser(
        "load",
        help="drive many Genesys / Twilio sessions against a server",
        description="Play N concurrent sessions as Genesys AudioHook, Audio Connector or\n"
        "Twilio Media Streams against URL and report what the server answered.",
        epilog=EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("url", help="ws:// or wss:// URL of the server")
    parser.add_argument("--dialect", required=True, choices=PLAYER_DIALECTS)
    parser.add_argument(
        "--sessions", type=_count, default=10, metavar="N", help="sessions to play (10)"
    )
    parser.add_argument(
        "--rate", type=_positive, default=10.0, metavar="R", help="new sessions per second (10)"
    )
    parser.add_argument(
        "--duration", type=_positive, default=10.0, metavar="S", help="audio per session (10)"
    )
    parser.add_argument("--profile", default="clean", choices=list(PROFILES))
    parser.add_argument("--seed", type=int, default=0, metavar="N", help="first seed (0)")
    parser.add_argument(
        "--frame-ms", type=_positive, metavar="MS", help="audio per message (200; Twilio 20)"
    )
    parser.add_argument(
        "--ping-interval",
        type=_positive,
        metavar="S",
        help="between pings (first after 1 s, then every 5 s)",
    )
    parser.add_argument("--probe", action="store_true", help="Genesys connection probes only")
    parser.add_argument(
        "--pause-at", type=_non_negative, metavar="S", help="pause each session at S s"
    )
    parser.add_argument("--pause-for", type=_positive, default=1.0, metavar="S", help="(1)")
    parser.add_argument(
        "--tracks", default="inbound", metavar="T,T", help="Twilio tracks (inbound)"
    )
    parser.add_argument("--organization-id", metavar="UUID", help="Audiohook-Organization-Id")
    parser.add_argument(
        "--signed-url", metavar="URL", help="URL the server sees, for X-Twilio-Signature"
    )
    parser.add_argument(
        "--open-timeout", type=_positive, default=5.0, metavar="S", help="per session (5)"
    )
    parser.add_argument(
        "--allow-insecure",
        action="store_true",
        help="allow cleartext ws:// to a non-loopback host",
    )
    parser.add_argument(
        "--workers",
        type=_count,
        default=1,
        metavar="N",
        help="processes, each with its own event loop (1; no progress lines when > 1)",
    )
    parser.add_argument(
        "--json", metavar="FILE", help="write the JSON report to FILE (- = stdout)"
    )
    parser.set_defaults(handler=_handler)
    return parser


def _handler(args: argparse.Namespace, host: object) -> int:
    """The CLI's handler signature; ``load`` uses no plugins (it runs no pipeline)."""
    return load_command(args)


def load_command(args: argparse.Namespace) -> int:
    """Run ``jitterline load`` from parsed arguments; returns the exit code."""
    _check_url(args.url, args.allow_insecure)
    options = player_options(args, os.environ)
    tally = LoadTally(options.effective_frame_ms)
    started_s = time.monotonic()
    code: int | None = None
    if args.workers > 1:
        if _run_workers(args, options, tally):
            code = EXIT_INTERRUPTED
    else:
        # asyncio.run turns Ctrl-C into a cancellation of the main task (so every session
        # closes the protocol's way) only while SIGINT has Python's default handler.
        previous = signal.signal(signal.SIGINT, signal.default_int_handler)
        try:
            asyncio.run(
                run_load(
                    args.url,
                    options,
                    sessions=args.sessions,
                    rate_per_s=args.rate,
                    tally=tally,
                    progress=None if args.quiet else _progress_line,
                )
            )
        except KeyboardInterrupt:
            code = EXIT_INTERRUPTED
        finally:
            signal.signal(signal.SIGINT, previous)
    report = tally.report(time.monotonic() - started_s)
    _explain(report, args, sys.stderr)
    run = {
        "command": "load",
        "url": redact_url(args.url),
        "dialect": args.dialect,
        "profile": args.profile,
        "seed": args.seed,
        "sessions": args.sessions,
        "rate_per_s": args.rate,
        "duration_s": args.duration,
        "workers": args.workers,
    }
    document = {"run": run, **report.as_json()}
    if code is not None:
        document["exit_code"] = code
    _write_json(args.json, document)
    return report.exit_code if code is None else code


def _run_workers(args: argparse.Namespace, options: PlayerOptions, tally: LoadTally) -> bool:
    """``--workers N``: N processes, worker k playing sessions k, k + N, k + 2N, ... on its
    own event loop, so the ramp and the seeds are those of one process; their tallies are
    merged. True when interrupted (the tallies of workers that returned are merged)."""
    workers = args.workers
    shares = [range(k, args.sessions, workers) for k in range(workers)]
    context = multiprocessing.get_context("spawn")  # no inherited loop or threads
    interrupted = False
    with ProcessPoolExecutor(max_workers=workers, mp_context=context) as pool:
        futures = [pool.submit(_worker, args.url, options, share, args.rate) for share in shares]
        try:
            wait(futures)
        except KeyboardInterrupt:  # the workers got the same SIGINT and return early
            interrupted = True
            wait(futures, timeout=CLOSE_GRACE_S)
    for share, future in zip(shares, futures, strict=True):
        if future.done() and not future.cancelled() and future.exception() is None:
            tally.merge(future.result())
            continue
        logger.error("load worker for %d sessions failed: %s", len(share), future.exception())
        tally.started += len(share)
        tally.finished += len(share)
        tally.errors["worker_failed"] = tally.errors.get("worker_failed", 0) + len(share)
    return interrupted


def _worker(url: str, options: PlayerOptions, share: range, rate_per_s: float) -> LoadTally:
    tally = LoadTally(options.effective_frame_ms)
    with contextlib.suppress(KeyboardInterrupt):  # report what finished
        asyncio.run(run_load(url, options, sessions=share, rate_per_s=rate_per_s, tally=tally))
    return tally


def player_options(args: argparse.Namespace, environ: Mapping[str, str]) -> PlayerOptions:
    """The players' options from the command line, and credentials from ``environ``."""
    tracks = tuple(track.strip() for track in args.tracks.split(",") if track.strip())
    extra: dict[str, Any] = {}
    if args.organization_id:
        extra["organization_id"] = args.organization_id
    return PlayerOptions(
        dialect=args.dialect,
        impairments=PROFILES[args.profile],
        seed=args.seed,
        duration_s=args.duration,
        frame_ms=args.frame_ms,
        tracks=tracks,
        api_key=environ.get(API_KEY_ENV) or None,
        client_secret=environ.get(CLIENT_SECRET_ENV) or None,
        auth_token=environ.get(TWILIO_AUTH_TOKEN_ENV) or None,
        signed_url=args.signed_url,
        probe=args.probe,
        pause_at_s=args.pause_at,
        pause_for_s=args.pause_for,
        ping_interval_s=args.ping_interval,
        open_timeout_s=args.open_timeout,
        keep_audio=False,
        **extra,
    )


def _check_url(url: str, allow_insecure: bool) -> None:
    """Cleartext leaves the machine only on request: the upgrade carries the API key."""
    parts = urlsplit(url)
    if parts.scheme not in ("ws", "wss") or not parts.hostname:
        raise ConfigError(f"URL {redact_url(url)!r} is not ws:// or wss://HOST/...; fix it")
    if parts.scheme == "ws" and not allow_insecure and not is_loopback_host(parts.hostname):
        raise ConfigError(
            f"ws:// to {parts.hostname} would send credentials and audio in cleartext; use "
            "wss://, or pass --allow-insecure if that is what you want"
        )


def _progress_line(tally: LoadTally, elapsed_s: float) -> None:
    running = tally.started - tally.finished
    print(
        f"load: {elapsed_s:5.0f} s  started {tally.started}  running {running}  "
        f"completed {tally.completed}  refused {sum(tally.refused.values())}  "
        f"failed {sum(tally.errors.values())}",
        file=sys.stderr,
    )


def _explain(report: LoadReport, args: argparse.Namespace, out: TextIO) -> None:
    refused = ", ".join(f"{n} {status}" for status, n in sorted(report.refused.items()))
    errors = ", ".join(f"{n} {kind}" for kind, n in sorted(report.errors.items()))
    print(
        f"load: {report.started} {args.dialect} sessions at {args.rate:g}/s: "
        f"{report.opened} opened, {report.completed} completed, "
        f"{sum(report.refused.values())} refused{f' ({refused})' if refused else ''}, "
        f"{report.failed} failed{f' ({errors})' if errors else ''}",
        file=out,
    )
    rtt = _percentiles(report.rtt)
    lag = _percentiles(report.send_lag)
    loop_lag = _percentiles(report.loop_lag)
    print(
        f"frames sent {report.frames_sent} (lost by profile {report.frames_lost}); "
        f"pong RTT ms p50 {rtt['p50']} p95 {rtt['p95']} p99 {rtt['p99']} "
        f"({rtt['count']} pongs)",
        file=out,
    )
    if not report.kept_up:
        verdict = (
            "the generator FELL BEHIND (its own loop was late): the server's numbers include "
            "that delay; run fewer sessions per process"
        )
    elif report.held_back:
        verdict = (
            "the generator kept up, but audio left a frame or more late (the server's "
            "backpressure, or the profile's delays)"
        )
    else:
        verdict = "the generator kept up"
    print(
        f"send lag ms p99 {lag['p99']} max {lag['max']}; loop lag ms p99 {loop_lag['p99']}: "
        f"{verdict}",
        file=out,
    )


def _write_json(target: str | None, document: dict[str, Any]) -> None:
    text = json.dumps(document, indent=2)
    if target is None or target == "-":
        print(text)
        return
    try:
        Path(target).write_text(text + "\n", encoding="utf-8")
    except OSError as exc:
        raise ConfigError(
            f"cannot write the report to {target!r} ({exc.strerror}); pick a writable path"
        ) from exc


def _positive(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not 0 < value < float("inf"):
        raise argparse.ArgumentTypeError(f"{text} must be a positive number")
    return value


def _non_negative(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not 0 <= value < float("inf"):
        raise argparse.ArgumentTypeError(f"{text} must be zero or more")
    return value


def _count(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"{text} must be at least 1")
    return value
