"""Opus through libopus: round trips over the local endpoint and the pipeline, the decoder's
concealment and FEC for a lost frame, every frame size, rate and channel count, and what
happens without the library."""

from __future__ import annotations

import ctypes
from typing import Any

import numpy as np
import numpy.typing as npt
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from audio_testkit import AMPLITUDE, chunks, run_pipeline, tone
from jitterline import AudioFrame, PipelineConfig, PluginHost, Stats, hookimpl
from jitterline.codecs import OPUS_RATES, StreamCodec, is_stream_codec, opus_packet_duration_ms
from jitterline.concealment import PlayoutDecoder
from jitterline.emulator import PROFILES, Emulator, ToneSource
from jitterline.errors import CodecError
from jitterline.live import SessionOptions, run_live
from jitterline.protocols.appfoundry import audio_chunk_message
from jitterline_plugins import opus
from jitterline_plugins.opus import OPUS, OpusDecoder, OpusEncoder

TONE_HZ = 440.0
ROUND_TRIP_SNR_DB = 20.0
"""Measured 30-37 dB for these tones at 32 kbit/s VoIP (libopus 1.3.1); 20 dB leaves room
for other libopus versions while still failing on a wrong rate, a lost frame or noise."""


def best_snr_db(
    source: npt.NDArray[np.int16], decoded: npt.NDArray[np.int16], lag_max: int
) -> float:
    """SNR of ``decoded`` against ``source`` at the best lag up to ``lag_max`` (the codec's
    delay), skipping the first 100 ms while the encoder settles."""
    skip = len(source) // 10
    best = -np.inf
    for lag in range(lag_max + 1):
        ref = source[skip : len(decoded) - lag].astype(np.float64)
        out = decoded[skip + lag : skip + lag + len(ref)].astype(np.float64)
        noise = float(((ref - out) ** 2).sum())
        best = max(best, 10 * np.log10(float((ref**2).sum()) / max(noise, 1e-9)))
    return float(best)


class Played:
    """Collects played frames, as a sink plugin would."""

    def __init__(self) -> None:
        self.frames: list[AudioFrame] = []

    @hookimpl
    def jitterline_frame_played(self, frame: AudioFrame) -> None:
        self.frames.append(frame)


# -- the plugin and the codec protocols -------------------------------------------------------


def test_opus_is_registered_through_the_codec_hook_like_a_third_party_codec() -> None:
    host = PluginHost(load_entrypoints=False, plugins=[opus.plugin])
    codec = host.codecs.get("opus")
    assert codec is OPUS
    assert isinstance(codec, StreamCodec) and is_stream_codec(codec)
    assert "opus" not in PluginHost(load_entrypoints=False).codecs


@pytest.mark.parametrize("frame_ms", [2.5, 5.0, 10.0, 20.0, 40.0, 60.0])
@pytest.mark.parametrize("rate", OPUS_RATES)
def test_each_frame_decodes_with_its_own_duration(rate: int, frame_ms: float) -> None:
    count = round(rate * frame_ms / 1000)
    encoder, decoder = OpusEncoder(rate, 1), OpusDecoder(rate, 1)
    packet = encoder.encode(tone(rate, count))
    assert opus_packet_duration_ms(packet) == frame_ms
    assert decoder.decode(packet).size == count


@pytest.mark.parametrize("rate", OPUS_RATES)
def test_stereo_decodes_interleaved_and_keeps_the_channels_apart(rate: int) -> None:
    count = rate // 50
    left, right = tone(rate, count * 20), np.zeros(count * 20, dtype=np.int16)
    stereo = np.stack([left, right], axis=1).reshape(-1)
    encoder, decoder = OpusEncoder(rate, 2), OpusDecoder(rate, 2)
    width = count * 2
    out = np.concatenate(
        [
            decoder.decode(encoder.encode(stereo[i : i + width]))
            for i in range(0, stereo.size, width)
        ]
    ).reshape(-1, 2)
    assert out.shape == (count * 20, 2)
    later = out[count * 5 :].astype(np.float64)
    assert np.sqrt((later[:, 0] ** 2).mean()) > 10 * np.sqrt((later[:, 1] ** 2).mean())


