"""Audio codecs between wire bytes and int16 numpy samples, without ``audioop``.

``audioop`` left the standard library in Python 3.13, so G.711 is done with lookup tables:
decoding indexes a 256-entry table built once at import from the bit recipe of
docs/protocols.md (G.711); encoding indexes a 65536-entry table with the uint16 view of the
int16 samples, filled once by vectorised segment math. Both reproduce CPython's ``audioop``
(the Sun g711.c algorithm: mu-law on the sample shifted right by 2, A-law by 3, arithmetic
shift) bit for bit, so captures made with the old module decode and re-encode unchanged.

Decoded arrays are read-only (the rule for every numpy payload once built), so a frame
can be shared with plugins without one of them changing it for the others: L16 in the
machine's byte order is a view of the payload's immutable bytes, everything else a copy.
Encoding takes any 1-D real array-like on the int16 scale (floats are *not* normalised
to [-1, 1]): floats are rounded half to even, everything is clipped to [-32768, 32767],
and NaN/inf, complex, object and non-1-D input raise ``CodecError``.
Stereo and wider audio stays interleaved in one 1-D array, as in ``AudioFrame.samples``.

``builtin_codecs()`` gives a fresh registry per caller, so plugins (Opus, ...) add theirs
to one pipeline without touching any other. The module-level helpers only know the four
built-ins. L16 and G.711 are stateless and rate-agnostic: the same codec objects serve
8, 16, 24 and 48 kHz, mono or interleaved stereo; only ``duration_ms`` needs the rate.

A codec whose frames depend on the ones before it (Opus: its decoder predicts from its
state, and conceals a lost frame from it) is also a ``StreamCodec``: the pipeline then only
checks its packets on arrival and decodes them at playout, in seq order, through one
``FrameDecoder`` per stream, which also synthesises the missing ones (docs/protocols.md,
"Codecs"). ``payload_duration_ms`` reads an Opus packet's play time from its TOC byte
(RFC 6716 section 3.1), so a dialect can place the frame without libopus.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal, Protocol, TypeGuard, runtime_checkable

import numpy as np
import numpy.typing as npt

from .errors import CodecError, ConfigError
from .frames import Samples
from .registry import Registry

__all__ = [
    "L16",
    "L16BE",
    "OPUS_RATES",
    "PCMA",
    "PCMU",
    "Codec",
    "FrameDecoder",
    "FrameEncoder",
    "G711Codec",
    "LinearCodec",
    "StreamCodec",
    "builtin_codecs",
    "bytes_per_sample",
    "decode",
    "duration_ms",
    "encode",
    "is_stream_codec",
    "opus_packet_duration_ms",
    "payload_duration_ms",
]

_INT16_MIN = -32768
_INT16_MAX = 32767
_ALL_INT16 = np.arange(_INT16_MIN, _INT16_MAX + 1, dtype=np.int32)
_ALL_CODES = np.arange(256, dtype=np.int32)
# Ready dtypes: np.frombuffer parses a dtype string or converts a type on every call.
_WIRE_INT16 = {order: np.dtype(f"{order}i2") for order in "<>"}
_UINT8 = np.dtype(np.uint8)


@runtime_checkable
class Codec(Protocol):
    """What the decode stage needs from a codec; plugins register objects of this shape.

    The members are read-only properties so that frozen dataclasses satisfy the protocol;
    plain attributes do too. ``silence_byte`` fills a payload that decodes to the quietest
    level (0; +8 for A-law, which has no zero), e.g. the jitter buffer's concealment frame.
    ``decode`` returns a read-only int16 array and raises ``CodecError`` on a payload it
    cannot decode; ``encode`` clips to the int16 range.
    """

    @property
    def name(self) -> str: ...

    @property
    def bytes_per_sample(self) -> int: ...

    @property
    def silence_byte(self) -> int: ...

    def decode(self, payload: bytes) -> Samples: ...

    def encode(self, samples: npt.ArrayLike) -> bytes: ...


class FrameDecoder(Protocol):
    """One stream's decoder state: frames go in seq order, each exactly once.

    ``conceal`` synthesises ``samples_per_channel`` samples for a frame that never came,
    from the decoder's state; with ``next_payload`` (the frame after the missing one, if it
    already arrived) it may recover the missing audio from that frame's redundancy (Opus
    in-band FEC) instead.
    """

    def decode(self, payload: bytes) -> Samples: ...

    def conceal(self, samples_per_channel: int, next_payload: bytes | None = None) -> Samples: ...


class FrameEncoder(Protocol):
    """One stream's encoder state: a frame of interleaved int16 samples in, a packet out."""

    def encode(self, samples: npt.ArrayLike) -> bytes: ...


