"""Captures: every raw message of a run with its arrival time, as JSON Lines.

A capture is what ``--record FILE`` writes and ``jitterline replay FILE`` reads. Line 1 is
the header; then one object per record, in the order they happened::

    {"jitterline_capture": 1, "dialect": "appfoundry", "config": {...}, "source": {...},
     "started_wall_s": 1700000000.123}
    {"t": 0.412345, "kind": "text", "data": "{\\"type\\":\\"audio_chunk\\",...}",
     "wall_s": 1700000000.535}
    {"t": 0.5, "kind": "binary", "data": "<base64>", "wall_s": ...}
    {"t": 5.000321, "kind": "event", "event": "pong", "rtt_ms": 0.21, ...}
    {"t": 10.2, "kind": "end", "connection": {"reconnects": 0, ...}}

``t`` is the message's ``arrival_s``: seconds since the run started on the pipeline's
monotonic clock, quantised to microseconds, written with Python's shortest round-trip float
repr so that a replay feeds the pipeline the very same floats. ``wall_s`` (an addition to
the format of the issue) is the receiver's wall clock at arrival, which the
sender-to-receiver latency needs. ``event`` lines carry the connection events that change
numbers (``pong`` feeds the RTT) and the lifecycle for context; the ``end`` line carries
the end time (the replay closes the stream at the same instant) and the session's
connection counters. A capture without an ``end`` line (the recorder was killed) ends at
its last record. Unknown keys are ignored, so the format can grow.

Captures hold raw stream content, never credentials: tokens travel in handshake headers,
which are not recorded.
"""

from __future__ import annotations

import base64
import binascii
import itertools
import json
import threading
from collections.abc import Iterator, Mapping
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import IO, Any

from .config import PipelineConfig
from .errors import ConfigError
from .frames import ConnectionEvent, ConnectionStats, Message
from .protocols import ROLES, Role

__all__ = [
    "CAPTURE_VERSION",
    "CaptureEnd",
    "CaptureHeader",
    "CaptureRecord",
    "CaptureWriter",
    "read_capture",
]

CAPTURE_VERSION = 1

_EVENT_FIELDS = ("attempt", "code", "reason", "delay_s", "rtt_ms")
_CONNECTION_FIELDS = ("attempts", "reconnects", "token_refreshes", "rate_limited", "rtt_ms")


@dataclass(frozen=True, slots=True)
class CaptureHeader:
    """What a replay needs to rebuild the pipeline the recording run used."""

    dialect: str
    config: PipelineConfig
    source: dict[str, Any] = field(default_factory=dict)
    started_wall_s: float | None = None
    role: Role = "client"

    def to_json(self) -> dict[str, Any]:
        return {
            "jitterline_capture": CAPTURE_VERSION,
            "dialect": self.dialect,
            "role": self.role,
            "config": asdict(self.config),
            "source": dict(self.source),
            "started_wall_s": self.started_wall_s,
        }


@dataclass(frozen=True, slots=True)
class CaptureEnd:
    """The recording stopped at ``at_s``; ``connection`` is the session's final tally."""

    at_s: float
    connection: ConnectionStats


CaptureRecord = Message | ConnectionEvent | CaptureEnd


class CaptureWriter:
    """Appends records to a capture file; thread-safe (the session thread writes messages
    and events, the main thread the end line), flushed per line so a killed run keeps
    what it saw."""

    def __init__(self, path: Path, header: CaptureHeader) -> None:
        try:
            self._file: IO[str] = path.open("w", encoding="utf-8")
        except OSError as exc:
            raise ConfigError(
                f"cannot write capture file {str(path)!r} ({exc.strerror}); pick a writable path"
            ) from exc
        self.path = path
        self._lock = threading.Lock()
        self.records = 0
        self._write(header.to_json())

    def message(self, message: Message) -> None:
        data = message.data
        text = data if isinstance(data, str) else base64.b64encode(data).decode("ascii")
        line: dict[str, Any] = {"t": message.arrival_s, "kind": message.kind, "data": text}
        if message.received_wall_s is not None:
            line["wall_s"] = message.received_wall_s
        self._write(line)

    def event(self, event: ConnectionEvent) -> None:
        line: dict[str, Any] = {"t": event.at_s, "kind": "event", "event": event.kind}
        line.update({name: getattr(event, name) for name in _EVENT_FIELDS})
        self._write(line)

    def end(self, at_s: float, connection: ConnectionStats) -> None:
        counters = {name: getattr(connection, name) for name in _CONNECTION_FIELDS}
        self._write({"t": at_s, "kind": "end", "connection": counters})

    def close(self) -> None:
        with self._lock:
            self._file.close()

    def _write(self, line: Mapping[str, Any]) -> None:
        text = json.dumps(line, separators=(",", ":"), allow_nan=False) + "\n"
        with self._lock:
            if self._file.closed:
                return
            self._file.write(text)
            self._file.flush()
            self.records += 1


