"""The fault soak: one dial-out session driven through many injected faults on loopback.

``python -m jitterline.soak [--faults N] [--seed S] [--json FILE]`` starts a fault-injecting
peer of its own (``FaultPeer``: a raw WebSocket endpoint and an OAuth token endpoint, both
on 127.0.0.1, port 0), dials it with the real runtime (``Runtime.dial``: the shared I/O
loop, the session, the protocol object, the pipeline, a capture), and then arms one fault
after another. Each fault is *recovered* when the session, by itself, connects again and
receives audio again within the fault's budget, and the fault's own check holds (the
Retry-After was waited, the oversized frame was counted, ...). Faults that must end a
session by design (a TLS failure at the token endpoint) run in a short session of their
own and pass when it ends the documented way.

It then reports (stdout, and ``--json``): recovered / total with every failure and why;
leaks (open descriptors, threads, resident memory before and after); the accounting
identity of the pipeline's final counts and the end-to-end one (every message the session
delivered was counted once by the pipeline, as a frame or as malformed); and whether a
credential (the canary client secret, its Basic form, any issued bearer token) reached the
capture or a log record. Exit 0 only if everything held. The soak's job is to say what
failed, so a fault whose handling is missing is reported as failed, never skipped.

Time is compressed where the session lets it: backoff of 10-50 ms, pings every 0.2 s with a
0.6 s pong deadline, a 0.3 s deadline for the rest of a frame. Audio flows in real time (a
20 ms frame every 20 ms), and an unanswered handshake costs the transport's fixed connect
timeout (``transport.IO_TIMEOUT_S``), so it comes last in the catalogue.

This soak drives the dial-out side; ``serve_soak`` throws the inbound server's faults
(malformed upgrades, bad signatures, slowloris clients, floods past ``--max-sessions``,
protocol violations, drops) at a real server while good sessions stream, and shares this
module's ``Resources`` and ``FaultResult``.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import hashlib
import json
import logging
import os
import random
import secrets
import socket
import struct
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

from .capture import CaptureHeader, CaptureWriter
from .config import PipelineConfig
from .errors import ConfigError, JitterlineError, TLSError
from .frames import ConnectionEvent, FrameCounts
from .plugins import PluginHost
from .protocols.appfoundry import AppFoundryDialect, audio_chunk_message
from .redact import install_log_redaction, redact
from .runtime import Runtime
from .transport import BackoffPolicy, IOLoop, Session, TokenProvider

__all__ = [
    "CATALOGUE",
    "Fault",
    "FaultPeer",
    "FaultResult",
    "SoakReport",
    "main",
    "pick_faults",
    "run_soak",
]

logger = logging.getLogger(__name__)

FRAME_S = 0.02
RECOVERY_FRAMES = 5
"""Messages the session must receive after a fault (on a new connection) to count as
recovered: proof that audio flows again, not only that a socket opened."""
FRAMES_BEFORE_FAULT = 3
PING_INTERVAL_S = 0.2
PING_TIMEOUT_S = 0.6
FRAME_TIMEOUT_S = 0.3
"""Shorter than the pong deadline, so that a trickled frame is cut as stalled (its own
counter) before the ping it blocks could time out."""
MAX_MESSAGE_BYTES = 1 << 20
RETRY_AFTER_S = 1
_WS_GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"  # RFC 6455 section 1.3
_POLL_S = 0.01
_OUTBOUND_PREFIX = "soak-outbound-"
OUTBOUND_EVERY_S = 0.25
"""The session also sends: a numbered text message this often (well under the session's
default send rate of 10 per second, so its queue drains after each outage), so that the
soak can check the outbound promise across every fault (each accepted message reaches the
peer at least once, or is counted in ``outbound_dropped``; never silently lost)."""
_SETTLE_S = 3.0


@dataclass(frozen=True, slots=True)
class Fault:
    """One kind of fault: ``phase`` says where the peer injects it (``handshake``: at the
    next upgrade; ``stream``: on a live connection after a few frames; ``own``: in a
    session of its own), ``budget_s`` how long recovery may take."""

    name: str
    phase: Literal["handshake", "stream", "own"]
    budget_s: float
    description: str


CATALOGUE: tuple[Fault, ...] = (
    Fault("drop", "stream", 5.0, "TCP reset mid-stream, no close frame (1006)"),
    Fault("eof", "stream", 5.0, "TCP FIN mid-stream, no close frame"),
    Fault("close_1001", "stream", 5.0, "close frame 1001 going away"),
    Fault("close_1011", "stream", 5.0, "close frame 1011 internal error"),
    Fault("handshake_401_then_200", "handshake", 5.0, "upgrade refused 401 once"),
    Fault("handshake_429", "handshake", 5.0, f"upgrade refused 429, Retry-After {RETRY_AFTER_S}"),
    Fault("handshake_503", "handshake", 5.0, "upgrade refused 503"),
    Fault("missing_pongs", "stream", 5.0, "audio goes on but pings are never answered"),
    Fault("silent_accept", "handshake", 5.0, "upgrade accepted, then not a byte"),
    Fault("oversized", "stream", 5.0, "a frame header announcing 2 MiB"),
    Fault("message_10mb", "stream", 5.0, "a 10 MB message written as fast as TCP takes it"),
    Fault("trickle", "stream", 5.0, "a frame header, then one payload byte every 0.1 s"),
    Fault(
        "token_503",
        "handshake",
        5.0,
        "401, then the token endpoint answers 503 echoing "
        "the Authorization header in error_description",
    ),
    Fault(
        "token_429",
        "handshake",
        6.0,
        f"401, then the token endpoint answers 429, Retry-After {RETRY_AFTER_S}",
    ),
    Fault(
        "token_tls_failure",
        "own",
        8.0,
        "the token endpoint's TLS handshake fails: the "
        "session must end at once with TLSError, not retry",
    ),
    Fault("unanswered_handshake", "handshake", 20.0, "upgrade request read, never answered"),
)
"""Every fault the soak injects, cheapest first: ``--faults N`` below the catalogue's size
takes its first N, above it the whole catalogue and then random picks."""

_DESCRIPTIONS = {fault.name: fault.description for fault in CATALOGUE}


def pick_faults(count: int, seed: int) -> list[Fault]:
    """The faults of a run: the catalogue's first ``count``, or all of it and then random
    picks (seeded) weighted toward the cheap ones."""
    if count < 1:
        raise ConfigError(f"--faults {count} must be at least 1; try 100")
    if count <= len(CATALOGUE):
        return list(CATALOGUE[:count])
    rng = random.Random(seed)
    weights = [0.2 if fault.budget_s > 10 or fault.phase == "own" else 1.0 for fault in CATALOGUE]
    return list(CATALOGUE) + rng.choices(CATALOGUE, weights, k=count - len(CATALOGUE))


# -- the fault-injecting peer -----------------------------------------------------------------


@dataclass
class _PeerState:
    """What the peer did, read by the runner under ``FaultPeer.lock``."""

    armed: Fault | None = None
    applied_s: float | None = None
    refused_429_s: float | None = None
    token_fault: str | None = None
    handshakes: int = 0
    upgrades: int = 0
    token_requests: int = 0
    tokens: list[str] = field(default_factory=list)
    frames_sent: int = 0
    open_connections: int = 0
    outbound_seen: set[int] = field(default_factory=set)
    outbound_copies: int = 0


class FaultPeer:
    """A WebSocket endpoint and token endpoint that misbehave on request.

    Raw sockets on an asyncio loop of its own (thread ``jitterline-soak-peer``), not the
    ``websockets`` library, because the faults are exactly what a correct library refuses
    to do: trickle a frame, announce 10 MB, never answer an upgrade. ``arm(fault)`` makes
    the next connection (``handshake`` faults) or the live one (``stream`` faults)
    misbehave once.
    """

    def __init__(self, client_id: str, client_secret: str) -> None:
        self._basic = base64.b64encode(f"{client_id}:{client_secret}".encode()).decode()
        self.lock = threading.Lock()
        self.state = _PeerState()
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._run, name="jitterline-soak-peer")
        self._servers: list[asyncio.Server] = []
        self._tasks: set[asyncio.Task[None]] = set()
        self._seq = 0
        self._started_s = time.monotonic()
        self.ws_port = self.token_port = self.plain_port = 0

    @property
    def ws_url(self) -> str:
        return f"ws://127.0.0.1:{self.ws_port}/appfoundry/v1/applications/soak/conversations"

    @property
    def auth_url(self) -> str:
        return f"http://127.0.0.1:{self.token_port}"

    @property
    def tls_auth_url(self) -> str:
        """An https URL whose server speaks plain HTTP: every TLS handshake with it fails."""
        return f"https://127.0.0.1:{self.plain_port}"

    def start(self) -> None:
        self._thread.start()
        ports = asyncio.run_coroutine_threadsafe(self._listen(), self._loop).result(5.0)
        self.ws_port, self.token_port, self.plain_port = ports

    def stop(self) -> None:
        if not self._thread.is_alive():
            return
        asyncio.run_coroutine_threadsafe(self._shutdown(), self._loop).result(5.0)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(5.0)
        self._loop.close()

    def arm(self, fault: Fault) -> None:
        with self.lock:
            self.state.armed = fault
            self.state.applied_s = None

    def _run(self) -> None:
        asyncio.set_event_loop(self._loop)
        self._loop.run_forever()

    async def _listen(self) -> tuple[int, int, int]:
        ports = []
        for handler in (self._websocket, self._token, self._plain):
            server = await asyncio.start_server(self._spawn(handler), "127.0.0.1", 0)
            self._servers.append(server)
            ports.append(server.sockets[0].getsockname()[1])
        return ports[0], ports[1], ports[2]

    async def _shutdown(self) -> None:
        for server in self._servers:
            server.close()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        for server in self._servers:
            await server.wait_closed()

    def _spawn(
        self, handler: Callable[[asyncio.StreamReader, asyncio.StreamWriter], Any]
    ) -> Callable[[asyncio.StreamReader, asyncio.StreamWriter], Any]:
        async def connection(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            task = asyncio.current_task()
            assert task is not None
            self._tasks.add(task)
            with self.lock:
                self.state.open_connections += 1
            try:
                await handler(reader, writer)
            except (OSError, asyncio.IncompleteReadError, asyncio.LimitOverrunError):
                pass  # the client went away: what every fault here provokes
            except asyncio.CancelledError:
                pass  # the peer is stopping; ending quietly keeps asyncio from logging it
            finally:
                writer.transport.abort()
                with self.lock:
                    self.state.open_connections -= 1
                self._tasks.discard(task)

        return connection

    def note_outbound(self, payload: bytes) -> None:
        """A text message from the client: the soak's numbered ones are tallied."""
        text = payload.decode("utf-8", "replace")
        if not text.startswith(_OUTBOUND_PREFIX):
            return
        with self.lock:
            self.state.outbound_seen.add(int(text.removeprefix(_OUTBOUND_PREFIX)))
            self.state.outbound_copies += 1

    def handshake_fault_armed(self) -> bool:
        with self.lock:
            armed = self.state.armed
        return armed is not None and armed.phase == "handshake"

    def _take(self, phase: str) -> Fault | None:
        with self.lock:
            fault = self.state.armed
            if fault is None or fault.phase != phase:
                return None
            self.state.armed = None
            self.state.applied_s = time.monotonic()
            return fault

    # -- the token endpoint ---------------------------------------------------------------

    async def _token(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5.0)
        headers = _headers(head)
        length = int(headers.get("content-length", "0") or 0)
        if length:
            await asyncio.wait_for(reader.readexactly(min(length, 65536)), 5.0)
        authorization = headers.get("authorization", "")
        with self.lock:
            self.state.token_requests += 1
            fault, self.state.token_fault = self.state.token_fault, None
        if fault == "token_503":
            echo = {"error": "temporarily_unavailable", "error_description": authorization}
            await _respond(writer, 503, echo)
        elif fault == "token_429":
            await _respond(writer, 429, {"error": "slow_down"}, {"Retry-After": RETRY_AFTER_S})
        elif authorization != f"Basic {self._basic}":
            await _respond(writer, 401, {"error": "invalid_client"})
        else:
            token = f"soak-{secrets.token_urlsafe(24)}"
            with self.lock:
                self.state.tokens.append(token)
            grant = {"access_token": token, "token_type": "bearer", "expires_in": 3600}
            await _respond(writer, 200, grant)

    async def _plain(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        """Answers a TLS ClientHello with plain HTTP: the client's handshake fails."""
        await asyncio.wait_for(reader.read(1024), 5.0)
        writer.write(b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\n\r\n")
        await writer.drain()

    # -- the WebSocket endpoint -----------------------------------------------------------

    async def _websocket(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 15.0)
        headers = _headers(head)
        with self.lock:
            self.state.handshakes += 1
            issued = set(self.state.tokens)
        fault = self._take("handshake")
        name = fault.name if fault is not None else ""
        if name == "unanswered_handshake":
            await reader.read()  # until the client gives up and closes
            return
        if name in ("handshake_401_then_200", "token_503", "token_429"):
            with self.lock:
                self.state.token_fault = name if name != "handshake_401_then_200" else None
            await _respond(writer, 401, {"error": "invalid_token"})
            return
        if name == "handshake_429":
            with self.lock:
                self.state.refused_429_s = time.monotonic()
            await _respond(writer, 429, {}, {"Retry-After": RETRY_AFTER_S})
            return
        if name == "handshake_503":
            await _respond(writer, 503, {})
            return
        token = headers.get("authorization", "").removeprefix("Bearer ")
        if token not in issued:
            await _respond(writer, 401, {"error": "invalid_token"})
            return
        accept = base64.b64encode(
            hashlib.sha1(headers.get("sec-websocket-key", "").encode() + _WS_GUID).digest()
        ).decode()
        writer.write(
            b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n"
            b"Connection: Upgrade\r\nSec-WebSocket-Accept: " + accept.encode() + b"\r\n\r\n"
        )
        await writer.drain()
        with self.lock:
            self.state.upgrades += 1
        await _Stream(self, reader, writer, silent=name == "silent_accept").run()

    def next_frame(self) -> bytes:
        """The live stream's next audio chunk. Its seq follows the clock (20 ms per seq
        since the peer started), like the emulator's live stream: a client that was away
        missed what was sent meanwhile, and the buffer counts that as lost."""
        now_s = time.monotonic()
        with self.lock:
            seq = max(self._seq, int((now_s - self._started_s) / FRAME_S))
            self._seq = seq + 1
            self.state.frames_sent += 1
        wall_s = time.time()
        text = audio_chunk_message(
            b"\x00\x01" * 160, seq=seq, capture_wall_s=wall_s, sent_wall_s=wall_s, codec="L16"
        )
        return _frame(0x1, text.encode())


class _Stream:
    """One upgraded connection: audio every 20 ms, pings answered, a stream fault applied
    once a few frames went out."""

    def __init__(
        self,
        peer: FaultPeer,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        *,
        silent: bool,
    ) -> None:
        self.peer = peer
        self.reader = reader
        self.writer = writer
        self.silent = silent
        self.answer_pings = not silent
        self.closed = asyncio.Event()

    async def run(self) -> None:
        listener = asyncio.ensure_future(self._listen())
        try:
            if self.silent:
                await self.closed.wait()
                return
            sent = 0
            while not self.closed.is_set():
                if self.peer.handshake_fault_armed():
                    await self._restart()
                    return
                self.writer.write(self.peer.next_frame())
                await self.writer.drain()
                sent += 1
                fault = self.peer._take("stream") if sent >= FRAMES_BEFORE_FAULT else None
                if fault is not None:
                    await self._apply(fault.name)
                    if fault.name != "missing_pongs":
                        return
                await asyncio.sleep(FRAME_S)
        finally:
            listener.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await listener

    async def _restart(self) -> None:
        """Close with 1012 (service restart) so that the client's next upgrade meets the
        armed handshake fault."""
        self.writer.write(_frame(0x8, (1012).to_bytes(2, "big") + b"restart"))
        await self.writer.drain()
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(self.closed.wait(), 1.0)

    async def _apply(self, name: str) -> None:
        writer = self.writer
        if name == "drop":
            sock = writer.get_extra_info("socket")
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            writer.transport.abort()
        elif name == "eof":
            writer.close()
        elif name in ("close_1001", "close_1011"):
            writer.write(_frame(0x8, int(name[-4:]).to_bytes(2, "big") + b"soak"))
            await writer.drain()
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self.closed.wait(), 1.0)
        elif name == "missing_pongs":
            self.answer_pings = False
        elif name in ("oversized", "message_10mb", "trickle"):
            await self._big(name)

    async def _big(self, name: str) -> None:
        self.answer_pings = False  # a pong written now would land inside the frame
        size = {"oversized": 2 << 20, "message_10mb": 10_000_000, "trickle": 1000}[name]
        self.writer.write(_header(0x1, size))
        chunk, pause_s = (b"x", 0.1) if name == "trickle" else (b"x" * 65536, 0.0)
        written = 0
        while written < size and not self.closed.is_set():
            self.writer.write(chunk[: size - written])
            await self.writer.drain()
            written += len(chunk)
            if pause_s:
                await asyncio.sleep(pause_s)
        await asyncio.wait_for(self.closed.wait(), 10.0)

    async def _listen(self) -> None:
        """Read the client's frames: answer pings, echo a close, ignore the rest."""
        try:
            while True:
                opcode, payload = await _read_frame(self.reader)
                if opcode == 0x9 and self.answer_pings:
                    self.writer.write(_frame(0xA, payload))
                elif opcode == 0x1:
                    self.peer.note_outbound(payload)
                elif opcode == 0x8:
                    with contextlib.suppress(OSError):
                        self.writer.write(_frame(0x8, payload[:2]))
                    break
        except (OSError, asyncio.IncompleteReadError):
            pass
        finally:
            self.closed.set()


def _headers(head: bytes) -> dict[str, str]:
    lines = head.decode("latin-1").split("\r\n")[1:]
    pairs = (line.split(":", 1) for line in lines if ":" in line)
    return {name.strip().lower(): value.strip() for name, value in pairs}


async def _respond(
    writer: asyncio.StreamWriter,
    status: int,
    body: Mapping[str, object],
    extra: Mapping[str, object] | None = None,
) -> None:
    data = json.dumps(body).encode()
    lines = [f"HTTP/1.1 {status} Soak", "Content-Type: application/json"]
    lines += [f"Content-Length: {len(data)}", "Connection: close"]
    lines += [f"{name}: {value}" for name, value in (extra or {}).items()]
    writer.write(("\r\n".join(lines) + "\r\n\r\n").encode() + data)
    await writer.drain()


def _header(opcode: int, length: int) -> bytes:
    first = bytes([0x80 | opcode])
    if length < 126:
        return first + bytes([length])
    if length < 1 << 16:
        return first + bytes([126]) + length.to_bytes(2, "big")
    return first + bytes([127]) + length.to_bytes(8, "big")


def _frame(opcode: int, payload: bytes) -> bytes:
    return _header(opcode, len(payload)) + payload


async def _read_frame(reader: asyncio.StreamReader) -> tuple[int, bytes]:
    """One client frame (masked, RFC 6455 section 5.2), unmasked."""
    first, second = await reader.readexactly(2)
    length = second & 0x7F
    if length == 126:
        length = int.from_bytes(await reader.readexactly(2), "big")
    elif length == 127:
        length = int.from_bytes(await reader.readexactly(8), "big")
    mask = await reader.readexactly(4) if second & 0x80 else b"\x00" * 4
    data = await reader.readexactly(min(length, MAX_MESSAGE_BYTES))
    return first & 0x0F, bytes(b ^ mask[i % 4] for i, b in enumerate(data))


# -- measuring ---------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Resources:
    """What the process holds: open descriptors, thread names, resident memory."""

    descriptors: int
    threads: tuple[str, ...]
    rss_kb: int

    @staticmethod
    def now() -> Resources:
        try:
            descriptors = len(os.listdir("/proc/self/fd"))
            with open("/proc/self/statm", encoding="ascii") as statm:
                rss_kb = int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") // 1024
        except OSError:  # not Linux: report what the standard library can see
            descriptors, rss_kb = -1, -1
        names = tuple(sorted(thread.name for thread in threading.enumerate()))
        return Resources(descriptors, names, rss_kb)

    def threads_since(self, before: Resources) -> list[str]:
        """The threads running now that were not running ``before`` (a name counts as
        often as it runs: two workers of one name are two threads)."""
        remaining = list(before.threads)
        extra = []
        for name in self.threads:
            if name in remaining:
                remaining.remove(name)
            else:
                extra.append(name)
        return extra


@dataclass(frozen=True, slots=True)
class FaultResult:
    """How one injected fault went."""

    fault: str
    recovered: bool
    seconds: float
    detail: str = ""


@dataclass
class SoakReport:
    """Everything the soak found; ``ok`` only if every fault recovered, nothing leaked,
    the counts balance and no credential was seen."""

    seed: int
    results: list[FaultResult]
    before: Resources
    after: Resources
    counts: FrameCounts
    balanced: bool
    messages_in: int
    messages_counted: int
    frames_sent: int
    peer: dict[str, int]
    outbound: dict[str, int]
    """What the fault peer saw: handshakes, upgrades (101s), token requests."""
    session: dict[str, Any]
    secrets_seen: list[str]

    @property
    def recovered(self) -> int:
        return sum(result.recovered for result in self.results)

    @property
    def leaked_descriptors(self) -> int:
        return self.after.descriptors - self.before.descriptors

    @property
    def new_threads(self) -> list[str]:
        return self.after.threads_since(self.before)

    @property
    def delivered_counted_once(self) -> bool:
        return self.messages_in == self.messages_counted

    @property
    def outbound_accounted(self) -> bool:
        """Every accepted message arrived or was counted dropped (issue 12, item 3)."""
        return self.outbound["missing"] <= self.outbound["dropped"]

    @property
    def ok(self) -> bool:
        return (
            self.outbound_accounted
            and self.recovered == len(self.results)
            and self.leaked_descriptors <= 0
            and not self.new_threads
            and self.balanced
            and self.delivered_counted_once
            and not self.secrets_seen
        )

    def to_json(self) -> dict[str, Any]:
        return {
            "ok": self.ok,
            "seed": self.seed,
            "recovered": self.recovered,
            "total": len(self.results),
            "failed": [asdict(r) for r in self.results if not r.recovered],
            "results": [asdict(r) for r in self.results],
            "catalogue": dict(_DESCRIPTIONS),
            "leaks": {
                "descriptors_before": self.before.descriptors,
                "descriptors_after": self.after.descriptors,
                "threads_before": len(self.before.threads),
                "threads_after": len(self.after.threads),
                "new_threads": self.new_threads,
                "rss_kb_before": self.before.rss_kb,
                "rss_kb_after": self.after.rss_kb,
            },
            "accounting": {
                "balanced": self.balanced,
                "frames": asdict(self.counts),
                "messages_in": self.messages_in,
                "messages_counted": self.messages_counted,
                "delivered_counted_once": self.delivered_counted_once,
                "frames_sent_by_peer": self.frames_sent,
            },
            "peer": self.peer,
            "outbound": {**self.outbound, "accounted": self.outbound_accounted},
            "session": self.session,
            "secrets_seen": self.secrets_seen,
        }

    def render(self) -> str:
        lines = [f"soak (seed {self.seed}): {self.recovered}/{len(self.results)} faults recovered"]
        lines += [
            f"  FAILED {r.fault} ({_DESCRIPTIONS[r.fault]}) after {r.seconds:.2f} s: {r.detail}"
            for r in self.results
            if not r.recovered
        ]
        lines.append(
            f"  descriptors {self.before.descriptors} -> {self.after.descriptors}, threads "
            f"{len(self.before.threads)} -> {len(self.after.threads)}"
            + (f" (new: {', '.join(self.new_threads)})" if self.new_threads else "")
            + f", RSS {self.before.rss_kb} -> {self.after.rss_kb} kB"
        )
        c = self.counts
        lines.append(
            f"  accounting {'balanced' if self.balanced else 'NOT balanced'}: received "
            f"{c.received} = played {c.played} + late {c.late} + duplicate {c.duplicate} + "
            f"overflow {c.overflow} + malformed {c.malformed} + unplayed {c.unplayed}; "
            f"lost {c.lost}"
        )
        lines.append(
            f"  delivered {self.messages_in} messages, counted {self.messages_counted}"
            + ("" if self.delivered_counted_once else "  MISMATCH")
        )
        out = self.outbound
        lines.append(
            f"  outbound {'accounted' if self.outbound_accounted else 'NOT accounted'}: "
            f"{out['accepted']} accepted, {out['delivered']} delivered ({out['copies']} copies), "
            f"{out['missing']} missing, {out['dropped']} counted dropped"
        )
        lines.append(
            "  secrets: none seen"
            if not self.secrets_seen
            else f"  secrets SEEN in: {', '.join(self.secrets_seen)}"
        )
        lines.append(f"  verdict: {'ok' if self.ok else 'FAILED'}")
        return "\n".join(lines)


class _Records(logging.Handler):
    """Keeps every formatted record of the "jitterline" loggers, unredacted, to scan."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.texts: list[str] = []
        self.setFormatter(logging.Formatter("%(name)s %(message)s"))

    def emit(self, record: logging.LogRecord) -> None:
        self.texts.append(self.format(record))


# -- running ------------------------------------------------------------------------------------


@dataclass
class _Watch:
    """Connection events seen by the session's ``on_event`` (loop thread)."""

    lock: threading.Lock = field(default_factory=threading.Lock)
    connected_s: list[float] = field(default_factory=list)

    def event(self, event: ConnectionEvent) -> None:
        if event.kind == "connected":
            with self.lock:
                self.connected_s.append(time.monotonic())

    def connected_after(self, at_s: float) -> bool:
        with self.lock:
            return any(t > at_s for t in self.connected_s)


def run_soak(faults: Sequence[Fault], *, seed: int = 0) -> SoakReport:
    """Run ``faults`` against one session (and the ``own`` ones in sessions of their own);
    see the module docstring."""
    client_id = "soak-client"
    secret = f"soak-canary-{secrets.token_hex(8)}"
    records = _Records()
    package = logging.getLogger("jitterline")
    level = package.level
    package.addHandler(records)
    package.setLevel(logging.DEBUG)
    peer = FaultPeer(client_id, secret)
    peer.start()
    IOLoop.shared()  # the shared loop's threads stay for the process: start them first
    folder = tempfile.TemporaryDirectory(prefix="jitterline-soak-")
    try:
        before = Resources.now()
        capture = Path(folder.name) / "soak.jsonl"
        results, stats, diagnostics, accepted = _soak_session(
            peer, faults, client_id, secret, capture
        )
        results += [
            _own(peer, fault, client_id, secret) for fault in faults if fault.phase == "own"
        ]
        after = _settled(peer, before)
        seen = _secrets_seen(peer, client_id, secret, capture, records.texts)
    finally:
        package.removeHandler(records)
        package.setLevel(level)
        peer.stop()
        folder.cleanup()
    with peer.lock:
        frames_sent = peer.state.frames_sent
        seen_by_peer = {
            "handshakes": peer.state.handshakes,
            "upgrades": peer.state.upgrades,
            "token_requests": peer.state.token_requests,
        }
        delivered = peer.state.outbound_seen & accepted
        copies = peer.state.outbound_copies
    outbound = {
        "accepted": len(accepted),
        "delivered": len(delivered),
        "copies": copies,
        "missing": len(accepted) - len(delivered),
        "dropped": diagnostics.outbound_dropped,
        "resent": diagnostics.outbound_resent,
    }
    counts = stats.frames
    return SoakReport(
        seed=seed,
        results=results,
        before=before,
        after=after,
        counts=counts,
        balanced=counts.balanced,
        messages_in=diagnostics.messages_in,
        messages_counted=counts.received + counts.malformed,
        frames_sent=frames_sent,
        peer=seen_by_peer,
        outbound=outbound,
        session=asdict(diagnostics),
        secrets_seen=seen,
    )


class _Sender:
    """Sends a numbered text message every ``OUTBOUND_EVERY_S`` from its own thread (as an
    application would) and remembers which ones the session accepted."""

    def __init__(self, session: Session) -> None:
        self._session = session
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="jitterline-soak-sender")
        self.accepted: set[int] = set()

    def __enter__(self) -> _Sender:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(5.0)

    def _run(self) -> None:
        number = 0
        while not self._stop.wait(OUTBOUND_EVERY_S):
            number += 1
            if self._session.send(f"{_OUTBOUND_PREFIX}{number}"):
                self.accepted.add(number)


