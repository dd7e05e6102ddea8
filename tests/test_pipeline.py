"""The whole chain on virtual time: exact counters for a scripted network, bit-for-bit
repeatability, custom operators, and plugin sinks (registered, entry-point, raising)."""

from __future__ import annotations

import itertools
import sys
import textwrap
from collections.abc import Callable, Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
import reactivex
from hypothesis import given, settings
from hypothesis import strategies as st
from reactivex import Observable
from reactivex import operators as ops
from reactivex.notification import OnNext
from reactivex.testing import ReactiveTest, TestScheduler

from jitter_testkit import LOGGED_POLICY, TargetLog, first_real_after, wait_ms
from jitterline import (
    Alert,
    AudioFrame,
    Diagnosis,
    Message,
    PipelineConfig,
    PluginHost,
    Stats,
    build_pipeline,
    hookimpl,
    stages,
)
from jitterline.frames import ArrivalMeasure, ConnectionEvent, Event, StreamInfo
from jitterline.protocols import DialectFactory, Role, twilio
from jitterline.protocols.appfoundry import AppFoundryDialect, audio_chunk_message

START_S = 1.0
SUBSCRIBE_S = 0.5
FRAME_S = 0.02
PCMU_SILENCE_20MS = b"\x7f" * 160
FIXED_60 = PipelineConfig(buffer_policy="fixed", buffer_ms=60.0)


def chunk(seq: int, *, media_seq: int | None = None) -> str:
    """Frame ``seq``, captured at slot ``media_seq`` (default ``seq``) of the sender's clock."""
    capture = 1_700_000_000.0 + (seq if media_seq is None else media_seq) * FRAME_S
    return audio_chunk_message(
        PCMU_SILENCE_20MS, seq=seq, capture_wall_s=capture, sent_wall_s=capture, codec="PCMU"
    )


def scripted_network() -> list[tuple[float, str]]:
    """50 frames, 20 ms apart, through a network that reorders 10/11, duplicates 20, loses
    the burst 30-33, delays 40 by 100 ms, and injects one malformed message."""
    arrivals = [
        (START_S + seq * FRAME_S, chunk(seq)) for seq in range(50) if seq not in range(30, 34)
    ]
    arrivals = [(t, m) for t, m in arrivals if '"seq":10,' not in m and '"seq":40,' not in m]
    arrivals += [
        (START_S + 11 * FRAME_S + 0.005, chunk(10)),  # after 11: reordered, still in time
        (START_S + 20 * FRAME_S + 0.01, chunk(20)),  # duplicate
        (START_S + 40 * FRAME_S + 0.1, chunk(40)),  # after its slot: late
        (START_S + 25 * FRAME_S + 0.001, '{"type":"audio_chunk","payload":{"audio":"@@"}}'),
    ]
    return sorted(arrivals, key=lambda item: item[0])


def run(
    arrivals: list[tuple[float, str]] | list[tuple[float, str | ConnectionEvent]],
    end_s: float,
    *,
    host: PluginHost | None = None,
    config: PipelineConfig = FIXED_60,
    **kwargs: Any,
) -> list[tuple[float, AudioFrame | Stats]]:
    scheduler = TestScheduler()
    # The stubs say int ticks; TestScheduler takes float seconds, which 20 ms frames need.
    records = [
        ReactiveTest.on_next(t, Message(item, arrival_s=t) if isinstance(item, str) else item)  # type: ignore[arg-type]
        for t, item in arrivals
    ]
    source = scheduler.create_hot_observable(*records, ReactiveTest.on_completed(end_s))  # type: ignore[arg-type]
    host = host or PluginHost(load_entrypoints=False)

    def create() -> Observable[AudioFrame | Stats]:
        return build_pipeline(
            source, scheduler=scheduler, config=config, host=host, **kwargs
        ).output

    # TestScheduler treats 0 as "use the default" (100/200/1000), hence 0.25 and 0.5.
    observer = scheduler.start(create, created=0.25, subscribed=SUBSCRIBE_S, disposed=end_s + 1)
    return [(m.time, m.value.value) for m in observer.messages if isinstance(m.value, OnNext)]


