"""The inbound fault soak: real servers take mixed faults while good calls stream.

``python -m jitterline.serve_soak [--faults N] [--seed S] [--good G] [--duration S]
[--json FILE]`` starts, in one runtime as ``jitterline serve`` would, two servers
(``server.InboundServer``: the upgrade gate, the ``websockets`` shell, one pipeline per
session and channel) on 127.0.0.1, port 0: AudioHook with an API key and client secret,
Twilio with an auth token, so that every upgrade is checked as in production. Good
sessions (``emulator.players``: Genesys as its reference client plays it, signed, stereo
PCMU in 200 ms messages; Twilio, signed, 20 ms media; both with pings) stream in rounds of
G for the whole run, while N faults are thrown at the same servers a few at a time:
malformed upgrades, bad credentials and signatures, slowloris clients, a flood past
``max_sessions``, protocol violations mid-session and abrupt TCP drops (``CATALOGUE``).

A fault is *answered* when its client gets, within the fault's budget, the answer
docs/serve.md documents for it: the HTTP status (and for credentials, no sooner than the
refusal delay), ``disconnect`` reason ``error`` naming the violation and then ``closed``
for our ``close``, a close code, or the connection cut at the handshake timeout without an
upgrade; for a drop, the server ended the session by itself and, if it had opened, wrote
its balanced summaries. A good session is *unaffected* when it completed the protocol's way
and the server's summary of each of its channels balances and counts exactly the frames
the player sent.

The flood needs the AudioHook server's sessions to be countable: it takes an exclusive
turn (``_Admission``) against everything else that upgrades there, so that a good session
is never refused for a slot the flood took, while the good sessions already streaming keep
streaming through it.

Then it reports (stdout, and ``--json``): answered / total with each failure and why; the
good sessions (completed, frames sent and counted); the servers' identity (every upgrade
the clients saw became one completed, probe or failed session; every refusal the clients
saw was counted once, by reason); the accounting identity of every summary and of the
servers' totals; leaks (descriptors, threads, resident memory before and after, the
sessions still held at the end). Exit 0 only if everything held, 1 otherwise, 2 when it
could not run.

The servers' timeouts are compressed (handshake, ``open`` or ``start``, and close
handshake 2 s) so that slow clients cost seconds, not tens of seconds; the refusal delay
keeps its 500 ms.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import json
import logging
import random
import secrets
import socket
import struct
import sys
import time
import uuid
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any, TypeVar

from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, InvalidStatus

from .config import PipelineConfig
from .emulator.players import PlayerOptions, PlayerResult, play
from .errors import ConfigError, JitterlineError
from .frames import FrameCounts
from .plugins import PluginHost
from .protocols import signatures
from .protocols.twilio import (
    connected_message,
    inbound_media_message,
    start_message,
    stop_message,
)
from .runtime import Runtime
from .server import Credentials, InboundServer, ServeOptions, SummaryWriter, Totals
from .server.shell import add_counts
from .soak import FaultResult, Resources
from .transport import IOLoop

__all__ = [
    "CATALOGUE",
    "ServeFault",
    "ServeSoakReport",
    "main",
    "pick_faults",
    "run_serve_soak",
]

logger = logging.getLogger(__name__)

T = TypeVar("T")

PATHS = {"audiohook": "/audiohook", "twilio": "/twilio"}
HANDSHAKE_TIMEOUT_S = 2.0
OPEN_TIMEOUT_S = 2.0
CLOSE_TIMEOUT_S = 2.0
REFUSAL_DELAY_S = 0.5
FLOOD_EXTRA = 4
"""Upgrades the flood sends beyond ``max_sessions``: at least this many must get 503."""
CONCURRENCY = 4
"""Faults in flight at once."""
_MARGIN_S = 2.0
_READ_S = 0.05
_SETTLE_S = 5.0
_GOOD_OPEN_S = 10.0
_AUDIO = bytes(3200)
"""200 ms of stereo PCMU silence: one AudioHook audio message."""
_WS_KEY = "dGhlIHNhbXBsZSBub25jZQ=="


@dataclass(frozen=True, slots=True)
class ServeFault:
    """One kind of fault: ``answer`` is what docs/serve.md promises for it, ``budget_s``
    how long the answer may take."""

    name: str
    budget_s: float
    description: str
    answer: str


def _catalogue() -> tuple[ServeFault, ...]:
    upgrade = 5.0
    slow = HANDSHAKE_TIMEOUT_S + _MARGIN_S + 3.0
    violation = 8.0
    return (
        ServeFault("not_http", upgrade, "bytes that are no HTTP request", "closed, no answer"),
        ServeFault("no_upgrade", upgrade, "a plain GET without Upgrade", "426"),
        ServeFault("no_websocket_key", upgrade, "an upgrade without Sec-WebSocket-Key", "400"),
        ServeFault("bad_websocket_version", upgrade, "Sec-WebSocket-Version: 8", "400"),
        ServeFault("wrong_method", upgrade, "an upgrade with POST", "405"),
        ServeFault("wrong_path", upgrade, "an upgrade to a path outside --path", "404"),
        ServeFault("huge_headers", upgrade, "20 KB of request headers", "431"),
        ServeFault("http_1_0", upgrade, "GET / HTTP/1.0", "505"),
        ServeFault("missing_api_key", upgrade, "no X-API-KEY", "401 after 500 ms"),
        ServeFault("unknown_api_key", upgrade, "an X-API-KEY not configured", "401 after 500 ms"),
        ServeFault("unsigned", upgrade, "the key has a secret, no signature", "401 after 500 ms"),
        ServeFault("bad_signature", upgrade, "signed with the wrong secret", "401 after 500 ms"),
        ServeFault("stale_signature", upgrade, "signed 60 s ago", "401 after 500 ms"),
        ServeFault("future_signature", upgrade, "signed 60 s ahead", "401 after 500 ms"),
        ServeFault("short_nonce", upgrade, "a 10-character nonce", "401 after 500 ms"),
        ServeFault("seq_gap", violation, "a seq skipped after open", "disconnect error seq_gap"),
        ServeFault("duplicate_seq", violation, "a seq repeated", "disconnect error duplicate_seq"),
        ServeFault("wrong_id", violation, "another session's id", "disconnect error wrong_id"),
        ServeFault("unknown_type", violation, "type bogus", "disconnect error unknown_type"),
        ServeFault(
            "binary_before_opened",
            violation,
            "audio before open",
            "disconnect error audio_before_open",
        ),
        ServeFault(
            "binary_while_paused",
            violation,
            "audio after paused",
            "disconnect error audio_while_paused",
        ),
        ServeFault("truncated_json", violation, "JSON cut short", "disconnect error bad_json"),
        ServeFault("text_100kb", violation, "a 100 KB text message", "disconnect error oversized"),
        ServeFault("message_200kb", violation, "a 200 KB binary message", "close 1009"),
        ServeFault("drop_mid_upgrade", upgrade, "half a request, then TCP reset", "nothing held"),
        ServeFault("drop_before_open", violation, "upgraded, then TCP reset", "session ended"),
        ServeFault(
            "drop_mid_stream",
            violation,
            "open, audio, then TCP reset",
            "session ended, summaries balanced",
        ),
        ServeFault(
            "eof_mid_stream",
            violation,
            "open, audio, then FIN without a close frame",
            "session ended, summaries balanced",
        ),
        ServeFault(
            "silent", slow, "TCP open, never a byte", "cut at the handshake timeout, no 101"
        ),
        ServeFault(
            "trickle", slow, "the upgrade one byte a second", "cut at the handshake timeout"
        ),
        ServeFault(
            "never_opens",
            slow,
            "upgraded, never sends open",
            "socket closed at the open timeout, no opened",
        ),
        ServeFault(
            "twilio_unsigned", upgrade, "Twilio: no X-Twilio-Signature", "403 after 500 ms"
        ),
        ServeFault(
            "twilio_bad_signature",
            upgrade,
            "Twilio: a signature over another URL",
            "403 after 500 ms",
        ),
        ServeFault("twilio_no_start", slow, "Twilio: upgraded, never sends start", "close 1008"),
        ServeFault(
            "twilio_bad_media",
            violation,
            "Twilio: a media message cut short between good ones",
            "counted malformed, the stream goes on",
        ),
        ServeFault(
            "twilio_drop_mid_stream",
            violation,
            "Twilio: start, media, then TCP reset",
            "session ended, summary balanced",
        ),
        ServeFault(
            "flood",
            15.0,
            f"max_sessions + {FLOOD_EXTRA} upgrades at once beside the good sessions",
            f"101 or 503 with Retry-After each, >= {FLOOD_EXTRA} 503",
        ),
    )


CATALOGUE: tuple[ServeFault, ...] = _catalogue()
"""Every fault the soak throws; ``--faults N`` below its size takes its first N, above it
the whole catalogue and then seeded random picks."""

_BY_NAME = {fault.name: fault for fault in CATALOGUE}


def pick_faults(count: int, seed: int) -> list[ServeFault]:
    """The faults of a run: the catalogue's first ``count``, or all of it and then seeded
    random picks (the flood once per 20 faults at most: it waits for a turn of its own)."""
    if count < 1:
        raise ConfigError(f"--faults {count} must be at least 1; try 100")
    if count <= len(CATALOGUE):
        return list(CATALOGUE[:count])
    rng = random.Random(seed)
    weights = [0.2 if fault.name == "flood" else 1.0 for fault in CATALOGUE]
    return list(CATALOGUE) + rng.choices(CATALOGUE, weights, k=count - len(CATALOGUE))


# -- the server and what the clients saw --------------------------------------------------


class _Summaries(SummaryWriter):
    """The server's summary writer, also keeping each summary by session id (the shell
    writes them on its loop thread; the soak reads them through ``_Soak.on_server``)."""

    def __init__(self) -> None:
        super().__init__(None)
        self.by_session: dict[str, list[Mapping[str, Any]]] = {}

    def write(self, summary: Mapping[str, Any]) -> None:
        super().write(summary)
        session_id = str(summary["stream"]["session_id"])
        self.by_session.setdefault(session_id, []).append(summary)


@dataclass
class _Ledger:
    """What the clients saw of the server: upgrades (101) and refusals by status."""

    upgraded: int = 0
    refused: Counter[int] = field(default_factory=Counter)

    def saw(self, status: int | None) -> None:
        if status == 101:
            self.upgraded += 1
        elif status in (401, 403, 503):
            self.refused[status] += 1


class _Admission:
    """Turns for the upgrade: many ``shared`` holders at once, or one ``exclusive`` (the
    flood) with nobody else upgrading. A waiting exclusive holder goes first."""

    def __init__(self) -> None:
        self._condition = asyncio.Condition()
        self._shared = 0
        self._exclusive = False
        self._waiting = 0

    @contextlib.asynccontextmanager
    async def shared(self) -> AsyncIterator[None]:
        async with self._condition:
            await self._condition.wait_for(lambda: not self._exclusive and not self._waiting)
            self._shared += 1
        try:
            yield
        finally:
            async with self._condition:
                self._shared -= 1
                self._condition.notify_all()

    @contextlib.asynccontextmanager
    async def exclusive(self) -> AsyncIterator[None]:
        async with self._condition:
            self._waiting += 1
            await self._condition.wait_for(lambda: not self._exclusive and not self._shared)
            self._waiting -= 1
            self._exclusive = True
        try:
            yield
        finally:
            async with self._condition:
                self._exclusive = False
                self._condition.notify_all()


class _Target:
    """One server under test: where to reach it, and questions asked on its loop."""

    def __init__(self, server: InboundServer, summaries: _Summaries) -> None:
        self.server = server
        self.summaries = summaries

    @property
    def port(self) -> int:
        return self.server.port

    @property
    def path(self) -> str:
        return self.server.options.path

    @property
    def authority(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def url(self) -> str:
        return f"ws://{self.authority}{self.path}"

    async def on_server(self, fn: Callable[[], T]) -> T:
        """``fn`` on the server's loop thread, awaited without blocking ours."""

        async def call() -> T:
            return fn()

        loop = self.server.runtime.ioloop.loop
        return await asyncio.wrap_future(asyncio.run_coroutine_threadsafe(call(), loop))

    async def active(self, session_id: str) -> bool:
        def running() -> bool:
            return any(s.identity.session_id == session_id for s in self.server.sessions.values())

        return await self.on_server(running)

    async def ended(self, session_id: str, budget_s: float) -> bool:
        """The server let go of the session within ``budget_s``."""
        deadline_s = time.monotonic() + budget_s
        while await self.active(session_id):
            if time.monotonic() > deadline_s:
                return False
            await asyncio.sleep(_READ_S)
        return True

    async def summaries_of(self, session_id: str) -> list[Mapping[str, Any]]:
        return await self.on_server(lambda: list(self.summaries.by_session.get(session_id, [])))


