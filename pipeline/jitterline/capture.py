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
which are not recorded, and every text the writer puts in a line (text messages, event
reasons, the header's source) goes through ``redact.redact`` first, so a peer that quotes
a credential back (an error message echoing the Authorization header) leaves only
``***`` in the file. Binary messages are written as they came (audio, not text).

Reading is strict, because a capture may be hand-edited, truncated or not a capture at
all, and ``replay`` must then say which line is wrong (a ``ConfigError``, exit 2) rather
than fail somewhere inside the pipeline: ``t`` must be a finite number in
``[0, MAX_T_S]``; message lines must not go back in time (they are written in arrival
order from one monotonic clock; event lines may, since the transport publishes an event
such as a pong after the frames read with it); every number of the header's config, an
event or the end line must have its field's type; ``wall_s`` must be finite.
"""

from __future__ import annotations

import base64
import binascii
import itertools
import json
import math
import threading
from collections.abc import Iterator, Mapping
from dataclasses import MISSING, asdict, dataclass, field, fields
from pathlib import Path
from typing import IO, Any, cast, get_args, get_type_hints

from .config import PipelineConfig
from .errors import ConfigError
from .frames import ConnectionEvent, ConnectionKind, ConnectionStats, Message
from .protocols import ROLES, Role
from .redact import redact, redact_json

__all__ = [
    "CAPTURE_VERSION",
    "MAX_T_S",
    "CaptureEnd",
    "CaptureHeader",
    "CaptureRecord",
    "CaptureWriter",
    "read_capture",
]

CAPTURE_VERSION = 1

MAX_T_S = 1e9
"""The largest ``t`` a capture may hold (about 31 years of run time). Past it a double no
longer holds the microsecond ``t`` is quantised to, and a replay's datetime-based virtual
clock would overflow well before ``1e308``."""

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
            "source": redact_json(dict(self.source)),
            "started_wall_s": self.started_wall_s,
        }


@dataclass(frozen=True, slots=True)
class CaptureEnd:
    """The recording stopped at ``at_s``; ``connection`` is the session's final tally;
    ``ended``: the peer ended the stream (drained), rather than it being cut."""

    at_s: float
    connection: ConnectionStats
    ended: bool = False


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
        text = redact(data) if isinstance(data, str) else base64.b64encode(data).decode("ascii")
        line: dict[str, Any] = {"t": message.arrival_s, "kind": message.kind, "data": text}
        if message.received_wall_s is not None:
            line["wall_s"] = message.received_wall_s
        self._write(line)

    def event(self, event: ConnectionEvent) -> None:
        line: dict[str, Any] = {"t": event.at_s, "kind": "event", "event": event.kind}
        line.update({name: getattr(event, name) for name in _EVENT_FIELDS})
        line["reason"] = redact(event.reason)
        self._write(line)

    def end(self, at_s: float, connection: ConnectionStats, *, ended: bool = False) -> None:
        """The last line; ``ended``: the peer ended the stream (a 1000 close), so a
        replay drains the buffer as the live run did, instead of cutting it."""
        counters = {name: getattr(connection, name) for name in _CONNECTION_FIELDS}
        self._write({"t": at_s, "kind": "end", "connection": counters, "ended": ended})

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
    The records' iterator opens the file again when it starts, so a caller that never
    iterates (its pipeline refused the header's config) leaves no file open.
    """
    with _open(path) as handle:
        header = _header(path, _load(path, 1, _line(path, 1, handle)))
    return header, _records(path)


def _open(path: Path) -> IO[str]:
    try:
        return path.open(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(
            f"cannot read capture {str(path)!r} ({exc.strerror}); give a file written by --record"
        ) from exc


def _records(path: Path) -> Iterator[CaptureRecord]:
    last: tuple[int, float] | None = None  # the previous message's line and t
    with _open(path) as handle:
        _line(path, 1, handle)  # the header, checked by read_capture
        for number in itertools.count(2):
            text = _line(path, number, handle)
            if not text:
                return
            if not text.strip():
                continue
            record = _record(path, number, _load(path, number, text))
            if isinstance(record, Message):
                if last is not None and record.arrival_s < last[1]:
                    raise _bad(
                        path,
                        number,
                        f"has t={record.arrival_s!r}, before t={last[1]!r} of the message "
                        f"on line {last[0]}; messages are recorded in arrival order (was "
                        "the file edited? sort its message lines by t)",
                    )
                last = (number, record.arrival_s)
            yield record


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
    role = line.get("role", "client")
    if not isinstance(role, str) or role not in ROLES:
        raise _bad(path, 1, f"has role {role!r}, not client or server")
    source = line.get("source")
    return CaptureHeader(
        role=role,
        dialect=dialect,
        config=_config(path, line.get("config"), dialect),
        source=dict(source) if isinstance(source, dict) else {},
        started_wall_s=_optional_float(path, 1, line, "started_wall_s"),
    )


def _config(path: Path, raw: object, dialect: str) -> PipelineConfig:
    """The recorded ``PipelineConfig``: unknown keys ignored (older captures), every known
    one checked against its field's type before ``PipelineConfig`` checks the ranges."""
    options: dict[str, Any] = {"dialect": dialect}
    if isinstance(raw, dict):
        for spec in fields(PipelineConfig):
            if spec.name in raw and spec.name != "dialect":
                options[spec.name] = _config_value(path, spec.name, raw[spec.name], spec)
    try:
        return PipelineConfig(**options)
    except ConfigError as exc:
        raise _bad(path, 1, f"has a config the pipeline refuses ({exc})") from exc


_CONFIG_HINTS = get_type_hints(PipelineConfig)
_MAX_CONFIG_COUNT = 1_000_000
"""The largest frame count (``capacity_frames``, ``window_frames``) a capture may ask for,
the jitter buffer's own bound."""


def _config_value(path: Path, name: str, value: object, spec: Any) -> object:
    default = spec.default if spec.default is not MISSING else None
    if value is None and default is None:
        return None  # an optional field (buffer_ms) left unset
    if isinstance(default, bool) or isinstance(value, bool):
        raise _bad(path, 1, f"has config {name}={value!r}, not a number")
    if isinstance(default, int):
        if not isinstance(value, int) or not 1 <= value <= _MAX_CONFIG_COUNT:
            raise _bad(
                path,
                1,
                f"has config {name}={value!r}; it must be an integer in [1, {_MAX_CONFIG_COUNT}]",
            )
        return value
    if isinstance(default, str):
        allowed = get_args(_CONFIG_HINTS[name])
        if not isinstance(value, str) or (allowed and value not in allowed):
            shown = f"; use one of {', '.join(allowed)}" if allowed else ""
            raise _bad(path, 1, f"has config {name}={value!r}, not a name{shown}")
        return value
    if not isinstance(value, (int, float)) or not math.isfinite(value):
        raise _bad(path, 1, f"has config {name}={value!r}, not a finite number")
    if name.endswith("_s") and value > MAX_T_S:
        # A period this long overflows the scheduler's datetime arithmetic.
        raise _bad(path, 1, f"has config {name}={value!r}; it must be at most {MAX_T_S:g} s")
    return float(value)


def _record(path: Path, number: int, line: dict[str, Any]) -> CaptureRecord:
    t = _t(path, number, line)
    kind = line.get("kind")
    if not isinstance(kind, str):
        raise _bad(path, number, f"has kind {kind!r}, not text, binary, event or end")
    if kind in {"text", "binary"}:
        return _message(path, number, line, t, kind == "binary")
    if kind == "event":
        return _event(path, number, line, t)
    if kind == "end":
        counters = line.get("connection")
        known = counters if isinstance(counters, dict) else {}
        options: dict[str, Any] = {}
        for name in _CONNECTION_FIELDS:
            if known.get(name) is not None:
                options[name] = _field(path, number, f"connection.{name}", known[name], name)
        ended = line.get("ended", False)
        if not isinstance(ended, bool):
            raise _bad(path, number, f"has ended {ended!r}, not true or false")
        return CaptureEnd(at_s=t, connection=ConnectionStats(**options), ended=ended)
    raise _bad(path, number, f"has kind {kind!r}, not text, binary, event or end")


def _t(path: Path, number: int, line: dict[str, Any]) -> float:
    t = line.get("t")
    if isinstance(t, bool) or not isinstance(t, (int, float)):
        raise _bad(path, number, "has no numeric t")
    if not (math.isfinite(t) and 0 <= t <= MAX_T_S):
        raise _bad(
            path,
            number,
            f"has t={t!r}; t counts seconds since the run started, a finite number in "
            f"[0, {MAX_T_S:g}]",
        )
    return float(t)


_INT_FIELDS = frozenset({"attempt", "code", "attempts", "reconnects", "token_refreshes"})
_KINDS = frozenset(get_args(ConnectionKind))


def _field(path: Path, number: int, label: str, value: object, name: str) -> int | float:
    """A counter (an int >= 0) or a measurement (a finite float >= 0) of an event or end
    line; ``rate_limited`` is a counter too."""
    counter = name in _INT_FIELDS or name == "rate_limited"
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise _bad(path, number, f"has {label}={value!r}, not a number")
    if counter and not isinstance(value, int):
        raise _bad(path, number, f"has {label}={value!r}, not an integer")
    if not (math.isfinite(value) and value >= 0):
        raise _bad(path, number, f"has {label}={value!r}; it must be finite and >= 0")
    return value


def _event(path: Path, number: int, line: dict[str, Any], t: float) -> ConnectionEvent:
    kind = line.get("event", "connecting")
    if not isinstance(kind, str) or kind not in _KINDS:
        raise _bad(path, number, f"has event {kind!r}, not one of {', '.join(sorted(_KINDS))}")
    options: dict[str, Any] = {}
    for name in _EVENT_FIELDS:
        value = line.get(name)
        if value is None:
            continue
        if name == "reason":
            if not isinstance(value, str):
                raise _bad(path, number, f"has reason={value!r}, not a string")
            options[name] = value
        else:
            options[name] = _field(path, number, name, value, name)
    return ConnectionEvent(kind=cast(ConnectionKind, kind), at_s=t, **options)


def _optional_float(path: Path, number: int, line: dict[str, Any], name: str) -> float | None:
    value = line.get(name)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise _bad(path, number, f"has {name}={value!r}, not a number")
    if not math.isfinite(value):
        raise _bad(path, number, f"has {name}={value!r}, not a finite number")
    return float(value)


def _message(path: Path, number: int, line: dict[str, Any], t: float, binary: bool) -> Message:
    data = line.get("data")
    if not isinstance(data, str):
        raise _bad(path, number, "has no string data")
    wall_s = _optional_float(path, number, line, "wall_s")
    if not binary:
        return Message(data, arrival_s=t, received_wall_s=wall_s)
    try:
        raw = base64.b64decode(data, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise _bad(path, number, "has binary data that is not base64") from exc
    return Message(raw, arrival_s=t, received_wall_s=wall_s)
