"""Opus (RFC 6716) through the system's libopus: the ``OPUS`` codec, as a third party would add it.

Binding: a small ctypes layer over ``libopus.so.0`` (Debian's ``libopus0``, installed with
``apt-get install libopus0``; the ``opus`` extra has no Python package). Of the options,
the Python bindings on PyPI are either unmaintained (opuslib, last release 2018), a
one-person fork with no type hints (opuslib-next) or a 36 MB FFmpeg bundle whose decoder
API has no packet-loss concealment or FEC call (av); the distribution's library gets
security updates with the system, and the eight functions used here are typed below.

Opus frames depend on the ones before them, so this is a ``StreamCodec``: the pipeline
checks each packet's TOC on arrival (``check``) and decodes at playout in seq order with
one ``OpusDecoder`` per stream, whose ``conceal`` runs libopus's own concealment for a
frame that never came, or decodes the in-band FEC (LBRR) of the next packet when that one
is already buffered. ``decode``/``encode`` of the plain ``Codec`` protocol treat one packet
alone, at 48 kHz, as the first of a stream: for tools and tests, not for a stream.

The library is loaded on first use; without it every Opus stream gets one ``CodecError``
line saying what to install, and nothing else breaks.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import weakref
from collections.abc import Callable
from dataclasses import dataclass
from functools import cache
from typing import Any

import numpy as np
import numpy.typing as npt

from jitterline import CodecError, hookimpl
from jitterline.codecs import OPUS_RATES, Codec, opus_packet_duration_ms
from jitterline.frames import Samples

__all__ = ["OPUS", "OpusCodec", "OpusDecoder", "OpusEncoder", "libopus_version", "plugin"]

_APPLICATION_VOIP = 2048
_SET_BITRATE = 4002
_SET_INBAND_FEC = 4012
_SET_PACKET_LOSS_PERC = 4014
_GET_LOOKAHEAD = 4027
_MAX_PACKET_BYTES = 4000  # libopus's own recommendation for opus_encode's buffer
_MAX_FRAME_MS = 120
_CHANNELS = (1, 2)
_INSTALL_HINT = (
    "install the system library (apt-get install libopus0, brew install opus) or pick "
    "another codec (L16, PCMU, PCMA)"
)

_Int16Ptr = ctypes.POINTER(ctypes.c_int16)
_BytePtr = ctypes.POINTER(ctypes.c_ubyte)
_IntPtr = ctypes.POINTER(ctypes.c_int)


@cache
def _lib() -> Any:
    """libopus with its signatures declared; ``CodecError`` with the install hint if absent."""
    name = ctypes.util.find_library("opus") or "libopus.so.0"
    try:
        lib = ctypes.CDLL(name)
    except OSError as exc:
        raise CodecError(
            f"Opus needs libopus, which was not found ({exc}); {_INSTALL_HINT}"
        ) from exc
    lib.opus_get_version_string.restype = ctypes.c_char_p
    lib.opus_strerror.restype = ctypes.c_char_p
    lib.opus_strerror.argtypes = [ctypes.c_int]
    lib.opus_decoder_create.restype = ctypes.c_void_p
    lib.opus_decoder_create.argtypes = [ctypes.c_int32, ctypes.c_int, _IntPtr]
    lib.opus_decoder_destroy.argtypes = [ctypes.c_void_p]
    lib.opus_decode.restype = ctypes.c_int
    lib.opus_decode.argtypes = [
        ctypes.c_void_p,
        _BytePtr,
        ctypes.c_int32,
        _Int16Ptr,
        ctypes.c_int,
        ctypes.c_int,
    ]
    lib.opus_encoder_create.restype = ctypes.c_void_p
    lib.opus_encoder_create.argtypes = [ctypes.c_int32, ctypes.c_int, ctypes.c_int, _IntPtr]
    lib.opus_encoder_destroy.argtypes = [ctypes.c_void_p]
    lib.opus_encode.restype = ctypes.c_int32
    lib.opus_encode.argtypes = [ctypes.c_void_p, _Int16Ptr, ctypes.c_int, _BytePtr, ctypes.c_int32]
    lib.opus_encoder_ctl.restype = ctypes.c_int
    return lib


def libopus_version() -> str:
    """The loaded library's version string, e.g. ``libopus 1.3.1``."""
    version: bytes = _lib().opus_get_version_string()
    return version.decode("ascii", "replace")