def _soak_session(
    peer: FaultPeer, faults: Sequence[Fault], client_id: str, secret: str, capture: Path
) -> tuple[list[FaultResult], Any, Any, set[int]]:
    config = PipelineConfig(buffer_policy="fixed", buffer_ms=60.0)
    runtime = Runtime(PluginHost(load_entrypoints=False))
    tokens = TokenProvider(peer.auth_url, client_id, secret)
    writer = CaptureWriter(capture, CaptureHeader("appfoundry", config, {"command": "soak"}))
    watch = _Watch()
    proto = AppFoundryDialect(role="client", session_id="soak", wall_clock=time.time)
    connection, session = runtime.dial(
        peer.ws_url,
        proto,
        config,
        record=writer,
        on_event=watch.event,
        tokens=tokens,
        max_attempts=None,
        backoff=BackoffPolicy(initial_s=0.01, max_s=0.05),
        stable_after_s=0.1,
        ping_interval_s=PING_INTERVAL_S,
        ping_timeout_s=PING_TIMEOUT_S,
        frame_timeout_s=FRAME_TIMEOUT_S,
        max_message_bytes=MAX_MESSAGE_BYTES,
    )
    results: list[FaultResult] = []
    sender = _Sender(session)
    try:
        session.start()
        started = _recovered(peer, session, watch, since_s=0.0, budget_s=10.0)
        if not started:
            raise JitterlineError(f"the soak session never streamed: {session.outcome}")
        with sender:
            for fault in faults:
                if fault.phase != "own":
                    results.append(_inject(peer, session, watch, fault))
    finally:
        session.close(5.0)
        end_s = runtime.clock.freeze()
        diagnostics = session.diagnostics()
        stats_in = diagnostics.connection_stats()

        def finish() -> Any:
            writer.end(end_s, stats_in)
            writer.close()
            return connection.finish(stats_in)

        finished = runtime.call(finish)
        tokens.close()
    return results, finished.primary[0], diagnostics, sender.accepted


