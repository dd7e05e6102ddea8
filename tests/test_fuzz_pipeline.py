"""The whole pipeline fuzzed on virtual time (issue 12, "Fuzzing"): ``build_pipeline`` on a
``HistoricalScheduler`` fed arbitrary message sequences of every dialect in both roles
(healthy conversations, mutated), interleaved with the transport's events, at arrival
times that may jump back.

Whatever comes in: no error reaches the output observable (a stage never lets an
exception escape), the pipeline completes, every channel's final counts balance, the frames
that came out are the final counts' played and concealed frames, and each channel's
playout times never go backwards.
"""

from __future__ import annotations

from datetime import datetime, timedelta, timezone
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from reactivex.scheduler import HistoricalScheduler
from reactivex.subject import Subject

from fuzz_testkit import examples
from jitterline import (
    AudioFrame,
    ConnectionEvent,
    Message,
    PipelineConfig,
    PluginHost,
    Stats,
    build_pipeline,
)
from jitterline.errors import ConfigError
from jitterline.frames import ConnectionStats
from jitterline.protocols import Role
from test_fuzz_protocols import DIALECTS, TRANSCRIPTS, mutated

EPOCH = datetime(1970, 1, 1, tzinfo=timezone.utc)

CLIENT: Role = "client"
SERVER: Role = "server"
ROLES: list[tuple[str, Role]] = [("appfoundry", CLIENT), *((name, SERVER) for name in DIALECTS)]
"""Every dialect's server role, and appfoundry's client role. The client objects of
Twilio, AudioHook and Audio Connector need the ids they will announce (``stream_sid``,
``conversation_id`` ...), which ``build_pipeline`` (a receiver) has no way to give, so
such a pipeline fails at subscription with that ``ConfigError``;
``test_a_client_role_pipeline_that_cannot_be_built_fails_with_config_error`` pins it."""


@st.composite
def configs(draw: st.DrawFn) -> PipelineConfig:
    max_buffer_ms = draw(st.just(1000.0) | st.floats(20.0, 10_000.0))
    return PipelineConfig(
        buffer_policy=draw(st.sampled_from(["adaptive", "fixed", "threshold"])),
        buffer_ms=draw(st.none() | st.floats(20.0, max_buffer_ms)),
        max_buffer_ms=max_buffer_ms,
        capacity_frames=draw(st.integers(1, 64)),
        window_frames=draw(st.integers(1, 100)),
        conceal=draw(st.sampled_from(["silence", "repeat"])),
        stats_every_s=draw(st.floats(0.05, 2.0)),
    )


TRANSPORT = st.one_of(
    st.builds(
        ConnectionEvent,
        kind=st.sampled_from(["connected", "disconnected", "pong", "reconnect_scheduled"]),
        at_s=st.just(0.0),
        rtt_ms=st.none() | st.floats(0.0, 5000.0),
    ),
    st.builds(ConnectionStats, attempts=st.integers(0, 5), rtt_ms=st.none() | st.floats(0, 99)),
)


@st.composite
def traffic(draw: st.DrawFn) -> tuple[str, Role, list[tuple[float, Any]]]:
    """A dialect, our role in it, and what arrives when: messages (some with arrival
    stamps off the scheduler's time) and transport events."""
    name, role = draw(st.sampled_from(ROLES))
    messages = draw(mutated(TRANSCRIPTS[(name, role)]))
    timeline: list[tuple[float, Any]] = []
    now_s = 1.0
    for data in messages:
        now_s += draw(st.sampled_from([0.0, 0.005, 0.02, 0.02, 0.02, 0.2, 3.0]))
        stamp_s = now_s + draw(st.sampled_from([0.0, 0.0, 0.0, -0.5, 0.07]))
        timeline.append((now_s, Message(data, arrival_s=max(0.0, stamp_s))))
        if draw(st.integers(0, 9)) == 0:
            timeline.append((now_s, draw(TRANSPORT)))
    return name, role, timeline