def final_stats(output: list[tuple[float, AudioFrame | Stats]]) -> Stats:
    stats = [item for _, item in output if isinstance(item, Stats)]
    return stats[-1]


def played(output: list[tuple[float, AudioFrame | Stats]]) -> list[AudioFrame]:
    return [item for _, item in output if isinstance(item, AudioFrame)]


def test_scripted_network_gives_exact_counters() -> None:
    output = run(scripted_network(), end_s=2.0)
    counts = final_stats(output).frames

    assert counts.received == 48  # 46 distinct frames + 1 duplicate + 1 malformed
    assert counts.played == 43  # slots 0..47, less the 4-frame burst and late seq 40
    assert counts.late == 1
    assert counts.duplicate == 1
    assert counts.overflow == 0
    assert counts.malformed == 1
    assert counts.unplayed == 2  # seqs 48 and 49 were still buffered at the end
    assert counts.lost == 4  # 30..33 never arrived; 40 arrived, late
    assert counts.concealed == 5  # 30..33 and 40
    assert counts.reordered == 2  # 10 after 11, and late 40 after 45
    assert counts.balanced


def test_frames_leave_in_order_at_their_slot_on_virtual_time() -> None:
    frames = played(run(scripted_network(), end_s=2.0))

    assert [f.seq for f in frames] == list(range(48))
    assert [f.seq for f in frames if f.concealed] == [30, 31, 32, 33, 40]
    for frame in frames:
        assert frame.playout_s == pytest.approx(START_S + 0.06 + frame.seq * FRAME_S)
        assert frame.samples is not None and len(frame.samples) == 160


def test_same_input_on_virtual_time_gives_identical_output() -> None:
    first = run(scripted_network(), end_s=2.0)
    second = run(scripted_network(), end_s=2.0)

    assert first == second
    assert [f.samples.tobytes() for f in played(first) if f.samples is not None] == [
        f.samples.tobytes() for f in played(second) if f.samples is not None
    ]


def test_snapshots_arrive_once_a_second_from_the_first_frame_and_last() -> None:
    output = run(scripted_network(), end_s=2.2)
    times = [t for t, item in output if isinstance(item, Stats)]

    assert times == [START_S + 1.0, 2.2]  # the channel's chain starts with its first frame
    assert isinstance(output[-1][1], Stats)


def test_a_custom_stage_composed_into_the_chain_sees_every_decoded_frame() -> None:
    seen: list[int] = []
    host = PluginHost()

    def spy(frame: AudioFrame) -> AudioFrame:
        seen.append(frame.seq)
        return frame

    def chain(channel: str) -> Callable[[Observable[Any]], Observable[Any]]:
        return reactivex.compose(
            stages.snapshots(FIXED_60),
            stages.map_frames(spy),  # our own stage, before the jitter buffer
            stages.feedback_loop(
                lambda targets: stages.jitter_buffer(FIXED_60, targets=targets),
                stages.latency_window(FIXED_60),
                stages.adjust(FIXED_60, host.policies),
            ),
            stages.stats(),
            stages.sinks(host, channel=channel),
        )

    counts = final_stats(run(scripted_network(), end_s=2.0, host=host, channel_chain=chain))

    assert len(seen) == 47  # 46 distinct + the duplicate; the malformed one never decodes
    assert seen.index(11) < seen.index(10)
    assert counts.frames.played == 43


def test_the_adjusters_targets_flow_back_into_the_buffer_as_an_observable() -> None:
    """Replace the adjuster by a stage that asks for 200 ms from the 10th arrival on: the
    buffer glides its slots later (5 ms per slot), which only the feedback can cause."""
    host = PluginHost()

    def late_adjuster(source: Observable[Any]) -> Observable[Any]:
        arrivals = [0]

        def decide(item: Any) -> Any:
            if isinstance(item, ArrivalMeasure):
                arrivals[0] += 1
                return stages.TargetDelay(200.0 if arrivals[0] >= 10 else 60.0, item.arrival_s)
            return item

        return source.pipe(ops.map(decide))

    def chain(channel: str) -> Callable[[Observable[Any]], Observable[Any]]:
        return reactivex.compose(
            stages.snapshots(FIXED_60),
            stages.feedback_loop(
                lambda targets: stages.jitter_buffer(FIXED_60, targets=targets),
                stages.latency_window(FIXED_60),
                late_adjuster,
            ),
            stages.stats(),
            stages.sinks(host, channel=channel),
        )

    frames = played(run(scripted_network(), end_s=2.0, host=host, channel_chain=chain))
    offsets = [f.playout_s - (START_S + f.seq * FRAME_S) for f in frames if f.playout_s]

    assert offsets[0] == pytest.approx(0.06)
    assert offsets[-1] > 0.15  # glided toward 200 ms
    assert all(b >= a - 1e-9 for a, b in itertools.pairwise(offsets))


