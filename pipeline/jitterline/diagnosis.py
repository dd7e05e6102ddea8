"""Why is the audio late? One verdict, with the numbers behind it, from a ``Stats`` snapshot.

The rule, checked in this order (the first that holds wins; defaults in ``Thresholds``).
The first three say that nothing can be judged, and are never ``healthy``: "no problem
found" must not pass for "nothing looked at".

1. ``no_audio``: no frame was received at all (nor a malformed message).
2. ``malformed``: at least ``malformed_rate`` (0.5) of what was received could not be
   decoded (every message, for a stream of nothing but malformed input).
3. ``insufficient_data``: fewer than ``min_frames`` (25) audio frames received, or none
   with a delay measured: too little to tell jitter from chance.
4. ``loss``: loss rate (frames never received / frames expected) >= ``loss_rate`` (0.03).
5. ``network_jitter``: RFC 3550 jitter >= ``jitter_ms`` (20 ms), or the delay spread
   (relative delay p95 - p50) >= ``delay_spread_ms`` (60 ms).
6. ``server_delay``: server_ms >= ``server_ms`` (150 ms), where server_ms is the larger of
   the sender's processing p50 and ``latency p50 - RTT / 2`` (whichever are measured; RTT
   counts 0 when unknown). The latency window's smoothed RTT is used, else the
   connection's. Reaching this step means jitter was low, so the delay is steady: added
   before the audio was sent, not on the way.
7. ``late``: late rate (frames that arrived after their slot, plus frames dropped to catch
   up after an outage, over frames expected) >= ``late_rate`` (0.03) on a link with low
   jitter and no server delay: outages and reconnects cut the audio (or a fixed buffer is
   too small); the listener hears gaps although every frame arrived. When an earlier
   verdict wins, its summary still gives the late rate if it reached the limit.
8. ``client_buffering``: the buffer target >= max(``buffer_ratio`` (2) x needed,
   needed + ``buffer_headroom_ms`` (100 ms)), where needed = relative delay p95 (0 when
   unmeasured) + one frame (the median inter-arrival time, at least ``frame_ms``, 20 ms:
   AudioHook's frames last 200 ms): the buffer holds far more than the
   network's delay asks for.
9. ``healthy``.

``evidence`` holds every number the rules looked at that was measured (units in the names):
``frames`` (in the latency window), ``audio_frames``, ``malformed``, ``malformed_rate``,
``loss_rate``, ``late_rate``, ``discarded_rate``, ``jitter_rfc3550_ms``, ``delay_p50_ms``,
``delay_p95_ms``, ``delay_spread_ms``, ``processing_p50_ms``, ``latency_p50_ms``,
``rtt_ms``, ``server_ms``, ``buffer_target_ms``, ``needed_ms``. An earlier rule not firing
is part of why a later verdict was given, so all of them are kept; a value never measured
is left out rather than reported as 0.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, fields
from typing import Literal, TypeAlias

from .errors import ConfigError
from .frames import LatencyStats, Stats

__all__ = ["Diagnosis", "Thresholds", "Verdict", "diagnose"]

Verdict: TypeAlias = Literal[
    "healthy",
    "network_jitter",
    "server_delay",
    "client_buffering",
    "loss",
    "late",
    "malformed",
    "no_audio",
    "insufficient_data",
]


@dataclass(frozen=True, slots=True)
class Thresholds:
    """The limits of the rule; the emulator's impairment profiles are tuned against these
    defaults, so change them only together."""

    min_frames: int = 25
    malformed_rate: float = 0.5
    loss_rate: float = 0.03
    late_rate: float = 0.03
    jitter_ms: float = 20.0
    delay_spread_ms: float = 60.0
    server_ms: float = 150.0
    buffer_ratio: float = 2.0
    buffer_headroom_ms: float = 100.0
    frame_ms: float = 20.0

    def __post_init__(self) -> None:
        for spec in fields(self):
            value = getattr(self, spec.name)
            if not (math.isfinite(value) and value >= 0):
                raise ConfigError(
                    f"threshold {spec.name}={value!r} must be a finite number >= 0; "
                    f"the default is {spec.default!r}"
                )


@dataclass(frozen=True, slots=True)
class Diagnosis:
    """A verdict, its evidence, what to do about it, and one sentence for a human."""

    verdict: Verdict
    evidence: dict[str, float]
    action: str
    summary: str

    def to_json(self) -> dict[str, object]:
        """The ``diagnosis`` object of the JSON summary (a stable schema)."""
        return {"verdict": self.verdict, "evidence": dict(self.evidence), "action": self.action}


_ACTIONS: dict[Verdict, str] = {
    "no_audio": "Check that the peer sends audio on this stream (its media format, the "
    "channel asked for, whether it was muted or on hold the whole time).",
    "malformed": "Check the dialect and codec the stream was opened with against what the "
    "peer sends (the log names the first error of each kind).",
    "insufficient_data": "Run longer: too few frames arrived to judge the network.",
    "late": "Raise the buffer target (or use the goal policy) if the network is jittery, "
    "or look for outages on the path if the late frames came in bursts.",
    "loss": "Check the network path for packet loss (Wi-Fi, VPN, a congested uplink); "
    "the jitter buffer can conceal gaps but not recover them.",
    "network_jitter": "Keep the adaptive buffer policy (or raise a fixed buffer to cover the "
    "delay p95) and look for congestion on the network path.",
    "server_delay": "Look at the sending server's processing (transcoding, queues) rather "
    "than the network or the buffer: the delay is added before the audio is sent.",
    "client_buffering": "Lower the buffer target toward the needed delay (or use the "
    "adaptive policy) to cut latency without more late frames.",
    "healthy": "No action needed.",
}


def diagnose(stats: Stats, thresholds: Thresholds = Thresholds()) -> Diagnosis:
    """Apply the rule of the module docstring to one snapshot."""
    evidence = _evidence(stats, thresholds)
    verdict = _verdict(evidence, thresholds)
    return Diagnosis(
        verdict=verdict,
        evidence=evidence,
        action=_ACTIONS[verdict],
        summary=_summary(verdict, evidence, thresholds),
    )


def _evidence(stats: Stats, limits: Thresholds) -> dict[str, float]:
    latency, frames = stats.latency, stats.frames
    rtt_ms = stats.rtt_ms
    expected = frames.played + frames.late + frames.lost + frames.discarded
    measured: dict[str, float | None] = {
        "frames": float(latency.frames),
        "audio_frames": float(frames.received - frames.malformed),
        "malformed": float(frames.malformed),
        "malformed_rate": frames.malformed / frames.received if frames.received else None,
        "loss_rate": frames.loss_rate,
        "late_rate": frames.late_rate,
        "discarded_rate": frames.discarded / expected if expected else 0.0,
        "jitter_rfc3550_ms": latency.jitter_rfc3550_ms,
        "delay_p50_ms": latency.delay_p50_ms,
        "delay_p95_ms": latency.delay_p95_ms,
        "delay_spread_ms": _spread(latency),
        "processing_p50_ms": latency.processing_p50_ms,
        "latency_p50_ms": latency.latency_p50_ms,
        "rtt_ms": rtt_ms,
        "server_ms": _server_ms(latency, rtt_ms),
        "buffer_target_ms": stats.buffer.target_ms,
        # One frame: the stream's own cadence (AudioHook sends 200 ms), at least frame_ms.
        "needed_ms": (latency.delay_p95_ms or 0.0)
        + max(limits.frame_ms, latency.interarrival_p50_ms or 0.0),
    }
    return {name: value for name, value in measured.items() if value is not None}


def _spread(latency: LatencyStats) -> float | None:
    if latency.delay_p95_ms is None or latency.delay_p50_ms is None:
        return None
    return latency.delay_p95_ms - latency.delay_p50_ms


def _server_ms(latency: LatencyStats, rtt_ms: float | None) -> float | None:
    """Delay added before the network: the sender's own processing time, or the
    end-to-end latency less the one-way network share (half the RTT)."""
    candidates = [latency.processing_p50_ms]
    if latency.latency_p50_ms is not None:
        candidates.append(latency.latency_p50_ms - (rtt_ms or 0.0) / 2)
    known = [value for value in candidates if value is not None]
    return max(known) if known else None


def _verdict(evidence: dict[str, float], limits: Thresholds) -> Verdict:
    if evidence["audio_frames"] == 0 and evidence["malformed"] == 0:
        return "no_audio"
    if evidence.get("malformed_rate", 0.0) >= limits.malformed_rate:
        return "malformed"
    if evidence["audio_frames"] < limits.min_frames or "jitter_rfc3550_ms" not in evidence:
        return "insufficient_data"
    if evidence["loss_rate"] >= limits.loss_rate:
        return "loss"
    if (
        evidence["jitter_rfc3550_ms"] >= limits.jitter_ms
        or evidence.get("delay_spread_ms", 0.0) >= limits.delay_spread_ms
    ):
        return "network_jitter"
    if evidence.get("server_ms", 0.0) >= limits.server_ms:
        return "server_delay"
    if _late_share(evidence) >= limits.late_rate:
        return "late"
    needed_ms = evidence["needed_ms"]
    excess_ms = max(limits.buffer_ratio * needed_ms, needed_ms + limits.buffer_headroom_ms)
    if evidence["buffer_target_ms"] >= excess_ms:
        return "client_buffering"
    return "healthy"


def _late_share(evidence: dict[str, float]) -> float:
    return evidence["late_rate"] + evidence["discarded_rate"]


def _summary(verdict: Verdict, evidence: dict[str, float], limits: Thresholds) -> str:
    e = evidence
    if verdict == "no_audio":
        return "No audio: not a single frame arrived on this stream."
    if verdict == "malformed":
        return (
            f"The audio could not be decoded: {e['malformed']:.0f} of "
            f"{e['malformed'] + e['audio_frames']:.0f} messages were malformed "
            f"({e['malformed_rate']:.1%}, limit {limits.malformed_rate:.0%})."
        )
    if verdict == "insufficient_data":
        return (
            f"Too little data to judge: {e['audio_frames']:.0f} audio frames received, "
            f"at least {limits.min_frames} needed."
        )
    if verdict == "late":
        return (
            f"Audio has gaps because frames arrive after their playout time: "
            f"{e['late_rate']:.1%} late and {e['discarded_rate']:.1%} dropped to catch up "
            f"(limit {limits.late_rate:.1%} together), with a buffer target of "
            f"{e['buffer_target_ms']:.0f} ms."
        )
    if verdict == "loss":
        return (
            f"Audio has gaps because of packet loss: {e['loss_rate']:.1%} of frames lost "
            f"(limit {limits.loss_rate:.1%})."
        )
    late = ""
    if _late_share(e) >= limits.late_rate:
        late = f"; {_late_share(e):.1%} of frames came too late to play"
    if verdict == "network_jitter":
        return (
            f"Audio is late because of network jitter: RFC 3550 jitter "
            f"{e['jitter_rfc3550_ms']:.1f} ms, delay p95-p50 spread "
            f"{e.get('delay_spread_ms', 0.0):.0f} ms{late}."
        )
    if verdict == "server_delay":
        return (
            f"Audio is late because of server-side delay: about {e['server_ms']:.0f} ms "
            f"is added before sending, while RFC 3550 jitter is only "
            f"{e['jitter_rfc3550_ms']:.1f} ms{late}."
        )
    if verdict == "client_buffering":
        return (
            f"Audio is late because of client buffering: the buffer targets "
            f"{e['buffer_target_ms']:.0f} ms where about {e['needed_ms']:.0f} ms "
            f"(delay p95 plus one frame) would do."
        )
    return (
        f"The stream is healthy: RFC 3550 jitter {e['jitter_rfc3550_ms']:.1f} ms, "
        f"loss {e['loss_rate']:.1%}, buffer target {e['buffer_target_ms']:.0f} ms."
    )
