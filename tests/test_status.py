"""The live view: what the table and the compact line show, the attempt lines, and log lines
routed through the display."""

from __future__ import annotations

import io
import logging
import sys
from collections.abc import Iterator

import pytest

from jitterline.diagnosis import diagnose
from jitterline.frames import (
    Alert,
    BufferStats,
    ConnectionEvent,
    ConnectionStats,
    FrameCounts,
    LatencyStats,
    Stats,
    StreamInfo,
)
from jitterline.status import (
    LINE_COLUMNS,
    AttemptLog,
    LiveView,
    PlainStatus,
    RichStatus,
    StatusLogHandler,
    make_status,
    status_fields,
    status_line,
)

STREAM = StreamInfo(stream_id="s1")


class FakeTerminal(io.StringIO):
    def isatty(self) -> bool:
        return True


class Clock:
    def __init__(self) -> None:
        self.now_s = 100.0

    def __call__(self) -> float:
        return self.now_s


def slow_server_snapshot(at_s: float = 4.0) -> Stats:
    """What the slow-server profile looks like: steady network, 300 ms before sending."""
    return Stats(
        at_s=at_s,
        frames=FrameCounts(received=200, played=198, lost=2, concealed=2),
        latency=LatencyStats(
            frames=200,
            jitter_rfc3550_ms=1.5,
            delay_p50_ms=1.0,
            delay_p95_ms=4.0,
            latency_p50_ms=306.0,
            processing_p50_ms=300.0,
            rtt_ms=2.0,
        ),
        buffer=BufferStats(target_ms=40.0),
        connection=ConnectionStats(attempts=1),
    )


def test_the_view_shows_the_verdict_and_the_server_delay_it_rests_on() -> None:
    view = LiveView(max_attempts=10, duration_s=10.0)
    snapshot = slow_server_snapshot()
    view.event(ConnectionEvent("connecting", at_s=0.0, attempt=1))
    view.event(ConnectionEvent("connected", at_s=0.1, attempt=1))
    view.jitterline_stats(snapshot, diagnose(snapshot), STREAM)

    rows = dict(status_fields(view.shown()))

    assert rows["verdict"] == "server_delay"
    assert rows["server delay"] == "305 ms"  # latency p50 - RTT / 2, what the rule weighs
    assert rows["latency"].startswith("306 ms")
    assert rows["lost"] == "2 (1.0%), 2 concealed"
    assert rows["time"] == "4.0 s of 10 s (6 s left)"
    assert rows["connection"] == "connected 1/10"


def test_the_connection_row_counts_attempts_and_down_to_the_next_try() -> None:
    clock = Clock()
    view = LiveView(max_attempts=10, clock=clock)
    for attempt in (1, 2, 3):
        view.event(ConnectionEvent("connecting", at_s=float(attempt), attempt=attempt))
        view.event(
            ConnectionEvent(
                "reconnect_scheduled", at_s=float(attempt), attempt=attempt, delay_s=8.0
            )
        )
    clock.now_s += 5.5

    assert dict(status_fields(view.shown()))["connection"] == "attempt 3/10 failed; next in 2.5 s"


def test_a_stable_connection_resets_the_attempt_count_a_quick_drop_does_not() -> None:
    view = LiveView(max_attempts=5)
    view.event(ConnectionEvent("connecting", at_s=0.0, attempt=1))
    view.event(ConnectionEvent("connected", at_s=0.1, attempt=1))
    view.event(ConnectionEvent("disconnected", at_s=0.5, attempt=1))
    view.event(ConnectionEvent("connecting", at_s=1.0, attempt=2))
    assert view.streak == 2

    view.event(ConnectionEvent("connected", at_s=1.1, attempt=2))
    view.event(ConnectionEvent("disconnected", at_s=30.0, attempt=2))
    view.event(ConnectionEvent("connecting", at_s=31.0, attempt=3))
    assert view.streak == 1


def test_the_last_alerts_are_shown_newest_last() -> None:
    view = LiveView()
    for n in range(5):
        alert = Alert(kind="verdict_changed", message=f"change {n}", at_s=float(n))
        view.jitterline_alert(alert, STREAM)

    alerts = [value for label, value in status_fields(view.shown()) if label == "alert"]

    assert [a.split(": ")[-1] for a in alerts] == ["change 2", "change 3", "change 4"]


