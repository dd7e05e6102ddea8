"""Players: Genesys (AudioHook, Audio Connector) and Twilio played toward a real server.

The sans-I/O parts (``SendPlan``, ``Outbox``, ``Histogram``) are tested on numbers; the
players against ``inbound_testkit.ProtocolServer`` on loopback, comparing what each side
counted, frame by frame and byte by byte.
"""

from __future__ import annotations

import asyncio
import base64
import socket
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from inbound_testkit import ProtocolServer, ServerSession
from jitterline import codecs
from jitterline.emulator import PROFILES, ImpairmentModel, Impairments, ToneSource
from jitterline.emulator.players import (
    Histogram,
    Outbox,
    Outgoing,
    PlayerOptions,
    PlayerResult,
    SendPlan,
    play,
    play_demo,
)
from jitterline.errors import ConfigError
from jitterline.protocols import signatures

SECRET = base64.b64encode(b"a client secret of 32 bytes here").decode()


def run(url: str, **options: Any) -> PlayerResult:
    return asyncio.run(play(url, **options))


def play_against(dialect: str, **options: Any) -> tuple[PlayerResult, ServerSession]:
    with ProtocolServer(dialect) as server:
        result = run(server.url, dialect=dialect, **options)
        (session,) = server.finished()
    return result, session


def assert_server_got_what_was_sent(result: PlayerResult, session: ServerSession) -> None:
    assert set(session.seqs) == set(result.channel_names)
    for sent in result.channels:
        assert bytes(session.audio[sent.channel]) == sent.audio
        assert len(session.seqs[sent.channel]) == sent.sent + sent.duplicates


# -- SendPlan, Outbox, Histogram ------------------------------------------------------------


@settings(max_examples=40, deadline=None)
@given(st.sampled_from(sorted(PROFILES)), st.integers(0, 2**32), st.booleans())
def test_departures_follow_the_model_and_never_go_backwards(
    profile: str, seed: int, duplicates: bool
) -> None:
    impairments = PROFILES[profile]
    plan = SendPlan(impairments, seed=seed, frame_ms=20.0, duplicates=duplicates)
    model = ImpairmentModel(impairments, seed=seed, frame_ms=20.0)
    last_s = 0.0
    for seq in range(200):
        departure, fate = plan.next(), model.decide(seq)
        assert departure.seq == seq
        assert departure.capture_s == pytest.approx(seq * 0.02)
        assert (departure.send_s is None) == fate.lost
        if departure.send_s is None:
            continue
        assert departure.send_s >= departure.capture_s + fate.send_offset_ms / 1000 - 1e-9
        assert departure.send_s >= last_s
        last_s = departure.send_s
        copied = duplicates and fate.duplicate_after_ms is not None
        assert (departure.duplicate_s is not None) == copied
        if departure.duplicate_s is not None:
            assert departure.duplicate_s >= departure.send_s
            last_s = departure.duplicate_s


def test_same_seed_same_plan_other_seed_other_losses() -> None:
    def lost(seed: int) -> list[int]:
        plan = SendPlan(PROFILES["lossy"], seed=seed, frame_ms=20.0, duplicates=False)
        return [d.seq for d in (plan.next() for _ in range(500)) if d.send_s is None]

    assert lost(7) == lost(7)
    assert lost(7) != lost(8)
    assert 0 < len(lost(7)) < 500


def test_outbox_releases_in_order_behind_a_late_head() -> None:
    outbox = Outbox()
    outbox.push(Outgoing(b"audio", due_s=2.0, kind="audio"))
    outbox.push(Outgoing("close", due_s=1.0))
    assert outbox.pop_due(1.5) is None  # close is due, but the audio before it is not
    assert outbox.head_due_s() == 2.0
    first, second = outbox.pop_due(2.0), outbox.pop_due(2.0)
    assert first is not None and first.data == b"audio"
    assert second is not None and second.data == "close"
    assert len(outbox) == 0