def read_capture(path: Path) -> tuple[CaptureHeader, Iterator[CaptureRecord]]:
    """The header, and the records one at a time (a long capture is never all in memory).

    Raises ``ConfigError`` naming the file and line for anything that is not a capture.
    """
    try:
        handle = path.open(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(
            f"cannot read capture {str(path)!r} ({exc.strerror}); give a file written by --record"
        ) from exc
    try:
        header = _header(path, _load(path, 1, _line(path, 1, handle)))
    except ConfigError:
        handle.close()
        raise
    return header, _records(path, handle)


def _records(path: Path, handle: IO[str]) -> Iterator[CaptureRecord]:
    with handle:
        for number in itertools.count(2):
            text = _line(path, number, handle)
            if not text:
                return
            if text.strip():
                yield _record(path, number, _load(path, number, text))


def _line(path: Path, number: int, handle: IO[str]) -> str:
    try:
        return handle.readline()
    except UnicodeDecodeError as exc:
        raise _bad(path, number, "is not UTF-8 text") from exc


def _load(path: Path, number: int, text: str) -> dict[str, Any]:
    try:
        value = json.loads(text)
    except ValueError as exc:
        raise _bad(path, number, "is not JSON") from exc
    if not isinstance(value, dict):
        raise _bad(path, number, "is not a JSON object")
    return value


def _bad(path: Path, number: int, what: str) -> ConfigError:
    return ConfigError(
        f"capture {str(path)!r} line {number} {what}; a capture is JSON Lines written by --record"
    )


def _header(path: Path, line: dict[str, Any]) -> CaptureHeader:
    version = line.get("jitterline_capture")
    if version != CAPTURE_VERSION:
        raise ConfigError(
            f"{str(path)!r} has jitterline_capture={version!r} on line 1; this jitterline "
            f"reads version {CAPTURE_VERSION} (is it a file written by --record?)"
        )
    dialect = line.get("dialect")
    if not isinstance(dialect, str):
        raise _bad(path, 1, "names no dialect")
    raw = line.get("config")
    known = {spec.name for spec in fields(PipelineConfig)}
    options = {k: v for k, v in raw.items() if k in known} if isinstance(raw, dict) else {}
    options["dialect"] = dialect
    source = line.get("source")
    started = line.get("started_wall_s")
    role = line.get("role", "client")
    if role not in ROLES:
        raise _bad(path, 1, f"has role {role!r}, not client or server")
    return CaptureHeader(
        role=role,
        dialect=dialect,
        config=PipelineConfig(**options),
        source=dict(source) if isinstance(source, dict) else {},
        started_wall_s=float(started) if isinstance(started, (int, float)) else None,
    )


def _record(path: Path, number: int, line: dict[str, Any]) -> CaptureRecord:
    t = line.get("t")
    if isinstance(t, bool) or not isinstance(t, (int, float)):
        raise _bad(path, number, "has no numeric t")
    kind = line.get("kind")
    if kind in {"text", "binary"}:
        return _message(path, number, line, float(t), kind == "binary")
    if kind == "event":
        options = {name: line[name] for name in _EVENT_FIELDS if line.get(name) is not None}
        return ConnectionEvent(kind=line.get("event", "connecting"), at_s=float(t), **options)
    if kind == "end":
        counters = line.get("connection")
        known = counters if isinstance(counters, dict) else {}
        options = {name: known[name] for name in _CONNECTION_FIELDS if name in known}
        return CaptureEnd(at_s=float(t), connection=ConnectionStats(**options))
    raise _bad(path, number, f"has kind {kind!r}, not text, binary, event or end")


def _message(path: Path, number: int, line: dict[str, Any], t: float, binary: bool) -> Message:
    data = line.get("data")
    if not isinstance(data, str):
        raise _bad(path, number, "has no string data")
    wall = line.get("wall_s")
    wall_s = float(wall) if isinstance(wall, (int, float)) else None
    if not binary:
        return Message(data, arrival_s=t, received_wall_s=wall_s)
    try:
        raw = base64.b64decode(data, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise _bad(path, number, "has binary data that is not base64") from exc
    return Message(raw, arrival_s=t, received_wall_s=wall_s)