@runtime_checkable
class StreamCodec(Protocol):
    """A codec with state across frames; see the module docstring for how it is used.

    ``check`` raises ``CodecError`` on a packet that cannot be decoded at ``sample_rate``
    with ``channels`` (or when the codec's library is missing), without decoding it: the
    arrival-time half of ``Codec.decode``, so a bad packet is counted malformed on arrival.
    """

    def check(self, payload: bytes, sample_rate: int, channels: int) -> None: ...

    def decoder(self, sample_rate: int, channels: int) -> FrameDecoder: ...

    def encoder(self, sample_rate: int, channels: int) -> FrameEncoder: ...


_STREAM_MEMBERS = ("check", "decoder", "encoder")


_STREAM_CLASSES: dict[type, bool] = {}  # a cache: one entry per codec class ever seen


def is_stream_codec(codec: object) -> TypeGuard[StreamCodec]:
    """``isinstance(codec, StreamCodec)`` for the decode stage's hot path: a runtime protocol
    check costs about 30 us on Python 3.11 (five PCMU decodes); this one looks at the
    codec's class, once per class."""
    kind = type(codec)
    known = _STREAM_CLASSES.get(kind)
    if known is None:
        known = all(callable(getattr(kind, name, None)) for name in _STREAM_MEMBERS)
        _STREAM_CLASSES[kind] = known
    return known


@dataclass(frozen=True, slots=True)
class LinearCodec:
    """16-bit linear PCM; ``byteorder`` is ``"<"`` (WAV, AudioHook) or ``">"`` (RTP, RFC 3551)."""

    name: str
    byteorder: Literal["<", ">"]

    @property
    def bytes_per_sample(self) -> int:
        return 2

    @property
    def silence_byte(self) -> int:
        return 0x00

    def decode(self, payload: bytes) -> Samples:
        """A view of ``bytes`` in the machine's order needs no copy: it is read-only as
        it stands (under half the copying decode's cost)."""
        if len(payload) % 2:
            _check_length(payload, self.name, self.bytes_per_sample)
        wire = np.frombuffer(payload, _WIRE_INT16[self.byteorder])
        if type(payload) is bytes and wire.dtype.isnative:
            return wire
        return _read_only(wire.astype(np.int16))

    def encode(self, samples: npt.ArrayLike) -> bytes:
        return _to_int16(samples, self.name).astype(f"{self.byteorder}i2").tobytes()


@dataclass(frozen=True, slots=True, eq=False)
class G711Codec:
    """A one-byte-per-sample companding law, fully described by its two tables.

    ``decode_table[code]`` is the int16 value of a code; ``encode_table[s.view(uint16)]``
    the code of int16 sample ``s``. Both are read-only. Compared by identity, because
    dataclass equality on numpy fields would raise instead of answering.
    """

    name: str
    silence_byte: int
    decode_table: Samples = field(repr=False)
    encode_table: npt.NDArray[np.uint8] = field(repr=False)

    @property
    def bytes_per_sample(self) -> int:
        return 1

    def decode(self, payload: bytes) -> Samples:
        """``take`` rather than indexing, and a ready dtype: a quarter less for 20 ms."""
        return _read_only(self.decode_table.take(np.frombuffer(payload, _UINT8)))

    def encode(self, samples: npt.ArrayLike) -> bytes:
        return self.encode_table[_to_int16(samples, self.name).view(np.uint16)].tobytes()


def _check_length(payload: bytes, name: str, sample_bytes: int) -> None:
    if len(payload) % sample_bytes:
        raise CodecError(
            f"{name} payload of {len(payload)} bytes is not a multiple of {sample_bytes} "
            "bytes per sample; the frame was cut mid-sample, check the codec and the "
            "sender's framing"
        )


def _read_only(samples: Samples) -> Samples:
    samples.setflags(write=False)  # a sixth of ``flags.writeable = False`` (a flags object)
    return samples


