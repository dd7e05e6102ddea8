"""The capture format: what --record writes reads back the same, and a hand-written
capture replays on virtual time to exact counters, ending where the capture ends."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from fuzz_testkit import only_this_checkouts_plugins
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


# -- a corrupt capture is a usage error naming its file and line (issue 12, item 5) --------

GOOD_HEADER = json.dumps(
    {"jitterline_capture": 1, "dialect": "appfoundry", "config": {}, "source": {}}
)
GOOD_MESSAGE = json.dumps({"t": 0.5, "kind": "text", "data": "x"})


@pytest.fixture
def cli(monkeypatch: pytest.MonkeyPatch) -> None:
    for name, value in only_this_checkouts_plugins().items():
        monkeypatch.setenv(name, value)


def replay_exit(tmp_path: Path, lines: list[str], capsys: pytest.CaptureFixture[str]) -> str:
    """Run ``jitterline replay`` on ``lines``; assert exit 2 and return its stderr."""
    from jitterline.cli import EXIT_USAGE, main

    path = tmp_path / "corrupt.jsonl"
    path.write_text("\n".join(lines) + "\n")
    code = main(["replay", str(path), "--disable", "wav_sink"])
    err = capsys.readouterr().err
    assert code == EXIT_USAGE, err
    assert str(path) in err
    assert "internal error" not in err
    return err


@pytest.mark.parametrize(
    ("line", "why"),
    [
        ('{"t": NaN, "kind": "text", "data": "x"}', "t=nan"),
        ('{"t": Infinity, "kind": "text", "data": "x"}', "t=inf"),
        ('{"t": -Infinity, "kind": "binary", "data": ""}', "t=-inf"),
        ('{"t": 1e308, "kind": "text", "data": "x"}', "t=1e+308"),
        ('{"t": -0.25, "kind": "text", "data": "x"}', "t=-0.25"),
        ('{"t": "0.5", "kind": "text", "data": "x"}', "no numeric t"),
        ('{"t": 0.6, "kind": "text", "data": "x", "wall_s": NaN}', "wall_s=nan"),
        ('{"t": 0.6, "kind": "event", "event": "pong", "rtt_ms": "fast"}', "rtt_ms='fast'"),
        ('{"t": 0.6, "kind": "event", "event": "pong", "rtt_ms": Infinity}', "rtt_ms=inf"),
        ('{"t": 0.6, "kind": "event", "event": "exploded"}', "event 'exploded'"),
        ('{"t": 0.6, "kind": "event", "event": "closed", "code": 1000.5}', "code=1000.5"),
        ('{"t": 0.6, "kind": "end", "connection": {"attempts": "2"}}', "connection.attempts"),
        ('{"t": 0.6, "kind": "end", "connection": {"rtt_ms": -1}}', "connection.rtt_ms"),
        ('{"t": 0.4, "kind": "text", "data": "y"}', "before t=0.5 of the message on line 2"),
    ],
)
def test_a_corrupt_record_exits_2_naming_file_and_line_3(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], cli: None, line: str, why: str
) -> None:
    err = replay_exit(tmp_path, [GOOD_HEADER, GOOD_MESSAGE, line], capsys)

    assert "line 3" in err
    assert why in err


@pytest.mark.parametrize(
    ("config", "why"),
    [
        ({"min_buffer_ms": "20"}, "min_buffer_ms='20'"),
        ({"max_buffer_ms": float("nan")}, "max_buffer_ms=nan"),
        ({"max_buffer_ms": 1e308}, "max_buffer_ms"),
        ({"buffer_ms": True}, "buffer_ms=True"),
        ({"capacity_frames": "512"}, "capacity_frames='512'"),
        ({"window_frames": 10**30}, "window_frames="),
        ({"capacity_frames": 0}, "capacity_frames=0"),
        ({"conceal": "loud"}, "conceal='loud'"),
        ({"stats_every_s": -1}, "stats_every_s"),
        ({"stats_every_s": 1e308}, "stats_every_s=1e+308; it must be at most 1e+09 s"),
    ],
)
def test_a_corrupt_header_config_exits_2_naming_line_1(
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    cli: None,
    config: dict[str, object],
    why: str,
) -> None:
    header = json.dumps({"jitterline_capture": 1, "dialect": "appfoundry", "config": config})

    err = replay_exit(tmp_path, [header, GOOD_MESSAGE], capsys)

    assert "line 1" in err
    # The command names a setting as its flag (``--min-buffer-ms '20'``) where it has one.
    name, sep, value = why.partition("=")
    flagged = f"--{name.replace('_', '-')}{' ' if sep else ''}{value}"
    assert why in err or flagged in err


def test_started_wall_s_that_is_not_finite_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "h.jsonl"
    path.write_text('{"jitterline_capture": 1, "dialect": "appfoundry", "started_wall_s": NaN}\n')

    with pytest.raises(ConfigError, match="line 1 has started_wall_s=nan"):
        read_capture(path)


def test_an_event_published_after_later_messages_is_accepted(tmp_path: Path) -> None:
    """The transport publishes a pong read in the same readiness as later frames after
    them, so event lines may go back in time; only message lines may not."""
    path = tmp_path / "pong.jsonl"
    lines = [
        GOOD_HEADER,
        json.dumps({"t": 0.5, "kind": "text", "data": "a"}),
        json.dumps({"t": 0.7, "kind": "text", "data": "b"}),
        json.dumps({"t": 0.6, "kind": "event", "event": "pong", "rtt_ms": 3.0}),
        json.dumps({"t": 0.7, "kind": "text", "data": "c"}),
    ]
    path.write_text("\n".join(lines) + "\n")

    _, records = read_capture(path)

    assert [getattr(r, "arrival_s", getattr(r, "at_s", None)) for r in records] == [
        0.5,
        0.7,
        0.6,
        0.7,
    ]


# -- the writer never stores a credential (issue 12, item 7) ------------------------------


def test_the_writer_masks_credentials_in_text_reasons_and_source_but_not_audio(
    tmp_path: Path,
) -> None:
    path = tmp_path / "secrets.jsonl"
    basic = "Basic Y2xpZW50OmNhbmFyeS1zZWNyZXQ="
    header = CaptureHeader("appfoundry", FIXED_60, {"url": "wss://h/p?access_token=tok123"})
    writer = CaptureWriter(path, header)
    writer.message(Message('{"type":"error","payload":{"message":"Bearer abc.DEF9"}}', 0.1))
    writer.message(Message(b"Bearer abc.DEF9", arrival_s=0.2))
    writer.event(ConnectionEvent("disconnected", at_s=0.3, reason=f"answered 503 ({basic})"))
    writer.close()

    text = path.read_text()
    assert "abc.DEF9" not in text.splitlines()[1]
    assert "tok123" not in text
    assert "Y2xpZW50OmNhbmFyeS1zZWNyZXQ=" not in text
    _, records = read_capture(path)
    message, audio, event = list(records)
    assert isinstance(message, Message)
    assert json.loads(str(message.data))["payload"]["message"] == "Bearer ***"
    assert isinstance(audio, Message)
    assert audio.data == b"Bearer abc.DEF9"  # binary is audio: kept byte for byte
    assert isinstance(event, ConnectionEvent)
    assert event.reason == "answered 503 (Basic ***)"


def test_records_never_iterated_leave_no_file_open(tmp_path: Path) -> None:
    """Found by the replay fuzzer: a replay whose pipeline refused the header's config
    never iterated the records, and the file stayed open (a ResourceWarning, an error
    under this suite's warning filters)."""
    import gc

    path = tmp_path / "c.jsonl"
    write(path, [Message("a", arrival_s=0.1)], end_s=1.0)

    _, records = read_capture(path)
    del records
    gc.collect()  # would raise through the suite's ResourceWarning filter if it leaked