class _Soak:
    """The two servers under test (AudioHook, Twilio), their credentials, and what the
    clients saw."""

    def __init__(self, genesys: _Target, twilio: _Target, secret: bytes, token: str) -> None:
        self.genesys = genesys
        self.twilio = twilio
        self.api_key = "soak-key"
        self.secret = secret
        self.token = token
        self.ledger = _Ledger()
        self.admission = _Admission()

    def signed(
        self,
        session_id: str,
        *,
        secret: bytes | None = None,
        age_s: int = 0,
        nonce: str | None = None,
    ) -> dict[str, str]:
        """AudioHook's signed upgrade headers for the AudioHook server."""
        return signatures.sign(
            path=self.genesys.path,
            authority=self.genesys.authority,
            organization_id=_ORG,
            session_id=session_id,
            correlation_id=str(uuid.uuid4()),
            api_key=self.api_key,
            secret=self.secret if secret is None else secret,
            created_wall_s=int(time.time()) - age_s,
            nonce=nonce or secrets.token_urlsafe(18),
        )


_ORG = "5b4a3c2d-1e0f-4a9b-8c7d-6e5f4a3b2c1d"


# -- raw HTTP clients ----------------------------------------------------------------------


def _request(
    target: _Target,
    *,
    path: str | None = None,
    method: str = "GET",
    version: str = "HTTP/1.1",
    upgrade: bool = True,
    key: bool = True,
    ws_version: str = "13",
    headers: Mapping[str, str] | None = None,
) -> bytes:
    lines = [f"{method} {path or target.path} {version}", f"Host: {target.authority}"]
    if upgrade:
        lines += ["Upgrade: websocket", "Connection: Upgrade"]
        if key:
            lines.append(f"Sec-WebSocket-Key: {_WS_KEY}")
        lines.append(f"Sec-WebSocket-Version: {ws_version}")
    lines += [f"{name}: {value}" for name, value in (headers or {}).items()]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")