def _to_int16(samples: npt.ArrayLike, name: str) -> Samples:
    """Clip any 1-D real input to int16; integers keep their value, floats round half-even."""
    array = np.asarray(samples)
    if array.ndim != 1:
        raise CodecError(
            f"{name} encode needs 1-D samples, got shape {array.shape}; interleave "
            "channels into one 1-D array (e.g. array.reshape(-1))"
        )
    clipped: Samples
    if array.dtype.kind == "u":
        clipped = np.minimum(array, _INT16_MAX).astype(np.int16)
    elif array.dtype.kind in "bi":
        clipped = np.clip(array.astype(np.int64), _INT16_MIN, _INT16_MAX).astype(np.int16)
    elif array.dtype.kind == "f":
        if not np.isfinite(array).all():
            raise CodecError(
                f"{name} encode got NaN or infinite samples; only finite values can be "
                "clipped to int16, clean the signal first"
            )
        clipped = np.clip(np.rint(array), _INT16_MIN, _INT16_MAX).astype(np.int16)
    else:
        raise CodecError(
            f"{name} encode needs integer or float samples, got dtype {array.dtype}; "
            "convert to int16 first"
        )
    return clipped


def _index_by_uint16(codes_of_all_int16: npt.NDArray[np.int32]) -> npt.NDArray[np.uint8]:
    """Reorder codes listed for -32768..32767 so that the uint16 view of a sample indexes them."""
    table = np.empty(65536, dtype=np.uint8)
    table[_ALL_INT16.astype(np.int16).view(np.uint16)] = codes_of_all_int16
    table.flags.writeable = False
    return table


def _segment(magnitude: npt.NDArray[np.int32], first_end: int) -> npt.NDArray[np.int32]:
    """g711.c's ``search``: segment i ends at ``((first_end + 1) << i) - 1``."""
    ends = ((first_end + 1) << np.arange(8, dtype=np.int32)) - 1
    return np.searchsorted(ends, magnitude).astype(np.int32)


def _ulaw_decode_table() -> Samples:
    inverted = ~_ALL_CODES & 0xFF
    exponent = (inverted >> 4) & 0x07
    magnitude = (((inverted & 0x0F) << 3) + 0x84) << exponent
    values = np.where(inverted & 0x80, 0x84 - magnitude, magnitude - 0x84)
    return _read_only(values.astype(np.int16))


def _alaw_decode_table() -> Samples:
    toggled = _ALL_CODES ^ 0x55
    segment = (toggled >> 4) & 0x07
    shifted = (toggled & 0x0F) << 4
    magnitude = np.where(
        segment == 0, shifted + 8, (shifted + 0x108) << np.maximum(segment - 1, 0)
    )
    values = np.where(toggled & 0x80, magnitude, -magnitude)
    return _read_only(values.astype(np.int16))


def _ulaw_encode_table() -> npt.NDArray[np.uint8]:
    """audioop's ``st_14linear2ulaw(sample >> 2)``: bias 33 on the 14-bit magnitude, clip.

    Clipping the biased magnitude to 0x1FFF (top of segment 7) yields 0x7F before the sign
    mask, which is what g711.c returns for its out-of-range segment 8.
    """
    value = _ALL_INT16 >> 2
    biased = np.minimum(np.abs(value) + 33, 0x1FFF)
    segment = _segment(biased, 0x3F)
    code = (segment << 4) | ((biased >> (segment + 1)) & 0x0F)
    return _index_by_uint16(code ^ np.where(value < 0, 0x7F, 0xFF))


def _alaw_encode_table() -> npt.NDArray[np.uint8]:
    """audioop's ``st_linear2alaw(sample >> 3)``: negatives use ``-v - 1``, even bits toggled."""
    value = _ALL_INT16 >> 3
    magnitude = np.where(value < 0, -value - 1, value)
    segment = _segment(magnitude, 0x1F)
    code = (segment << 4) | ((magnitude >> np.maximum(segment, 1)) & 0x0F)
    return _index_by_uint16(code ^ np.where(value < 0, 0x55, 0xD5))


L16 = LinearCodec("L16", "<")
L16BE = LinearCodec("L16BE", ">")
PCMU = G711Codec("PCMU", 0xFF, _ulaw_decode_table(), _ulaw_encode_table())
PCMA = G711Codec("PCMA", 0xD5, _alaw_decode_table(), _alaw_encode_table())


def builtin_codecs() -> Registry[Codec]:
    """A new registry holding L16, L16BE, PCMU and PCMA, for one plugin manager to extend."""
    registry: Registry[Codec] = Registry("codec")
    for codec in (L16, L16BE, PCMU, PCMA):
        registry.register(codec.name, codec)
    return registry


# Read by the helpers below only; never handed out, so no plugin can register into it.
_BUILTINS = builtin_codecs()


def decode(payload: bytes, codec: str) -> Samples:
    """Decode with a built-in codec named case-insensitively; ``ConfigError`` if unknown."""
    return _BUILTINS.get(codec).decode(payload)


def encode(samples: npt.ArrayLike, codec: str) -> bytes:
    """Encode with a built-in codec named case-insensitively; ``ConfigError`` if unknown."""
    return _BUILTINS.get(codec).encode(samples)