Scenario = tuple[list[tuple[float, str | ConnectionEvent]], float]


def on_time(seqs: range, *, held_s: float = 0.0) -> list[tuple[float, str | ConnectionEvent]]:
    return [(START_S + seq * FRAME_S + held_s, chunk(seq)) for seq in seqs]


def reconnect_resumed(held_s: float) -> Scenario:
    """The connection drops at 2 s; the server waits and, ``held_s`` later, resumes the
    sequence (and its media clock) where it stopped. Under the buffer's ``outage_ms`` only
    the reconnect itself says that the frames are not late."""
    back_s = START_S + 100 * FRAME_S + held_s - 0.01
    return [
        (START_S - 0.1, ConnectionEvent("connected", START_S - 0.1, attempt=1)),
        *on_time(range(100)),
        (START_S + 2.0, ConnectionEvent("disconnected", START_S + 2.0, attempt=1)),
        (back_s, ConnectionEvent("connected", back_s, attempt=2)),
        *on_time(range(100, 300), held_s=held_s),
    ], back_s


def sequence_restart() -> Scenario:
    """At 4 s the sender numbers from 0 again; its clock runs on."""
    restart_s = START_S + 200 * FRAME_S
    restarted = [
        (START_S + (200 + seq) * FRAME_S, chunk(seq, media_seq=200 + seq)) for seq in range(100)
    ]
    return [*on_time(range(200)), *restarted], restart_s


def outage() -> Scenario:
    """A handover: what was sent from 2 s to 4 s is held and arrives in one burst at 4 s."""
    burst_s = START_S + 200 * FRAME_S
    burst = [(burst_s + (seq - 100) * 0.0005, chunk(seq)) for seq in range(100, 200)]
    return [*on_time(range(100)), *burst, *on_time(range(200, 300))], burst_s


@pytest.mark.parametrize(
    "scenario",
    [lambda: reconnect_resumed(0.3), lambda: reconnect_resumed(3.0), sequence_restart, outage],
    ids=["reconnect-resumed-0.3s", "reconnect-resumed-3s", "sequence-restart", "outage"],
)
def test_after_a_discontinuity_the_first_frame_plays_within_its_target_plus_a_frame(
    scenario: Callable[[], Scenario],
) -> None:
    """The whole chain with the default policy: whatever the kind of discontinuity, audio is
    back at once (the buffer re-anchors), not after seconds of frames counted late."""
    log = TargetLog()
    host = PluginHost(load_entrypoints=False, plugins=[log])
    config = PipelineConfig(buffer_policy=LOGGED_POLICY)
    arrivals, discontinuity_s = scenario()
    end_s = max(t for t, _ in arrivals) + 1.0

    output = run(arrivals, end_s=end_s, host=host, config=config)

    first = first_real_after(played(output), discontinuity_s)
    assert wait_ms(first) <= log.met_ms(first, config) + FRAME_S * 1000
    counts = final_stats(output).frames
    assert counts.late <= 1  # at most the frame that found its slot gone (the outage's)
    assert counts.balanced


class Recorder:
    """A sink as a plugin author writes one."""

    def __init__(self) -> None:
        self.frames: list[int] = []
        self.verdicts: list[str] = []
        self.closed: list[Stats] = []

    @hookimpl
    def jitterline_frame_played(self, frame: AudioFrame, stream: StreamInfo) -> None:
        assert stream.stream_id == frame.stream_id
        self.frames.append(frame.seq)

    @hookimpl
    def jitterline_stats(self, diagnosis: Diagnosis) -> None:
        self.verdicts.append(diagnosis.verdict)

    @hookimpl
    def jitterline_stream_closed(self, stats: Stats) -> None:
        self.closed.append(stats)