@dataclass
class _Reply:
    """What a raw client got: the bytes, and when the first came and the server hung up
    (seconds after the connection opened)."""

    data: bytes = b""
    first_s: float | None = None
    closed_s: float | None = None

    @property
    def status(self) -> int | None:
        head = self.data.split(b"\r\n", 1)[0].split()
        if len(head) >= 2 and head[0].startswith(b"HTTP/") and head[1].isdigit():
            return int(head[1])
        return None

    def expect(self, status: int | None) -> str:
        if self.status == status:
            return ""
        shown = self.data.split(b"\r\n", 1)[0].decode("latin-1")[:60] or "nothing"
        return f"answered {shown!r}, expected {status or 'no answer'}"


async def _exchange(
    soak: _Soak,
    data: bytes,
    *,
    target: _Target | None = None,
    every_s: float = 0.0,
    reset_after: bool = False,
) -> _Reply:
    """Write ``data`` to ``target`` (the AudioHook server unless given), at once or a byte
    every ``every_s``, and read until the server hangs up; ``reset_after``: send a TCP
    reset once ``data`` is out instead. The fault's budget (the caller's ``wait_for``)
    bounds it."""
    port = (target or soak.genesys).port
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    started_s = time.monotonic()
    reply = _Reply()

    async def send() -> None:
        with contextlib.suppress(ConnectionError):
            step = 1 if every_s else max(len(data), 1)
            for index in range(0, len(data), step):
                writer.write(data[index : index + step])
                await writer.drain()
                if every_s:
                    await asyncio.sleep(every_s)

    sender = asyncio.get_running_loop().create_task(send())
    try:
        if reset_after:
            await sender
            _reset(writer.transport)
            return reply
        with contextlib.suppress(ConnectionError):
            while chunk := await reader.read(4096):
                if reply.first_s is None:
                    reply.first_s = time.monotonic() - started_s
                reply.data += chunk
        reply.closed_s = time.monotonic() - started_s
    finally:
        sender.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await sender
        writer.transport.abort()
    soak.ledger.saw(reply.status)
    return reply


