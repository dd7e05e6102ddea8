"""The inbound WebSocket shell: ``websockets``' asyncio server on the runtime's loop.

Bytes only move here. Each accepted WebSocket gets a protocol object in the server role
and a ``runtime.Connection`` (its pipeline, one chain per channel); every message is fed to
``Connection.receive`` with its arrival time, and whatever the protocol answers is put on
the session's outgoing queue, which one writer task per session drains: ``send`` and
``close`` are synchronous callbacks on the loop and ``websockets``' ``send`` is a
coroutine, so the callbacks only queue and never block the loop.

The upgrade is decided by ``Gate`` (``process_request``: health, path, draining,
credentials; ``process_response``: capacity, counted only once the upgrade is known to
succeed, in the same loop step that sends the 101, so two racing upgrades cannot both take
the last slot).

Draining (SIGTERM, Ctrl-C): the listener stays open so that health checks see 503 and new
upgrades get 503; a listener shared with sibling workers (``serve --workers``) stops
accepting at once, so the siblings take the new sessions. Sessions get
``drain_grace_s`` to end by themselves (a rolling restart that must not cut a call sets it
to the longest call); those still running are then ended the protocol's way
(``Connection.end``: AudioHook ``disconnect`` then ``close`` / ``closed``; Twilio: the
socket closes); sessions still running ``drain_timeout_s`` later are closed with 1001.
Every session's summaries are written as it ends, whichever way it ended.
"""

from __future__ import annotations

import asyncio
import contextlib
import http
import logging
import socket
import ssl
import time
from collections import Counter
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from websockets.asyncio.server import Server, ServerConnection, serve
from websockets.exceptions import ConnectionClosed
from websockets.frames import CloseCode
from websockets.http11 import Request, Response
from websockets.protocol import State

from ..config import PipelineConfig
from ..frames import AudioFrame, ConnectionStats, FrameCounts, Message, Stats
from ..protocols import Dialect
from ..runtime import Connection, Finished, Runtime
from .config import GENESYS_DIALECTS, ServeOptions
from .gate import Decision, Gate
from .report import SessionIdentity, SinkLag, SummaryWriter, session_summary

__all__ = ["InboundServer", "ServedSession", "Totals", "add_counts"]

log = logging.getLogger(__name__)

_CLOSE = None
"""Put on a session's outgoing queue: close the WebSocket after what came before."""
_CLOSE_MARGIN_S = 1.0


@dataclass(slots=True)
class Totals:
    """Counters since the server started; frames are the completed sessions' sums."""

    completed: int = 0
    probes: int = 0
    failed: int = 0
    refused: Counter[str] = field(default_factory=Counter)
    frames: FrameCounts = field(default_factory=FrameCounts)

    def add_frames(self, counts: FrameCounts) -> None:
        self.frames = add_counts(self.frames, counts)


def add_counts(first: FrameCounts, second: FrameCounts) -> FrameCounts:
    """Field by field: the accounting identity holds for the sum when it holds for both."""
    return FrameCounts(
        **{
            name: getattr(first, name) + getattr(second, name)
            for name in FrameCounts.__dataclass_fields__
        }
    )


class ServedSession:
    """One accepted WebSocket: its connection on the runtime and the newest snapshot of
    each channel (what the live status shows)."""

    def __init__(
        self, number: int, dialect: str, started_s: float, clock: Callable[[], float]
    ) -> None:
        self.number = number
        self.dialect = dialect
        self.started_s = started_s
        self.latest: dict[str, Stats] = {}
        self.connection: Connection | None = None
        self.lag = SinkLag(clock)
        self.failed = False  # a stage or plugin raised on its messages: being closed

    def item(self, item: AudioFrame | Stats) -> None:
        if isinstance(item, Stats):
            self.latest[item.channel] = item
        else:
            self.lag.played(item)

    @property
    def identity(self) -> SessionIdentity:
        assert self.connection is not None
        info, opened = self.connection.info, self.connection.opened
        return SessionIdentity(
            session_id=info.session_id or info.stream_id,
            dialect=self.dialect,
            call_id=info.call_id,
            participant_id=info.participant_id,
            probe=opened is not None and opened.probe,
        )

    @property
    def opened(self) -> bool:
        return self.connection is not None and self.connection.opened is not None