def _inject(peer: FaultPeer, session: Session, watch: _Watch, fault: Fault) -> FaultResult:
    before = session.diagnostics()
    with peer.lock:
        token_requests = peer.state.token_requests
    started_s = time.monotonic()
    peer.arm(fault)
    applied_s = _wait(lambda: peer.state.applied_s, budget_s=fault.budget_s)
    if applied_s is None:
        return FaultResult(fault.name, False, time.monotonic() - started_s, "never applied")
    ok = _recovered(peer, session, watch, since_s=applied_s, budget_s=fault.budget_s)
    seconds = time.monotonic() - applied_s
    if session.outcome is not None or session.wait(0):
        return FaultResult(fault.name, False, seconds, f"the session ended: {session.outcome}")
    if not ok:
        return FaultResult(
            fault.name, False, seconds, f"no audio on a new connection within {fault.budget_s} s"
        )
    return _check(
        peer, session, fault, before=before, token_requests=token_requests, seconds=seconds
    )


def _check(
    peer: FaultPeer,
    session: Session,
    fault: Fault,
    *,
    before: Any,
    token_requests: int,
    seconds: float,
) -> FaultResult:
    """The fault's own check, beyond "it streams again"."""
    after = session.diagnostics()
    with peer.lock:
        state = peer.state
        fetched = state.token_requests - token_requests
        refused_429_s = state.refused_429_s
    problem = ""
    if fault.name in ("oversized", "message_10mb") and after.oversized <= before.oversized:
        problem = "the oversized frame was not counted in oversized"
    elif fault.name == "trickle" and after.stalled <= before.stalled:
        problem = "the stalled frame was not counted in stalled"
    elif fault.name.startswith(("handshake_401", "token_")) and fetched < 1:
        problem = "no new token was fetched after the 401"
    elif fault.name in ("handshake_429", "token_429") and seconds < RETRY_AFTER_S - 0.05:
        problem = f"reconnected {seconds:.2f} s after a 429 asking for {RETRY_AFTER_S} s"
    elif fault.name == "handshake_429" and refused_429_s is None:
        problem = "the 429 was never sent"
    return FaultResult(fault.name, not problem, seconds, problem)


