"""The soak's side of the wire: the servers under test, and clients that break the rules.

``Target`` is one server under test (its URL, questions asked on its loop thread);
``Soak`` holds both servers and their credentials and tallies what the clients saw
(``Ledger``); ``Admission`` gives the flood a turn of its own. The clients write what a
correct one never would: raw HTTP (``http_request``, ``exchange``: any bytes, a byte a
second, a TCP reset), an AudioHook client that numbers its own messages (``Wire``), a
Twilio call built from the wire format's message builders (``Call``).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import secrets
import socket
import struct
import time
import uuid
from collections import Counter
from collections.abc import AsyncIterator, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, TypeVar

from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, InvalidStatus

from ..protocols import signatures
from ..protocols.twilio import (
    connected_message,
    inbound_media_message,
    start_message,
    stop_message,
)
from ..server import InboundServer, SummaryWriter

T = TypeVar("T")

PATHS = {"audiohook": "/audiohook", "twilio": "/twilio"}
HANDSHAKE_TIMEOUT_S = 2.0
OPEN_TIMEOUT_S = 2.0
CLOSE_TIMEOUT_S = 2.0
REFUSAL_DELAY_S = 0.5
MARGIN_S = 2.0
"""Slack on top of a server timeout before an answer counts as missing."""
POLL_S = 0.05
ORGANIZATION_ID = "5b4a3c2d-1e0f-4a9b-8c7d-6e5f4a3b2c1d"
AUDIO = bytes(3200)
"""200 ms of stereo PCMU silence: one AudioHook audio message."""
_WS_KEY = "dGhlIHNhbXBsZSBub25jZQ=="


class Summaries(SummaryWriter):
    """The server's summary writer, also keeping each summary by session id (the shell
    writes them on its loop thread; the soak reads them through ``Target.on_server``)."""

    def __init__(self) -> None:
        super().__init__(None)
        self.by_session: dict[str, list[Mapping[str, Any]]] = {}

    def write(self, summary: Mapping[str, Any]) -> None:
        super().write(summary)
        session_id = str(summary["stream"]["session_id"])
        self.by_session.setdefault(session_id, []).append(summary)


@dataclass
class Ledger:
    """What the clients saw of the servers: upgrades (101) and refusals by status."""

    upgraded: int = 0
    refused: Counter[int] = field(default_factory=Counter)

    def saw(self, status: int | None) -> None:
        if status == 101:
            self.upgraded += 1
        elif status in (401, 403, 503):
            self.refused[status] += 1


class Admission:
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
            try:
                await self._condition.wait_for(lambda: not self._exclusive and not self._shared)
            finally:  # a flood cancelled while waiting must not hold everyone else back
                self._waiting -= 1
                self._condition.notify_all()
            self._exclusive = True
        try:
            yield
        finally:
            async with self._condition:
                self._exclusive = False
                self._condition.notify_all()


class Target:
    """One server under test: where to reach it, and questions asked on its loop."""

    def __init__(self, server: InboundServer, summaries: Summaries) -> None:
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
            await asyncio.sleep(POLL_S)
        return True

    async def summaries_of(self, session_id: str) -> list[Mapping[str, Any]]:
        return await self.on_server(lambda: list(self.summaries.by_session.get(session_id, [])))


class Soak:
    """The two servers under test (AudioHook, Twilio), their credentials, and what the
    clients saw."""

    def __init__(self, genesys: Target, twilio: Target, secret: bytes, token: str) -> None:
        self.genesys = genesys
        self.twilio = twilio
        self.api_key = "soak-key"
        self.secret = secret
        self.token = token
        self.ledger = Ledger()
        self.admission = Admission()

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
            organization_id=ORGANIZATION_ID,
            session_id=session_id,
            correlation_id=str(uuid.uuid4()),
            api_key=self.api_key,
            secret=self.secret if secret is None else secret,
            created_wall_s=int(time.time()) - age_s,
            nonce=nonce or secrets.token_urlsafe(18),
        )


# -- raw HTTP clients ----------------------------------------------------------------------


def http_request(
    target: Target,
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
class Reply:
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


async def exchange(
    soak: Soak,
    data: bytes,
    *,
    target: Target | None = None,
    every_s: float = 0.0,
    reset_after: bool = False,
) -> Reply:
    """Write ``data`` to ``target`` (the AudioHook server unless given), at once or a byte
    every ``every_s``, and read until the server hangs up; ``reset_after``: send a TCP
    reset once ``data`` is out instead. The fault's budget (the caller's ``wait_for``)
    bounds it."""
    port = (target or soak.genesys).port
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    started_s = time.monotonic()
    reply = Reply()

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
            tcp_reset(writer.transport)
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


def tcp_reset(transport: asyncio.WriteTransport) -> None:
    """Close with a TCP reset (RFC 793 abort: SO_LINGER 0), not a FIN."""
    sock = transport.get_extra_info("socket")
    if sock is not None:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    transport.abort()


# -- an AudioHook client that breaks the rules on purpose ----------------------------------


class Wire:
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
    async def upgraded(cls, soak: Soak) -> AsyncIterator[Wire]:
        """A signed upgrade (taken in a shared admission turn); the socket is cut when
        the fault ends, however it ends."""
        session_id = str(uuid.uuid4())
        async with soak.admission.shared():
            try:
                ws = await upgrade(soak.genesys, soak.signed(session_id))
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
                "organizationId": ORGANIZATION_ID,
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


async def upgrade(target: Target, headers: Mapping[str, str]) -> ClientConnection:
    return await connect(
        target.url,
        additional_headers=dict(headers),
        open_timeout=HANDSHAKE_TIMEOUT_S + MARGIN_S,
        ping_interval=None,
        close_timeout=CLOSE_TIMEOUT_S,
        compression=None,
        max_size=2**20,
        proxy=None,
    )


class Call:
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
    async def upgraded(cls, soak: Soak) -> AsyncIterator[Call]:
        """A signed upgrade; the socket is cut when the fault ends, however it ends."""
        try:
            ws = await upgrade(soak.twilio, twilio_signed(soak))
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


def twilio_signed(soak: Soak, url: str | None = None) -> dict[str, str]:
    signature = signatures.twilio_signature(url or soak.twilio.url, soak.token)
    return {"X-Twilio-Signature": signature}