def run_pipeline(
    name: str, role: Role, config: PipelineConfig, timeline: list[tuple[float, Any]]
) -> tuple[list[AudioFrame | Stats], list[Exception], list[tuple[Stats, Any]], bool]:
    scheduler = HistoricalScheduler(EPOCH)
    subject: Subject[Any] = Subject()
    pipeline = build_pipeline(
        subject,
        scheduler=scheduler,
        config=PipelineConfig(**{**_fields(config), "dialect": name}),
        host=PluginHost(load_entrypoints=False),
        role=role,
    )
    out: list[AudioFrame | Stats] = []
    errors: list[Exception] = []
    completed: list[bool] = []
    subscription = pipeline.output.subscribe(
        out.append, errors.append, lambda: completed.append(True), scheduler=scheduler
    )

    def at(seconds: float) -> datetime:
        return EPOCH + timedelta(seconds=seconds)

    def deliver(item: Any) -> Any:
        return lambda _scheduler, _state: subject.on_next(item)

    for when_s, item in timeline:
        timed = item
        if isinstance(item, ConnectionEvent):
            timed = ConnectionEvent(item.kind, when_s, rtt_ms=item.rtt_ms)
        scheduler.schedule_absolute(at(when_s), deliver(timed))
    end_s = (timeline[-1][0] if timeline else 1.0) + 1.0
    scheduler.schedule_absolute(at(end_s), lambda _s, _st: subject.on_completed())
    scheduler.advance_to(at(end_s + 5.0))
    subscription.dispose()
    return out, errors, list(pipeline.finals), bool(completed)


def _fields(config: PipelineConfig) -> dict[str, Any]:
    return {name: getattr(config, name) for name in config.__dataclass_fields__}


@settings(max_examples=examples(2.0))
@given(case=traffic(), config=configs())
def test_any_traffic_completes_with_balanced_counts_and_no_escaped_error(
    case: tuple[str, Role, list[tuple[float, Any]]], config: PipelineConfig
) -> None:
    name, role, timeline = case

    out, errors, finals, completed = run_pipeline(name, role, config, timeline)

    assert errors == []
    assert completed
    frames = [item for item in out if isinstance(item, AudioFrame)]
    for stats, _ in finals:
        assert stats.frames.balanced, stats.frames
        channel = [f for f in frames if f.channel == stats.channel]
        assert stats.frames.played == sum(not f.concealed for f in channel)
        assert stats.frames.concealed == sum(f.concealed for f in channel)
        playouts = [f.playout_s for f in channel]
        assert playouts == sorted(playouts)  # type: ignore[type-var]
    assert len(frames) == sum(s.frames.played + s.frames.concealed for s, _ in finals)


def test_a_client_role_pipeline_that_cannot_be_built_fails_with_config_error() -> None:
    """A documented error, on the output observable, not an exception from a stage."""
    for name in ("twilio", "audiohook", "audioconnector"):
        _, errors, _, _ = run_pipeline(name, "client", PipelineConfig(), [])

        assert [type(error) for error in errors] == [ConfigError], name


# -- issue 12, item 9: the buffer bound is checked where the user sets it ------------------


def test_item_9_a_max_buffer_over_the_buffers_limit_is_refused_up_front() -> None:
    with pytest.raises(ConfigError, match=r"max_buffer_ms=15000.0 is outside \[0, 10000\] ms"):
        PipelineConfig(max_buffer_ms=15_000.0)


def test_item_9_the_largest_accepted_buffer_still_counts_every_frame() -> None:
    """A policy at the 10 s limit: frames are received and accounted, never refused."""
    config = PipelineConfig(buffer_policy="fixed", buffer_ms=10_000.0, max_buffer_ms=10_000.0)
    timeline = [
        (1.0 + seq * 0.02, Message(chunk, arrival_s=1.0 + seq * 0.02))
        for seq, chunk in enumerate(
            data for data in TRANSCRIPTS[("appfoundry", "client")] if "audio_chunk" in str(data)
        )
    ]

    _, errors, finals, completed = run_pipeline("appfoundry", "client", config, timeline)

    assert errors == [] and completed
    frames = finals[0][0].frames
    assert frames.received == len(timeline) > 0
    assert frames.balanced
    assert frames.unplayed == frames.received  # 10 s later than the stream's end
