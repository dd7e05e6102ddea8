"""The codecs fuzzed with arbitrary bytes, arrays and media descriptions (issue 12,
"Fuzzing"): only ``CodecError`` or ``ConfigError`` ever comes out, a decoded array is
read-only int16 of the right length, and encoding what was decoded gives the bytes back
(L16 exactly; G.711 up to the codes that decode alike)."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import array_shapes, arrays, floating_dtypes, integer_dtypes

from fuzz_testkit import examples
from jitterline.codecs import builtin_codecs, duration_ms
from jitterline.errors import CodecError, ConfigError

CODECS = builtin_codecs()
NAMES = ("L16", "L16BE", "PCMU", "PCMA")


@settings(max_examples=examples(1.0))
@given(name=st.sampled_from(NAMES), payload=st.binary(max_size=2048))
def test_any_payload_decodes_to_read_only_int16_or_raises_codec_error(
    name: str, payload: bytes
) -> None:
    codec = CODECS.get(name)
    try:
        samples = codec.decode(payload)
    except CodecError:
        assert len(payload) % codec.bytes_per_sample
        return
    assert samples.dtype == np.int16
    assert samples.shape == (len(payload) // codec.bytes_per_sample,)
    assert not samples.flags.writeable
    again = codec.encode(samples)
    if codec.bytes_per_sample == 2:
        assert again == payload
    else:  # G.711 has two codes for zero; re-encoding what decoded is stable
        assert np.array_equal(codec.decode(again), samples)


@settings(max_examples=examples(1.0))
@given(
    name=st.sampled_from(NAMES),
    samples=arrays(
        integer_dtypes() | floating_dtypes(sizes=(32, 64)),
        array_shapes(min_dims=0, max_dims=3, max_side=64),
    ),
)
def test_any_array_encodes_to_bytes_or_raises_codec_error(name: str, samples: np.ndarray) -> None:
    codec = CODECS.get(name)
    try:
        encoded = codec.encode(samples)
    except CodecError:
        finite = samples.dtype.kind != "f" or bool(np.isfinite(samples).all())
        assert samples.ndim != 1 or not finite
        return
    assert samples.ndim == 1
    assert len(encoded) == samples.size * codec.bytes_per_sample
    decoded = codec.decode(encoded).astype(np.int64)
    clipped = np.clip(np.rint(samples.astype(np.float64)), -32768, 32767)
    step = 1 if codec.bytes_per_sample == 2 else 1024  # G.711's largest quantisation step
    assert np.all(np.abs(decoded - clipped) <= step)


@settings(max_examples=examples(1.0))
@given(
    n_bytes=st.integers(-10, 10**7),
    name=st.sampled_from(NAMES),
    rate=st.integers(-10, 200_000),
    channels=st.integers(-2, 16),
)
def test_duration_of_any_description_is_a_finite_positive_number_or_an_error(
    n_bytes: int, name: str, rate: int, channels: int
) -> None:
    try:
        ms = duration_ms(n_bytes, name, rate, channels)
    except (CodecError, ConfigError):
        return
    assert ms >= 0
    assert ms < float("inf")


@pytest.mark.parametrize("name", ["opus", "", "PCMU\x00", "L 16"])
def test_an_unknown_codec_name_is_a_config_error(name: str) -> None:
    with pytest.raises(ConfigError):
        CODECS.get(name)