def _recovered(
    peer: FaultPeer, session: Session, watch: _Watch, *, since_s: float, budget_s: float
) -> bool:
    """A connection made after ``since_s`` delivered ``RECOVERY_FRAMES`` messages."""
    deadline_s = time.monotonic() + budget_s
    baseline: int | None = None
    while time.monotonic() < deadline_s and not session.wait(0):
        if baseline is None and watch.connected_after(since_s):
            baseline = session.diagnostics().messages_in
        if (
            baseline is not None
            and session.diagnostics().messages_in >= baseline + RECOVERY_FRAMES
        ):
            return True
        time.sleep(_POLL_S)
    return False


def _own(peer: FaultPeer, fault: Fault, client_id: str, secret: str) -> FaultResult:
    """A fault that must end its session: only TLS at the token endpoint so far."""
    tokens = TokenProvider(peer.tls_auth_url, client_id, secret, timeout_s=2.0)
    session = Session(
        peer.ws_url,
        dialect=AppFoundryDialect(role="client", session_id="tls", wall_clock=time.time),
        on_message=lambda message: None,
        tokens=tokens,
        max_attempts=3,
        backoff=BackoffPolicy(initial_s=0.01, max_s=0.05),
    )
    started_s = time.monotonic()
    try:
        session.start()
        ended = session.wait(fault.budget_s)
        seconds = time.monotonic() - started_s
        attempts = session.diagnostics().attempts
        outcome = session.outcome
    finally:
        session.close(2.0)
        tokens.close()
    if not ended:
        return FaultResult(fault.name, False, seconds, "the session did not end")
    if isinstance(outcome, TLSError) and attempts == 1:
        return FaultResult(fault.name, True, seconds)
    return FaultResult(
        fault.name,
        False,
        seconds,
        f"ended after {attempts} attempts with {type(outcome).__name__}: {outcome}; "
        "expected TLSError on the first attempt",
    )


