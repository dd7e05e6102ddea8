"""Outbound audio: the bot's voice sent back to the caller on Audio Connector and Twilio.

Two layers, as everywhere in jitterline:

- ``Pacer`` (sans-I/O) decides when each chunk may leave. The peer plays what it receives
  in real time, so chunk ``i`` of a prompt is due when the peer's playhead reaches it, less
  a small lead (``lead_s``) that keeps the peer's buffer from running dry between two
  timer wake-ups. Sending a whole prompt at once would be simpler, but Genesys answers
  bursts with 429 (docs/audiohook.md) and Twilio would hold seconds of audio that a
  ``clear`` must then throw away.
- ``Outbound`` binds a pacer to one connection's protocol object: it encodes (PCMU 8 kHz,
  resampled when needed), cuts at the platform's frame size (Twilio: 20 ms ``media``
  messages; Audio Connector: at most ``frame_bytes``, 1600 bytes = 200 ms), fires on the
  runtime's scheduler at each chunk's due time (one timer per connection, no thread), and
  learns from the peer when a prompt was played: Twilio echoes the ``mark`` we send after
  each prompt's last chunk, Audio Connector sends ``playback_completed``.

AudioHook (Monitor) carries no audio back (docs/audiohook.md): asking for an ``Outbound``
on it raises ``ConfigError``, as does any dialect without an outbound audio path.
"""

from __future__ import annotations

import logging
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Literal, Protocol, TypeAlias

import numpy as np
import numpy.typing as npt
from reactivex import abc
from reactivex.disposable import Disposable, SerialDisposable

from . import checks, codecs
from .errors import ConfigError
from .frames import Event, StreamClosed, StreamInfo, StreamSignal
from .protocols.audioconnector import AudioConnectorDialect
from .protocols.audiohook import AudioHookDialect
from .protocols.twilio import TwilioDialect

__all__ = [
    "CODEC",
    "LEAD_S",
    "SAMPLE_RATE",
    "TWILIO_FRAME_BYTES",
    "Chunk",
    "Outbound",
    "Pacer",
    "Playback",
    "PlaybackState",
    "encode_pcmu",
    "frame_bytes_for",
    "split",
]

log = logging.getLogger(__name__)

CODEC = "PCMU"
SAMPLE_RATE = 8000
"""Both platforms take µ-law 8 kHz mono back (docs/protocols.md)."""

LEAD_S = 0.1
"""How far ahead of the peer's playhead a chunk leaves: enough to ride out a late timer
on a loaded loop, small enough that a ``clear`` discards little already-sent audio."""

TWILIO_FRAME_BYTES = 160
"""20 ms of PCMU: the size of Twilio's own ``media`` messages."""

PlaybackState: TypeAlias = Literal["queued", "sent", "played", "cleared"]
_DONE: tuple[PlaybackState, ...] = ("played", "cleared")


# -- encoding ---------------------------------------------------------------------------------


def encode_pcmu(pcm: bytes | npt.ArrayLike, rate: int = SAMPLE_RATE) -> bytes:
    """Mono audio as the peer takes it: PCMU at 8 kHz.

    ``pcm`` is int16 samples (a numpy array or sequence) or their little-endian bytes,
    what ``wave.readframes`` returns for a 16-bit WAV; another ``rate`` is resampled
    (soxr, the ``resample`` extra)."""
    samples = _samples(pcm)
    if rate != SAMPLE_RATE:
        from .resample import resample

        samples = resample(samples, rate, SAMPLE_RATE)
    if not samples.size:
        raise ConfigError("the audio to send is empty; pass at least one sample")
    return codecs.encode(samples, CODEC)


