"""Shared by the sink tests: tone streams on virtual time, captures of demo runs, and the
entry points as this checkout's pyproject.toml declares them."""

from __future__ import annotations

import sys
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import pytest
from reactivex.scheduler import HistoricalScheduler
from reactivex.subject import Subject

from jitterline import Message, PipelineConfig, PluginHost, build_pipeline
from jitterline.cli import main
from jitterline.protocols.appfoundry import audio_chunk_message, initialize_ack_message

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - the CI's oldest Python
    import tomli as tomllib

__all__ = [
    "FRAME_SAMPLES",
    "RATE",
    "checkout_entry_points",
    "project",
    "record_demo",
    "run_streams",
    "tone",
]

ROOT = Path(__file__).resolve().parent.parent
RATE = 8000
FRAME_SAMPLES = 160
FIXED_60 = PipelineConfig(buffer_policy="fixed", buffer_ms=60.0)


def project(pyproject: Path) -> dict[str, Any]:
    """The ``[project]`` table of a pyproject.toml."""
    table: dict[str, Any] = tomllib.loads(pyproject.read_text(encoding="utf-8"))["project"]
    return table


def tone(frames: int, hz: float = 440.0) -> npt.NDArray[np.int16]:
    """``frames`` 20 ms frames of a sine at 8 kHz: the samples a sender sends."""
    t = np.arange(frames * FRAME_SAMPLES) / RATE
    return (8000 * np.sin(2 * np.pi * hz * t)).astype(np.int16)


def _stream(
    stream_id: str,
    samples: npt.NDArray[np.int16],
    scheduler: HistoricalScheduler,
    *,
    lost: Iterable[int],
    cut_after: int | None,
) -> Subject[Message]:
    """One sender's L16 frames, 20 ms apart on the shared virtual clock, less ``lost``; the
    connection dies after frame ``cut_after`` (the source completes mid-stream)."""
    subject: Subject[Message] = Subject()
    ack = initialize_ack_message(stream_id, now_wall_s=1e9)
    scheduler.schedule_relative(0.0, lambda *_: subject.on_next(Message(ack, 0.0)))
    frames = len(samples) // FRAME_SAMPLES
    skip = set(lost)
    for seq in range(frames if cut_after is None else cut_after + 1):
        if seq in skip:
            continue
        at = 0.01 + 0.02 * seq
        chunk = samples[seq * FRAME_SAMPLES : (seq + 1) * FRAME_SAMPLES]
        text = audio_chunk_message(
            chunk.astype("<i2").tobytes(), seq=seq, capture_wall_s=1e9 + at, sent_wall_s=1e9 + at
        )
        message = Message(text, at)
        scheduler.schedule_relative(at, lambda *_, m=message: subject.on_next(m))
    end_s = 0.5 + 0.02 * (frames if cut_after is None else cut_after)
    scheduler.schedule_relative(end_s, lambda *_: subject.on_completed())
    return subject


def run_streams(
    host: PluginHost,
    streams: dict[str, npt.NDArray[np.int16]],
    *,
    lost: Iterable[int] = (),
    cut_after: int | None = None,
) -> None:
    """Run every stream at once through its own pipeline on one virtual clock."""
    scheduler = HistoricalScheduler()
    lost = tuple(lost)
    for stream_id, samples in streams.items():
        source = _stream(stream_id, samples, scheduler, lost=lost, cut_after=cut_after)
        pipeline = build_pipeline(source, scheduler=scheduler, config=FIXED_60, host=host)
        pipeline.output.subscribe(scheduler=scheduler)
    scheduler.start()


def record_demo(tmp_path: Path, profile: str, duration_s: float = 3.0) -> Path:
    """A capture of ``jitterline demo --profile PROFILE`` (a real run on loopback)."""
    path = tmp_path / f"{profile}.jsonl"
    argv = ["demo", "--profile", profile, "--duration", str(duration_s), "--quiet"]
    code = main([*argv, "--record", str(path), "--json", str(tmp_path / f"{profile}.json")])
    assert code == 0, f"demo --profile {profile} exited {code}"
    return path


@pytest.fixture
def checkout_entry_points(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """The ``jitterline`` entry points as this checkout's pyproject.toml declares them.

    The shared virtualenv's metadata was generated from another checkout; a dist-info put
    first on ``sys.path`` shadows it (importlib.metadata keeps the first distribution of a
    name), so entry-point loading sees exactly what a fresh install of this tree would.
    """
    table = project(ROOT / "pyproject.toml")
    info = tmp_path / "site" / f"jitterline-{table['version']}.dist-info"
    info.mkdir(parents=True)
    (info / "METADATA").write_text(
        f"Metadata-Version: 2.1\nName: jitterline\nVersion: {table['version']}\n"
    )
    lines = [f"{name} = {value}" for name, value in table["entry-points"]["jitterline"].items()]
    (info / "entry_points.txt").write_text("[jitterline]\n" + "\n".join(lines) + "\n")
    monkeypatch.syspath_prepend(str(tmp_path / "site"))
    yield
