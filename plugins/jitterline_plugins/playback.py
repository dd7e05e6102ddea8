"""Plays one stream on the sound card as it leaves the jitter buffer: ``--play STREAM|first``.

Needs sounddevice and the PortAudio library (``pip install 'jitterline[playback]'``).
Playback is a side show: a missing library, a machine without an output device (a server)
or an output that runs dry each give one clear warning line, and the pipeline runs on.

``STREAM`` picks the stream by its stream id, ``stream_id/channel`` or call id;
``first`` takes the first stream that plays a frame. Only one stream plays: a sound card
has one pair of ears in front of it.

Why a queue: the hook runs on the loop that carries every stream and must not wait for
the sound card, and the sound card's callback runs on PortAudio's thread and must not
wait for the network. The hook appends the frame's samples to a bounded deque (the
oldest is dropped and counted when the card falls behind by more than ``QUEUE_FRAMES``);
the callback takes what is there and plays silence for what is not (an underrun,
counted, one line the first time). Live, the buffer releases frames at their playout
times, so the queue stays short and playback is real time; a replay runs faster than
real time and is not meant to be listened to.
"""

from __future__ import annotations

import argparse
import logging
from collections import deque
from collections.abc import Mapping
from typing import Any

import numpy as np
import numpy.typing as npt

from jitterline import AudioFrame, StreamInfo, hookimpl

__all__ = ["QUEUE_FRAMES", "PlaybackSink", "Player", "plugin"]

log = logging.getLogger(__name__)

QUEUE_FRAMES = 25
"""Half a second of 20 ms frames between the loop and the sound card."""


class Player:
    """The hand-over between the loop (``push``) and the sound card's callback (``fill``):
    no lock, since deque appends and pops are atomic, and neither side ever waits."""

    def __init__(self, channels: int, capacity: int = QUEUE_FRAMES) -> None:
        self.channels = channels
        self.capacity = capacity
        self.queue: deque[npt.NDArray[np.int16]] = deque()
        self.dropped = 0
        self.underruns = 0
        self._partial = np.zeros((0, channels), dtype=np.int16)
        self._started = False

    def push(self, samples: npt.NDArray[np.int16]) -> None:
        """From the loop thread: never blocks; the oldest frame goes when full."""
        if len(self.queue) >= self.capacity:
            self.queue.popleft()
            self.dropped += 1
        self.queue.append(samples.reshape(-1, self.channels))

    def fill(self, out: npt.NDArray[np.int16]) -> None:
        """From the sound card's thread: fill ``out`` (frames x channels), silence where
        nothing is queued yet."""
        wanted, have = len(out), self._partial
        while len(have) < wanted and self.queue:
            have = np.concatenate([have, self.queue.popleft()])
        if have.size:
            self._started = True
        count = min(wanted, len(have))
        out[:count] = have[:count]
        out[count:] = 0
        self._partial = have[count:]
        if count < wanted and self._started:
            self.underruns += 1
            if self.underruns == 1:
                log.warning(
                    "playback underrun: the sound card ran out of audio and played "
                    "silence (the stream itself is unaffected); later ones are counted"
                )


class PlaybackSink:
    """``--play``: chooses a stream, opens the output on its first frame, feeds it."""

    extra = "playback"
    requires = ("sounddevice",)

    def __init__(self, choice: str | None = None) -> None:
        self._output: Any = None
        self._reset(choice)

    def _reset(self, choice: str | None) -> None:
        self.choice = choice
        self.chosen: tuple[str, str] | None = None
        self.player: Player | None = None
        self._off = False

    @hookimpl
    def jitterline_add_options(self, parser: argparse.ArgumentParser) -> None:
        parser.add_argument_group("playback (plugin playback)").add_argument(
            "--play",
            metavar="STREAM",
            help="play one stream on the sound card: its stream id, stream_id/channel, "
            "call id, or 'first'",
        )

    @hookimpl
    def jitterline_configure(self, options: Mapping[str, Any]) -> None:
        if "play" not in options:
            return
        self.close()
        self._reset(options["play"])

    @hookimpl
    def jitterline_frame_played(self, frame: AudioFrame, stream: StreamInfo) -> None:
        if self._off or frame.samples is None or not self.plays(stream):
            return
        if self.player is None and not self._open(frame):
            return
        assert self.player is not None
        self.player.push(np.zeros_like(frame.samples) if frame.concealed else frame.samples)

    @hookimpl
    def jitterline_stream_closed(self, stream: StreamInfo) -> None:
        if stream.key == self.chosen:
            self.close()

    def close(self) -> None:
        """Stop the output, saying how playback went if it went badly."""
        if self._output is not None:
            self._output.stop()
            self._output.close()
            self._output = None
        player = self.player
        if player is not None and (player.underruns or player.dropped):
            log.warning(
                "playback of %s: %d underruns, %d frames dropped (the sound card fell behind)",
                "/".join(self.chosen or ()),
                player.underruns,
                player.dropped,
            )
        self._off = True

    def plays(self, stream: StreamInfo) -> bool:
        """Whether ``stream`` is the one to play (the first match becomes the choice)."""
        if self.choice is None:
            return False
        if self.chosen is None:
            names = {stream.stream_id, f"{stream.stream_id}/{stream.channel}", stream.call_id}
            if self.choice != "first" and self.choice not in names - {""}:
                return False
            self.chosen = stream.key
            log.info("playing stream %s", "/".join(stream.key).rstrip("/"))
        return stream.key == self.chosen

    def _open(self, frame: AudioFrame) -> bool:
        """The output device at the frame's rate; on any failure one line, then off."""
        try:
            import sounddevice  # type: ignore[import-untyped,unused-ignore]
        except (ImportError, OSError) as exc:
            return self._give_up(
                f"sounddevice is not usable ({exc}); pip install 'jitterline[playback]' "
                "(and the PortAudio library, e.g. apt install libportaudio2)"
            )
        player = Player(frame.channels)
        try:
            output = sounddevice.OutputStream(
                samplerate=frame.sample_rate,
                channels=frame.channels,
                dtype="int16",
                callback=lambda out, frames, time, status: player.fill(out),
            )
            output.start()
        except sounddevice.PortAudioError as exc:
            return self._give_up(f"no audio output device ({exc})")
        self.player, self._output = player, output
        return True

    def _give_up(self, why: str) -> bool:
        log.warning("playback is off: %s; the stream goes on", why)
        self._off = True
        return False


plugin = PlaybackSink()
