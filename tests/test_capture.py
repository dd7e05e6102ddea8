"""The capture format: what --record writes reads back the same, and a hand-written
capture replays on virtual time to exact counters, ending where the capture ends."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from jitterline import ConfigError, ConnectionEvent, Message, PipelineConfig, PluginHost
from jitterline.capture import CaptureEnd, CaptureHeader, CaptureWriter, read_capture
from jitterline.frames import ConnectionStats
from jitterline.live import replay
from jitterline.protocols.appfoundry import audio_chunk_message

FRAME_S = 0.02
PCMU_20MS = b"\x7f" * 160
FIXED_60 = PipelineConfig(buffer_policy="fixed", buffer_ms=60.0)


def chunk(seq: int) -> str:
    capture = 1_700_000_000.0 + seq * FRAME_S
    return audio_chunk_message(
        PCMU_20MS, seq=seq, capture_wall_s=capture, sent_wall_s=capture, codec="PCMU"
    )


def write(path: Path, messages: list[Message], *, end_s: float | None) -> None:
    writer = CaptureWriter(path, CaptureHeader("appfoundry", FIXED_60, {"command": "test"}))
    for message in messages:
        writer.message(message)
    writer.event(ConnectionEvent("pong", at_s=0.5, rtt_ms=12.5))
    if end_s is not None:
        writer.end(end_s, ConnectionStats(attempts=2, reconnects=1, token_refreshes=1))
    writer.close()


def host() -> PluginHost:
    return PluginHost(load_entrypoints=False)


def test_text_binary_event_and_end_records_read_back_unchanged(tmp_path: Path) -> None:
    path = tmp_path / "c.jsonl"
    sent = [
        Message("hello", arrival_s=0.123456, received_wall_s=1_700_000_000.5),
        Message(b"\x00\xffbinary", arrival_s=0.2),
    ]
    write(path, sent, end_s=1.000001)

    header, records = read_capture(path)

    assert header.dialect == "appfoundry"
    assert header.config == FIXED_60
    assert header.source == {"command": "test"}
    assert list(records) == [
        *sent,
        ConnectionEvent("pong", at_s=0.5, rtt_ms=12.5),
        CaptureEnd(1.000001, ConnectionStats(attempts=2, reconnects=1, token_refreshes=1)),
    ]
    binary_line = json.loads(path.read_text().splitlines()[2])
    assert binary_line == {"t": 0.2, "kind": "binary", "data": "AP9iaW5hcnk="}


def test_replay_of_a_stream_with_a_lost_burst_counts_it_exactly(tmp_path: Path) -> None:
    path = tmp_path / "burst.jsonl"
    arrivals = [
        Message(chunk(seq), arrival_s=round(1.0 + seq * FRAME_S, 6))
        for seq in range(50)
        if seq not in range(20, 23)
    ]
    arrivals.append(Message("not json", arrival_s=1.5))
    # The last frame arrives at 1.98 s and plays at 2.04 s (60 ms buffer); end just after.
    write(path, sorted(arrivals, key=lambda m: m.arrival_s), end_s=2.05)

    _, result = replay(path, host=host())

    frames = result.stats.frames
    assert (frames.received, frames.played, frames.malformed, frames.unplayed) == (48, 47, 1, 0)
    assert (frames.lost, frames.concealed) == (3, 3)
    assert frames.balanced
    assert result.stats.at_s == 2.05
    assert result.stats.connection.reconnects == 1
    assert result.stats.latency.rtt_ms == 12.5
    assert result.messages == 48


def test_capture_cut_short_without_an_end_line_ends_at_its_last_record(tmp_path: Path) -> None:
    path = tmp_path / "cut.jsonl"
    write(
        path, [Message(chunk(seq), arrival_s=1.0 + seq * FRAME_S) for seq in range(30)], end_s=None
    )

    _, result = replay(path, host=host())

    assert result.stats.at_s == pytest.approx(1.58)
    assert result.stats.frames.unplayed > 0  # the buffer still held the last 60 ms
    assert result.stats.frames.balanced


def test_replay_with_a_bigger_fixed_buffer_plays_the_late_frame(tmp_path: Path) -> None:
    path = tmp_path / "late.jsonl"
    arrivals = [
        Message(chunk(seq), arrival_s=1.0 + seq * FRAME_S) for seq in range(40) if seq != 10
    ]
    arrivals.append(Message(chunk(10), arrival_s=1.0 + 10 * FRAME_S + 0.1))
    write(path, sorted(arrivals, key=lambda m: m.arrival_s), end_s=2.5)

    _, as_recorded = replay(path, host=host())
    _, what_if = replay(path, host=host(), overrides={"buffer_ms": 200.0})

    assert as_recorded.stats.frames.late == 1
    assert what_if.stats.frames.late == 0
    assert what_if.stats.buffer.target_ms == 200.0


def test_a_file_that_is_not_a_capture_is_refused_with_its_line(tmp_path: Path) -> None:
    path = tmp_path / "x.jsonl"
    path.write_text('{"hello": 1}\n')

    with pytest.raises(ConfigError, match="jitterline_capture=None on line 1"):
        read_capture(path)


def test_a_binary_file_is_refused_as_not_text(tmp_path: Path) -> None:
    path = tmp_path / "audio.wav"
    path.write_bytes(b"RIFF\xff\xfe\x00\x00WAVE")

    with pytest.raises(ConfigError, match="line 1 is not UTF-8 text"):
        read_capture(path)


def test_a_broken_record_names_its_line(tmp_path: Path) -> None:
    path = tmp_path / "y.jsonl"
    write(path, [Message("a", arrival_s=0.1)], end_s=1.0)
    path.write_text(path.read_text() + '{"t": 2, "kind": "binary", "data": "@@"}\n')

    _, records = read_capture(path)
    with pytest.raises(ConfigError, match="line 5 has binary data that is not base64"):
        list(records)
