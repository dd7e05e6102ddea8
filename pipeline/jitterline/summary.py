"""The JSON summary printed at the end of ``demo``, ``run`` and ``replay``: a stable schema.

The schema is an interface (scripts and dashboards parse it), so keys are only ever added,
and ``schema_version`` goes up if one must change meaning. Floats are rounded to
``DECIMALS`` (3) places, microseconds for times in ms: finer digits are noise, and a
fixed rounding makes a live run and its replay print the same text. A value that was not
measured is ``null``, never 0, so "no data" cannot pass for "perfect".

Everything except the ``run`` object is computed from the pipeline's final snapshot, so a
replay of a capture reproduces it exactly; ``run`` describes the invocation (command,
profile, URL, capture file) and may differ between a live run and its replay.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

from .diagnosis import Diagnosis
from .frames import Stats

__all__ = ["DECIMALS", "SCHEMA_VERSION", "render", "summarize"]

SCHEMA_VERSION = 1
DECIMALS = 3


def _num(value: float | None) -> float | None:
    return None if value is None else round(float(value), DECIMALS)


def summarize(
    stats: Stats,
    diagnosis: Diagnosis,
    *,
    run: Mapping[str, Any] | None = None,
    plugin_failures: Mapping[str, int] | None = None,
) -> dict[str, Any]:
    """The summary of a final snapshot and its diagnosis (see docs/cli.md for each key).

    ``plugin_failures`` counts, per plugin, the calls that raised during the run (the
    stream went on; see ``PluginHost.failures_by_plugin``)."""
    frames, latency, buffer = stats.frames, stats.latency, stats.buffer
    connection = stats.connection
    return {
        "schema_version": SCHEMA_VERSION,
        "stream_id": stats.stream_id,
        "channel": stats.channel,
        "duration_s": _num(stats.at_s),
        "idle_s": _num(buffer.idle_s),
        "frames": {
            "received": frames.received,
            "played": frames.played,
            "late": frames.late,
            "duplicate": frames.duplicate,
            "overflow": frames.overflow,
            "malformed": frames.malformed,
            "unplayed": frames.unplayed,
            "lost": frames.lost,
            "concealed": frames.concealed,
            "reordered": frames.reordered,
            "discarded": frames.discarded,
            "balanced": frames.balanced,
        },
        "rates": {"loss": _num(frames.loss_rate), "late": _num(frames.late_rate)},
        "jitter_ms": {
            "rfc3550": _num(latency.jitter_rfc3550_ms),
            "p50": _num(latency.jitter_p50_ms),
            "p95": _num(latency.jitter_p95_ms),
            "p99": _num(latency.jitter_p99_ms),
        },
        "delay_ms": {
            "p50": _num(latency.delay_p50_ms),
            "p95": _num(latency.delay_p95_ms),
            "p99": _num(latency.delay_p99_ms),
            "latency_ms": _num(latency.latency_p50_ms),
            "processing_ms": _num(latency.processing_p50_ms),
        },
        "buffer_ms": {
            "policy": buffer.policy,
            "target": _num(buffer.target_ms),
            "min": _num(buffer.min_ms),
            "max": _num(buffer.max_ms),
            "level": _num(buffer.level_ms),
            "wait_mean": _num(buffer.wait_mean_ms),
            "wait_p95": _num(buffer.wait_p95_ms),
        },
        "connection": {
            "attempts": connection.attempts,
            "reconnects": connection.reconnects,
            "token_refreshes": connection.token_refreshes,
            "rate_limited": connection.rate_limited,
            "rtt_ms": _num(stats.rtt_ms),
        },
        "diagnosis": {
            "verdict": diagnosis.verdict,
            "evidence": {name: _num(value) for name, value in diagnosis.evidence.items()},
            "action": diagnosis.action,
            "summary": diagnosis.summary,
        },
        "plugins": {"failures": dict(plugin_failures or {})},
        "run": dict(run or {}),
    }


def render(summary: Mapping[str, Any]) -> str:
    """The summary as indented JSON text, keys in schema order."""
    return json.dumps(summary, indent=2, allow_nan=False)
