"""The capture reader and ``replay`` fuzzed with arbitrary files (issue 12, item 5 and
"Fuzzing"): whatever the lines hold (NaN, infinities, 1e308, strings for numbers, wrong
kinds, times going back, bytes that are not UTF-8), reading raises only ``ConfigError``,
and a replay either completes with balanced counts or raises only ``ConfigError``."""

from __future__ import annotations

import json
import math
import tempfile
from pathlib import Path
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from dialect_testkit import JSON_VALUES
from fuzz_testkit import examples
from jitterline import PluginHost
from jitterline.capture import read_capture
from jitterline.errors import ConfigError
from jitterline.live import replay
from test_fuzz_protocols import TRANSCRIPTS

NUMBERS = st.sampled_from([math.nan, math.inf, -math.inf, 1e308, -1.0, 0.0, 2.5, "1", True])
ODD = NUMBERS | JSON_VALUES


def mostly(valid: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    return st.integers(0, 4).flatmap(lambda pick: valid if pick else ODD)


@st.composite
def headers(draw: st.DrawFn) -> dict[str, Any]:
    config_keys = ["buffer_policy", "buffer_ms", "min_buffer_ms", "max_buffer_ms"]
    config_keys += ["window_frames", "window_s", "capacity_frames", "conceal", "stats_every_s"]
    config = {key: draw(ODD) for key in draw(st.lists(st.sampled_from(config_keys), max_size=2))}
    return {
        "jitterline_capture": draw(mostly(st.just(1))),
        "dialect": draw(mostly(st.sampled_from(["appfoundry", "twilio", "audiohook"]))),
        "role": draw(mostly(st.just("server"))),
        "config": draw(mostly(st.just(config))),
        "source": draw(mostly(st.just({"command": "fuzz"}))),
        "started_wall_s": draw(mostly(st.just(1.7e9))),
    }


@st.composite
def records(draw: st.DrawFn, t_s: float) -> dict[str, Any]:
    kind = draw(mostly(st.sampled_from(["text", "binary", "event", "end"])))
    line: dict[str, Any] = {"t": draw(mostly(st.just(t_s))), "kind": kind}
    if kind == "text":
        pool = [d for d in TRANSCRIPTS[("appfoundry", "client")] if isinstance(d, str)]
        line["data"] = draw(mostly(st.sampled_from(pool)))
        line["wall_s"] = draw(mostly(st.just(1.7e9 + t_s)))
    elif kind == "binary":
        line["data"] = draw(mostly(st.sampled_from(["", "AAAA", "/w==", "@@"])))
    elif kind == "event":
        line["event"] = draw(mostly(st.sampled_from(["pong", "connected", "disconnected"])))
        line["rtt_ms"] = draw(mostly(st.just(3.5)))
        line["code"] = draw(mostly(st.just(1006)))
    else:
        line["connection"] = draw(mostly(st.just({"attempts": 1, "rtt_ms": 2.0})))
    return line


@st.composite
def capture_files(draw: st.DrawFn) -> bytes:
    lines = [json.dumps(draw(headers()))]
    t_s = 0.0
    for _ in range(draw(st.integers(0, 12))):
        t_s += draw(st.sampled_from([0.0, 0.02, 0.5, -0.3]))
        choice = draw(st.integers(0, 9))
        if choice == 0:
            lines.append(draw(st.text(max_size=30)))
        else:
            lines.append(json.dumps(draw(records(t_s))))
    text = "\n".join(lines) + "\n"
    data = text.encode()
    if draw(st.integers(0, 19)) == 0:
        cut = draw(st.integers(0, len(data)))
        data = data[:cut] + b"\xff\xfe" + data[cut:]
    return data


@settings(max_examples=examples(1.0))
@given(data=capture_files())
def test_reading_any_file_raises_only_config_error(data: bytes) -> None:
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "fuzz.jsonl"
        path.write_bytes(data)
        try:
            _, found = read_capture(path)
            list(found)
        except ConfigError as error:
            assert str(path) in str(error)


@settings(max_examples=examples(0.5))
@given(data=capture_files())
def test_replaying_any_file_completes_balanced_or_raises_only_config_error(data: bytes) -> None:
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "fuzz.jsonl"
        path.write_bytes(data)
        try:
            _, result = replay(path, host=PluginHost(load_entrypoints=False))
        except ConfigError:
            return
    for stats, _ in result.channels:
        assert stats.frames.balanced, stats.frames


@settings(max_examples=examples(1.0))
@given(lines=st.lists(st.text(max_size=60) | JSON_VALUES.map(json.dumps), max_size=6))
def test_arbitrary_lines_raise_only_config_error(lines: list[str]) -> None:
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "lines.jsonl"
        path.write_text("\n".join(lines), encoding="utf-8")
        try:
            _, found = read_capture(path)
            list(found)
        except ConfigError:
            pass
