"""The emulator's one live conversation, sans-I/O: which message leaves when.

``LiveStream`` is given the time (``now_s``, monotonic seconds) and hands back the messages
due by then, in send-time order; the server only moves them to whoever is connected. Frame
``i`` is captured at ``t0 + i * frame_ms`` whether or not a client is there (the stream is
live), so a frame due while nobody listens is simply not delivered, unless the server
``pause``s the stream while nobody listens (``Impairments.offline="pause"``): then the
capture clock stops, what was released but not delivered is put back, and ``resume`` moves
every time still ahead (captures, queued sends) later by the pause. The capture timestamps
(the media clock) are not moved: like the sequence, they carry on where they stopped.

A frame's send time is capture + processing + network delay (``FrameFate``), and messages are
released in send-time order, so a large jitter draw on one frame really lets later frames
overtake it on the wire. The envelope timestamp is capture + processing: the moment the
emulated server "sent" it, before the emulated network; the difference to the capture
timestamp is therefore exactly the server delay the diagnosis looks for.

Audio is encoded as it is captured: by a built-in codec's name, or by the ``encoder`` of a
codec with state across frames (Opus: ``StreamCodec.encoder(rate, channels)``), which must
see every frame in order, lost ones included, as a real sender's encoder does. A finite
source (a WAV played once) ends the stream with its last frame, however short; an
encoder's frame sizes are fixed, so that last frame is padded with silence for it.
"""

from __future__ import annotations

import heapq
import json
import math
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, replace
from typing import Literal, TypeAlias

import numpy as np

from ..codecs import FrameEncoder, bytes_per_sample, encode
from ..errors import ConfigError
from ..frames import Samples
from ..protocols.appfoundry import AudioChunk
from .impairments import FrameFate, ImpairmentModel, MalformedKind

__all__ = ["LiveStream", "Outgoing", "OutgoingKind", "frames_for", "malformed_text"]

OutgoingKind: TypeAlias = Literal["frame", "duplicate", "malformed", "disconnect"]


@dataclass(frozen=True, slots=True)
class Outgoing:
    """One thing the server must do at ``due_s``: send ``chunk`` through each connection's
    protocol object (frames, duplicates), send ``raw`` text as it is (a malformed variant:
    no protocol object would write it), or drop the connection."""

    kind: OutgoingKind
    seq: int
    due_s: float
    chunk: AudioChunk | None = None
    raw: str = ""

    @property
    def text(self) -> str:
        """The message as it goes on the wire."""
        return self.raw if self.chunk is None else self.chunk.message()


