"""A tiny inbound server for the players' tests: the protocol objects in server role on a
real ``websockets`` server (127.0.0.1, port 0), counting what each session received.

Not ``jitterline serve``: no pipeline, no status, no drain; just enough to answer a player
the protocol's way and to hold the frames it got, per session and channel.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from http import HTTPStatus
from types import TracebackType

from websockets.asyncio.server import ServerConnection, serve
from websockets.exceptions import ConnectionClosed
from websockets.http11 import Request, Response

from jitterline.frames import AudioFrame, Event, Malformed, Message, StreamClosed, StreamOpened
from jitterline.protocols import Dialect, signatures
from jitterline.protocols.audioconnector import AudioConnectorDialect
from jitterline.protocols.audiohook import AudioHookDialect
from jitterline.protocols.twilio import TwilioDialect

__all__ = ["PATH", "ProtocolServer", "ServerSession"]

PATH = "/api/v1/audiohook/ws"
RESUME_AFTER_S = 0.5
_WAIT_S = 5.0

_FACTORIES: dict[str, Callable[[str | None], Dialect]] = {
    "audiohook": lambda session_id: AudioHookDialect(role="server", session_id=session_id),
    "audioconnector": lambda session_id: AudioConnectorDialect(
        role="server", session_id=session_id
    ),
    "twilio": lambda session_id: TwilioDialect(role="server"),
}


@dataclass
class ServerSession:
    """What one connection delivered: frames (seqs and bytes) per channel, and how it went."""

    opened: StreamOpened | None = None
    closed: StreamClosed | None = None
    seqs: dict[str, list[int]] = field(default_factory=dict)
    audio: dict[str, bytearray] = field(default_factory=dict)
    pings: int = 0
    malformed: list[str] = field(default_factory=list)
    texts: list[str] = field(default_factory=list)

    def add(self, events: list[Event]) -> None:
        for event in events:
            if isinstance(event, StreamOpened):
                self.opened = event
            elif isinstance(event, StreamClosed):
                self.closed = event
            elif isinstance(event, AudioFrame):
                self.seqs.setdefault(event.channel, []).append(event.seq)
                self.audio.setdefault(event.channel, bytearray()).extend(event.payload)
            elif isinstance(event, Malformed):
                self.malformed.append(event.kind)
            elif type(event).__name__ == "Pong":
                self.pings += 1


class ProtocolServer:
    """Runs on its own event loop in a daemon thread; ``refuse_status`` answers every
    upgrade with that HTTP status; ``keys`` (AudioHook) or ``twilio_token`` check the
    upgrade's signature (401 when it fails); ``refuse_unauthorized`` answers AudioHook's
    upgrade with ``disconnect`` reason ``unauthorized`` before ``open`` is answered;
    ``script`` maps a count of frames received (all channels) to what the server does
    then: ``"end"`` ends the session the protocol's way (AudioHook ``disconnect`` reason
    ``completed``, as a draining server does), ``"pause"`` asks an AudioHook client to pause
    and to resume ``RESUME_AFTER_S`` later, ``"garbage"`` sends a text that is not JSON,
    ``"bot"`` (Audio Connector) sends 400 ms of bot audio and a ``barge_in`` event."""

    def __init__(
        self,
        dialect: str,
        *,
        refuse_status: int | None = None,
        keys: signatures.KeySet | None = None,
        twilio_token: str | None = None,
        refuse_unauthorized: bool = False,
        script: Mapping[int, str] | None = None,
    ) -> None:
        self.dialect = dialect
        self.refuse_status = refuse_status
        self.keys = keys
        self.twilio_token = twilio_token
        self.refuse_unauthorized = refuse_unauthorized
        self.script = dict(script or {})
        self.sessions: list[ServerSession] = []
        self.upgrade_headers: list[dict[str, str]] = []
        self._lock = threading.Lock()
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self._run, name="test-protocol-server", daemon=True)
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop: asyncio.Event | None = None
        self._port = 0
        self._handlers = 0

    @property
    def url(self) -> str:
        return f"ws://127.0.0.1:{self._port}{PATH}"

    def __enter__(self) -> ProtocolServer:
        self._thread.start()
        assert self._ready.wait(_WAIT_S), "test server did not start"
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        if self._loop is not None and self._stop is not None:
            self._loop.call_soon_threadsafe(self._stop.set)
        self._thread.join(_WAIT_S)

    def finished(self) -> list[ServerSession]:
        """The sessions, once every connection's handler has returned (bounded wait)."""
        deadline = time.monotonic() + _WAIT_S
        while time.monotonic() < deadline:
            with self._lock:
                if self._handlers == 0:
                    return list(self.sessions)
            time.sleep(0.01)
        raise AssertionError("test server connections still open")

    def _run(self) -> None:
        asyncio.run(self._serve())

    async def _serve(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._stop = asyncio.Event()
        async with serve(
            self._handle, "127.0.0.1", 0, process_request=self._check, close_timeout=1.0
        ) as server:
            self._port = next(iter(server.sockets)).getsockname()[1]
            self._ready.set()
            await self._stop.wait()

    def _check(self, connection: ServerConnection, request: Request) -> Response | None:
        headers = dict(request.headers.raw_items())
        with self._lock:
            self.upgrade_headers.append(headers)
        if self.refuse_status is not None:
            return connection.respond(HTTPStatus(self.refuse_status), "refused\n")
        if self.keys is not None:
            verdict = signatures.verify(
                request.headers.raw_items(),
                method="GET",
                path=request.path,
                authority=None,
                keys=self.keys,
                now_wall_s=time.time(),
            )
            if not verdict.ok:
                return connection.respond(HTTPStatus.UNAUTHORIZED, f"{verdict.reason.value}\n")
        if self.twilio_token is not None:
            given = request.headers.get("X-Twilio-Signature", "")
            if not signatures.verify_twilio(self.url, given, self.twilio_token):
                return connection.respond(HTTPStatus.UNAUTHORIZED, "bad signature\n")
        return None

    async def _handle(self, connection: ServerConnection) -> None:
        session = ServerSession()
        with self._lock:
            self.sessions.append(session)
            self._handlers += 1
        try:
            request = connection.request
            session_id = None if request is None else request.headers.get("Audiohook-Session-Id")
            proto = _FACTORIES[self.dialect](session_id)
            await self._converse(connection, proto, session)
        finally:
            with self._lock:
                self._handlers -= 1

    async def _converse(
        self, connection: ServerConnection, proto: Dialect, session: ServerSession
    ) -> None:
        loop = asyncio.get_running_loop()
        proto.connection_made(loop.time())
        if self.refuse_unauthorized:
            assert isinstance(proto, AudioHookDialect)
            proto.refuse(loop.time(), "test server refuses")
        script = dict(self.script)
        resume_at_s: float | None = None
        try:
            for out in proto.data_to_send():
                await connection.send(out)
            while not proto.close_expected():
                due = [d for d in (proto.next_deadline_s(), resume_at_s) if d is not None]
                timeout = max(0.0, min(due) - loop.time()) if due else None
                try:
                    data = await asyncio.wait_for(connection.recv(), timeout)
                except (asyncio.TimeoutError, TimeoutError):
                    if resume_at_s is not None and loop.time() >= resume_at_s:
                        assert isinstance(proto, AudioHookDialect)
                        proto.resume()
                        resume_at_s = None
                    session.add(proto.timer(loop.time()))
                else:
                    if isinstance(data, str):
                        session.texts.append(data)
                    session.add(proto.receive(Message(data, loop.time())))
                    frames = sum(len(seqs) for seqs in session.seqs.values())
                    action = script.pop(frames, None)
                    if action == "end":
                        proto.end("completed", loop.time())
                    elif action == "pause":
                        assert isinstance(proto, AudioHookDialect)
                        proto.pause()
                        resume_at_s = loop.time() + RESUME_AFTER_S
                    elif action == "garbage":
                        await connection.send("this is not JSON")
                    elif action == "bot":
                        assert isinstance(proto, AudioConnectorDialect)
                        proto.send_audio(b"\xff" * 3200)  # two 1600-byte messages
                        proto.barge_in()
                for out in proto.data_to_send():
                    await connection.send(out)
        except ConnectionClosed:
            session.add(proto.connection_lost(loop.time()))
        with contextlib.suppress(ConnectionClosed):
            await connection.close()
