"""The emulator's sans-I/O parts: impairment model, live stream schedule, audio, tokens.

No sockets and no clock: times are passed in, so every assertion is exact and repeatable.
"""

from __future__ import annotations

import base64
import math
import statistics
import wave
from dataclasses import replace
from http import HTTPStatus
from itertools import pairwise
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from jitterline.codecs import decode
from jitterline.emulator import PROFILES, ImpairmentModel, Impairments, ToneSource, WavSource
from jitterline.emulator.impairments import MALFORMED_KINDS, MAX_EXTRA_DELAY_MS
from jitterline.emulator.stream import LiveStream, Outgoing, frames_for, malformed_text
from jitterline.emulator.tokens import TokenEndpoint, TokenStore
from jitterline.errors import ConfigError, DialectError
from jitterline.frames import AudioFrame, Malformed, Message
from jitterline.protocols.appfoundry import AppFoundryDialect

FRAME_MS = 20.0


def fates(impairments: Impairments, count: int, seed: int = 0) -> list[tuple[bool, float, float]]:
    model = ImpairmentModel(impairments, seed=seed, frame_ms=FRAME_MS)
    return [
        (fate.lost, fate.processing_ms, fate.network_delay_ms)
        for fate in (model.decide(seq) for seq in range(count))
    ]


def wire_measures(impairments: Impairments, count: int, seed: int = 0) -> dict[str, float]:
    """What a receiver would measure if the network added nothing: loss, RFC 3550 jitter
    over arrivals in send-time order, relative-delay spread and server delay."""
    model = ImpairmentModel(impairments, seed=seed, frame_ms=FRAME_MS)
    arrivals: list[tuple[float, float, float]] = []
    lost = 0
    for seq in range(count):
        fate = model.decide(seq)
        if fate.lost:
            lost += 1
            continue
        capture_ms = seq * FRAME_MS
        arrivals.append((capture_ms + fate.send_offset_ms, capture_ms, fate.processing_ms))
    arrivals.sort()
    jitter = 0.0
    for (r_prev, s_prev, _), (r_next, s_next, _) in pairwise(arrivals):
        jitter += (abs((r_next - r_prev) - (s_next - s_prev)) - jitter) / 16.0
    relative = np.array([r - s for r, s, _ in arrivals])
    p50, p95 = np.percentile(relative, [50, 95])
    return {
        "loss_rate": lost / count,
        "jitter_ms": jitter,
        "spread_ms": float(p95 - p50),
        "processing_p50_ms": statistics.median(p for _, _, p in arrivals),
    }


# -- impairment model ------------------------------------------------------------------


def test_same_seed_gives_the_same_fates_whatever_else_runs_between() -> None:
    first = fates(PROFILES["congested"], 500, seed=7)
    fates(PROFILES["congested"], 300, seed=8)
    assert fates(PROFILES["congested"], 500, seed=7) == first
    assert fates(PROFILES["congested"], 500, seed=9) != first


def test_raising_loss_keeps_the_jitter_drawn_for_every_frame() -> None:
    base = fates(PROFILES["wifi"], 400)
    lossier = fates(replace(PROFILES["wifi"], loss_in_good=0.5), 400)
    assert [delay for _, _, delay in lossier] == [delay for _, _, delay in base]
    assert sum(lost for lost, _, _ in lossier) > sum(lost for lost, _, _ in base) + 100


def test_lossy_profile_loses_about_eight_percent_in_bursts() -> None:
    model = ImpairmentModel(PROFILES["lossy"], seed=3, frame_ms=FRAME_MS)
    lost = [model.decide(seq).lost for seq in range(10_000)]
    bursts = sum(1 for prev, now in zip([False, *lost], lost, strict=False) if now and not prev)
    assert 0.05 <= sum(lost) / len(lost) <= 0.11
    assert sum(lost) / bursts >= 1.8  # Gilbert-Elliott: losses come in runs, not alone
    assert PROFILES["lossy"].mean_loss_rate == pytest.approx(0.08, abs=0.005)