@given(st.lists(st.floats(0.0, 20_000.0), min_size=1, max_size=300), st.floats(0.01, 1.0))
def test_histogram_quantile_is_within_a_bucket_of_the_exact_one(
    values: list[float], q: float
) -> None:
    histogram = Histogram()
    for value in values:
        histogram.add(value)
    ordered = sorted(values)
    exact = ordered[max(1, -(-int(q * len(values) * 1e9) // int(1e9))) - 1]
    got = histogram.quantile_ms(q)
    assert got is not None
    width = 0.1 if exact < 100 else 1.0 if exact < 10_000 else 100.0
    assert exact - 1e-6 <= got <= exact + width + 1e-6
    assert histogram.count == len(values)


def test_histogram_merge_adds_counts_and_keeps_the_max() -> None:
    one, two = Histogram(), Histogram()
    for value in range(1, 51):
        one.add(float(value))
    for value in range(51, 101):
        two.add(float(value))
    one.merge(two)
    assert one.count == 100
    assert one.max_ms == 100.0
    assert one.quantile_ms(0.5) == 50.0
    assert one.quantile_ms(0.99) == 99.0
    assert Histogram().quantile_ms(0.5) is None


# -- options --------------------------------------------------------------------------------


def test_options_are_checked_when_built() -> None:
    with pytest.raises(ConfigError, match="dialect"):
        PlayerOptions(dialect="appfoundry")  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="no pause"):
        PlayerOptions(dialect="twilio", pause_at_s=1.0)
    with pytest.raises(ConfigError, match="probe"):
        PlayerOptions(dialect="twilio", probe=True)
    with pytest.raises(ConfigError, match="base64"):
        PlayerOptions(client_secret="not base64!", api_key="key-1")
    with pytest.raises(ConfigError, match="api_key"):
        PlayerOptions(client_secret=SECRET)
    with pytest.raises(ConfigError, match="duration_s"):
        PlayerOptions(duration_s=0.0)


def test_a_url_that_is_not_websocket_is_a_config_error_without_its_query() -> None:
    with pytest.raises(ConfigError, match="not a WebSocket URL") as caught:
        run("https://example.com/hook?token=s3cr3t", duration_s=0.2)
    assert "s3cr3t" not in str(caught.value)


def test_credentials_never_show_in_a_repr() -> None:
    options = PlayerOptions(api_key="key-1234", client_secret=SECRET, auth_token="tok-5678")
    shown = repr(options)
    assert "key-1234" not in shown
    assert SECRET not in shown
    assert "tok-5678" not in shown


# -- whole sessions against a real server ---------------------------------------------------


def test_audiohook_stereo_session_delivers_each_channel_exactly() -> None:
    result, session = play_against("audiohook", duration_s=1.0, ping_interval_s=0.3)
    assert result.opened and result.completed and not result.error
    assert result.channel_names == ("external", "internal")
    for sent in result.channels:
        assert sent.codec == "PCMU"
        assert sent.made == sent.sent == 5  # 1 s of 200 ms frames
        assert len(sent.audio) == 5 * 1600
        assert list(sent.seqs) == [0, 1, 2, 3, 4]
    assert result.channel("external").audio != result.channel("internal").audio  # two tones
    assert_server_got_what_was_sent(result, session)
    assert session.opened is not None and session.opened.channels == ("external", "internal")
    assert session.closed is not None and session.closed.reason == "end"
    assert result.close_reason == "end"
    assert len(result.rtts_ms) == session.pings >= 2
    assert result.send_lag.count == 5  # one message per frame, both channels in it


def test_default_audio_is_one_tone_per_channel_sample_for_sample() -> None:
    result, session = play_against("twilio", duration_s=1.2, tracks=("inbound", "outbound"))
    for track, freq_hz in (("inbound", 440.0), ("outbound", 660.0)):
        frames = ToneSource(freq_hz).frames(sample_rate=8000, frame_ms=20.0)
        expected = b"".join(codecs.encode(next(frames), "PCMU") for _ in range(60))
        assert bytes(session.audio[track]) == expected == result.channel(track).audio


def test_audiohook_l16_mono_offer_and_a_given_source() -> None:
    result, session = play_against(
        "audiohook",
        duration_s=0.4,
        media=[("L16", ("internal",))],
        source=ToneSource(1000.0, amplitude=0.5),
    )
    assert result.completed
    (sent,) = result.channels
    assert (sent.channel, sent.codec, sent.sent) == ("internal", "L16", 2)
    assert len(sent.audio) == 2 * 1600 * 2
    assert_server_got_what_was_sent(result, session)


def test_audioconnector_session_sends_the_external_channel_only() -> None:
    result, session = play_against(
        "audioconnector", duration_s=0.6, input_variables={"greeting": "hello"}
    )
    assert result.completed
    assert result.channel_names == ("external",)
    assert result.channel("external").sent == 3
    assert_server_got_what_was_sent(result, session)
    assert session.opened is not None
    assert session.opened.info["inputVariables"] == {"greeting": "hello"}


def test_audioconnector_bot_audio_and_events_are_counted() -> None:
    with ProtocolServer("audioconnector", script={1: "bot"}) as server:
        result = run(server.url, dialect="audioconnector", duration_s=0.6)
        server.finished()
    assert result.completed
    assert result.received["audio"] == 2  # 3200 bytes in messages of at most 1600
    assert result.received["barge_in"] == 1


def test_twilio_session_delivers_every_chunk() -> None:
    result, session = play_against("twilio", duration_s=0.5)
    assert result.opened and result.completed
    (sent,) = result.channels
    assert (sent.channel, sent.made, sent.sent) == ("inbound", 25, 25)  # 20 ms chunks
    assert session.seqs["inbound"] == list(range(25))
    assert_server_got_what_was_sent(result, session)
    assert session.closed is not None and session.closed.reason == "stop"
    assert result.send_lag.count == 25


def test_twilio_both_tracks_are_two_channels() -> None:
    result, session = play_against("twilio", duration_s=0.2, tracks=("inbound", "outbound"))
    assert result.completed
    assert result.channel_names == ("inbound", "outbound")
    assert_server_got_what_was_sent(result, session)
    assert session.seqs["outbound"] == list(range(10))


def test_pause_and_resume_stop_the_audio_in_between() -> None:
    result, session = play_against(
        "audiohook",
        duration_s=1.6,
        pause_at_s=0.5,
        pause_for_s=0.5,
        media=[("PCMU", ("external",))],
    )
    assert result.completed
    sent = result.channel("external")
    assert sent.paused >= 2  # frames captured at 0.6 s and 0.8 s (at least) while paused
    assert sent.made + sent.paused == 8
    assert_server_got_what_was_sent(result, session)
    kinds = [text for text in session.texts if '"type":"paused"' in text.replace(" ", "")]
    assert len(kinds) == 1
    assert any('"type":"resumed"' in text.replace(" ", "") for text in session.texts)
    assert session.malformed == []  # no audio reached the server while paused


def test_lossy_profile_sends_fewer_frames_and_counts_them() -> None:
    result, session = play_against("twilio", duration_s=2.0, impairments=PROFILES["lossy"], seed=3)
    assert result.completed
    sent = result.channel("inbound")
    assert sent.made == 100
    assert sent.lost > 0
    assert sent.sent + sent.lost == sent.made
    assert_server_got_what_was_sent(result, session)
    # the lost chunks show on the server as gaps in the chunk numbers
    assert session.seqs["inbound"] == list(sent.seqs)
    missing = sorted(set(range(100)) - set(session.seqs["inbound"]))
    assert len(missing) == sent.lost


def test_same_seed_same_fate_on_the_wire() -> None:
    def lost_seqs(seed: int) -> set[int]:
        result, _ = play_against(
            "twilio", duration_s=1.0, impairments=PROFILES["lossy"], seed=seed
        )
        return set(range(50)) - set(result.channel("inbound").seqs)

    assert lost_seqs(11) == lost_seqs(11)


def test_twilio_duplicates_reach_the_server_as_repeated_chunks() -> None:
    impairments = Impairments(duplicate_rate=0.3)
    result, session = play_against("twilio", duration_s=1.0, impairments=impairments)
    sent = result.channel("inbound")
    assert sent.duplicates > 0
    assert len(session.seqs["inbound"]) == sent.sent + sent.duplicates
    assert len(set(session.seqs["inbound"])) == sent.sent


def test_audiohook_loss_sends_fewer_messages_and_never_duplicates() -> None:
    impairments = Impairments(loss_in_good=0.3, duplicate_rate=0.5)
    result, session = play_against(
        "audiohook", duration_s=2.0, impairments=impairments, media=[("PCMU", ("external",))]
    )
    sent = result.channel("external")
    assert sent.lost > 0 and sent.duplicates == 0
    assert sent.sent + sent.lost == sent.made == 10
    assert_server_got_what_was_sent(result, session)


def test_server_ending_the_session_is_answered_and_stops_the_audio() -> None:
    with ProtocolServer("audiohook", script={6: "end"}) as server:
        result = run(server.url, duration_s=2.0)  # stereo: 3 messages make 6 frames
        (session,) = server.finished()
    assert result.completed and not result.error
    assert result.disconnect_reason == "completed"
    assert result.close_reason == "completed"
    sent = result.channel("external")
    assert 3 <= sent.sent < 10 and sent.paused == 0
    assert_server_got_what_was_sent(result, session)
    assert session.closed is not None and session.closed.reason == "disconnect"


def test_pause_requested_by_the_server_is_answered_and_holds_the_audio() -> None:
    with ProtocolServer("audiohook", script={2: "pause"}) as server:
        result = run(server.url, duration_s=2.0, media=[("PCMU", ("external",))])
        (session,) = server.finished()
    assert result.completed and not result.error
    sent = result.channel("external")
    assert sent.paused >= 1  # about RESUME_AFTER_S of frames
    assert sent.made + sent.paused == 10
    assert result.received.get("pause") == 1 and result.received.get("resume") == 1
    assert_server_got_what_was_sent(result, session)
    assert session.malformed == []  # nothing arrived while paused


def test_a_server_breaking_the_protocol_is_an_error_of_that_kind() -> None:
    with ProtocolServer("audiohook", script={2: "garbage"}) as server:
        result = run(server.url, duration_s=2.0)
        (session,) = server.finished()
    assert result.opened and not result.completed
    assert result.error == "bad_json"
    assert session.closed is not None and session.closed.reason == "error"


def test_probe_opens_sends_no_audio_and_closes() -> None:
    result, session = play_against("audiohook", probe=True)
    assert result.probe and result.opened and result.completed
    assert result.frames_sent == 0
    assert session.opened is not None and session.opened.probe
    assert session.seqs == {}


def test_play_demo_runs_a_profiled_session() -> None:
    with ProtocolServer("audioconnector") as server:
        result = asyncio.run(play_demo(server.url, "audioconnector", "wifi", 1, 1.6))
        server.finished()
    assert result.completed
    assert result.rtts_ms  # pings every second
    assert result.channel("external").audio == b""  # demos keep counts only


# -- upgrade headers and refusals -----------------------------------------------------------


def test_audiohook_upgrade_carries_the_genesys_headers_and_a_valid_signature() -> None:
    keys = signatures.KeySet({"key-1": base64.b64decode(SECRET)})
    with ProtocolServer("audiohook", keys=keys) as server:
        result = run(
            server.url,
            duration_s=0.2,
            api_key="key-1",
            client_secret=SECRET,
            headers={"X-Trace": "t"},
        )
        server.finished()
        (headers,) = server.upgrade_headers
    assert result.completed
    assert headers["Audiohook-Session-Id"] == result.session_id
    assert headers["X-API-KEY"] == "key-1"
    assert headers["X-Trace"] == "t"
    assert {"Audiohook-Organization-Id", "Audiohook-Correlation-Id", "Signature"} <= set(headers)


def test_wrong_secret_or_unsigned_is_refused_401() -> None:
    keys = signatures.KeySet({"key-1": base64.b64decode(SECRET)})
    wrong = base64.b64encode(b"another secret, also 32 bytes ..").decode()
    with ProtocolServer("audiohook", keys=keys) as server:
        bad = run(server.url, duration_s=0.2, api_key="key-1", client_secret=wrong)
        unsigned = run(server.url, duration_s=0.2, api_key="key-1")
    for result in (bad, unsigned):
        assert result.refused == "401"
        assert not result.opened and not result.completed and not result.error


def test_twilio_signature_of_the_url_is_accepted_and_a_wrong_token_refused() -> None:
    with ProtocolServer("twilio", twilio_token="auth-token") as server:
        good = run(server.url, dialect="twilio", duration_s=0.1, auth_token="auth-token")
        bad = run(server.url, dialect="twilio", duration_s=0.1, auth_token="other")
        server.finished()
        signed = [headers.get("X-Twilio-Signature") for headers in server.upgrade_headers]
    assert good.completed
    assert bad.refused == "401"
    assert signed[0] == signatures.twilio_signature(server.url, "auth-token")


@pytest.mark.parametrize("status", [401, 503])
def test_refusing_server_is_reported_by_status(status: int) -> None:
    with ProtocolServer("twilio", refuse_status=status) as server:
        result = run(server.url, dialect="twilio", duration_s=0.2)
    assert result.refused == str(status)
    assert not result.opened and not result.completed and result.error == ""
    assert result.frames_sent == 0


def test_unauthorized_disconnect_before_opened_is_a_refusal() -> None:
    with ProtocolServer("audiohook", refuse_unauthorized=True) as server:
        result = run(server.url, duration_s=0.4)
        server.finished()
    assert result.refused == "unauthorized"
    assert result.disconnect_reason == "unauthorized"
    assert not result.opened and not result.completed


def test_nothing_listening_is_a_connect_error() -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    result = run(f"ws://127.0.0.1:{port}/", dialect="twilio", duration_s=0.2)
    assert result.error == "connect"
    assert not result.opened and not result.completed and result.refused == ""