def test_the_compact_line_fits_100_columns_and_carries_the_same_measures() -> None:
    view = LiveView(max_attempts=10, duration_s=600.0)
    snapshot = slow_server_snapshot(at_s=123.4)
    view.event(ConnectionEvent("connecting", at_s=0.0, attempt=1))
    view.event(ConnectionEvent("connected", at_s=0.1, attempt=1))
    view.jitterline_stats(snapshot, diagnose(snapshot), STREAM)

    line = status_line(view.shown())

    assert len(line) <= LINE_COLUMNS
    assert line == (
        "jitterline 123/600 s server_delay, connected 1/10, lost 2 concealed 2, "
        "server 305, latency 306 ms"
    )


def test_plain_status_prints_at_most_every_every_s() -> None:
    stream = io.StringIO()
    view = LiveView()
    status = PlainStatus(stream, view, every_s=2.0, clock=iter([0.0, 1.0, 2.5]).__next__)
    for at_s in (0.0, 1.0, 2.5):  # the second is too soon and skipped
        view.stats(slow_server_snapshot(at_s))
        status.stats(slow_server_snapshot(at_s))

    assert [line.split(" s ")[0] for line in stream.getvalue().splitlines()] == [
        "jitterline 0",
        "jitterline 2",
    ]


def test_attempt_log_says_each_failed_attempt_with_its_count_and_wait(
    caplog: pytest.LogCaptureFixture,
) -> None:
    view = LiveView(max_attempts=10)
    attempts = AttemptLog(view, None)
    caplog.set_level(logging.WARNING, logger="jitterline.status")
    for attempt in range(1, 6):
        attempts.event(ConnectionEvent("connecting", at_s=0.0, attempt=attempt))
        attempts.event(
            ConnectionEvent(
                "reconnect_scheduled", at_s=0.0, attempt=attempt, reason="refused", delay_s=8.0
            )
        )
    attempts.event(ConnectionEvent("connecting", at_s=0.0, attempt=6))
    attempts.event(ConnectionEvent("connected", at_s=0.0, attempt=6))

    lines = [record.getMessage() for record in caplog.records]
    assert lines[4] == "attempt 5/10 failed (refused); next in 8.0 s"
    assert lines[5] == "connected on attempt 6/10"
    assert len(lines) == 6


def test_log_lines_go_through_the_printer_while_one_is_routed() -> None:
    stream = io.StringIO()
    handler = StatusLogHandler(stream)
    printed: list[str] = []
    record = logging.makeLogRecord({"msg": "attempt 1/10 failed", "levelno": logging.WARNING})

    handler.route(printed.append)
    handler.handle(record)
    handler.route(None)
    handler.handle(record)

    assert printed == ["attempt 1/10 failed"]
    assert stream.getvalue() == "attempt 1/10 failed\n"


@pytest.fixture
def no_rich(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    monkeypatch.setitem(sys.modules, "rich.live", None)  # import fails like a missing extra
    yield


def test_status_is_the_table_on_a_terminal_and_lines_otherwise(
    caplog: pytest.LogCaptureFixture,
) -> None:
    assert isinstance(make_status(io.StringIO(), LiveView()), PlainStatus)
    assert isinstance(make_status(FakeTerminal(), LiveView()), RichStatus)
    assert not caplog.records


def test_status_is_plain_lines_when_rich_is_missing(
    no_rich: None, caplog: pytest.LogCaptureFixture
) -> None:
    assert isinstance(make_status(FakeTerminal(), LiveView()), PlainStatus)
    assert ["jitterline[live]" in r.getMessage() for r in caplog.records] == [True]


def test_the_rich_table_prints_log_lines_above_itself_and_keeps_them(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv("NO_COLOR", raising=False)
    terminal = FakeTerminal()
    handler = StatusLogHandler(terminal)
    view = LiveView(max_attempts=10, duration_s=10.0)
    status = RichStatus(terminal, view, handler)
    status.start()
    logging.getLogger("jitterline.test").addHandler(handler)
    try:
        snapshot = slow_server_snapshot()
        view.jitterline_stats(snapshot, diagnose(snapshot), STREAM)
        logging.getLogger("jitterline.test").warning("verdict_changed: server delay")
    finally:
        logging.getLogger("jitterline.test").removeHandler(handler)
        status.stop()

    text = terminal.getvalue()
    assert "verdict_changed: server delay" in text
    assert text.rindex("verdict_changed") < text.rindex("server_delay")  # above the last table