OPUS_RATES = (8000, 12000, 16000, 24000, 48000)
"""The rates an Opus decoder (and encoder) runs at (RFC 6716 section 2)."""

_OPUS_MAX_PACKET_MS = 120.0
_CELT_FRAME_MS = (2.5, 5.0, 10.0, 20.0)
_SILK_FRAME_MS = (10.0, 20.0, 40.0, 60.0)
_HYBRID_FRAME_MS = (10.0, 20.0)


def opus_packet_duration_ms(payload: bytes) -> float:
    """Play time of one Opus packet, from its TOC byte (RFC 6716 sections 3.1 and 3.2).

    The frame size follows from the configuration number (SILK-only 0-11, hybrid 12-15,
    CELT-only 16-31), the frame count from code ``c`` (code 3 reads it from the second
    byte). ``CodecError`` for what the RFC's rules R1-R5 refuse on these bytes: an empty
    packet, code 1 with an odd-sized body, code 3 without a count byte or with no frame,
    more than 120 ms in all. The rest of a packet is checked by the decoder.
    """
    if not payload:
        raise CodecError("Opus packet is empty (RFC 6716 rule R1); a packet has a TOC byte")
    toc = payload[0]
    config, code = toc >> 3, toc & 0x03
    if config < 12:
        frame_ms = _SILK_FRAME_MS[config % 4]
    elif config < 16:
        frame_ms = _HYBRID_FRAME_MS[config % 2]
    else:
        frame_ms = _CELT_FRAME_MS[config % 4]
    if code == 0:
        count = 1
    elif code in (1, 2):
        if code == 1 and (len(payload) - 1) % 2:
            raise CodecError(
                f"Opus code-1 packet of {len(payload)} bytes has an odd-sized body (RFC 6716 "
                "rule R3); two equal frames need an even number of bytes"
            )
        count = 2
    else:
        count = payload[1] & 0x3F if len(payload) > 1 else 0
        if count == 0:
            raise CodecError(
                "Opus code-3 packet has no frame count byte or a count of 0 (RFC 6716 "
                "section 3.2.5, rule R5); the packet was cut or is not Opus"
            )
    total_ms = frame_ms * count
    if total_ms > _OPUS_MAX_PACKET_MS:
        raise CodecError(
            f"Opus packet of {count} x {frame_ms:g} ms = {total_ms:g} ms exceeds "
            f"{_OPUS_MAX_PACKET_MS:g} ms (RFC 6716 rule R5); the packet is not Opus"
        )
    return total_ms


def payload_duration_ms(payload: bytes, codec: str, sample_rate: int, channels: int) -> float:
    """Play time of one frame's payload: from an Opus packet's TOC, or from the size of a
    built-in codec's (see ``duration_ms``). Raises as ``duration_ms`` does, and
    ``CodecError`` for an Opus packet the RFC refuses."""
    if codec.strip().upper() == "OPUS":
        if sample_rate <= 0 or channels <= 0:
            raise ConfigError(
                f"Opus needs sample_rate > 0 and channels > 0, got sample_rate={sample_rate}, "
                f"channels={channels}; check the stream's media description"
            )
        return opus_packet_duration_ms(payload)
    return duration_ms(len(payload), codec, sample_rate, channels)


def bytes_per_sample(codec: str) -> int:
    """Bytes one sample of one channel takes with a built-in codec."""
    return _BUILTINS.get(codec).bytes_per_sample


def duration_ms(n_bytes: int, codec: str, sample_rate: int, channels: int) -> float:
    """Play time of ``n_bytes`` of a built-in codec.

    ``ConfigError`` for an unknown codec, a non-positive rate or channel count, or a
    negative size; ``CodecError`` when the bytes do not hold a whole sample per channel,
    the same frames ``decode`` (or the interleaving after it) would reject.
    """
    if sample_rate <= 0 or channels <= 0 or n_bytes < 0:
        raise ConfigError(
            f"duration needs sample_rate > 0, channels > 0 and n_bytes >= 0, got "
            f"sample_rate={sample_rate}, channels={channels}, n_bytes={n_bytes}; "
            "check the stream's media description"
        )
    frame_bytes = bytes_per_sample(codec) * channels
    if n_bytes % frame_bytes:
        raise CodecError(
            f"{n_bytes} bytes of {codec} with {channels} channel(s) is not a multiple of "
            f"{frame_bytes} bytes per sample frame; check the codec and channel count"
        )
    return n_bytes / frame_bytes / sample_rate * 1000.0