def _settled(peer: FaultPeer, before: Resources) -> Resources:
    """Resources once the peer's sockets closed and threads had time to end (bounded)."""
    deadline_s = time.monotonic() + _SETTLE_S
    now = Resources.now()
    while time.monotonic() < deadline_s:
        with peer.lock:
            open_connections = peer.state.open_connections
        now = Resources.now()
        if (
            open_connections == 0
            and now.descriptors <= before.descriptors
            and len(now.threads) <= len(before.threads)
        ):
            break
        time.sleep(0.05)
    return now


def _secrets_seen(
    peer: FaultPeer, client_id: str, secret: str, capture: Path, logs: list[str]
) -> list[str]:
    with peer.lock:
        tokens = list(peer.state.tokens)
    basic = base64.b64encode(f"{client_id}:{secret}".encode()).decode()
    forms = {"client secret": secret, "Basic credentials": basic}
    forms.update({f"bearer token {i}": token for i, token in enumerate(tokens)})
    places = {"capture": capture.read_text(encoding="utf-8"), "logs": "\n".join(logs)}
    return [
        f"{what} in {place}"
        for place, text in places.items()
        for what, value in forms.items()
        if value in text
    ]


def _wait(read: Callable[[], float | None], *, budget_s: float) -> float | None:
    deadline_s = time.monotonic() + budget_s
    while time.monotonic() < deadline_s:
        value = read()
        if value is not None:
            return value
        time.sleep(_POLL_S)
    return None


