"""Playback, as far as a machine without a sound card can test it: the stream chosen, the
one line when there is no device or no library, and the hand-over queue that never
blocks the loop. Actual sound out of a device is not tested here."""

from __future__ import annotations

import logging
import sys

import numpy as np
import pytest

from jitterline import AudioFrame, PluginHost, StreamInfo
from jitterline_plugins.playback import QUEUE_FRAMES, PlaybackSink, Player


def frame(value: int, *, concealed: bool = False) -> AudioFrame:
    return AudioFrame(
        stream_id="s",
        seq=0,
        media_ms=0.0,
        codec="L16",
        sample_rate=8000,
        channels=1,
        payload=b"",
        duration_ms=20.0,
        arrival_s=0.0,
        playout_s=0.1,
        concealed=concealed,
        samples=np.full(160, value, dtype=np.int16),
    )


def test_first_plays_the_first_stream_to_play_and_only_that_one() -> None:
    sink = PlaybackSink("first")

    assert sink.plays(StreamInfo("a", "external"))
    assert not sink.plays(StreamInfo("b"))
    assert sink.plays(StreamInfo("a", "external"))
    assert sink.chosen == ("a", "external")


@pytest.mark.parametrize("choice", ["call-7", "call-7/internal", "conv-1"])
def test_a_stream_is_chosen_by_id_channel_or_call_id(choice: str) -> None:
    sink = PlaybackSink(choice)
    other = StreamInfo("call-6", "internal", call_id="conv-0")
    wanted = StreamInfo("call-7", "internal", call_id="conv-1")

    assert not sink.plays(other)
    assert sink.plays(wanted)
    assert sink.chosen == ("call-7", "internal")


def test_without_an_output_device_one_line_and_the_stream_goes_on(
    caplog: pytest.LogCaptureFixture,
) -> None:
    pytest.importorskip("sounddevice", reason="PortAudio is needed for the no-device path")
    sink = PlaybackSink()
    host = PluginHost(plugins=[sink])
    host.call("jitterline_configure", options={"play": "first"})

    with caplog.at_level(logging.WARNING, logger="jitterline_plugins.playback"):
        for value in range(5):
            host.notify("jitterline_frame_played", frame=frame(value), stream=StreamInfo("s"))

    lines = [r.getMessage() for r in caplog.records]
    assert len(lines) == 1
    assert lines[0].startswith("playback is off: no audio output device (")
    assert lines[0].endswith("; the stream goes on")
    assert host.failures == {}


def test_without_sounddevice_one_line_naming_the_extra(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setitem(sys.modules, "sounddevice", None)
    sink = PlaybackSink("first")

    with caplog.at_level(logging.WARNING, logger="jitterline_plugins.playback"):
        sink.jitterline_frame_played(frame(1), StreamInfo("s"))
        sink.jitterline_frame_played(frame(2), StreamInfo("s"))

    [line] = [r.getMessage() for r in caplog.records]
    assert "pip install 'jitterline[playback]'" in line and line.startswith("playback is off")


def test_the_queue_never_blocks_the_loop_and_drops_the_oldest_when_full() -> None:
    player = Player(channels=1)
    for value in range(QUEUE_FRAMES + 3):
        player.push(np.full(160, value, dtype=np.int16))

    assert player.dropped == 3
    out = np.empty((160, 1), dtype=np.int16)
    player.fill(out)
    assert (out == 3).all()  # frames 0..2 went to make room


def test_the_callback_plays_queued_audio_across_frame_edges_then_counts_an_underrun(
    caplog: pytest.LogCaptureFixture,
) -> None:
    player = Player(channels=1)
    out = np.empty((100, 1), dtype=np.int16)
    player.fill(out)
    assert not out.any() and player.underruns == 0  # not started: silence, no underrun

    player.push(np.arange(160, dtype=np.int16))
    player.fill(out)
    assert list(out[:, 0]) == list(range(100))
    with caplog.at_level(logging.WARNING, logger="jitterline_plugins.playback"):
        player.fill(out)
        assert list(out[:60, 0]) == list(range(100, 160)) and not out[60:].any()
        player.fill(out)
        assert not out.any()
    assert player.underruns == 2
    assert len(caplog.records) == 1 and "underrun" in caplog.records[0].getMessage()