def test_a_rate_opus_does_not_run_at_is_refused_with_the_rates_it_does() -> None:
    with pytest.raises(CodecError, match="8000, 12000, 16000, 24000, 48000"):
        OpusDecoder(44100, 1)
    with pytest.raises(CodecError, match="1 or 2 channels"):
        OPUS.check(b"\x08", 8000, 3)


def test_without_libopus_a_stream_asking_for_opus_gets_one_clear_line(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    def missing(name: str, *args: Any, **kwargs: Any) -> ctypes.CDLL:
        raise OSError(f"{name}: cannot open shared object file")

    opus._lib.cache_clear()
    monkeypatch.setattr(ctypes, "CDLL", missing)
    try:
        with pytest.raises(CodecError, match=r"apt-get install libopus0") as caught:
            OPUS.check(b"\x08", 8000, 1)
        assert "\n" not in str(caught.value)
    finally:
        monkeypatch.undo()
        opus._lib.cache_clear()
    OPUS.check(b"\x08", 8000, 1)  # and with the library back, the same packet passes


# -- through the pipeline on virtual time ------------------------------------------------------


def opus_messages(
    rate: int, frame_ms: float, frames: int, *, drop: frozenset[int] = frozenset()
) -> list[tuple[float, str]]:
    count = round(rate * frame_ms / 1000)
    source = tone(rate, count * frames)
    encoder = OpusEncoder(rate, 1)
    packets = [encoder.encode(source[i * count : (i + 1) * count]) for i in range(frames)]
    return chunks(packets, codec="OPUS", rate=rate, frame_ms=frame_ms, drop=drop)


def test_a_lost_frame_is_replaced_by_the_decoders_concealment_not_zeros() -> None:
    arrivals = opus_messages(8000, 20.0, 50, drop=frozenset({25}))
    host = PluginHost(load_entrypoints=False, plugins=[opus.plugin])

    output = run_pipeline(arrivals, host)

    # Only the stream's own 50 slots: what the buffer does after the last frame is its own rule.
    frames = [item for item in output if isinstance(item, AudioFrame) and item.seq < 50]
    assert [f.seq for f in frames] == list(range(50))
    assert [f.seq for f in frames if f.concealed] == [25]
    lost = frames[25]
    assert lost.concealed and lost.samples is not None and lost.samples.size == 160
    rms = float(np.sqrt((lost.samples.astype(np.float64) ** 2).mean()))
    assert rms > 0.3 * AMPLITUDE * 32767 / np.sqrt(2)  # the tone goes on, at a lower level
    after = frames[26].samples
    assert after is not None and after.size == 160  # and the decoder carries on from there


def test_fec_in_the_next_packet_brings_back_the_lost_frame_closer_than_plc() -> None:
    rate, count = 16000, 320
    source = tone(rate, count * 30, freq_hz=300.0)
    encoder = OpusEncoder(rate, 1)
    packets = [encoder.encode(source[i * count : (i + 1) * count]) for i in range(30)]
    with_fec, plc_only = OpusDecoder(rate, 1), OpusDecoder(rate, 1)
    for packet in packets[:20]:
        with_fec.decode(packet)
        plc_only.decode(packet)

    recovered = with_fec.conceal(count, packets[21]).astype(np.float64)
    guessed = plc_only.conceal(count).astype(np.float64)
    # The truth: frame 20 decoded by a third decoder that received it.
    reference = OpusDecoder(rate, 1)
    for packet in packets[:20]:
        reference.decode(packet)
    clean = reference.decode(packets[20]).astype(np.float64)
    assert np.abs(recovered - clean).mean() < np.abs(guessed - clean).mean()


def test_a_packet_the_rfc_refuses_is_malformed_on_arrival_and_the_stream_goes_on() -> None:
    arrivals = opus_messages(8000, 20.0, 20)
    t, _ = arrivals[10]
    arrivals[10] = (
        t,
        audio_chunk_message(
            b"\x0b\x00", seq=10, capture_wall_s=1e9, sent_wall_s=1e9, codec="OPUS", rate=8000
        ),
    )
    host = PluginHost(load_entrypoints=False, plugins=[opus.plugin])

    output = run_pipeline(arrivals, host)

    stats = [item for item in output if isinstance(item, Stats)][-1]
    assert stats.frames.malformed == 1
    assert stats.frames.played == 19


# -- over the local endpoint, in real time -----------------------------------------------------


@pytest.mark.parametrize("frame_ms", [20.0, 60.0])
@pytest.mark.parametrize("rate", [8000, 48000])
def test_a_tone_round_trips_through_the_endpoint_and_the_pipeline(
    rate: int, frame_ms: float
) -> None:
    played = Played()
    host = PluginHost(load_entrypoints=False, plugins=[opus.plugin, played])
    encoder = OPUS.encoder(rate, 1)
    with Emulator(
        PROFILES["clean"],
        codec="OPUS",
        sample_rate=rate,
        frame_ms=frame_ms,
        duration_s=1.2,
        source=ToneSource(TONE_HZ, AMPLITUDE),
        encoder=encoder,
        require_token=False,
    ) as emu:
        options = SessionOptions(url=emu.ws_url, duration_s=5.0)
        # A generous fixed buffer: a loaded test machine must not make a frame late here.
        steady = PipelineConfig(buffer_policy="fixed", buffer_ms=200.0)
        result = run_live(options, config=steady, host=host)

    assert result.outcome is None
    frames = played.frames
    assert len(frames) >= 1.0 / (frame_ms / 1000) - 2
    assert {f.duration_ms for f in frames} == {frame_ms}
    assert not any(f.concealed for f in frames)
    decoded = np.concatenate([f.samples for f in frames if f.samples is not None])
    assert decoded.size == len(frames) * round(rate * frame_ms / 1000)
    source = tone(rate, decoded.size)
    lag_max = encoder.lookahead_samples + round(rate * frame_ms / 1000)
    assert best_snr_db(source, decoded, lag_max) >= ROUND_TRIP_SNR_DB


@settings(max_examples=200, deadline=None)
@given(st.lists(st.binary(min_size=1, max_size=80), min_size=1, max_size=8))
def test_garbage_that_passes_the_toc_check_never_breaks_playout(packets: list[bytes]) -> None:
    """libopus may still refuse a packet whose TOC is fine: playout conceals it instead."""
    playout = PlayoutDecoder(PluginHost(load_entrypoints=False, plugins=[opus.plugin]).codecs)
    for seq, packet in enumerate(packets):
        try:
            duration_ms = opus_packet_duration_ms(packet)
        except CodecError:
            continue
        frame = AudioFrame(
            stream_id="s",
            seq=seq,
            media_ms=seq * duration_ms,
            codec="OPUS",
            sample_rate=16000,
            channels=1,
            payload=packet,
            duration_ms=duration_ms,
            arrival_s=0.0,
            playout_s=0.0,
        )
        played = playout.play(frame)
        assert played.samples is not None
        assert played.samples.size == round(duration_ms * 16)


def test_fec_from_a_next_packet_libopus_refuses_falls_back_to_plc() -> None:
    decoder = OpusDecoder(8000, 1)
    decoder.decode(OpusEncoder(8000, 1).encode(tone(8000, 160)))
    broken = bytes([0x0A, 0xFF])  # code 2: a length byte announcing a second byte it lacks
    assert opus_packet_duration_ms(broken) == 40.0  # its TOC is fine
    assert decoder.conceal(160, broken).size == 160