def _samples(pcm: bytes | npt.ArrayLike) -> npt.NDArray[np.int16]:
    if isinstance(pcm, (bytes, bytearray, memoryview)):
        data = bytes(pcm)
        if len(data) % 2:
            raise ConfigError(
                f"PCM of {len(data)} bytes is not whole 16-bit samples; pass little-endian "
                "int16 bytes (a 16-bit WAV's frames) or an int16 array"
            )
        return np.frombuffer(data, dtype="<i2").astype(np.int16)
    array = np.asarray(pcm)
    if array.ndim != 1 or array.dtype != np.int16:
        raise ConfigError(
            f"outbound audio must be mono int16 samples, got dtype {array.dtype} and shape "
            f"{array.shape}; mix down and convert with array.astype(np.int16)"
        )
    return array


def split(payload: bytes, frame_bytes: int) -> list[bytes]:
    """``payload`` in chunks of ``frame_bytes`` (the last one may be shorter)."""
    return [payload[start : start + frame_bytes] for start in range(0, len(payload), frame_bytes)]


# -- sans-I/O: when each chunk leaves ---------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Chunk:
    """One outbound message's audio: due at ``due_s``; ``last`` ends playback ``number``."""

    payload: bytes
    due_s: float
    number: int
    last: bool


class Pacer:
    """Chunks in the order pushed, each due ``lead_s`` before the peer will reach it.

    The peer's playhead is modelled, not measured: it plays ``rate`` bytes per second (one
    byte per PCMU sample) from the moment the first chunk after a silence is sent. A chunk
    pushed while the peer still plays earlier audio queues behind it; a ``clear`` empties
    both our queue and (by the protocol's ``clear`` / ``barge_in``) the peer's, so the
    playhead restarts at that instant."""

    def __init__(self, *, lead_s: float = LEAD_S, rate: int = SAMPLE_RATE) -> None:
        self.lead_s = checks.number("lead_s", lead_s, low=0.0, unit="s")
        self.rate = checks.count("rate", rate, low=1)
        self._queue: deque[Chunk] = deque()
        self._end_s: float | None = None

    def __len__(self) -> int:
        return len(self._queue)

    def push(self, payloads: Sequence[bytes], number: int, now_s: float) -> None:
        """Queue one playback's chunks behind whatever the peer has yet to play."""
        start_s = now_s if self._end_s is None else max(now_s, self._end_s)
        for index, payload in enumerate(payloads):
            last = index == len(payloads) - 1
            self._queue.append(Chunk(payload, start_s - self.lead_s, number, last))
            start_s += len(payload) / self.rate
        self._end_s = start_s

    def pop_due(self, now_s: float) -> list[Chunk]:
        due: list[Chunk] = []
        while self._queue and self._queue[0].due_s <= now_s:
            due.append(self._queue.popleft())
        return due

    def next_due_s(self) -> float | None:
        return self._queue[0].due_s if self._queue else None

    def clear(self, now_s: float) -> list[Chunk]:
        """Drop what has not left; the peer drops what it holds, so it is silent now."""
        dropped = list(self._queue)
        self._queue.clear()
        self._end_s = now_s
        return dropped

    def playing_until_s(self) -> float | None:
        """When the peer will have played everything sent and queued (None: never sent)."""
        return self._end_s


# -- the peer: what each dialect sends --------------------------------------------------------


class _Peer(Protocol):
    frame_bytes: int

    def audio(self, payload: bytes) -> bool:
        """Queue one chunk on the protocol object; False once the stream takes none."""

    def after(self, name: str) -> None:
        """A playback's last chunk went: ask the peer to tell us when it has played."""

    def clear(self) -> None:
        """Ask the peer to drop what it holds and has not played."""


class _TwilioPeer:
    def __init__(self, proto: TwilioDialect) -> None:
        self.proto = proto
        self.frame_bytes = TWILIO_FRAME_BYTES

    def audio(self, payload: bytes) -> bool:
        if self.proto.state != "started":
            return False
        self.proto.send_media(payload)
        return True

    def after(self, name: str) -> None:
        if self.proto.state == "started":
            self.proto.send_mark(name)

    def clear(self) -> None:
        if self.proto.state == "started":
            self.proto.send_clear()