class Exploding:
    @hookimpl
    def jitterline_frame_played(self, frame: AudioFrame) -> None:
        raise RuntimeError(f"sink broke on frame {frame.seq}")


def test_a_registered_plugin_receives_frames_stats_and_the_final_snapshot() -> None:
    recorder = Recorder()
    host = PluginHost(load_entrypoints=False, plugins=[recorder])

    output = run(scripted_network(), end_s=2.01, host=host)

    assert recorder.frames == list(range(48))
    assert len(recorder.verdicts) == 2
    assert recorder.closed == [final_stats(output)]


def test_a_raising_plugin_is_counted_and_the_stream_goes_on() -> None:
    recorder = Recorder()
    host = PluginHost(load_entrypoints=False, plugins=[recorder, Exploding()])

    output = run(scripted_network(), end_s=2.0, host=host)

    assert recorder.frames == list(range(48))
    assert final_stats(output).frames.played == 43
    [(plugin_failures)] = [n for (_, hook), n in host.failures.items() if hook.endswith("played")]
    assert plugin_failures == 48


@pytest.fixture
def installed_plugin(tmp_path: Path) -> Iterator[str]:
    """A real distribution on sys.path with a ``jitterline`` entry point, as pip would
    leave it: importlib.metadata finds it exactly like an installed plugin."""
    module = tmp_path / "probe_sink.py"
    module.write_text(
        textwrap.dedent(
            """
            from jitterline import hookimpl

            class ProbeSink:
                def __init__(self):
                    self.frames = 0
                    self.snapshots = 0

                @hookimpl
                def jitterline_frame_played(self, frame):
                    self.frames += 1

                @hookimpl
                def jitterline_stats(self, stats):
                    self.snapshots += 1

            plugin = ProbeSink()
            """
        )
    )
    dist = tmp_path / "probe_sink-1.0.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: probe-sink\nVersion: 1.0\n")
    (dist / "entry_points.txt").write_text("[jitterline]\nprobe_sink = probe_sink:plugin\n")
    sys.path.insert(0, str(tmp_path))
    try:
        yield "probe_sink"
    finally:
        sys.path.remove(str(tmp_path))
        sys.modules.pop("probe_sink", None)


def test_an_entry_point_plugin_receives_frames_and_stats(installed_plugin: str) -> None:
    host = PluginHost(load_entrypoints=True)
    probe = host.pm.get_plugin(installed_plugin)
    assert probe is not None

    run(scripted_network(), end_s=2.01, host=host)

    assert probe.frames == 48
    assert probe.snapshots == 2
    assert installed_plugin in {info.name for info in host.info() if info.enabled}


def test_a_library_host_loads_no_installed_plugin_unless_asked(installed_plugin: str) -> None:
    assert PluginHost().pm.get_plugin(installed_plugin) is None


def test_a_disabled_entry_point_plugin_is_listed_but_not_loaded(installed_plugin: str) -> None:
    host = PluginHost(load_entrypoints=True, disabled=[installed_plugin])

    assert host.pm.get_plugin(installed_plugin) is None
    assert installed_plugin in {info.name for info in host.info() if not info.enabled}


arrival_scripts = st.lists(
    st.tuples(
        st.integers(min_value=0, max_value=40),  # seq
        st.floats(min_value=0.0, max_value=0.3),  # extra network delay, s
        st.booleans(),  # malformed instead
    ),
    max_size=60,
)


@settings(max_examples=60, deadline=None)
@given(arrival_scripts)
def test_any_arrival_order_keeps_the_accounting_identity(
    script: list[tuple[int, float, bool]],
) -> None:
    arrivals = sorted(
        (
            round(START_S + seq * FRAME_S + delay, 6),
            '{"type":"audio_chunk"' if bad else chunk(seq),
        )
        for seq, delay, bad in script
    )

    counts = final_stats(run(arrivals, end_s=2.5)).frames

    assert counts.balanced
    assert counts.received == len(script)
    assert counts.malformed == sum(bad for _, _, bad in script)