def test_duplicate_and_reorder_rates_follow_the_configuration() -> None:
    impairments = Impairments(duplicate_rate=0.05, reorder_rate=0.10, malformed_rate=0.02)
    model = ImpairmentModel(impairments, seed=11, frame_ms=FRAME_MS)
    decided = [model.decide(seq) for seq in range(10_000)]
    assert 0.04 <= sum(f.duplicate_after_ms is not None for f in decided) / 10_000 <= 0.06
    assert 0.085 <= sum(f.reordered for f in decided) / 10_000 <= 0.115
    assert 0.014 <= sum(f.malformed is not None for f in decided) / 10_000 <= 0.026
    assert {f.malformed for f in decided if f.malformed} == set(MALFORMED_KINDS)


def test_reordered_frame_is_held_back_one_to_three_frame_times() -> None:
    model = ImpairmentModel(
        Impairments(base_delay_ms=2.0, reorder_rate=1.0), seed=0, frame_ms=FRAME_MS
    )
    holds = {round(model.decide(seq).network_delay_ms - 2.0) for seq in range(300)}
    assert holds == {20, 40, 60}


def test_flaky_profile_disconnects_every_two_seconds_three_times() -> None:
    model = ImpairmentModel(PROFILES["flaky"], seed=0, frame_ms=FRAME_MS)
    drops = [seq for seq in range(1000) if model.decide(seq).disconnect_before]
    assert drops == [100, 200, 300]


def test_slow_server_processing_is_the_only_large_delay() -> None:
    measured = wire_measures(PROFILES["slow-server"], 2000)
    assert measured["processing_p50_ms"] == pytest.approx(300.7, abs=0.5)
    assert measured["jitter_ms"] < 5.0
    assert measured["loss_rate"] == 0.0


@pytest.mark.parametrize(
    ("profile", "verdict"),
    [
        ("clean", "healthy"),
        ("wifi", "network_jitter"),
        ("congested", "network_jitter"),
        ("lossy", "loss"),
        ("slow-server", "server_delay"),
        ("flaky", "healthy"),
    ],
)
def test_profile_lands_on_its_intended_side_of_the_diagnosis_thresholds(
    profile: str, verdict: str
) -> None:
    m = wire_measures(PROFILES[profile], 3000, seed=1)
    observed = (
        "loss"
        if m["loss_rate"] >= 0.03
        else "network_jitter"
        if m["jitter_ms"] >= 20.0 or m["spread_ms"] >= 60.0
        else "server_delay"
        if m["processing_p50_ms"] >= 150.0
        else "healthy"
    )
    assert observed == verdict, m
    assert m["loss_rate"] < {"wifi": 0.01, "congested": 0.02}.get(profile, 1.0)


def test_frames_must_be_decided_in_order() -> None:
    model = ImpairmentModel(PROFILES["clean"], seed=0, frame_ms=FRAME_MS)
    model.decide(0)
    with pytest.raises(ConfigError, match="next frame is 1"):
        model.decide(2)


@pytest.mark.parametrize(
    "changes",
    [
        {"loss_in_bad": 1.5},
        {"jitter_ms": -1.0},
        {"base_delay_ms": math.nan},
        {"reject_first_handshakes": -1},
        {"disconnect_every_s": 2.0, "disconnect_every_frames": 100},
        {"jitter_distribution": "gaussian"},
        {"duplicate_rate": True},
    ],
)
def test_invalid_impairments_are_refused_with_the_value(changes: dict[str, object]) -> None:
    with pytest.raises(ConfigError, match=next(iter(changes))):
        Impairments(**changes)  # type: ignore[arg-type]


def test_handshake_script_rejects_then_rate_limits_then_accepts() -> None:
    impairments = Impairments(reject_first_handshakes=2, rate_limit_handshakes=1)
    verdicts = [impairments.handshake_verdict(n) for n in range(1, 6)]
    assert verdicts == ["reject_401", "reject_401", "rate_limit_429", "accept", "accept"]


