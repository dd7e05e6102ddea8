"""Play Genesys and Twilio against a real ``InboundServer`` on loopback.

The server runs on its own ``IOLoop`` thread, as in ``jitterline serve``; the clients run
in the test's thread on their own asyncio loop over a real ``websockets`` client, with the
protocol objects in the client role (or, for violations, a hand-written ``Wire`` that
numbers messages itself so a test can break the rules). Every wait has a timeout.
"""

from __future__ import annotations

import asyncio
import json
import secrets
import ssl
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, TypeVar

from websockets.asyncio.client import ClientConnection, connect

from jitterline import PipelineConfig, PluginHost
from jitterline.frames import Event, Message
from jitterline.protocols import signatures
from jitterline.protocols.audiohook import AudioHookDialect
from jitterline.runtime import Runtime
from jitterline.server import InboundServer, ServeOptions, SummaryWriter, Totals
from jitterline.transport import IOLoop

T = TypeVar("T")

WAIT_S = 15.0
ORG = "d7934305-0972-4844-938e-9060eef73d05"
CONVERSATION = "090eaa2f-72fa-480a-83e0-8667ff89c0ec"
PARTICIPANT = "883efee8-3d6c-4537-b500-6d7ca4b92fa0"
NULL_UUID = "00000000-0000-0000-0000-000000000000"
STEREO = (("PCMU", ("external", "internal")),)


@dataclass
class Served:
    """A running server: its URL, the summaries file, and its counters."""

    server: InboundServer
    ioloop: IOLoop
    url: str
    summaries_path: Path

    def summaries(self, predicate: Callable[[dict[str, Any]], bool], count: int) -> list[Any]:
        """Wait (bounded) until ``count`` summary lines match ``predicate``."""
        deadline = time.monotonic() + WAIT_S
        while True:
            lines = self.summaries_path.read_text(encoding="utf-8").splitlines()
            found = [doc for doc in map(json.loads, lines) if predicate(doc)]
            if len(found) >= count:
                return found
            assert time.monotonic() < deadline, f"{len(found)} of {count} summaries written"
            time.sleep(0.02)

    def totals(self) -> Totals:
        return self.call(lambda: replace(self.server.totals))

    def totals_when(self, predicate: Callable[[Totals], bool]) -> Totals:
        """Wait (bounded) until the counters satisfy ``predicate``: a session's handler
        may still be ending when its client has seen the socket close."""
        deadline = time.monotonic() + WAIT_S
        while not predicate(totals := self.totals()):
            assert time.monotonic() < deadline, f"counters stayed at {totals}"
            time.sleep(0.02)
        return totals

    def active(self) -> int:
        return self.call(lambda: len(self.server.sessions))

    def call(self, fn: Callable[[], T]) -> T:
        return self.server.runtime.call(fn)


@contextmanager
def serving(
    tmp_path: Path, *, plugins: tuple[object, ...] = (), **options: Any
) -> Iterator[Served]:
    """An ``InboundServer`` on 127.0.0.1, port 0, its summaries in a JSON Lines file."""
    settings = ServeOptions(port=0, **options)
    ioloop = IOLoop(name="serve-test").start()
    runtime = Runtime(PluginHost(plugins=plugins), ioloop=ioloop)
    path = tmp_path / f"summaries-{uuid.uuid4().hex[:8]}.jsonl"
    path.touch()
    server = InboundServer(
        runtime,
        settings,
        PipelineConfig(dialect=settings.dialect),
        writer=SummaryWriter(str(path)),
    )
    try:
        port = ioloop.run(server.start()).result(WAIT_S)
        scheme = "wss" if settings.certfile else "ws"
        yield Served(server, ioloop, f"{scheme}://127.0.0.1:{port}{settings.path}", path)
    finally:
        ioloop.run(server.close()).result(WAIT_S)
        ioloop.stop()


def now() -> float:
    return time.monotonic()


def signed_headers(
    url: str,
    session_id: str,
    *,
    api_key: str,
    secret: bytes,
    created_wall_s: int | None = None,
) -> dict[str, str]:
    """Genesys' signed upgrade headers for ``url``."""
    authority, _, path = url.removeprefix("ws://").partition("/")
    return signatures.sign(
        path="/" + path,
        authority=authority,
        organization_id=ORG,
        session_id=session_id,
        correlation_id=str(uuid.uuid4()),
        api_key=api_key,
        secret=secret,
        created_wall_s=int(time.time()) if created_wall_s is None else created_wall_s,
        nonce=secrets.token_urlsafe(18),
    )


