"""The emulator's I/O shell: a real WebSocket endpoint and token endpoint on loopback.

``Emulator`` runs the ``websockets`` asyncio server on its own event loop in a named daemon
thread ("jitterline-emulator-ws") and the token endpoint in another
("jitterline-emulator-token"), so a synchronous caller (the CLI, a test) simply starts it,
points a client at ``ws_url`` / ``auth_url`` and stops it. All decisions live in the
sans-I/O parts (``impairments``, ``stream``, ``tokens.TokenEndpoint.answer``); this module
reads the clock, moves bytes and counts.

The conversation (docs/protocols.md, "appfoundry"): the client opens
``ws://host:port/appfoundry/v1/applications/demo/conversations`` with ``Authorization:
Bearer <token>``; HTTP 401 / 429 (with ``Retry-After``) come back at the handshake when the
token is bad or the impairments ask for it. Each connection has its own server-role
``AppFoundryDialect``: it answers the client's ``initialize`` with its own, then audio flows
through it. There is one live stream per emulator:
the first ``initialize`` starts its clock, and a client that reconnects joins it where it
is now, having missed what was sent meanwhile; or, with ``Impairments.offline="pause"``,
the stream pauses whenever no client is streaming and the next ``initialize`` resumes it
with the frame after the last one delivered (``LiveStream.pause``). When ``duration_s``
is over and the last frame is out, every connection is closed with 1000 "stream
complete", and a later connection is accepted and closed the same way at once (a normal
end, so a well-behaved client does not retry).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
import time
from collections import deque
from dataclasses import dataclass
from http import HTTPStatus
from types import TracebackType
from typing import TYPE_CHECKING

from websockets.asyncio.server import ServerConnection, serve
from websockets.exceptions import ConnectionClosed
from websockets.http11 import Request, Response

from .. import checks
from ..codecs import FrameEncoder
from ..errors import ConfigError, TransportError
from ..frames import Message, StreamOpened
from ..protocols.appfoundry import FORMATS, AppFoundryDialect
from .audio import AudioSource, ToneSource, frame_samples
from .impairments import PROFILES, ImpairmentModel, Impairments
from .stream import LiveStream, Outgoing, frames_for
from .tokens import TOKEN_PATH, TokenEndpoint, TokenStore

__all__ = [
    "DEFAULT_SESSION_ID",
    "MAX_RECEIVED_TEXTS",
    "STREAM_COMPLETE_REASON",
    "WS_PATH",
    "Emulator",
    "EmulatorCounters",
]

logger = logging.getLogger(__name__)

WS_PATH = "/appfoundry/v1/applications/demo/conversations"
STREAM_COMPLETE_REASON = "stream complete"
DEFAULT_SESSION_ID = "emulator-session"
"""The session an ``initialize`` naming none joins."""
MAX_RECEIVED_TEXTS = 10_000
_STARTUP_TIMEOUT_S = 5.0
_STOP_TIMEOUT_S = 2.0
_CLOSE_TIMEOUT_S = 0.5

if TYPE_CHECKING:
    _LoggerAdapter = logging.LoggerAdapter[logging.Logger]
else:
    _LoggerAdapter = logging.LoggerAdapter


class _NoDebugLogger(_LoggerAdapter):
    """Silences ``websockets`` DEBUG output: it logs every request header there, the
    ``Authorization`` bearer token included, and secrets never reach a log."""

    def isEnabledFor(self, level: int) -> bool:  # noqa: N802 (logging's name)
        return level > logging.DEBUG and self.logger.isEnabledFor(level)


@dataclass(frozen=True, slots=True)
class EmulatorCounters:
    """What the emulator did so far.

    ``frames_dropped`` counts generated frames that were never sent for any reason:
    ``frames_lost`` (the impairment model's loss) plus frames due while no client was
    streaming (none with ``offline="pause"``, which holds them instead). Once the stream
    is complete, ``frames_generated == frames_sent + frames_dropped``.
    ``forced_disconnects`` counts connections dropped abruptly, by the
    ``disconnect_every_*`` impairment or by ``drop_connections()``; ``pauses`` how often
    the stream paused for want of a listener (``offline="pause"``).
    """

    token_requests: int = 0
    tokens_issued: int = 0
    handshakes: int = 0
    rejected_401: int = 0
    rejected_429: int = 0
    connections: int = 0
    forced_disconnects: int = 0
    frames_generated: int = 0
    frames_sent: int = 0
    frames_dropped: int = 0
    frames_lost: int = 0
    duplicates_sent: int = 0
    malformed_sent: int = 0
    pauses: int = 0


_LOOP_COUNTERS = (
    "handshakes",
    "rejected_401",
    "rejected_429",
    "connections",
    "forced_disconnects",
    "frames_sent",
    "frames_offline",
    "duplicates_sent",
    "malformed_sent",
    "pauses",
)


class _Tally:
    """Counters written on the loop thread and read from any thread."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._counts = dict.fromkeys(_LOOP_COUNTERS, 0)

    def add(self, name: str, amount: int = 1) -> int:
        with self._lock:
            self._counts[name] += amount
            return self._counts[name]

    def snapshot(self) -> dict[str, int]:
        with self._lock:
            return dict(self._counts)


class Emulator:
    """A live appfoundry audio stream plus its OAuth token endpoint, on loopback.

    ``impairments`` decide what the network and server do to the stream (see
    ``PROFILES``); ``seed`` makes those decisions reproducible. ``duration_s`` ends the
    stream (None: endless). ``source`` gives the audio (default: a 440 Hz tone), in
    ``channels`` interleaved channels; ``encoder`` encodes it for a codec with state
    across frames (Opus), see ``LiveStream``.
    ``require_token=False`` skips the bearer check (the scripted 401/429 still apply).
    Start it with ``start()`` or ``with Emulator(...) as emu:``.
    """

    def __init__(
        self,
        impairments: Impairments = PROFILES["clean"],
        *,
        seed: int = 0,
        duration_s: float | None = None,
        codec: str = "L16",
        sample_rate: int = 8000,
        frame_ms: float = 20.0,
        source: AudioSource | None = None,
        channels: int = 1,
        encoder: FrameEncoder | None = None,
        client_id: str = "jitterline-demo",
        client_secret: str = "demo-secret",
        token_lifetime_s: float = 3600.0,
        host: str = "127.0.0.1",
        port: int = 0,
        token_port: int = 0,
        require_token: bool = True,
    ) -> None:
        _check_config(codec, sample_rate, frame_ms, duration_s)
        self.impairments = impairments
        self.seed = seed
        self.codec = codec
        self.sample_rate = sample_rate
        self.frame_ms = frame_ms
        self.duration_s = duration_s
        self.client_id = client_id
        self.client_secret = client_secret
        self.require_token = require_token
        self._host = host
        self._port = port
        audio = (source or ToneSource()).frames(sample_rate=sample_rate, frame_ms=frame_ms)
        self._stream = LiveStream(
            ImpairmentModel(impairments, seed=seed, frame_ms=frame_ms),
            audio,
            codec=codec,
            sample_rate=sample_rate,
            total_frames=None if duration_s is None else frames_for(duration_s, frame_ms),
            channels=channels,
            encoder=encoder,
        )
        self._tokens = TokenStore(lifetime_s=token_lifetime_s, clock=time.monotonic)
        self._token_endpoint = TokenEndpoint(
            self._tokens,
            client_id=client_id,
            client_secret=client_secret,
            host=host,
            port=token_port,
        )
        self._tally = _Tally()
        self._texts: deque[str] = deque(maxlen=MAX_RECEIVED_TEXTS)
        self._texts_lock = threading.Lock()
        self._state = "new"
        self._thread: threading.Thread | None = None
        self._ready = threading.Event()
        self._complete = threading.Event()
        self._startup_error: BaseException | None = None
        self._bound_port: int | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop_requested: asyncio.Event | None = None
        self._stream_started: asyncio.Event | None = None
        self._resumed: asyncio.Event | None = None
        self._open: set[ServerConnection] = set()
        self._streaming: dict[ServerConnection, AppFoundryDialect] = {}

    def __repr__(self) -> str:
        where = self.ws_url if self._bound_port is not None else self._host
        return f"Emulator({self._state}, {where}, seed={self.seed}, codec={self.codec!r})"

    # -- lifecycle ---------------------------------------------------------------------

    def start(self) -> Emulator:
        """Bind both endpoints and serve in background threads; ``TransportError`` if not."""
        if self._state != "new":
            raise ConfigError(f"this Emulator is {self._state}; an Emulator starts once")
        self._state = "running"
        self._token_endpoint.start()
        self._thread = threading.Thread(
            target=self._run_loop, name="jitterline-emulator-ws", daemon=True
        )
        self._thread.start()
        if not self._ready.wait(_STARTUP_TIMEOUT_S) or self._startup_error is not None:
            error = self._startup_error
            self.stop()
            raise TransportError(
                f"emulator WebSocket server did not start on {self._host}:{self._port}: "
                f"{error or 'timed out'}; pick another port (0 picks a free one)"
            ) from error
        logger.info("emulator serving %s (tokens at %s)", self.ws_url, self.token_url)
        return self

    def stop(self) -> None:
        """Close every connection (1001), stop both servers and join their threads.

        Returns within about two seconds; calling it again does nothing.
        """
        if self._state == "stopped":
            return
        self._state = "stopped"
        loop, stop_requested = self._loop, self._stop_requested
        if loop is not None and stop_requested is not None:
            with contextlib.suppress(RuntimeError):  # the loop already ended
                loop.call_soon_threadsafe(stop_requested.set)
        if self._thread is not None:
            self._thread.join(_STOP_TIMEOUT_S)
            if self._thread.is_alive():
                logger.warning("emulator loop thread still running after %.1f s", _STOP_TIMEOUT_S)
        self._token_endpoint.stop()

    def __enter__(self) -> Emulator:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.stop()

    # -- public view -------------------------------------------------------------------

    @property
    def ws_url(self) -> str:
        if self._bound_port is None:
            raise ConfigError("the emulator has no URL before start(); call start()")
        return f"ws://{self._host}:{self._bound_port}{WS_PATH}"

    @property
    def auth_url(self) -> str:
        """Base URL of the OAuth login service; the endpoint is ``token_url``."""
        return self._token_endpoint.url

    @property
    def token_url(self) -> str:
        return self.auth_url + TOKEN_PATH

    @property
    def counters(self) -> EmulatorCounters:
        counts = self._tally.snapshot()
        lost = self._stream.frames_lost
        return EmulatorCounters(
            token_requests=self._token_endpoint.requests,
            tokens_issued=self._token_endpoint.issued,
            handshakes=counts["handshakes"],
            rejected_401=counts["rejected_401"],
            rejected_429=counts["rejected_429"],
            connections=counts["connections"],
            forced_disconnects=counts["forced_disconnects"],
            frames_generated=self._stream.frames_generated,
            frames_sent=counts["frames_sent"],
            frames_dropped=counts["frames_offline"] + lost,
            frames_lost=lost,
            duplicates_sent=counts["duplicates_sent"],
            malformed_sent=counts["malformed_sent"],
            pauses=counts["pauses"],
        )

    @property
    def complete(self) -> bool:
        """Whether the stream has ended (``duration_s`` over and every frame out)."""
        return self._complete.is_set()

    def wait_complete(self, timeout_s: float | None = None) -> bool:
        """Block until the stream ends or ``timeout_s`` passes; True if it ended."""
        return self._complete.wait(timeout_s)

    def received_texts(self) -> list[str]:
        """Text messages from clients, oldest first (the last MAX_RECEIVED_TEXTS)."""
        with self._texts_lock:
            return list(self._texts)

    def drop_connections(self) -> int:
        """Abort every open client connection now (no close frame, like a network drop).

        Returns how many were dropped; 0 when the emulator is not running.
        """
        loop = self._loop
        if self._state != "running" or loop is None:
            return 0

        async def drop() -> int:
            return self._drop_all()

        return asyncio.run_coroutine_threadsafe(drop(), loop).result(_STOP_TIMEOUT_S)

    def expire_tokens(self) -> None:
        """Invalidate every token issued so far: the next handshake with one gets 401."""
        self._tokens.expire_all()

    # -- the event loop thread ---------------------------------------------------------

    def _run_loop(self) -> None:
        try:
            asyncio.run(self._serve())
        except Exception as exc:  # handed to start(), or logged if it happens later
            if self._ready.is_set():
                logger.exception("emulator event loop failed")
            else:
                self._startup_error = exc
        finally:
            self._ready.set()

    async def _serve(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._stop_requested = asyncio.Event()
        self._stream_started = asyncio.Event()
        self._resumed = asyncio.Event()
        async with serve(
            self._handle,
            self._host,
            self._port,
            process_request=self._process_request,
            logger=_NoDebugLogger(logger, {}),
            close_timeout=_CLOSE_TIMEOUT_S,
        ) as server:
            self._bound_port = next(iter(server.sockets)).getsockname()[1]
            self._ready.set()
            pump = asyncio.create_task(self._pump())
            await self._stop_requested.wait()
            pump.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await pump
            # Finish any close the cancelled pump left half done: a connection stuck in
            # CLOSING would keep the server waiting for its handler forever.
            await self._close_all(1001, "emulator stopped")

    def _process_request(self, connection: ServerConnection, request: Request) -> Response | None:
        number = self._tally.add("handshakes")
        if request.path.partition("?")[0] != WS_PATH:
            return connection.respond(
                HTTPStatus.NOT_FOUND, f"no conversation here; use {WS_PATH}\n"
            )
        verdict = self.impairments.handshake_verdict(number)
        if verdict == "rate_limit_429":
            self._tally.add("rejected_429")
            response = connection.respond(
                HTTPStatus.TOO_MANY_REQUESTS, "too many handshakes; wait for Retry-After\n"
            )
            response.headers["Retry-After"] = _retry_after(self.impairments.retry_after_s)
            return response
        if verdict == "reject_401" or not self._token_ok(request):
            self._tally.add("rejected_401")
            response = connection.respond(
                HTTPStatus.UNAUTHORIZED, "missing, invalid or expired bearer token\n"
            )
            response.headers["WWW-Authenticate"] = 'Bearer error="invalid_token"'
            return response
        return None

    def _token_ok(self, request: Request) -> bool:
        if not self.require_token:
            return True
        scheme, _, token = (request.headers.get("Authorization") or "").partition(" ")
        return scheme.lower() == "bearer" and self._tokens.is_valid(token.strip())

    async def _handle(self, connection: ServerConnection) -> None:
        self._tally.add("connections")
        if self._complete.is_set():
            await connection.close(1000, STREAM_COMPLETE_REASON)
            return
        self._open.add(connection)
        protocol = AppFoundryDialect(
            role="server", session_id=DEFAULT_SESSION_ID, wall_clock=time.time
        )
        try:
            async for message in connection:
                if isinstance(message, str):
                    await self._on_text(connection, protocol, message)
        except ConnectionClosed:
            pass  # the client went away (or we dropped it); the stream goes on
        finally:
            self._open.discard(connection)
            self._streaming.pop(connection, None)
            self._hold()

    async def _on_text(
        self, connection: ServerConnection, protocol: AppFoundryDialect, text: str
    ) -> None:
        with self._texts_lock:
            self._texts.append(text)
        loop = asyncio.get_running_loop()
        events = protocol.receive(Message(text, arrival_s=loop.time()))
        for data in protocol.data_to_send():
            await connection.send(data)
        if not any(isinstance(event, StreamOpened) for event in events):
            return  # a user_input, or what the dialect refused: nothing changes
        if connection not in self._open:  # dropped while the answer was going out
            return
        if not self._stream.started and self._stream_started is not None:
            self._stream.start(loop.time(), time.time())
            self._stream_started.set()
        self._streaming[connection] = protocol
        if self._stream.paused and self._resumed is not None:
            self._stream.resume(loop.time())
            self._resumed.set()
            logger.info("emulator stream resumed after %d frames", self._stream.frames_generated)

    async def _pump(self) -> None:
        """Releases the stream's messages at their send times, on the loop's monotonic clock."""
        assert self._stream_started is not None and self._resumed is not None
        await self._stream_started.wait()
        loop = asyncio.get_running_loop()
        while not self._stream.finished:
            await self._deliver(self._stream.advance(loop.time()))
            if self._stream.paused:
                await self._resumed.wait()
                continue
            due_s = self._stream.next_due_s()
            if due_s is not None:
                await asyncio.sleep(max(0.0, due_s - loop.time()))
        await self._complete_stream()

    async def _deliver(self, items: list[Outgoing]) -> None:
        for index, item in enumerate(items):
            if self._hold(items[index:]):
                return
            if item.kind == "disconnect":
                self._drop_all()
                continue
            delivered = await self._broadcast(item)
            if not delivered and self._hold(items[index:]):
                return
            if item.kind == "frame":
                self._tally.add("frames_sent" if delivered else "frames_offline")
            elif delivered:
                self._tally.add(
                    "duplicates_sent" if item.kind == "duplicate" else "malformed_sent"
                )

    async def _broadcast(self, item: Outgoing) -> bool:
        """Audio goes through each connection's protocol object; a malformed variant is
        written as it is, since no protocol object would write it."""
        delivered = False
        for connection, protocol in list(self._streaming.items()):
            if item.chunk is None:
                outgoing: list[str | bytes] = [item.raw]
            else:
                protocol.send_audio(item.chunk)
                outgoing = protocol.data_to_send()
            try:
                for data in outgoing:
                    await connection.send(data)
            except ConnectionClosed:
                self._streaming.pop(connection, None)
            else:
                delivered = True
        return delivered

    def _drop_all(self) -> int:
        victims = list(self._open)
        self._open.clear()
        self._streaming.clear()
        for connection in victims:
            connection.transport.abort()
        if victims:
            self._tally.add("forced_disconnects", len(victims))
            logger.info("emulator dropped %d connection(s) abruptly", len(victims))
        self._hold()
        return len(victims)

    def _hold(self, unsent: list[Outgoing] | None = None) -> bool:
        """``offline="pause"``: with nobody streaming, pause the stream (from now) and put
        ``unsent`` back; True when the caller must deliver nothing more now."""
        stream, loop, resumed = self._stream, self._loop, self._resumed
        if self.impairments.offline != "pause" or self._streaming or loop is None:
            return False
        if not stream.started or resumed is None or (stream.finished and not unsent):
            return False
        if not stream.paused:
            self._tally.add("pauses")
            logger.info(
                "emulator stream paused after %d frames: nobody streaming", stream.frames_generated
            )
        stream.pause(loop.time(), unsent or ())
        resumed.clear()
        return True

    async def _complete_stream(self) -> None:
        self._complete.set()
        logger.info("emulator stream complete after %d frames", self._stream.frames_generated)
        await self._close_all(1000, STREAM_COMPLETE_REASON)

    async def _close_all(self, code: int, reason: str) -> None:
        """Close handshakes with every client, each aborted after the close timeout."""
        closing = [connection.close(code, reason) for connection in list(self._open)]
        await asyncio.gather(*closing, return_exceptions=True)


def _check_config(codec: str, sample_rate: int, frame_ms: float, duration_s: float | None) -> None:
    if codec not in FORMATS:
        raise ConfigError(f"codec={codec!r} is not one of {', '.join(FORMATS)}")
    frame_samples(sample_rate, frame_ms)
    if duration_s is not None:
        checks.number(
            "duration_s",
            duration_s,
            low=0.0,
            above=True,
            unit="s",
            hint="or None for an endless stream",
        )


def _retry_after(seconds: float) -> str:
    """Whole seconds as HTTP says; a fraction is kept (a test convenience) rather than
    rounded up, and clients are expected to parse it as a float."""
    return str(int(seconds)) if float(seconds).is_integer() else f"{seconds:g}"
