"""Codecs against docs/protocols.md ("G.711 and L16", "Codecs") and an independent scalar
port of Sun's g711.c.

The scalar functions below are written the way g711.c (as CPython's ``audioop`` carried it)
reads, one code or sample at a time, so that they share no code or layout with the
table-driven implementation they check.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import numpy.typing as npt
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from audio_testkit import chunks, read_wav, run_pipeline
from jitterline import AudioFrame, PipelineConfig, PluginHost, Stats
from jitterline.codecs import (
    L16,
    L16BE,
    PCMA,
    PCMU,
    Codec,
    StreamCodec,
    builtin_codecs,
    bytes_per_sample,
    decode,
    duration_ms,
    encode,
    is_stream_codec,
    opus_packet_duration_ms,
    payload_duration_ms,
)
from jitterline.errors import CodecError, ConfigError
from jitterline_plugins.wav_sink import WavSink

ALL_CODECS: list[Codec] = [L16, L16BE, PCMU, PCMA]
INT16_SAMPLES = arrays(np.int16, st.integers(0, 200))

# --- independent scalar reference (Sun Microsystems g711.c, audioop flavour) -------------

SEG_UEND = (0x3F, 0x7F, 0xFF, 0x1FF, 0x3FF, 0x7FF, 0xFFF, 0x1FFF)
SEG_AEND = (0x1F, 0x3F, 0x7F, 0xFF, 0x1FF, 0x3FF, 0x7FF, 0xFFF)


def search(value: int, table: tuple[int, ...]) -> int:
    for index, end in enumerate(table):
        if value <= end:
            return index
    return len(table)


def ref_ulaw_decode(code: int) -> int:
    u = ~code & 0xFF
    t = ((u & 0x0F) << 3) + 0x84
    t <<= (u & 0x70) >> 4
    return 0x84 - t if u & 0x80 else t - 0x84


def ref_alaw_decode(code: int) -> int:
    a = code ^ 0x55
    t = (a & 0x0F) << 4
    seg = (a & 0x70) >> 4
    if seg == 0:
        t += 8
    elif seg == 1:
        t += 0x108
    else:
        t = (t + 0x108) << (seg - 1)
    return t if a & 0x80 else -t


def ref_ulaw_encode(sample: int) -> int:
    pcm_val = sample >> 2  # audioop feeds st_14linear2ulaw the 14-bit value
    if pcm_val < 0:
        pcm_val = -pcm_val
        mask = 0x7F
    else:
        mask = 0xFF
    pcm_val = min(pcm_val, 8159) + (0x84 >> 2)
    seg = search(pcm_val, SEG_UEND)
    if seg >= 8:
        return 0x7F ^ mask
    return ((seg << 4) | ((pcm_val >> (seg + 1)) & 0x0F)) ^ mask


def ref_alaw_encode(sample: int) -> int:
    pcm_val = sample >> 3  # audioop feeds st_linear2alaw the 13-bit value
    if pcm_val >= 0:
        mask = 0xD5
    else:
        mask = 0x55
        pcm_val = -pcm_val - 1
    seg = search(pcm_val, SEG_AEND)
    if seg >= 8:
        return 0x7F ^ mask
    quant = (pcm_val >> 1) if seg < 2 else (pcm_val >> seg)
    return ((seg << 4) | (quant & 0x0F)) ^ mask


def ulaw_step(code: int) -> int:
    return 8 << (((~code & 0xFF) >> 4) & 0x07)


def alaw_step(code: int) -> int:
    seg = ((code ^ 0x55) >> 4) & 0x07
    return 16 if seg < 2 else 16 << (seg - 1)


def as_list(samples: npt.NDArray[np.int16]) -> list[int]:
    return [int(value) for value in samples]


# --- G.711 decode ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("code", "value"),
    [(0x00, -32124), (0x80, 32124), (0x7F, 0), (0xFF, 0), (0x7E, -8), (0xFE, 8)],
)
def test_mulaw_code_decodes_to_protocols_value(code: int, value: int) -> None:
    assert as_list(PCMU.decode(bytes([code]))) == [value]


@pytest.mark.parametrize(
    ("code", "value"),
    [(0xD5, 8), (0x55, -8), (0xAA, 32256), (0x2A, -32256), (0x80, 5504), (0x00, -5504)],
)
def test_alaw_code_decodes_to_protocols_value(code: int, value: int) -> None:
    assert as_list(PCMA.decode(bytes([code]))) == [value]


def test_all_256_mulaw_codes_match_scalar_recipe() -> None:
    decoded = as_list(PCMU.decode(bytes(range(256))))
    assert decoded == [ref_ulaw_decode(code) for code in range(256)]


def test_all_256_alaw_codes_match_scalar_recipe() -> None:
    decoded = as_list(PCMA.decode(bytes(range(256))))
    assert decoded == [ref_alaw_decode(code) for code in range(256)]


# --- G.711 encode ------------------------------------------------------------------------


def test_mulaw_encoder_matches_g711_for_every_int16() -> None:
    every = np.arange(-32768, 32768, dtype=np.int16)
    expected = bytes(ref_ulaw_encode(sample) for sample in range(-32768, 32768))
    assert PCMU.encode(every) == expected


def test_alaw_encoder_matches_g711_for_every_int16() -> None:
    every = np.arange(-32768, 32768, dtype=np.int16)
    expected = bytes(ref_alaw_encode(sample) for sample in range(-32768, 32768))
    assert PCMA.encode(every) == expected


def test_silence_and_full_scale_encode_to_protocols_codes() -> None:
    assert PCMU.encode([0, 32767, -32768]) == bytes([0xFF, 0x80, 0x00])
    assert PCMA.encode([0, 32767, -32768]) == bytes([0xD5, 0xAA, 0x2A])


def test_mulaw_reencode_is_identity_except_negative_zero() -> None:
    reencoded = PCMU.encode(PCMU.decode(bytes(range(256))))
    changed = {code: reencoded[code] for code in range(256) if reencoded[code] != code}
    assert changed == {0x7F: 0xFF}  # both zeros decode to 0, which encodes as +0


def test_alaw_reencode_is_identity_for_every_code() -> None:
    assert PCMA.encode(PCMA.decode(bytes(range(256)))) == bytes(range(256))


@settings(max_examples=200, deadline=None)
@given(INT16_SAMPLES)
def test_mulaw_round_trip_stays_within_one_step(samples: npt.NDArray[np.int16]) -> None:
    codes = PCMU.encode(samples)
    decoded = as_list(PCMU.decode(codes))
    for sample, back, code in zip(as_list(samples), decoded, codes, strict=True):
        assert abs(back - sample) <= ulaw_step(code), (sample, back, hex(code))


@settings(max_examples=200, deadline=None)
@given(INT16_SAMPLES)
def test_alaw_round_trip_stays_within_one_step(samples: npt.NDArray[np.int16]) -> None:
    codes = PCMA.encode(samples)
    decoded = as_list(PCMA.decode(codes))
    for sample, back, code in zip(as_list(samples), decoded, codes, strict=True):
        assert abs(back - sample) <= alaw_step(code), (sample, back, hex(code))


# --- L16 ---------------------------------------------------------------------------------


def test_l16_reads_little_endian_pairs() -> None:
    assert as_list(L16.decode(b"\x01\x80\xff\x7f\x00\x01")) == [-32767, 32767, 256]


def test_l16be_reads_network_order_pairs() -> None:
    assert as_list(L16BE.decode(b"\x01\x80\xff\x7f\x00\x01")) == [384, -129, 1]


def test_l16_variants_write_known_bytes() -> None:
    assert L16.encode([1, -2]) == b"\x01\x00\xfe\xff"
    assert L16BE.encode([1, -2]) == b"\x00\x01\xff\xfe"


@settings(max_examples=100, deadline=None)
@given(INT16_SAMPLES)
def test_l16_round_trip_is_exact_in_both_byte_orders(samples: npt.NDArray[np.int16]) -> None:
    little, big = L16.encode(samples), L16BE.encode(samples)
    assert as_list(L16.decode(little)) == as_list(samples)
    assert as_list(L16BE.decode(big)) == as_list(samples)
    assert big == b"".join(
        little[i + 1 : i + 2] + little[i : i + 1] for i in range(0, len(little), 2)
    )


def test_l16_frame_cut_mid_sample_names_length_and_codec() -> None:
    with pytest.raises(CodecError, match=r"L16BE payload of 321 bytes"):
        L16BE.decode(bytes(321))


# --- any bytes in, only CodecError out ---------------------------------------------------


@settings(max_examples=100, deadline=None)
@given(st.sampled_from(ALL_CODECS), st.binary(max_size=400))
def test_arbitrary_payload_decodes_or_raises_codec_error(codec: Codec, payload: bytes) -> None:
    try:
        samples = codec.decode(payload)
    except CodecError:
        assert len(payload) % codec.bytes_per_sample != 0
        return
    assert samples.dtype == np.int16
    assert samples.shape == (len(payload) // codec.bytes_per_sample,)


@settings(max_examples=50, deadline=None)
@given(
    st.sampled_from(ALL_CODECS),
    st.binary(min_size=2, max_size=64).map(lambda b: b[: len(b) // 2 * 2]),
)
def test_decoded_samples_are_read_only(codec: Codec, payload: bytes) -> None:
    samples = codec.decode(payload)
    with pytest.raises(ValueError, match="read-only"):
        samples[0] = 1


@pytest.mark.parametrize("codec", ALL_CODECS, ids=lambda codec: codec.name)
def test_decoded_samples_do_not_follow_a_reused_receive_buffer(codec: Codec) -> None:
    buffer = bytearray(b"\x10\x20\x30\x40")
    samples = codec.decode(buffer)  # type: ignore[arg-type]  # a socket's reusable buffer
    before = as_list(samples)
    buffer[:] = b"\x00\x00\x00\x00"
    assert as_list(samples) == before


@pytest.mark.parametrize(
    ("codec", "quietest"),
    [(L16, 0), (L16BE, 0), (PCMU, 0), (PCMA, 8)],
    ids=["L16", "L16BE", "PCMU", "PCMA"],
)
def test_silence_byte_decodes_to_the_quietest_level(codec: Codec, quietest: int) -> None:
    payload = bytes([codec.silence_byte]) * (codec.bytes_per_sample * 3)
    assert as_list(codec.decode(payload)) == [quietest] * 3  # A-law has no zero level


# --- encode input rules ------------------------------------------------------------------


def test_out_of_range_integers_clip_to_int16() -> None:
    assert as_list(L16.decode(L16.encode([40000, -40000, 2**40]))) == [32767, -32768, 32767]
    assert L16.encode(np.array([65535, 7], dtype=np.uint16)) == L16.encode([32767, 7])


def test_floats_are_int16_scale_rounded_half_to_even_and_clipped() -> None:
    floats = [0.4, 1.5, 2.5, -1.6, 1e9, -1e9]
    assert as_list(L16.decode(L16.encode(floats))) == [0, 2, 2, -2, 32767, -32768]


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), float("-inf")])
def test_non_finite_samples_are_refused(bad: float) -> None:
    with pytest.raises(CodecError, match="NaN or infinite"):
        PCMU.encode([0.0, bad])


@pytest.mark.parametrize(
    "samples", [np.zeros((2, 3), dtype=np.int16), np.int16(5), ["a", "b"], [1 + 2j]]
)
def test_non_1d_or_non_real_samples_are_refused(samples: object) -> None:
    with pytest.raises(CodecError, match="PCMA encode"):
        PCMA.encode(samples)  # type: ignore[arg-type]


def test_empty_samples_encode_to_empty_payload() -> None:
    assert [codec.encode([]) for codec in ALL_CODECS] == [b"", b"", b"", b""]


# --- registry and module helpers ---------------------------------------------------------


def test_builtin_registry_is_fresh_for_each_caller() -> None:
    first, second = builtin_codecs(), builtin_codecs()
    first.register("opus", PCMU)
    assert list(first) == ["l16", "l16be", "opus", "pcma", "pcmu"]
    assert list(second) == ["l16", "l16be", "pcma", "pcmu"]
    assert all(isinstance(second.get(name), Codec) for name in second)


def test_module_helpers_take_names_in_any_case() -> None:
    assert as_list(decode(b"\xff\x80", "pcmu")) == [0, 32124]
    assert encode([0], "Pcma") == b"\xd5"
    assert bytes_per_sample("l16be") == 2
    assert bytes_per_sample("PCMU") == 1


def test_unknown_codec_name_lists_the_known_ones() -> None:
    with pytest.raises(ConfigError, match="unknown codec 'opus'; known: l16, l16be, pcma, pcmu"):
        decode(b"\x00", "opus")


@pytest.mark.parametrize(
    ("n_bytes", "codec", "sample_rate", "channels", "expected_ms"),
    [
        (160, "PCMU", 8000, 1, 20.0),
        (640, "L16", 16000, 1, 20.0),
        (160, "PCMU", 8000, 2, 10.0),
        (640, "L16BE", 16000, 2, 10.0),
        (0, "PCMA", 8000, 1, 0.0),
    ],
)
def test_payload_duration(
    n_bytes: int, codec: str, sample_rate: int, channels: int, expected_ms: float
) -> None:
    assert duration_ms(n_bytes, codec, sample_rate, channels) == expected_ms


@pytest.mark.parametrize(
    ("n_bytes", "codec", "sample_rate", "channels"),
    [(160, "opus", 8000, 1), (160, "PCMU", 0, 1), (160, "PCMU", 8000, 0), (-2, "L16", 8000, 1)],
)
def test_duration_refuses_bad_configuration(
    n_bytes: int, codec: str, sample_rate: int, channels: int
) -> None:
    with pytest.raises(ConfigError):
        duration_ms(n_bytes, codec, sample_rate, channels)


def test_duration_refuses_a_partial_stereo_sample() -> None:
    with pytest.raises(CodecError, match="161 bytes of PCMU with 2 channel"):
        duration_ms(161, "PCMU", 8000, 2)


# --- wideband PCM and Opus packet durations (RFC 6716 section 3) -----------------------------


@pytest.mark.parametrize("codec", [L16, L16BE])
@pytest.mark.parametrize("channels", [1, 2])
@pytest.mark.parametrize("rate", [8000, 16000, 24000, 48000])
def test_l16_at_every_rate_and_byte_order_lasts_its_bytes(
    codec: Codec, channels: int, rate: int
) -> None:
    samples = np.arange(-(rate // 50) * channels, 0, dtype=np.int16) * 7
    payload = codec.encode(samples)
    assert len(payload) == rate // 50 * channels * 2
    assert payload_duration_ms(payload, codec.name, rate, channels) == 20.0
    assert np.array_equal(codec.decode(payload), samples)


def test_a_16khz_l16_frame_of_640_bytes_lasts_20_ms() -> None:
    assert duration_ms(640, "L16", 16000, 1) == 20.0
    assert payload_duration_ms(bytes(640), "L16BE", 16000, 1) == 20.0


def toc(config: int, code: int, *, stereo: bool = False) -> int:
    return config << 3 | int(stereo) << 2 | code


@pytest.mark.parametrize(
    ("packet", "expected_ms"),
    [
        (bytes([toc(0, 0)]), 10.0),  # SILK NB 10 ms
        (bytes([toc(1, 0)]), 20.0),
        (bytes([toc(2, 0)]), 40.0),
        (bytes([toc(11, 0)]), 60.0),  # SILK WB 60 ms
        (bytes([toc(12, 0)]), 10.0),  # hybrid SWB 10 ms
        (bytes([toc(15, 0)]), 20.0),
        (bytes([toc(16, 0)]), 2.5),  # CELT NB 2.5 ms
        (bytes([toc(31, 0, stereo=True)]), 20.0),
        (bytes([toc(1, 1), 1, 2]), 40.0),  # two equal 20 ms frames
        (bytes([toc(1, 2), 1, 2, 3]), 40.0),  # two frames of different sizes
        (bytes([toc(16, 3), 48]), 120.0),  # 48 x 2.5 ms, the most a packet holds
        (bytes([toc(3, 3), 2]), 120.0),
    ],
)
def test_opus_packet_duration_comes_from_the_toc(packet: bytes, expected_ms: float) -> None:
    assert opus_packet_duration_ms(packet) == expected_ms
    assert payload_duration_ms(packet, "opus", 48000, 2) == expected_ms


@pytest.mark.parametrize(
    ("packet", "rule"),
    [
        (b"", "R1"),
        (bytes([toc(1, 1), 1]), "R3"),  # code 1 with an odd body
        (bytes([toc(1, 3)]), "R5"),  # code 3 without its count byte
        (bytes([toc(1, 3), 0]), "R5"),  # code 3 with no frame
        (bytes([toc(3, 3), 3]), "R5"),  # 3 x 60 ms = 180 ms
    ],
)
def test_opus_packets_the_rfc_refuses_raise_codec_error(packet: bytes, rule: str) -> None:
    with pytest.raises(CodecError, match=rule):
        opus_packet_duration_ms(packet)


@given(st.binary(max_size=20))
def test_any_bytes_give_an_opus_duration_or_codec_error(packet: bytes) -> None:
    try:
        duration = opus_packet_duration_ms(packet)
    except CodecError:
        return
    assert duration in {2.5 * n for n in range(1, 49)}
    assert 2.5 <= duration <= 120.0


def test_opus_duration_still_needs_a_media_description() -> None:
    with pytest.raises(ConfigError, match="sample_rate=0"):
        payload_duration_ms(bytes([toc(1, 0)]), "OPUS", 0, 1)


# --- 16 kHz L16 through the whole pipeline ---------------------------------------------------


def test_16khz_l16_through_the_pipeline_has_right_durations_jitter_and_wav(
    tmp_path: Path,
) -> None:
    """Every other frame 5 ms late: RFC 3550's J is computed here the way section 6.4.1 says
    (J += (|D| - J) / 16), independently of the latency window's own code."""
    rate, size, count = 16000, 320, 60
    source = (np.arange(size * count) % 2000 - 1000).astype(np.int16) * 9
    payloads = [L16.encode(source[i * size : (i + 1) * size]) for i in range(count)]
    assert {len(p) for p in payloads} == {640}
    arrivals = chunks(payloads, codec="L16", rate=rate, frame_ms=20.0)
    arrivals = [(t + (0.005 if i % 2 else 0.0), text) for i, (t, text) in enumerate(arrivals)]
    sink = WavSink(tmp_path / "wide.wav")
    host = PluginHost(load_entrypoints=False, plugins=[sink])

    output = run_pipeline(arrivals, host, PipelineConfig(buffer_policy="fixed", buffer_ms=60.0))

    played = [f for f in output if isinstance(f, AudioFrame) and not f.concealed]
    assert {f.duration_ms for f in played} == {20.0}
    assert [f.seq for f in played] == list(range(len(played)))
    jitter = 0.0
    for _ in range(count - 1):
        jitter += (5.0 - jitter) / 16
    stats = [item for item in output if isinstance(item, Stats)][-1]
    assert stats.latency.jitter_rfc3550_ms == pytest.approx(jitter, abs=1e-6)
    params, written = read_wav(tmp_path / "wide.wav")
    assert (params.framerate, params.nchannels) == (16000, 1)
    assert np.array_equal(written[: len(played) * size], source[: len(played) * size])


@pytest.mark.parametrize("codec", ALL_CODECS)
def test_the_builtins_are_stateless_codecs_decoded_on_arrival(codec: Codec) -> None:
    assert not is_stream_codec(codec)
    assert not isinstance(codec, StreamCodec)