# -- the command ------------------------------------------------------------------------------


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m jitterline.soak",
        description="Drive one dial-out session through injected faults on loopback and "
        "report recoveries, leaks, accounting and secrets (docs/reliability.md).",
    )
    parser.add_argument("--faults", type=int, default=100, metavar="N", help="faults (100)")
    parser.add_argument("--seed", type=int, default=0, metavar="S", help="pick seed (0)")
    parser.add_argument("--json", metavar="FILE", help="also write the report as JSON")
    args = parser.parse_args(argv)
    errors_only = logging.StreamHandler(sys.stderr)
    errors_only.setLevel(logging.ERROR)  # the soak turns "jitterline" to DEBUG to scan it
    errors_only.setFormatter(logging.Formatter("%(levelname)s %(name)s: %(message)s"))
    logging.getLogger().addHandler(errors_only)
    install_log_redaction([errors_only])
    try:
        report = run_soak(pick_faults(args.faults, args.seed), seed=args.seed)
    except JitterlineError as exc:
        print(f"soak: error: {exc}", file=sys.stderr)
        return 2
    print(redact(report.render()))
    if args.json:
        Path(args.json).write_text(json.dumps(report.to_json(), indent=2) + "\n")
    return 0 if report.ok else 1


if __name__ == "__main__":
    sys.exit(main())