def _reset(transport: asyncio.WriteTransport) -> None:
    """Close with a TCP reset (RFC 793 abort: SO_LINGER 0), not a FIN."""
    sock = transport.get_extra_info("socket")
    if sock is not None:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    transport.abort()


# -- an AudioHook client that breaks the rules on purpose ----------------------------------


class _Wire:
    """Hand-numbered AudioHook client messages over a real ``websockets`` client, so that
    a fault can send what the client protocol object never would."""

    def __init__(self, ws: ClientConnection, session_id: str) -> None:
        self.ws = ws
        self.session_id = session_id
        self.seq = 0
        self.serverseq = 0
        self.types: list[str] = []

    @classmethod
    @contextlib.asynccontextmanager
    async def upgraded(cls, soak: _Soak) -> AsyncIterator[_Wire]:
        """A signed upgrade (taken in a shared admission turn); the socket is cut when
        the fault ends, however it ends."""
        session_id = str(uuid.uuid4())
        async with soak.admission.shared():
            try:
                ws = await _connect(soak.genesys, soak.signed(session_id))
            except InvalidStatus as exc:
                soak.ledger.saw(exc.response.status_code)
                raise
            soak.ledger.saw(101)
        try:
            yield cls(ws, session_id)
        finally:
            ws.transport.abort()

    def text(self, kind: str, parameters: Mapping[str, Any] | None = None, **fields: Any) -> str:
        self.seq += 1
        document: dict[str, Any] = {
            "version": "2",
            "id": self.session_id,
            "type": kind,
            "seq": self.seq,
            "serverseq": self.serverseq,
            "position": "PT0S",
            "parameters": dict(parameters or {}),
        }
        document.update(fields)
        return json.dumps(document)

    async def send(
        self, kind: str, parameters: Mapping[str, Any] | None = None, **fields: Any
    ) -> None:
        await self.ws.send(self.text(kind, parameters, **fields))

    async def open(self) -> None:
        media = {"type": "audio", "format": "PCMU", "channels": ["external", "internal"]}
        await self.send(
            "open",
            {
                "organizationId": _ORG,
                "conversationId": str(uuid.uuid4()),
                "participant": {"id": str(uuid.uuid4()), "ani": "", "aniName": "", "dnis": ""},
                "media": [{**media, "rate": 8000}],
            },
        )
        await self.until("opened")

    async def until(self, wanted: str) -> dict[str, Any]:
        while True:
            data = await self.ws.recv()
            if not isinstance(data, str):
                continue
            document: dict[str, Any] = json.loads(data)
            self.serverseq = int(document.get("seq", self.serverseq))
            self.types.append(str(document.get("type")))
            if document.get("type") == wanted:
                return document

    async def drained(self) -> None:
        """Read until the server closes the socket."""
        with contextlib.suppress(ConnectionClosed):
            while True:
                await self.until("")


async def _connect(target: _Target, headers: Mapping[str, str]) -> ClientConnection:
    return await connect(
        target.url,
        additional_headers=dict(headers),
        open_timeout=HANDSHAKE_TIMEOUT_S + _MARGIN_S,
        ping_interval=None,
        close_timeout=CLOSE_TIMEOUT_S,
        compression=None,
        max_size=2**20,
        proxy=None,
    )


# -- the faults ------------------------------------------------------------------------------

Script = Callable[[_Soak], Awaitable[str]]
"""A fault: returns "" when the server answered the documented way, else what it did."""


def _http(status: int, *, extra: Mapping[str, str] | None = None, **request: Any) -> Script:
    """A request with valid credentials and one thing wrong: the gate lets it through,
    and ``websockets`` refuses the handshake with ``status``."""

    async def script(soak: _Soak) -> str:
        headers = {**soak.signed(str(uuid.uuid4())), **(extra or {})}
        data = _request(soak.genesys, headers=headers, **request)
        return (await _exchange(soak, data)).expect(status)

    return script