class LiveStream:
    """Generates frames on the capture clock and queues them by send time.

    ``total_frames`` ends the stream (None: endless), and so does the end of ``audio``;
    ``finished`` is true once every frame was generated and every queued message
    released. The queue holds only messages not yet due, bounded by the model's delay cap.
    ``channels`` is how many interleaved channels ``audio`` yields; ``encoder`` encodes
    instead of the built-in codec named ``codec`` (see the module docstring).
    """

    def __init__(
        self,
        model: ImpairmentModel,
        audio: Iterator[Samples],
        *,
        codec: str,
        sample_rate: int,
        total_frames: int | None = None,
        channels: int = 1,
        encoder: FrameEncoder | None = None,
    ) -> None:
        if total_frames is not None and total_frames < 1:
            raise ConfigError(f"total_frames={total_frames} must be >= 1 or None (endless)")
        if encoder is None:
            _check_builtin(codec)
        self._encoder = encoder
        self._channels = channels
        self._model = model
        self._audio = audio
        self._codec = codec
        self._sample_rate = sample_rate
        self._frame_s = model.frame_ms / 1000.0
        self.total_frames = total_frames
        self._t0_s: float | None = None
        self._t0_wall_s = 0.0
        self._next_seq = 0
        self._queue: list[tuple[float, int, Outgoing]] = []
        self._pushed = 0
        self._paused_at_s: float | None = None
        self.frames_generated = 0
        self.frames_lost = 0

    @property
    def started(self) -> bool:
        return self._t0_s is not None

    @property
    def paused(self) -> bool:
        return self._paused_at_s is not None

    @property
    def finished(self) -> bool:
        return self._all_generated and not self._queue

    @property
    def in_flight(self) -> int:
        """Frames generated and not lost, whose send time has not come yet."""
        return sum(1 for _, _, item in self._queue if item.kind == "frame")

    @property
    def _all_generated(self) -> bool:
        return self.total_frames is not None and self._next_seq >= self.total_frames

    def start(self, now_s: float, now_wall_s: float) -> None:
        """Put frame 0's capture at ``now_s`` (and ``now_wall_s`` on the sender's clock)."""
        if self._t0_s is not None:
            raise ConfigError("the stream already started; a live stream starts once")
        self._t0_s = now_s
        self._t0_wall_s = now_wall_s

    def capture_s(self, seq: int) -> float:
        if self._t0_s is None:
            raise ConfigError("the stream has not started; call start(now_s, now_wall_s)")
        return self._t0_s + seq * self._frame_s

    def next_due_s(self) -> float | None:
        """When ``advance`` will next have something to do; None if never (or not started,
        or paused)."""
        if self._t0_s is None or self.finished or self.paused:
            return None
        candidates = [self._queue[0][0]] if self._queue else []
        if not self._all_generated:
            candidates.append(self.capture_s(self._next_seq))
        return min(candidates)

    def advance(self, now_s: float) -> list[Outgoing]:
        """Capture every frame due by ``now_s``, then release every message due by then
        (nothing while paused)."""
        if self._t0_s is None or self.paused:
            return []
        while not self._all_generated and self.capture_s(self._next_seq) <= now_s:
            samples = next(self._audio, None)
            if samples is None:  # a finite source ended: so does the stream
                self.total_frames = self._next_seq
                break
            self._generate(self._next_seq, samples)
            self._next_seq += 1
        released: list[Outgoing] = []
        while self._queue and self._queue[0][0] <= now_s:
            released.append(heapq.heappop(self._queue)[2])
        return released

    def pause(self, now_s: float, unsent: Iterable[Outgoing] = ()) -> None:
        """Stop the stream at ``now_s`` (pausing again keeps the first time); ``unsent``
        are messages ``advance`` released that nobody received: they go back in the queue
        with their send times, to leave first after ``resume``."""
        if self._t0_s is None:
            raise ConfigError("the stream has not started; only a started stream pauses")
        for item in unsent:
            self._push(item)
        if self._paused_at_s is None:
            self._paused_at_s = now_s

    def resume(self, now_s: float) -> None:
        """Carry on from where ``pause`` stopped: the next frame is captured, and every
        queued message sent, as much later as the pause lasted (a no-op if not paused)."""
        if self._paused_at_s is None or self._t0_s is None:
            return
        shift_s = max(0.0, now_s - self._paused_at_s)
        self._paused_at_s = None
        self._t0_s += shift_s
        # One shift for all keeps the heap ordered as it was.
        self._queue = [
            (due_s + shift_s, pushed, replace(item, due_s=item.due_s + shift_s))
            for due_s, pushed, item in self._queue
        ]

    def _generate(self, seq: int, samples: Samples) -> None:
        payload = self._encode(samples)
        fate = self._model.decide(seq)
        self.frames_generated += 1
        capture_s = self.capture_s(seq)
        if fate.disconnect_before:
            self._push(Outgoing("disconnect", seq, capture_s))
        if fate.lost:
            self.frames_lost += 1
            return
        chunk = self._chunk(seq, payload, fate)
        due_s = capture_s + fate.send_offset_ms / 1000.0
        if fate.malformed is not None:
            broken = malformed_text(fate.malformed, chunk.message())
            self._push(Outgoing("malformed", seq, due_s, raw=broken))
        self._push(Outgoing("frame", seq, due_s, chunk))
        if fate.duplicate_after_ms is not None:
            due_again_s = due_s + fate.duplicate_after_ms / 1000.0
            self._push(Outgoing("duplicate", seq, due_again_s, chunk))

    def _encode(self, samples: Samples) -> bytes:
        if self._encoder is None:
            return encode(samples, self._codec)
        width = round(self._sample_rate * self._frame_s) * self._channels
        if samples.size < width:
            samples = np.concatenate((samples, np.zeros(width - samples.size, np.int16)))
        return self._encoder.encode(samples)

    def _chunk(self, seq: int, payload: bytes, fate: FrameFate) -> AudioChunk:
        capture_wall_s = self._t0_wall_s + seq * self._frame_s
        return AudioChunk(
            payload,
            capture_wall_s=capture_wall_s,
            sent_wall_s=capture_wall_s + fate.processing_ms / 1000.0,
            seq=seq,
            codec=self._codec,
            rate=self._sample_rate,
            channels=self._channels,
        )

    def _push(self, item: Outgoing) -> None:
        # The push counter breaks ties: a malformed message precedes its frame.
        heapq.heappush(self._queue, (item.due_s, self._pushed, item))
        self._pushed += 1


def _check_builtin(codec: str) -> None:
    """A codec without an encoder must be a built-in: refused now, not on the first frame."""
    try:
        bytes_per_sample(codec)
    except ConfigError as exc:
        raise ConfigError(
            f"{exc}; a plugin's codec (OPUS) streams through its encoder: pass "
            f"encoder=host.codecs.get({codec!r}).encoder(sample_rate, channels)"
        ) from exc


def malformed_text(kind: MalformedKind, chunk: str) -> str:
    """A broken variant of a valid ``audio_chunk``, of the kind a real peer gets wrong."""
    if kind == "non_json":
        return chunk[: len(chunk) // 2]
    envelope = json.loads(chunk)
    payload = envelope["payload"]
    if kind == "bad_base64":
        payload["audio"] = "@@not*base64@@"
    elif kind == "unknown_format":
        payload["format"] = "G729"
    else:
        del payload["audio"], payload["timestamp"]
    return json.dumps(envelope, separators=(",", ":"))


def frames_for(duration_s: float, frame_ms: float) -> int:
    """Whole frames covering ``duration_s`` (a partial last frame counts)."""
    return max(1, math.ceil(round(duration_s * 1000.0 / frame_ms, 9)))