@settings(max_examples=60, deadline=None)
@given(
    jitter_ms=st.floats(0, 500),
    pareto=st.booleans(),
    reorder=st.floats(0, 1),
    seed=st.integers(0, 2**32),
)
def test_every_delay_stays_within_its_caps(
    jitter_ms: float, pareto: bool, reorder: float, seed: int
) -> None:
    impairments = Impairments(
        base_delay_ms=10.0,
        jitter_ms=jitter_ms,
        jitter_distribution="pareto" if pareto else "exponential",
        reorder_rate=reorder,
    )
    model = ImpairmentModel(impairments, seed=seed, frame_ms=FRAME_MS)
    for seq in range(50):
        delay = model.decide(seq).network_delay_ms
        assert 10.0 <= delay <= 10.0 + MAX_EXTRA_DELAY_MS + 3 * FRAME_MS


# -- live stream schedule ---------------------------------------------------------------


def make_stream(impairments: Impairments, total_frames: int | None = 50) -> LiveStream:
    model = ImpairmentModel(impairments, seed=5, frame_ms=FRAME_MS)
    audio = ToneSource().frames(sample_rate=8000, frame_ms=FRAME_MS)
    return LiveStream(model, audio, codec="PCMU", sample_rate=8000, total_frames=total_frames)


def drain(stream: LiveStream, step_s: float = 0.005, until_s: float = 10.0) -> list[Outgoing]:
    stream.start(100.0, 1_700_000_000.0)
    released: list[Outgoing] = []
    now = 100.0
    while not stream.finished and now < 100.0 + until_s:
        released.extend(stream.advance(now))
        now += step_s
    return released


def parse(text: str) -> AudioFrame:
    """The one frame ``text`` carries; ``DialectError`` when the dialect refuses it."""
    dialect = AppFoundryDialect(role="client", session_id="s", wall_clock=lambda: 0.0)
    (event,) = dialect.receive(Message(text, arrival_s=0.0))
    if isinstance(event, Malformed):
        raise DialectError(event.detail)
    assert isinstance(event, AudioFrame)
    return event


def test_jittery_stream_releases_in_send_time_order_so_frames_overtake() -> None:
    released = drain(make_stream(PROFILES["wifi"]))
    frames = [item for item in released if item.kind == "frame"]
    assert [item.due_s for item in released] == sorted(item.due_s for item in released)
    seqs = [item.seq for item in frames]
    assert seqs != sorted(seqs)
    assert sorted(seqs) == [s for s in range(50) if s in seqs]


def test_envelope_minus_capture_timestamp_is_the_processing_time() -> None:
    released = drain(make_stream(PROFILES["slow-server"]))
    frame = parse(next(item.text for item in released if item.kind == "frame"))
    assert frame.sent_wall_s is not None and frame.capture_wall_s is not None
    assert frame.sent_wall_s - frame.capture_wall_s == pytest.approx(0.3, abs=0.01)
    assert frame.capture_wall_s == pytest.approx(1_700_000_000.0 + frame.seq * 0.02)
    assert frame.codec == "PCMU" and len(frame.payload) == 160


def test_nothing_is_captured_before_the_stream_starts() -> None:
    stream = make_stream(PROFILES["clean"])
    assert stream.advance(1e9) == [] and stream.next_due_s() is None
    assert stream.frames_generated == 0


def test_stream_of_fixed_length_finishes_after_its_last_frame() -> None:
    stream = make_stream(PROFILES["clean"], total_frames=frames_for(0.5, FRAME_MS))
    released = drain(stream)
    assert [item.seq for item in released] == list(range(25))
    assert stream.finished and stream.frames_generated == 25 and stream.in_flight == 0
    assert stream.next_due_s() is None


def test_lost_frames_are_generated_but_never_released() -> None:
    stream = make_stream(replace(PROFILES["clean"], loss_in_good=0.3), total_frames=200)
    released = drain(stream)
    assert stream.frames_lost > 30
    assert len(released) + stream.frames_lost == stream.frames_generated == 200


def test_malformed_message_precedes_its_frame_and_the_parser_rejects_it() -> None:
    released = drain(make_stream(Impairments(malformed_rate=1.0), total_frames=8))
    kinds = [item.kind for item in released]
    assert kinds == ["malformed", "frame"] * 8
    for item in released[::2]:
        with pytest.raises(DialectError):
            parse(item.text)