async def _not_http(soak: _Soak) -> str:
    return (await _exchange(soak, b"\x16\x03\x01\x02\x00HELLO\r\n\r\n")).expect(None)


def _unauthorized(
    headers: Callable[[_Soak], Mapping[str, str]], *, twilio: bool = False
) -> Script:
    """Refused, no sooner than the refusal delay (docs/serve.md): AudioHook with 401,
    Twilio with 403."""

    async def script(soak: _Soak) -> str:
        target = soak.twilio if twilio else soak.genesys
        request = _request(target, headers=headers(soak))
        reply = await _exchange(soak, request, target=target)
        problem = reply.expect(403 if twilio else 401)
        if not problem and (reply.first_s or 0.0) < REFUSAL_DELAY_S - 0.05:
            problem = f"refused after {reply.first_s:.3f} s, before the refusal delay"
        return problem

    return script


def _without_api_key(soak: _Soak) -> dict[str, str]:
    headers = soak.signed(str(uuid.uuid4()))
    del headers["X-API-KEY"]
    return headers


def _unknown_api_key(soak: _Soak) -> dict[str, str]:
    return {**_unsigned(soak), "X-API-KEY": "not-a-configured-key"}


def _unsigned(soak: _Soak) -> dict[str, str]:
    return {
        "Audiohook-Organization-Id": _ORG,
        "Audiohook-Session-Id": str(uuid.uuid4()),
        "Audiohook-Correlation-Id": str(uuid.uuid4()),
        "X-API-KEY": soak.api_key,
    }


async def _slow(soak: _Soak, data: bytes, every_s: float) -> str:
    """Cut without an upgrade once the handshake timeout passed."""
    reply = await _exchange(soak, data, every_s=every_s)
    if reply.status is not None:
        return f"answered {reply.status} to an unfinished request"
    limit_s = HANDSHAKE_TIMEOUT_S + _MARGIN_S
    if reply.closed_s is not None and reply.closed_s > limit_s:
        return f"cut after {reply.closed_s:.1f} s, past the handshake timeout"
    return ""


async def _silent(soak: _Soak) -> str:
    return await _slow(soak, b"", 0.0)


async def _trickle(soak: _Soak) -> str:
    return await _slow(soak, _request(soak.genesys, headers=_unsigned(soak)), 1.0)


def _violation(
    kind: str, act: Callable[[_Wire], Awaitable[None]], *, opened: bool = True
) -> Script:
    """``disconnect`` reason ``error`` naming ``kind``, then ``closed`` for our ``close``
    and the socket's end (docs/audiohook.md, "Violations")."""

    async def script(soak: _Soak) -> str:
        async with _Wire.upgraded(soak) as wire:
            if opened:
                await wire.open()
            await act(wire)
            parameters = (await wire.until("disconnect")).get("parameters", {})
            reason, info = parameters.get("reason"), str(parameters.get("info", ""))
            if reason != "error" or info.partition(":")[0] != kind:
                return f"disconnect reason {reason!r} info {info[:40]!r}, expected error {kind}"
            await wire.send("close", {"reason": "error"})
            await wire.until("closed")
            await wire.ws.wait_closed()
            return ""

    return script


async def _seq_gap(wire: _Wire) -> None:
    wire.seq += 1
    await wire.send("ping")


async def _duplicate_seq(wire: _Wire) -> None:
    await wire.send("ping", seq=wire.seq)


async def _wrong_id(wire: _Wire) -> None:
    await wire.send("ping", id=str(uuid.uuid4()))


async def _unknown_type(wire: _Wire) -> None:
    await wire.send("bogus")


async def _audio(wire: _Wire) -> None:
    await wire.ws.send(_AUDIO)


async def _audio_while_paused(wire: _Wire) -> None:
    await wire.send("paused")
    await wire.ws.send(_AUDIO)


async def _truncated_json(wire: _Wire) -> None:
    await wire.ws.send(wire.text("ping")[:-7])


async def _text_100kb(wire: _Wire) -> None:
    await wire.ws.send(wire.text("update", {"language": "x" * 100_000}))


async def _message_200kb(soak: _Soak) -> str:
    """Over ``max_message_bytes``: ``websockets`` closes with 1009 without buffering it."""
    async with _Wire.upgraded(soak) as wire:
        await wire.open()
        with contextlib.suppress(ConnectionClosed):
            await wire.ws.send(bytes(200_000))
        await wire.drained()
        received = wire.ws.protocol.close_rcvd
        code = None if received is None else received.code
        return "" if code == 1009 else f"closed with {code}, expected 1009"


async def _never_opens(soak: _Soak) -> str:
    async with _Wire.upgraded(soak) as wire:
        started_s = time.monotonic()
        await wire.drained()
        waited_s = time.monotonic() - started_s
        if "opened" in wire.types:
            return "opened a session that never sent open"
        if waited_s > OPEN_TIMEOUT_S + _MARGIN_S:
            return f"closed after {waited_s:.1f} s, past the open timeout"
        return ""