class InboundServer:
    """Serves one dialect on ``options.host:options.port`` until drained.

    Coroutines run on ``runtime.ioloop.loop``; ``port`` is the bound port once ``start``
    returned. ``writer`` receives each ended session's summaries; ``run`` is their
    ``run`` object. ``shared``: a listening socket this server also accepts on, shared
    with sibling worker processes (``serve --workers``); ``options.port`` is then the
    worker's own port, where a load balancer checks this worker's health.
    """

    def __init__(
        self,
        runtime: Runtime,
        options: ServeOptions,
        config: PipelineConfig,
        *,
        writer: SummaryWriter | None = None,
        run: Mapping[str, Any] | None = None,
        shared: socket.socket | None = None,
    ) -> None:
        self.runtime = runtime
        self.options = options
        self.config = config
        self.writer = writer or SummaryWriter(None)
        self.run = dict(run or {"command": "serve", "dialect": options.dialect})
        self.totals = Totals()
        self.sessions: dict[int, ServedSession] = {}
        self.draining = False
        self.port = 0
        self._gate = Gate(options)
        self._factory = runtime.host.dialects.get(options.dialect)
        self._admitted: set[ServerConnection] = set()
        self._numbers = 0
        self._server: Server | None = None
        self._shared_socket = shared
        self._shared: Server | None = None
        self._ending = False
        self._idle = asyncio.Event()
        self._secure = options.certfile is not None

    # -- lifecycle ------------------------------------------------------------------------

    async def start(self) -> int:
        """Listen; returns the bound port (the worker's own one with ``shared``)."""
        context = self._ssl_context()
        self._server = await self._listen(self.options.host, self.options.port, context)
        if self._shared_socket is not None:
            self._shared = await self._listen(None, None, context, sock=self._shared_socket)
        self.port = self._server.sockets[0].getsockname()[1]
        log.info(
            "serving %s on %s:%d%s", self.options.dialect, self.options.host, self.port,
            self.options.path,
        )  # fmt: skip
        return self.port

    async def _listen(
        self,
        host: str | None,
        port: int | None,
        context: ssl.SSLContext | None,
        *,
        sock: socket.socket | None = None,
    ) -> Server:
        server: Server = await serve(
            self._session,
            host,
            port,
            sock=sock,
            process_request=self._process_request,
            process_response=self._process_response,
            server_header=None,
            compression=None,
            open_timeout=self.options.handshake_timeout_s,
            close_timeout=self.options.close_timeout_s,
            max_size=self.options.max_message_bytes,
            ssl=context,
        )
        return server

    async def drain(self) -> None:
        """Stop taking sessions; give them ``drain_grace_s`` to end by themselves, end
        the rest the protocol's way, wait for them up to ``drain_timeout_s``, close the
        stragglers, then stop listening."""
        self.draining = True
        if self._shared is not None:
            # Only stop accepting: the sessions it accepted run on.
            self._shared.close(close_connections=False)
        log.info("draining %d session(s)", len(self.sessions))
        if self.options.drain_grace_s > 0:
            await self._until_idle(self.options.drain_grace_s)
        self._ending = True
        for session in list(self.sessions.values()):
            if session.connection is not None:
                session.connection.end("completed")
        await self._until_idle(self.options.drain_timeout_s)
        if self.sessions:
            log.warning(
                "%d session(s) still running after the %.0f s drain timeout; closing them",
                len(self.sessions),
                self.options.drain_timeout_s,
            )
        await self.close()

    async def _until_idle(self, limit_s: float) -> None:
        self._idle.clear()
        if self.sessions:
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self._idle.wait(), limit_s)

    async def close(self) -> None:
        """Stop listening and close what is left with 1001 (going away), whichever
        listener accepted it (the shared one stopped without closing its sessions)."""
        going = [
            asyncio.create_task(ws.close(CloseCode.GOING_AWAY))
            for ws in self._admitted
            if ws.state is State.OPEN
        ]
        # websockets waits up to close_timeout_s for each 1001 closing handshake.
        limit_s = self.options.close_timeout_s + _CLOSE_MARGIN_S
        for server in (self._shared, self._server):
            if server is not None:
                server.close()
                with contextlib.suppress(asyncio.TimeoutError):
                    await asyncio.wait_for(server.wait_closed(), limit_s)
        if going:
            await asyncio.wait(going, timeout=limit_s)
        self.writer.close()

    def _ssl_context(self) -> ssl.SSLContext | None:
        if self.options.certfile is None:
            return None
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        context.load_cert_chain(self.options.certfile, self.options.keyfile)
        return context

    # -- the upgrade ----------------------------------------------------------------------

    async def _process_request(
        self, connection: ServerConnection, request: Request
    ) -> Response | None:
        decision = self._gate.check(
            target=request.path,
            headers=request.headers.raw_items(),
            secure=self._secure,
            draining=self.draining,
            now_wall_s=time.time(),
        )
        if decision.accepted:
            return None
        if decision.delay_s > 0:
            await asyncio.sleep(decision.delay_s)
        return self._respond(connection, decision)

    def _process_response(
        self, connection: ServerConnection, request: Request, response: Response
    ) -> Response | None:
        if response.status_code != http.HTTPStatus.SWITCHING_PROTOCOLS:
            return None
        self._admitted = {c for c in self._admitted if c.state is not State.CLOSED}
        decision = self._gate.capacity(len(self._admitted))
        if not decision.accepted:
            return self._respond(connection, decision)
        self._admitted.add(connection)
        return None

    def _respond(self, connection: ServerConnection, decision: Decision) -> Response:
        if decision.refused:
            self.totals.refused[decision.reason] += 1
            log.info("upgrade refused (%d %s)", decision.status, decision.reason)
        response = connection.respond(decision.status, decision.body)
        for name, value in decision.headers:
            response.headers[name] = value
        return response

    # -- one session ----------------------------------------------------------------------

    async def _session(self, ws: ServerConnection) -> None:
        clock = self.runtime.clock
        self._numbers += 1
        session = ServedSession(self._numbers, self.options.dialect, clock(), clock)
        outgoing: asyncio.Queue[str | bytes | None] = asyncio.Queue()
        proto = self._protocol(ws.request.headers.raw_items() if ws.request else ())
        connection = self.runtime.connect(
            proto,
            self.config,
            send=outgoing.put_nowait,
            close=lambda: outgoing.put_nowait(_CLOSE),
            stream_id=getattr(proto, "session_id", "") or f"session-{session.number}",
            on_item=session.item,
        )
        session.connection = connection
        self.sessions[session.number] = session
        loop = asyncio.get_running_loop()
        writer = loop.create_task(_write(ws, outgoing))
        guard: asyncio.TimerHandle | None = None
        try:
            proto.connection_made(clock())
            connection.flush()
            if proto.next_deadline_s() is None:
                guard = loop.call_later(self.options.open_timeout_s, self._unopened, ws, session)
            if self._ending:
                connection.end("completed")
            defer = self.runtime.ioloop.defer
            async for data in ws:  # stamped now, processed once the other readers read
                defer(self._receive, session, ws, Message(data, clock(), time.time()))
        except ConnectionClosed:
            pass
        except Exception:  # a bug in a stage or plugin: this session only
            log.exception("session %s failed; closing it", connection.info.stream_id)
            await ws.close(1011, "internal error")
        finally:
            self.runtime.ioloop.run_deferred()  # this session's last messages, then its end
            if guard is not None:
                guard.cancel()
            await _stop(writer)
            connection.connection_lost()
            self._ended(session, connection.finish(ConnectionStats(attempts=1)), clock())
            self._admitted.discard(ws)
            del self.sessions[session.number]
            if not self.sessions:
                self._idle.set()

    def _receive(self, session: ServedSession, ws: ServerConnection, message: Message) -> None:
        """One message through its session's pipeline (deferred: ``IOLoop.defer``). A bug
        in a stage or plugin closes this session only, and its later messages are
        dropped."""
        connection = session.connection
        if session.failed or connection is None:
            return
        try:
            connection.receive(message)
        except Exception:
            session.failed = True
            log.exception("session %s failed; closing it", connection.info.stream_id)
            asyncio.get_running_loop().create_task(ws.close(1011, "internal error"))

    def _unopened(self, ws: ServerConnection, session: ServedSession) -> None:
        """The open timeout of a protocol without one of its own (Twilio has no timer: a
        peer that upgrades and never sends ``start`` would hold its slot forever)."""
        if session.opened:
            return
        log.info(
            "session %d: no stream start within %g s", session.number, self.options.open_timeout_s
        )
        asyncio.get_running_loop().create_task(ws.close(1008, "no stream start"))

    def _protocol(self, headers: Iterable[tuple[str, str]]) -> Dialect:
        """A server-role protocol object; AudioHook's takes the upgrade's session and
        organization ids, which its messages must then match."""
        if self.options.dialect not in GENESYS_DIALECTS:
            return self._factory(role="server")
        fields = {name.lower(): value.strip() for name, value in headers}
        return self._factory(
            role="server",
            session_id=fields.get("audiohook-session-id") or None,
            organization_id=fields.get("audiohook-organization-id") or None,
            open_timeout_s=self.options.open_timeout_s,
            close_timeout_s=self.options.close_timeout_s,
        )

    def _ended(self, session: ServedSession, finished: Finished, ended_s: float) -> None:
        identity = session.identity
        if not session.opened:
            self.totals.failed += 1
            log.info("session %s ended before it opened", identity.session_id)
            return
        if identity.probe:
            self.totals.probes += 1
            log.info("connection probe %s answered", identity.session_id)
            return
        self.totals.completed += 1
        for stats, diagnosis in finished.finals:
            self.totals.add_frames(stats.frames)
            summary = session_summary(stats, diagnosis, identity, run=self.run)
            summary["stream"]["duration_s"] = round(ended_s - session.started_s, 3)
            summary["stream"].update(session.lag.figures(stats.channel))
            self.writer.write(summary)


async def _write(ws: ServerConnection, outgoing: asyncio.Queue[str | bytes | None]) -> None:
    """Send the session's queued messages in order; close after ``_CLOSE``."""
    try:
        while True:
            data = await outgoing.get()
            if data is _CLOSE:
                await ws.close()
                return
            await ws.send(data)
    except ConnectionClosed:
        return


async def _stop(writer: asyncio.Task[None]) -> None:
    if not writer.done():
        writer.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await writer