@pytest.mark.parametrize("kind", MALFORMED_KINDS)
def test_each_malformed_kind_breaks_a_valid_chunk(kind: str) -> None:
    (item,) = [x for x in drain(make_stream(PROFILES["clean"], 1)) if x.kind == "frame"]
    parse(item.text)
    with pytest.raises(DialectError):
        parse(malformed_text(kind, item.text))  # type: ignore[arg-type]


def test_duplicate_copy_follows_within_one_frame_time() -> None:
    released = drain(make_stream(Impairments(duplicate_rate=1.0), total_frames=5))
    firsts = {item.seq: item for item in released if item.kind == "frame"}
    for dup in (item for item in released if item.kind == "duplicate"):
        assert dup.text == firsts[dup.seq].text
        assert 0.0 <= dup.due_s - firsts[dup.seq].due_s <= FRAME_MS / 1000.0


def test_paused_stream_resumes_with_the_next_frame_as_much_later_as_the_pause_lasted() -> None:
    """offline="pause": frames released but not delivered go back; after the pause the
    sequence and the capture timestamps carry on where they stopped."""
    stream = make_stream(PROFILES["clean"], total_frames=20)
    stream.start(100.0, 1_700_000_000.0)
    before = stream.advance(100.105)  # frames 0..5 captured, 0..4 sent (1 ms network)
    delivered, unsent = before[:3], before[3:]
    stream.pause(100.105, unsent)
    stream.pause(100.5)  # pausing again keeps the first time

    assert stream.paused and stream.next_due_s() is None
    assert stream.advance(1e9) == [] and stream.frames_generated == 6
    stream.resume(102.105)  # away for 2 s
    assert not stream.paused
    after: list[Outgoing] = []
    now = 102.105
    while not stream.finished and now < 110.0:
        after.extend(stream.advance(now))
        now += 0.005

    assert [item.seq for item in delivered + after] == list(range(20))
    for item in after:
        assert item.due_s == pytest.approx(100.0 + item.seq * 0.02 + 0.001 + 2.0)
        frame = parse(item.text)
        assert frame.capture_wall_s == pytest.approx(1_700_000_000.0 + item.seq * 0.02)
    stream.resume(120.0)  # not paused: nothing moves
    assert stream.finished


def test_pausing_a_stream_that_has_not_started_is_refused() -> None:
    with pytest.raises(ConfigError, match="not started"):
        make_stream(PROFILES["clean"]).pause(0.0)


def test_offline_mode_must_be_skip_or_pause() -> None:
    assert PROFILES["flaky-pause"].offline == "pause"
    assert replace(PROFILES["flaky-pause"], offline="skip") == PROFILES["flaky"]
    with pytest.raises(ConfigError, match="offline='wait'"):
        Impairments(offline="wait")  # type: ignore[arg-type]


# -- audio sources ----------------------------------------------------------------------


def test_tone_frames_join_without_a_phase_jump() -> None:
    frames = ToneSource(freq_hz=440.0, amplitude=0.5).frames(sample_rate=8000, frame_ms=20.0)
    chunks = [next(frames) for _ in range(10)]
    expected = np.rint(0.5 * 32767 * np.sin(2 * np.pi * 440.0 * np.arange(1600) / 8000))
    assert np.array_equal(np.concatenate(chunks), expected.astype(np.int16))
    assert not chunks[-1].flags.writeable


def write_wav(path: Path, samples: np.ndarray, *, rate: int, channels: int) -> Path:
    with wave.open(str(path), "wb") as wav:
        wav.setnchannels(channels)
        wav.setsampwidth(2)
        wav.setframerate(rate)
        wav.writeframes(samples.astype("<i2").tobytes())
    return path


def test_stereo_wav_is_mixed_to_mono_and_loops_at_its_end(tmp_path: Path) -> None:
    left = np.arange(100, dtype=np.int16)
    stereo = np.stack([left, left + 10], axis=1).reshape(-1)
    source = WavSource(write_wav(tmp_path / "s.wav", stereo, rate=8000, channels=2))
    frames = source.frames(sample_rate=8000, frame_ms=20.0)
    first, second = next(frames), next(frames)
    assert np.array_equal(first[:100], left + 5)
    assert np.array_equal(first[100:], left[:60] + 5)
    assert np.array_equal(second[:40], left[60:] + 5)