def _error(code: int) -> str:
    text: bytes = _lib().opus_strerror(code)
    return text.decode("ascii", "replace")


def _check_format(sample_rate: int, channels: int) -> None:
    if sample_rate not in OPUS_RATES or channels not in _CHANNELS:
        rates = ", ".join(str(rate) for rate in OPUS_RATES)
        raise CodecError(
            f"Opus runs at {rates} Hz with 1 or 2 channels, not sample_rate={sample_rate} "
            f"with channels={channels}; resample the source or ask the sender for one of those"
        )


def _bytes_ptr(payload: bytes) -> Any:
    return ctypes.cast(ctypes.c_char_p(payload), _BytePtr)


class OpusDecoder:
    """One stream's libopus decoder (``FrameDecoder``); freed with the object."""

    def __init__(self, sample_rate: int, channels: int) -> None:
        _check_format(sample_rate, channels)
        lib = _lib()
        error = ctypes.c_int(0)
        handle = lib.opus_decoder_create(sample_rate, channels, ctypes.byref(error))
        if error.value != 0 or not handle:
            raise CodecError(f"opus_decoder_create failed: {_error(error.value)}")
        self.sample_rate = sample_rate
        self.channels = channels
        self._handle: int = handle
        self._lib = lib
        self._pcm = np.empty(sample_rate * _MAX_FRAME_MS // 1000 * channels, dtype=np.int16)
        weakref.finalize(self, lib.opus_decoder_destroy, handle)

    def decode(self, payload: bytes) -> Samples:
        if not payload:
            raise CodecError("Opus packet is empty (RFC 6716 rule R1); nothing to decode")
        max_samples = self._pcm.size // self.channels
        return self._run(_bytes_ptr(payload), len(payload), max_samples, fec=False)

    def conceal(self, samples_per_channel: int, next_payload: bytes | None = None) -> Samples:
        """libopus's concealment, or the LBRR copy carried by ``next_payload``: with
        ``decode_fec=1`` libopus decodes that redundancy if the packet has it and conceals
        otherwise, so one call covers both cases."""
        if samples_per_channel <= 0 or samples_per_channel * self.channels > self._pcm.size:
            raise CodecError(
                f"cannot conceal {samples_per_channel} samples per channel; Opus frames "
                f"last 2.5 to {_MAX_FRAME_MS} ms"
            )
        if next_payload:
            try:
                return self._run(
                    _bytes_ptr(next_payload), len(next_payload), samples_per_channel, fec=True
                )
            except CodecError:
                pass  # a next packet libopus refuses carries no usable FEC: plain PLC
        return self._run(None, 0, samples_per_channel, fec=False)

    def _run(self, data: Any, size: int, frame_size: int, *, fec: bool) -> Samples:
        pcm = self._pcm.ctypes.data_as(_Int16Ptr)
        count = self._lib.opus_decode(self._handle, data, size, pcm, frame_size, int(fec))
        if count < 0:
            raise CodecError(
                f"libopus could not decode the packet ({_error(count)}); the packet is "
                "corrupt or not Opus, and is concealed instead"
            )
        samples: Samples = self._pcm[: count * self.channels].copy()
        samples.flags.writeable = False
        return samples


class OpusEncoder:
    """One stream's libopus encoder (``FrameEncoder``), VoIP mode with in-band FEC on.

    ``lookahead_samples`` is the encoder's algorithmic delay at its rate: a decoded stream
    lags its source by that much, which a round-trip comparison must skip.
    """

    def __init__(
        self,
        sample_rate: int,
        channels: int,
        *,
        bitrate_bps: int = 32000,
        expected_loss_pct: int = 10,
    ) -> None:
        _check_format(sample_rate, channels)
        lib = _lib()
        error = ctypes.c_int(0)
        handle = lib.opus_encoder_create(
            sample_rate, channels, _APPLICATION_VOIP, ctypes.byref(error)
        )
        if error.value != 0 or not handle:
            raise CodecError(f"opus_encoder_create failed: {_error(error.value)}")
        self.sample_rate = sample_rate
        self.channels = channels
        self._handle: int = handle
        self._lib = lib
        weakref.finalize(self, lib.opus_encoder_destroy, handle)
        self._ctl(_SET_BITRATE, bitrate_bps)
        self._ctl(_SET_INBAND_FEC, 1)
        self._ctl(_SET_PACKET_LOSS_PERC, expected_loss_pct)
        lookahead = ctypes.c_int32(0)
        self._ctl(_GET_LOOKAHEAD, ctypes.byref(lookahead))
        self.lookahead_samples = lookahead.value
        self._packet = (ctypes.c_ubyte * _MAX_PACKET_BYTES)()

    def _ctl(self, request: int, value: Any) -> None:
        arg = value if not isinstance(value, int) else ctypes.c_int32(value)
        code = self._lib.opus_encoder_ctl(
            ctypes.c_void_p(self._handle), ctypes.c_int(request), arg
        )
        if code != 0:
            raise CodecError(f"opus_encoder_ctl({request}) failed: {_error(code)}")

    def encode(self, samples: npt.ArrayLike) -> bytes:
        pcm = np.ascontiguousarray(samples, dtype=np.int16)
        if pcm.ndim != 1 or pcm.size % self.channels:
            raise CodecError(
                f"Opus encode needs 1-D interleaved samples, a multiple of channels="
                f"{self.channels}; got shape {pcm.shape}"
            )
        frame_size = pcm.size // self.channels
        size = self._lib.opus_encode(
            self._handle,
            pcm.ctypes.data_as(_Int16Ptr),
            frame_size,
            self._packet,
            len(self._packet),
        )
        if size < 0:
            raise CodecError(
                f"libopus could not encode {frame_size} samples at {self.sample_rate} Hz "
                f"({_error(size)}); Opus frames last 2.5, 5, 10, 20, 40 or 60 ms"
            )
        return bytes(self._packet[:size])


@dataclass(frozen=True, slots=True)
class OpusCodec:
    """The ``OPUS`` codec: a ``Codec`` for the registry and a ``StreamCodec`` for streams.

    ``bytes_per_sample`` is 0 because Opus has no fixed size per sample: a frame's duration
    comes from its TOC byte (``jitterline.codecs.payload_duration_ms``).
    """

    name: str = "OPUS"

    @property
    def bytes_per_sample(self) -> int:
        return 0

    @property
    def silence_byte(self) -> int:
        return 0x00

    def check(self, payload: bytes, sample_rate: int, channels: int) -> None:
        _check_format(sample_rate, channels)
        _lib()
        opus_packet_duration_ms(payload)

    def decoder(self, sample_rate: int, channels: int) -> OpusDecoder:
        return OpusDecoder(sample_rate, channels)

    def encoder(self, sample_rate: int, channels: int) -> OpusEncoder:
        return OpusEncoder(sample_rate, channels)

    def decode(self, payload: bytes) -> Samples:
        channels = 2 if payload and payload[0] & 0x04 else 1
        return OpusDecoder(48000, channels).decode(payload)

    def encode(self, samples: npt.ArrayLike) -> bytes:
        return OpusEncoder(48000, 1).encode(samples)


OPUS = OpusCodec()


class _OpusPlugin:
    @hookimpl
    def jitterline_register_codecs(self, register: Callable[[str, Codec], None]) -> None:
        register(OPUS.name, OPUS)


plugin = _OpusPlugin()