class _ConnectorPeer:
    def __init__(self, proto: AudioConnectorDialect) -> None:
        self.proto = proto
        self.frame_bytes = proto.frame_bytes

    def audio(self, payload: bytes) -> bool:
        return self.proto.send_audio(payload)

    def after(self, name: str) -> None:
        """Nothing to send: Genesys reports ``playback_completed`` on its own."""

    def clear(self) -> None:
        self.proto.barge_in()


def _peer(proto: object) -> _Peer:
    if isinstance(proto, TwilioDialect):
        if proto.role != "server":
            raise ConfigError("outbound audio is the server's; this Twilio object plays Twilio")
        return _TwilioPeer(proto)
    if isinstance(proto, AudioConnectorDialect):
        if proto.role != "server":
            raise ConfigError("outbound audio is the server's; this object plays Genesys")
        return _ConnectorPeer(proto)
    if isinstance(proto, AudioHookDialect):
        raise ConfigError(
            "AudioHook is monitor-only: Genesys takes no audio back on it; serve "
            "--dialect audioconnector (an Audio Connector integration) to talk to the caller"
        )
    name = getattr(proto, "name", type(proto).__name__)
    raise ConfigError(
        f"dialect {name!r} has no outbound audio; jitterline sends audio back on "
        "audioconnector and twilio"
    )


def frame_bytes_for(proto: object) -> int:
    """The largest outbound chunk ``proto`` takes; ``ConfigError`` when it takes none."""
    return _peer(proto).frame_bytes


# -- the handle a sender keeps ----------------------------------------------------------------


class Playback:
    """One ``Outbound.send``: ``queued`` until its last chunk left, then ``sent`` until the
    peer reports it played (``played``: Twilio's mark echo, Audio Connector's
    ``playback_completed``), or ``cleared`` (``Outbound.clear``, or the stream ended first).
    ``add_done_callback(fn)`` calls ``fn(playback)`` once it is played or cleared."""

    __slots__ = ("_callbacks", "duration_ms", "name", "number", "state")

    def __init__(self, number: int, duration_ms: float) -> None:
        self.number = number
        self.name = f"jitterline-{number}"
        self.duration_ms = duration_ms
        self.state: PlaybackState = "queued"
        self._callbacks: list[Callable[[Playback], object]] = []

    def __repr__(self) -> str:
        return f"Playback({self.name!r}, {self.duration_ms:g} ms, {self.state})"

    @property
    def done(self) -> bool:
        return self.state in _DONE

    def add_done_callback(self, fn: Callable[[Playback], object]) -> None:
        if self.done:
            _call(fn, self)
        else:
            self._callbacks.append(fn)

    def _finish(self, state: PlaybackState) -> None:
        if self.done:
            return
        self.state = state
        callbacks, self._callbacks = self._callbacks, []
        for fn in callbacks:
            _call(fn, self)


def _call(fn: Callable[[Playback], object], playback: Playback) -> None:
    """A sender's callback that raises costs its own notification, never the stream."""
    try:
        fn(playback)
    except Exception:
        log.exception("a done callback of %s raised; the stream goes on", playback.name)


# -- one connection's outbound audio ----------------------------------------------------------