async def _drop_mid_upgrade(soak: _Soak) -> str:
    request = _request(soak.genesys, headers=soak.signed(str(uuid.uuid4())))
    await _exchange(soak, request[: len(request) // 2], reset_after=True)
    return ""


def _dropped(*, opened: bool, reset: bool) -> Script:
    """The server ends the session by itself; one that opened wrote a balanced summary
    per channel, counting no more frames than were sent."""

    async def script(soak: _Soak) -> str:
        async with _Wire.upgraded(soak) as wire:
            sent = 0
            if opened:
                await wire.open()
                for _ in range(3):
                    await wire.ws.send(_AUDIO)
                    sent += 1
                await asyncio.sleep(0.1)
            if reset:
                _reset(wire.ws.transport)
            else:
                transport = wire.ws.transport
                assert isinstance(transport, asyncio.WriteTransport)
                transport.write_eof()
            if not await soak.genesys.ended(wire.session_id, CLOSE_TIMEOUT_S + _MARGIN_S):
                return "the server still holds the session"
            if not opened:
                return ""
            docs = await soak.genesys.summaries_of(wire.session_id)
            return _check_summaries(docs, ["external", "internal"], at_most=sent)

    return script


def _check_summaries(
    docs: Sequence[Mapping[str, Any]], channels: Sequence[str], *, at_most: int
) -> str:
    found = sorted(str(doc["stream"]["channel"]) for doc in docs)
    if found != sorted(channels):
        return f"summaries for channels {found}, expected {sorted(channels)}"
    for doc in docs:
        frames = doc["frames"]
        if not frames["balanced"] or frames["received"] > at_most:
            return f"summary of {doc['stream']['channel']} not accounted: {frames}"
    return ""


async def _flood(soak: _Soak) -> str:
    """``max_sessions + FLOOD_EXTRA`` upgrades at once, in a turn of its own: each gets 101
    or 503 with Retry-After; the admitted ones close at once and the server lets go."""
    count = soak.genesys.server.options.max_sessions + FLOOD_EXTRA
    async with soak.admission.exclusive():
        ids = [str(uuid.uuid4()) for _ in range(count)]
        attempts = await asyncio.gather(
            *(_connect(soak.genesys, soak.signed(i)) for i in ids), return_exceptions=True
        )
        admitted: list[str] = []
        problems: list[str] = []
        refused = 0
        for session_id, attempt in zip(ids, attempts, strict=True):
            if isinstance(attempt, ClientConnection):
                soak.ledger.saw(101)
                admitted.append(session_id)
                await attempt.close()
            elif isinstance(attempt, InvalidStatus):
                response = attempt.response
                soak.ledger.saw(response.status_code)
                refused += 1
                if response.status_code != 503 or "Retry-After" not in response.headers:
                    problems.append(f"answered {response.status_code}")
            else:
                problems.append(f"{type(attempt).__name__}: {attempt}")
        for session_id in admitted:
            if not await soak.genesys.ended(session_id, CLOSE_TIMEOUT_S + _MARGIN_S):
                problems.append("a closed flood session was still held")
                break
    if refused < FLOOD_EXTRA:
        problems.append(f"only {refused} of {count} refused, expected >= {FLOOD_EXTRA}")
    return "; ".join(problems[:3])


class _Call:
    """A Twilio call written by hand (``protocols.twilio``'s message builders) over a real
    ``websockets`` client, so that a fault can slip in what Twilio never sends."""

    def __init__(self, ws: ClientConnection) -> None:
        self.ws = ws
        self.stream_sid = "MZ" + uuid.uuid4().hex
        self.call_sid = "CA" + uuid.uuid4().hex
        self.number = 0
        self.chunks = 0

    @classmethod
    @contextlib.asynccontextmanager
    async def upgraded(cls, soak: _Soak) -> AsyncIterator[_Call]:
        """A signed upgrade; the socket is cut when the fault ends, however it ends."""
        try:
            ws = await _connect(soak.twilio, _twilio_signed(soak))
        except InvalidStatus as exc:
            soak.ledger.saw(exc.response.status_code)
            raise
        soak.ledger.saw(101)
        try:
            yield cls(ws)
        finally:
            ws.transport.abort()

    def _next(self) -> int:
        self.number += 1
        return self.number

    async def start(self) -> None:
        await self.ws.send(connected_message())
        await self.ws.send(
            start_message(self.stream_sid, self.call_sid, sequence_number=self._next())
        )

    def media_text(self) -> str:
        self.chunks += 1
        return inbound_media_message(
            self.stream_sid, self.chunks, (self.chunks - 1) * 20, bytes(160), self._next()
        )

    async def media(self, count: int) -> None:
        for _ in range(count):
            await self.ws.send(self.media_text())

    async def stop(self) -> None:
        await self.ws.send(stop_message(self.stream_sid, self.call_sid, self._next()))

    async def drained(self) -> int | None:
        """Read until the server closes the socket; its close code."""
        with contextlib.suppress(ConnectionClosed):
            while True:
                await self.ws.recv()
        received = self.ws.protocol.close_rcvd
        return None if received is None else received.code


def _twilio_signed(soak: _Soak, url: str | None = None) -> dict[str, str]:
    signature = signatures.twilio_signature(url or soak.twilio.url, soak.token)
    return {"X-Twilio-Signature": signature}


async def _twilio_no_start(soak: _Soak) -> str:
    """Twilio has no open timer of its own: the shell closes with 1008 (docs/serve.md)."""
    async with _Call.upgraded(soak) as call:
        started_s = time.monotonic()
        code = await call.drained()
        waited_s = time.monotonic() - started_s
        if code != 1008:
            return f"closed with {code}, expected 1008"
        if waited_s > OPEN_TIMEOUT_S + _MARGIN_S:
            return f"closed after {waited_s:.1f} s, past the open timeout"
        return ""


async def _twilio_bad_media(soak: _Soak) -> str:
    """A media message cut short costs that message only: counted malformed, the stream
    goes on, and ``stop`` ends it the protocol's way with every good chunk counted."""
    async with _Call.upgraded(soak) as call:
        await call.start()
        await call.media(3)
        await call.ws.send(call.media_text()[:-9])
        call.chunks -= 1  # the cut message carried no chunk the server could count
        await call.media(2)
        await call.stop()
        await call.drained()
        if not await soak.twilio.ended(call.stream_sid, CLOSE_TIMEOUT_S + _MARGIN_S):
            return "the server still holds the session"
        docs = await soak.twilio.summaries_of(call.stream_sid)
        problem = _check_summaries(docs, ["inbound"], at_most=6)
        frames = docs[0]["frames"] if docs else {}
        if not problem and (frames["malformed"], frames["played"]) != (1, 5):
            problem = f"expected 5 played and 1 malformed of 6 received, summary {frames}"
        return problem


async def _twilio_drop(soak: _Soak) -> str:
    async with _Call.upgraded(soak) as call:
        await call.start()
        await call.media(3)
        await asyncio.sleep(0.1)
        _reset(call.ws.transport)
        if not await soak.twilio.ended(call.stream_sid, CLOSE_TIMEOUT_S + _MARGIN_S):
            return "the server still holds the session"
        docs = await soak.twilio.summaries_of(call.stream_sid)
        return _check_summaries(docs, ["inbound"], at_most=3)


_SCRIPTS: dict[str, Script] = {
    "not_http": _not_http,
    "no_upgrade": _http(426, upgrade=False),
    "no_websocket_key": _http(400, key=False),
    "bad_websocket_version": _http(400, ws_version="8"),
    "wrong_method": _http(405, method="POST"),
    "wrong_path": _http(404, path="/elsewhere"),
    "huge_headers": _http(431, extra={"X-Padding": "a" * 20_000}),
    "http_1_0": _http(505, version="HTTP/1.0"),
    "missing_api_key": _unauthorized(_without_api_key),
    "unknown_api_key": _unauthorized(_unknown_api_key),
    "unsigned": _unauthorized(_unsigned),
    "bad_signature": _unauthorized(lambda s: s.signed(str(uuid.uuid4()), secret=b"x" * 32)),
    "stale_signature": _unauthorized(lambda s: s.signed(str(uuid.uuid4()), age_s=60)),
    "future_signature": _unauthorized(lambda s: s.signed(str(uuid.uuid4()), age_s=-60)),
    "short_nonce": _unauthorized(lambda s: s.signed(str(uuid.uuid4()), nonce="abcdefghij")),
    "seq_gap": _violation("seq_gap", _seq_gap),
    "duplicate_seq": _violation("duplicate_seq", _duplicate_seq),
    "wrong_id": _violation("wrong_id", _wrong_id),
    "unknown_type": _violation("unknown_type", _unknown_type),
    "binary_before_opened": _violation("audio_before_open", _audio, opened=False),
    "binary_while_paused": _violation("audio_while_paused", _audio_while_paused),
    "truncated_json": _violation("bad_json", _truncated_json),
    "text_100kb": _violation("oversized", _text_100kb),
    "message_200kb": _message_200kb,
    "drop_mid_upgrade": _drop_mid_upgrade,
    "drop_before_open": _dropped(opened=False, reset=True),
    "drop_mid_stream": _dropped(opened=True, reset=True),
    "eof_mid_stream": _dropped(opened=True, reset=False),
    "silent": _silent,
    "trickle": _trickle,
    "never_opens": _never_opens,
    "flood": _flood,
    "twilio_unsigned": _unauthorized(lambda s: {}, twilio=True),
    "twilio_bad_signature": _unauthorized(
        lambda s: _twilio_signed(s, s.twilio.url + "?tenant=other"), twilio=True
    ),
    "twilio_no_start": _twilio_no_start,
    "twilio_bad_media": _twilio_bad_media,
    "twilio_drop_mid_stream": _twilio_drop,
}


async def _throw(soak: _Soak, fault: ServeFault, turns: asyncio.Semaphore) -> FaultResult:
    async with turns:
        started_s = time.monotonic()
        try:
            problem = await asyncio.wait_for(_SCRIPTS[fault.name](soak), fault.budget_s)
        except (asyncio.TimeoutError, TimeoutError):
            problem = f"no documented answer within {fault.budget_s:g} s"
        except (OSError, ConnectionClosed, InvalidStatus, ValueError) as exc:
            problem = f"{type(exc).__name__}: {exc}"
        return FaultResult(fault.name, not problem, time.monotonic() - started_s, problem)


# -- the good sessions -----------------------------------------------------------------------


async def _good_rounds(
    soak: _Soak, *, sessions: int, duration_s: float, stop: asyncio.Event
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


async def _opened(soak: _Soak, organization: str, tasks: Sequence[asyncio.Task[Any]]) -> None:
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
        await asyncio.sleep(_READ_S)


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


# -- the report ---------------------------------------------------------------------------------


@dataclass
class ServeSoakReport:
    """Everything the soak found; ``ok`` only if every fault was answered, every good
    session was unaffected, the server counted every upgrade and refusal once, every count
    balanced and nothing leaked."""

    seed: int
    results: list[FaultResult]
    before: Resources
    after: Resources
    good: dict[str, Any]
    server: dict[str, Any]
    accounting: dict[str, Any]
    active_at_end: int

    @property
    def answered(self) -> int:
        return sum(result.recovered for result in self.results)

    @property
    def new_threads(self) -> list[str]:
        remaining = list(self.before.threads)
        extra = []
        for name in self.after.threads:
            if name in remaining:
                remaining.remove(name)
            else:
                extra.append(name)
        return extra

    @property
    def leaked(self) -> bool:
        return (
            self.after.descriptors > self.before.descriptors
            or bool(self.new_threads)
            or self.active_at_end > 0
        )

    @property
    def ok(self) -> bool:
        return (
            self.answered == len(self.results)
            and not self.good["affected"]
            and self.good["sessions"] > 0
            and self.server["identity"]
            and self.accounting["balanced"]
            and not self.leaked
        )

    def to_json(self) -> dict[str, Any]:
        return {
            "ok": self.ok,
            "seed": self.seed,
            "answered": self.answered,
            "total": len(self.results),
            "failed": [asdict(r) for r in self.results if not r.recovered],
            "results": [asdict(r) for r in self.results],
            "catalogue": {f.name: f"{f.description} -> {f.answer}" for f in CATALOGUE},
            "good": self.good,
            "server": self.server,
            "accounting": self.accounting,
            "leaks": {
                "descriptors_before": self.before.descriptors,
                "descriptors_after": self.after.descriptors,
                "threads_before": len(self.before.threads),
                "threads_after": len(self.after.threads),
                "new_threads": self.new_threads,
                "rss_kb_before": self.before.rss_kb,
                "rss_kb_after": self.after.rss_kb,
                "sessions_at_end": self.active_at_end,
            },
        }

    def render(self) -> str:
        lines = [
            f"serve soak (seed {self.seed}): {self.answered}/{len(self.results)} faults "
            "answered the documented way"
        ]
        lines += [
            f"  FAILED {r.fault} ({_BY_NAME[r.fault].description}) after {r.seconds:.2f} s: "
            f"{r.detail}"
            for r in self.results
            if not r.recovered
        ]
        good = self.good
        lines.append(
            f"  good sessions: {good['completed']}/{good['sessions']} completed, frames sent "
            f"{good['frames_sent']}, counted {good['frames_counted']}"
            + (f"; AFFECTED: {'; '.join(good['affected'][:5])}" if good["affected"] else "")
        )
        server = self.server
        lines.append(
            "  servers "
            + ("counted every upgrade and refusal" if server["identity"] else "MISMATCH")
            + f": upgrades seen {server['upgrades_seen']} = sessions {server['sessions']} "
            f"(completed {server['completed']}, probes {server['probes']}, failed "
            f"{server['failed']}); refusals seen {server['refusals_seen']} = counted "
            f"{server['refusals_counted']} {server['refused_by_reason']}"
        )
        a = self.accounting
        frames = a["frames"]
        lines.append(
            f"  accounting {'balanced' if a['balanced'] else 'NOT balanced'}: "
            f"{a['summaries']} summaries; received {frames['received']} = played "
            f"{frames['played']} + late {frames['late']} + duplicate {frames['duplicate']} + "
            f"overflow {frames['overflow']} + malformed {frames['malformed']} + unplayed "
            f"{frames['unplayed']} + discarded {frames['discarded']}; lost {frames['lost']}"
        )
        lines.append(
            f"  descriptors {self.before.descriptors} -> {self.after.descriptors}, threads "
            f"{len(self.before.threads)} -> {len(self.after.threads)}"
            + (f" (new: {', '.join(self.new_threads)})" if self.new_threads else "")
            + f", RSS {self.before.rss_kb} -> {self.after.rss_kb} kB, sessions held at the "
            f"end {self.active_at_end}"
        )
        lines.append(f"  verdict: {'ok' if self.ok else 'FAILED'}")
        return "\n".join(lines)


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
    summaries = _Summaries()
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
        soak = _Soak(_Target(servers[0], summaries), _Target(servers[1], summaries), secret, token)
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
    soak: _Soak, faults: Sequence[ServeFault], *, good_sessions: int, duration_s: float
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
        results = list(await asyncio.gather(*(_throw(soak, f, turns) for f in faults)))
    finally:
        stop.set()
        good += await streaming
    after = await _settled(soak, before)
    return results, good, before, after


async def _settled(soak: _Soak, before: Resources) -> Resources:
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
        await asyncio.sleep(_READ_S)
    return now


def _good_figures(results: Sequence[PlayerResult], summaries: _Summaries) -> dict[str, Any]:
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


def _identity(ledger: _Ledger, good: Sequence[PlayerResult], totals: Totals) -> dict[str, Any]:
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


def _accounting(summaries: _Summaries, totals: Totals) -> dict[str, Any]:
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


if __name__ == "__main__":
    sys.exit(main())