def test_wav_at_another_rate_is_refused_not_resampled(tmp_path: Path) -> None:
    source = WavSource(write_wav(tmp_path / "r.wav", np.zeros(10), rate=16000, channels=1))
    with pytest.raises(ConfigError, match="16000 Hz"):
        source.frames(sample_rate=8000, frame_ms=20.0)


def test_eight_bit_wav_is_refused_when_configured(tmp_path: Path) -> None:
    path = tmp_path / "b.wav"
    with wave.open(str(path), "wb") as wav:
        wav.setnchannels(1)
        wav.setsampwidth(1)
        wav.setframerate(8000)
        wav.writeframes(bytes(10))
    with pytest.raises(ConfigError, match="8-bit"):
        WavSource(path)


def test_stream_carries_the_wav_samples(tmp_path: Path) -> None:
    samples = (np.arange(320) * 50).astype(np.int16)
    source = WavSource(write_wav(tmp_path / "w.wav", samples, rate=8000, channels=1))
    model = ImpairmentModel(PROFILES["clean"], seed=0, frame_ms=FRAME_MS)
    stream = LiveStream(
        model, source.frames(sample_rate=8000, frame_ms=20.0), codec="L16", sample_rate=8000
    )
    stream.start(0.0, 1_700_000_000.0)
    texts = [item.text for item in stream.advance(0.05)]
    assert np.array_equal(decode(parse(texts[1]).payload, "L16"), samples[160:])


# -- tokens -----------------------------------------------------------------------------


class FakeClock:
    def __init__(self) -> None:
        self.now_s = 0.0

    def __call__(self) -> float:
        return self.now_s


def basic(user: str, password: str) -> str:
    return "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()


def test_token_expires_after_its_lifetime() -> None:
    clock = FakeClock()
    store = TokenStore(lifetime_s=60.0, clock=clock)
    token = store.issue()
    clock.now_s = 59.9
    assert store.is_valid(token) and not store.is_valid(token + "x")
    clock.now_s = 60.0
    assert not store.is_valid(token)


def test_token_store_forgets_the_oldest_beyond_its_bound() -> None:
    store = TokenStore(lifetime_s=60.0, clock=FakeClock(), max_tokens=3)
    tokens = [store.issue() for _ in range(4)]
    assert [store.is_valid(t) for t in tokens] == [False, True, True, True]


@pytest.mark.parametrize(
    ("authorization", "body", "status", "error"),
    [
        (basic("id", "secret"), b"grant_type=client_credentials", HTTPStatus.OK, None),
        (basic("id", "wrong"), b"grant_type=client_credentials", 401, "invalid_client"),
        (basic("other", "secret"), b"grant_type=client_credentials", 401, "invalid_client"),
        ("Bearer abc", b"grant_type=client_credentials", 401, "invalid_client"),
        (None, b"grant_type=client_credentials", 401, "invalid_client"),
        (basic("id", "secret"), b"grant_type=password", 400, "unsupported_grant_type"),
        (basic("id", "secret"), b"", 400, "invalid_request"),
    ],
)
def test_token_request_answers_per_rfc_6749(
    authorization: str | None, body: bytes, status: int, error: str | None
) -> None:
    store = TokenStore(lifetime_s=300.0, clock=FakeClock())
    endpoint = TokenEndpoint(store, client_id="id", client_secret="secret")
    got_status, document = endpoint.answer(
        authorization, "application/x-www-form-urlencoded", body
    )
    assert got_status == status
    assert document.get("error") == error
    if error is None:
        assert document["token_type"] == "bearer" and document["expires_in"] == 300
        assert store.is_valid(document["access_token"])
    assert (endpoint.requests, endpoint.issued) == (1, 1 if error is None else 0)


def test_token_endpoint_repr_has_no_secret() -> None:
    endpoint = TokenEndpoint(
        TokenStore(lifetime_s=1.0, clock=FakeClock()), client_id="id", client_secret="s3cr3t"
    )
    assert "s3cr3t" not in repr(endpoint)