class AlertRecorder:
    def __init__(self) -> None:
        self.alerts: list[tuple[str, str]] = []

    @hookimpl
    def jitterline_alert(self, alert: Alert) -> None:
        self.alerts.append((alert.kind, alert.severity))


def test_a_verdict_change_raises_one_alert() -> None:
    recorder = Recorder()
    alerts = AlertRecorder()
    host = PluginHost(load_entrypoints=False, plugins=[recorder, alerts])

    run(scripted_network(), end_s=2.01, host=host, config=replace(FIXED_60, stats_every_s=0.5))

    assert recorder.verdicts == ["healthy", "loss", "loss"]  # 4 of 48 slots lost by 2 s
    assert alerts.alerts == [("verdict_changed", "warning")]


class BrittleDialect(AppFoundryDialect):
    """A third-party dialect with bugs: it raises KeyError on one message (its contract
    says never), names a codec nobody registered on another, and gives a third no
    duration; the rest it hands to the appfoundry protocol object."""

    name = "brittle"

    def __init__(self, role: Role = "client") -> None:
        super().__init__(role=role, wall_clock=lambda: 0.0)

    def receive(self, message: Message) -> list[Event]:
        if message.data == "boom":
            raise KeyError("payload")
        events = super().receive(message)
        if message.data == chunk(5):
            return [replace(e, codec="OPUS") if isinstance(e, AudioFrame) else e for e in events]
        if message.data == chunk(7):
            return [
                replace(e, duration_ms=0.0) if isinstance(e, AudioFrame) else e for e in events
            ]
        return events


class BrittlePlugin:
    @hookimpl
    def jitterline_register_dialects(
        self, register: Callable[[str, DialectFactory], None]
    ) -> None:
        register("brittle", BrittleDialect)


def test_a_plugin_dialect_that_breaks_its_contract_costs_one_message_each() -> None:
    host = PluginHost(load_entrypoints=False, plugins=[BrittlePlugin()])
    arrivals = [(START_S + seq * FRAME_S, chunk(seq)) for seq in range(20)]
    arrivals.append((START_S + 0.101, "boom"))
    config = PipelineConfig(dialect="brittle", buffer_policy="fixed", buffer_ms=60.0)

    # The stream ends just after seq 19's slot (1.0 + 0.06 + 19 * 0.02 = 1.44 s).
    counts = final_stats(run(sorted(arrivals), end_s=1.45, host=host, config=config)).frames

    assert counts.malformed == 3  # the KeyError, the unknown OPUS codec, the 0 ms frame
    assert counts.played == 18
    assert counts.concealed == counts.lost == 2  # the slots of seqs 5 and 7
    assert counts.balanced


def test_twilio_both_tracks_get_a_buffer_each_and_are_never_mixed() -> None:
    """Both tracks number their chunks from 1: in one buffer they would be each other's
    duplicates. Per channel, each plays all its 20 frames with its own samples."""
    sid = "MZ0001"
    inbound = b"\x10" * 160
    outbound = b"\x90" * 160
    arrivals = [(0.6, twilio.connected_message())]
    arrivals.append((0.7, twilio.start_message(sid, "CA1", tracks=("inbound", "outbound"))))
    for n in range(20):
        at = START_S + n * FRAME_S
        for offset, track, payload in ((0.0, "inbound", inbound), (0.001, "outbound", outbound)):
            text = twilio.inbound_media_message(
                sid, n + 1, n * 20, payload, 3 + 2 * n, track=track
            )
            arrivals.append((round(at + offset, 6), text))
    config = replace(FIXED_60, dialect="twilio")
    output = run(sorted(arrivals), end_s=2.0, config=config, role="server")

    finals = {s.channel: s for _, s in output if isinstance(s, Stats)}
    assert set(finals) == {"inbound", "outbound"}
    for channel, payload in (("inbound", inbound), ("outbound", outbound)):
        counts = finals[channel].frames
        assert counts.received == counts.played == 20
        assert counts.duplicate == counts.late == 0
        frames = [f for f in played(output) if f.channel == channel and not f.concealed]
        assert {f.payload for f in frames} == {payload}
        assert finals[channel].stream_id == sid