class Outbound:
    """The audio one connection sends back, paced on ``scheduler`` (the runtime's loop).

    Everything runs on the scheduler's thread: ``send`` and ``clear`` from a hook or a
    callback there, ``event`` from the connection for each event its protocol object
    parsed. ``flush`` sends what the protocol object queued (``Connection.flush``)."""

    def __init__(
        self,
        proto: object,
        *,
        stream: StreamInfo,
        clock: Callable[[], float],
        scheduler: abc.SchedulerBase,
        flush: Callable[[], object],
        lead_s: float = LEAD_S,
    ) -> None:
        self.stream = stream
        self._peer = _peer(proto)
        self._clock = clock
        self._scheduler = scheduler
        self._flush = flush
        self._pacer = Pacer(lead_s=lead_s)
        self._timer = SerialDisposable()
        self._timer_due: float | None = None
        self._numbers = 0
        self._pending: dict[int, Playback] = {}
        self.closed = False
        self.chunks_sent = 0
        self.chunks_cleared = 0

    @property
    def frame_bytes(self) -> int:
        return self._peer.frame_bytes

    def __repr__(self) -> str:
        return (
            f"Outbound({self.stream.stream_id!r}, queued={len(self._pacer)}, "
            f"sent={self.chunks_sent})"
        )

    def send(self, pcm: bytes | npt.ArrayLike, rate: int = SAMPLE_RATE) -> Playback:
        """Play mono int16 ``pcm`` at ``rate`` Hz to the caller after what is queued.

        The first chunk leaves now; the rest follow in real time. Once the stream ended
        the playback comes back ``cleared`` (a bot answering as the caller hangs up is a
        race, not a bug)."""
        payload = encode_pcmu(pcm, rate)
        self._numbers += 1
        playback = Playback(self._numbers, 1000.0 * len(payload) / SAMPLE_RATE)
        if self.closed:
            playback._finish("cleared")
            return playback
        self._pending[playback.number] = playback
        self._pacer.push(split(payload, self.frame_bytes), playback.number, self._clock())
        self._pump()
        return playback

    def clear(self) -> int:
        """Stop the audio: drop what has not left and ask the peer to drop what it holds
        (Twilio ``clear``, Audio Connector ``barge_in``). Returns the chunks dropped here."""
        if self.closed:
            return 0
        dropped = self._pacer.clear(self._clock())
        self.chunks_cleared += len(dropped)
        self._peer.clear()
        for playback in list(self._pending.values()):
            playback._finish("cleared")
        self._pending.clear()
        self._flush()
        self._schedule()
        return len(dropped)

    def event(self, event: Event) -> None:
        """What the peer said about our audio: a ``mark`` echo, ``playback_completed``,
        or the stream's end."""
        if isinstance(event, StreamClosed):
            self.close()
        elif isinstance(event, StreamSignal):
            if event.kind == "mark":
                self._played(lambda playback: playback.name == event.info.get("name"))
            elif event.kind == "playback_completed":
                self._played(lambda playback: True)

    def close(self) -> None:
        """The stream ended: nothing more leaves; what did not play is ``cleared``."""
        if self.closed:
            return
        self.closed = True
        self._timer.disposable = Disposable()
        self.chunks_cleared += len(self._pacer.clear(self._clock()))
        for playback in self._pending.values():
            playback._finish("cleared")
        self._pending.clear()

    def _played(self, matches: Callable[[Playback], bool]) -> None:
        for number, playback in list(self._pending.items()):
            if playback.state == "sent" and matches(playback):
                del self._pending[number]
                playback._finish("played")

    def _pump(self, due_s: float | None = None) -> None:
        """Hand every due chunk to the protocol object, send, and wait for the next.
        ``due_s``: the time the timer was set for, which counts as reached even when the
        clock, rounded to its resolution, reads a hair earlier (else the timer would be
        set again for the same instant, forever)."""
        now_s = self._clock() if due_s is None else max(self._clock(), due_s)
        for chunk in self._pacer.pop_due(now_s):
            if not self._peer.audio(chunk.payload):
                log.info(
                    "stream %s no longer takes audio; %d chunk(s) dropped",
                    self.stream.stream_id,
                    len(self._pacer) + 1,
                )
                self.close()
                break
            self.chunks_sent += 1
            if chunk.last:
                self._sent(chunk.number)
        self._flush()
        self._schedule()

    def _sent(self, number: int) -> None:
        playback = self._pending.get(number)
        if playback is not None and playback.state == "queued":
            playback.state = "sent"
            self._peer.after(playback.name)

    def _schedule(self) -> None:
        due = None if self.closed else self._pacer.next_due_s()
        if due == self._timer_due:
            return
        self._timer_due = due
        if due is None:
            self._timer.disposable = Disposable()
            return
        delay_s = max(due - self._clock(), 0.0)
        self._timer.disposable = self._scheduler.schedule_relative(delay_s, self._fire, due)

    def _fire(self, _: abc.SchedulerBase, due_s: float | None) -> None:
        self._timer_due = None
        self._pump(due_s)