class Genesys:
    """One AudioHook client session: the client protocol object over a real socket."""

    def __init__(self, ws: ClientConnection, proto: AudioHookDialect) -> None:
        self.ws = ws
        self.proto = proto
        self.events: list[Event] = []
        self.texts: list[dict[str, Any]] = []

    @classmethod
    async def connect(
        cls,
        url: str,
        *,
        session_id: str | None = None,
        probe: bool = False,
        media: Any = STEREO,
        headers: dict[str, str] | None = None,
        dialect: type[AudioHookDialect] = AudioHookDialect,
        tls: ssl.SSLContext | None = None,
    ) -> Genesys:
        session_id = session_id or str(uuid.uuid4())
        proto = dialect(
            role="client",
            session_id=session_id,
            organization_id=ORG,
            conversation_id=NULL_UUID if probe else CONVERSATION,
            participant_id=NULL_UUID if probe else PARTICIPANT,
            media=media,
        )
        upgrade = {"Audiohook-Organization-Id": ORG, "Audiohook-Session-Id": session_id}
        ws = await connect(
            url, additional_headers={**upgrade, **(headers or {})}, open_timeout=WAIT_S, ssl=tls
        )
        client = cls(ws, proto)
        proto.connection_made(now())
        await client.flush()
        return client

    @property
    def session_id(self) -> str:
        return self.proto.session_id

    async def flush(self) -> None:
        for data in self.proto.data_to_send():
            await self.ws.send(data)

    async def until(self, wanted: str) -> dict[str, Any]:
        """Receive (answering as the protocol says) until a text message of type
        ``wanted`` arrives; returns it."""
        return await asyncio.wait_for(self._until(wanted), WAIT_S)

    async def _until(self, wanted: str) -> dict[str, Any]:
        while True:
            data = await self.ws.recv()
            self.events.extend(self.proto.receive(Message(data, now())))
            await self.flush()
            if isinstance(data, str):
                document: dict[str, Any] = json.loads(data)
                self.texts.append(document)
                if document["type"] == wanted:
                    return document

    async def open(self) -> dict[str, Any]:
        return await self.until("opened")

    async def audio(
        self, messages: int, samples: int = 1600, *, paced: bool = False
    ) -> list[bytes]:
        """``messages`` interleaved messages of ``samples`` per channel, back to back or
        ``paced`` in real time as Genesys sends them; returns them."""
        media = self.proto.media
        assert media is not None
        width = len(media[1])
        sent = []
        for index in range(messages):
            payload = bytes((index * 7 + offset) % 256 for offset in range(samples * width))
            assert self.proto.send_audio(payload)
            sent.append(payload)
            if paced:
                await self.flush()
                await asyncio.sleep(samples / 8000)
        await self.flush()
        return sent

    async def close(self) -> None:
        """``close`` and wait for ``closed`` and the socket's end."""
        self.proto.close("end", now())
        await self.flush()
        await self.until("closed")
        await self.closed()

    async def closed(self) -> None:
        await asyncio.wait_for(self.ws.wait_closed(), WAIT_S)


async def whole_session(url: str, messages: int = 10) -> str:
    """Open, ``messages`` stereo audio messages, close; returns the session id."""
    client = await Genesys.connect(url)
    await client.open()
    await client.audio(messages)
    await client.close()
    return client.session_id


class Wire:
    """Hand-written AudioHook client messages, numbered by us so a test can break the
    sequence; for violations the client protocol object would never commit."""

    def __init__(self, ws: ClientConnection, session_id: str) -> None:
        self.ws = ws
        self.session_id = session_id
        self.seq = 0
        self.serverseq = 0

    @classmethod
    async def connect(cls, url: str) -> Wire:
        session_id = str(uuid.uuid4())
        headers = {"Audiohook-Organization-Id": ORG, "Audiohook-Session-Id": session_id}
        ws = await connect(url, additional_headers=headers, open_timeout=WAIT_S)
        return cls(ws, session_id)

    def text(self, kind: str, parameters: dict[str, Any] | None = None, **fields: Any) -> str:
        self.seq += 1
        document: dict[str, Any] = {
            "version": "2",
            "id": self.session_id,
            "type": kind,
            "seq": self.seq,
            "serverseq": self.serverseq,
            "position": "PT0S",
            "parameters": parameters or {},
        }
        document.update(fields)
        return json.dumps(document)

    async def send(
        self, kind: str, parameters: dict[str, Any] | None = None, **fields: Any
    ) -> None:
        await self.ws.send(self.text(kind, parameters, **fields))

    async def open(self) -> dict[str, Any]:
        await self.send(
            "open",
            {
                "organizationId": ORG,
                "conversationId": CONVERSATION,
                "participant": {"id": PARTICIPANT, "ani": "", "aniName": "", "dnis": ""},
                "media": [
                    {
                        "type": "audio",
                        "format": "PCMU",
                        "channels": ["external", "internal"],
                        "rate": 8000,
                    }
                ],
            },
        )
        return await self.until("opened")

    async def until(self, wanted: str) -> dict[str, Any]:
        return await asyncio.wait_for(self._until(wanted), WAIT_S)

    async def _until(self, wanted: str) -> dict[str, Any]:
        while True:
            data = await self.ws.recv()
            assert isinstance(data, str), "an AudioHook server sent binary"
            document: dict[str, Any] = json.loads(data)
            self.serverseq = document["seq"]
            if document["type"] == wanted:
                return document
