"""Decode cost per frame of Opus and of speech-like concealment, against the G.711 floor.

Run: ``python benchmarks/codecs.py [--quick]`` (``python -m benchmarks`` picks up ``run``).
The machine is shared and noisy, so the figures that matter are ratios of two timings taken
back to back in this run (best of several repeats): each candidate's time per 20 ms frame
over a PCMU table decode of the same 20 ms at 8 kHz, the cheapest decode jitterline does.
Absolute microseconds are printed too, for scale only. Needs libopus (``libopus0``).
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable

import numpy as np

from jitterline.codecs import PCMU
from jitterline.concealment import PitchState, conceal, receive
from jitterline.frames import Samples
from jitterline_plugins.opus import OpusDecoder, OpusEncoder

__all__ = ["run"]

FRAME_MS = 20


def _tone(rate: int, count: int) -> Samples:
    wave = np.rint(9830 * np.sin(2 * np.pi * 440 * np.arange(count) / rate))
    samples: Samples = wave.astype(np.int16)
    return samples


def _per_frame_s(repeats: int, frames: int, make: Callable[[], Callable[[], object]]) -> float:
    """Best of ``repeats`` runs of ``frames`` calls, each run with fresh state from ``make``."""
    best = float("inf")
    for _ in range(repeats):
        step = make()
        start = time.perf_counter()
        for _ in range(frames):
            step()
        best = min(best, time.perf_counter() - start)
    return best / frames


def _pcmu(frames: int) -> Callable[[], Callable[[], object]]:
    payload = PCMU.encode(_tone(8000, 160))
    return lambda: lambda: PCMU.decode(payload)


def _opus_decode(rate: int, frames: int) -> Callable[[], Callable[[], object]]:
    size = rate * FRAME_MS // 1000
    source = _tone(rate, size * frames)
    encoder = OpusEncoder(rate, 1)
    packets = [encoder.encode(source[i * size : (i + 1) * size]) for i in range(frames)]

    def make() -> Callable[[], object]:
        decoder = OpusDecoder(rate, 1)
        cycle = iter(packets)
        return lambda: decoder.decode(next(cycle))

    return make


def _opus_plc(rate: int) -> Callable[[], Callable[[], object]]:
    size = rate * FRAME_MS // 1000

    def make() -> Callable[[], object]:
        decoder = OpusDecoder(rate, 1)
        decoder.decode(OpusEncoder(rate, 1).encode(_tone(rate, size)))
        return lambda: decoder.conceal(size)

    return make


def _speech_conceal(rate: int) -> Callable[[], Callable[[], object]]:
    """A loss run of one frame then a received frame, repeated: both halves of the work."""
    size = rate * FRAME_MS // 1000
    frame = _tone(rate, size)

    def make() -> Callable[[], object]:
        state = [receive(PitchState.empty(rate, 1), _tone(rate, size * 3))[1]]

        def step() -> None:
            _, lost = conceal(state[0], size)
            _, state[0] = receive(lost, frame)

        return step

    return make


def _speech_receive(rate: int) -> Callable[[], Callable[[], object]]:
    """What ``conceal="speech"`` costs on every frame that did arrive: keeping history."""
    size = rate * FRAME_MS // 1000
    frame = _tone(rate, size)

    def make() -> Callable[[], object]:
        state = [PitchState.empty(rate, 1)]

        def step() -> None:
            _, state[0] = receive(state[0], frame)

        return step

    return make


def run(quick: bool) -> dict[str, float]:
    """``codec_*`` figures: microseconds per 20 ms frame and ratios to PCMU decode."""
    frames, repeats = (200, 3) if quick else (2000, 7)
    floor = _per_frame_s(repeats, frames, _pcmu(frames))
    results = {"codec_pcmu_decode_us": floor * 1e6}
    candidates = {
        "opus8k_decode": _opus_decode(8000, frames),
        "opus48k_decode": _opus_decode(48000, frames),
        "opus48k_plc": _opus_plc(48000),
        "speech_conceal8k": _speech_conceal(8000),
        "speech_receive8k": _speech_receive(8000),
    }
    for name, make in candidates.items():
        cost = _per_frame_s(repeats, frames, make)
        results[f"codec_{name}_us"] = cost * 1e6
        results[f"codec_{name}_vs_pcmu"] = cost / floor
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--quick", action="store_true", help="fewer frames and repeats")
    args = parser.parse_args()
    for key, value in run(args.quick).items():
        unit = "x" if key.endswith("_vs_pcmu") else " us/frame"
        print(f"{key:34s} {value:10.2f}{unit}")


if __name__ == "__main__":
    main()
