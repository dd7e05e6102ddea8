"""Real audio end to end: the time a recording goes on after the sender's last frame is
idle, not loss. The same jittered, reordered stream recorded with 0, 0.3, 1 and 3 s of
idle tail replays to ``lost`` 0, one verdict, and a WAV holding exactly the source's
frames (a late one concealed in its slot)."""

from __future__ import annotations

import json
import random
import wave
from pathlib import Path

import numpy as np
import pytest

from jitterline import Message, PipelineConfig
from jitterline.capture import CaptureHeader, CaptureWriter
from jitterline.cli import main
from jitterline.codecs import encode
from jitterline.frames import ConnectionStats
from jitterline.protocols.appfoundry import audio_chunk_message, initialize_ack_message

FRAMES = 297  # the 5.9 s prompt, 20 ms L16 frames
FRAME_S = 0.02


def speechlike(seq: int) -> np.ndarray:
    """A different, recognisable block per frame: its seq in every sample."""
    return np.full(160, seq + 1, dtype=np.int16)


def record(path: Path, tail_s: float, *, ended: bool) -> None:
    rng = random.Random(7)
    writer = CaptureWriter(path, CaptureHeader(dialect="appfoundry", config=PipelineConfig()))
    writer.message(Message(initialize_ack_message("prompt", now_wall_s=1e9), 0.0))
    arrivals = []
    for seq in range(FRAMES):
        sent = 1e9 + seq * FRAME_S
        text = audio_chunk_message(
            encode(speechlike(seq), "L16"), seq=seq, capture_wall_s=sent, sent_wall_s=sent
        )
        arrivals.append((round(0.1 + seq * FRAME_S + rng.expovariate(1 / 0.015), 6), text))
    last_s = 0.0
    for at_s, text in sorted(arrivals):  # exponential delays reorder some frames
        writer.message(Message(text, at_s))
        last_s = at_s
    writer.end(round(last_s + tail_s, 6), ConnectionStats(), ended=ended)
    writer.close()


@pytest.mark.parametrize("ended", [False, True], ids=["cut", "ended"])
def test_an_idle_tail_of_any_length_is_not_loss(tmp_path: Path, ended: bool) -> None:
    verdicts = set()
    for tail_s in (0.0, 0.3, 1.0, 3.0):
        capture, summary, audio = (
            tmp_path / f"{tail_s}.{ext}" for ext in ("jsonl", "json", "wav")
        )
        record(capture, tail_s, ended=ended)

        code = main(["replay", str(capture), "--json", str(summary), "--wav", str(audio)])

        assert code == 0
        document = json.loads(summary.read_text())
        frames = document["frames"]
        assert frames["lost"] == 0, tail_s
        assert frames["balanced"]
        assert frames["received"] == FRAMES
        verdicts.add(document["diagnosis"]["verdict"])
        with wave.open(str(audio), "rb") as wav:
            samples = np.frombuffer(wav.readframes(wav.getnframes()), "<i2")
        blocks = samples.reshape(-1, 160)[:, 0]
        if ended:  # drained: every frame plays, the WAV is the source
            assert frames["unplayed"] == 0
            assert len(blocks) == FRAMES
        played = [b for b in blocks if b]  # a late frame's slot holds silence
        assert played == sorted(played)
        assert set(played) <= set(range(1, FRAMES + 1))
        assert len(blocks) == frames["played"] + frames["concealed"]
    assert len(verdicts) == 1  # how long the recording idled changes nothing
