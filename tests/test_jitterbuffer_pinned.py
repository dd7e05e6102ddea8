"""The jitter buffer does, bit for bit, what it did before it was rewritten for speed.

``jitterbuffer_pinned.json`` holds the fingerprints (``jitterbuffer_testkit``) of seeded
random traces as the buffer of commit 3c31cc4 (before the per-frame fast paths) played
them: every frame out, counter, delay, statistic, refusal and log line after every call.
A change that means to alter behaviour re-records them (``python
tests/test_jitterbuffer_pinned.py > tests/jitterbuffer_pinned.json``) and says why.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from jitterbuffer_testkit import fingerprint, make_trace, make_wild_trace

PINNED = Path(__file__).with_name("jitterbuffer_pinned.json")
SEEDS = range(256)


@pytest.fixture(scope="module")
def pinned() -> dict[str, str]:
    recorded: dict[str, str] = json.loads(PINNED.read_text())
    return recorded


def record() -> dict[str, str]:
    """The fingerprints of every pinned trace, keyed as in ``jitterbuffer_pinned.json``."""
    streams = {str(seed): fingerprint(make_trace(seed)) for seed in SEEDS}
    wild = {f"wild-{seed}": fingerprint(make_wild_trace(seed)) for seed in SEEDS}
    return streams | wild


@pytest.mark.parametrize("seed", SEEDS)
def test_buffer_plays_the_seeded_stream_as_pinned(seed: int, pinned: dict[str, str]) -> None:
    assert fingerprint(make_trace(seed)) == pinned[str(seed)]


@pytest.mark.parametrize("seed", SEEDS)
def test_buffer_answers_the_seeded_wild_calls_as_pinned(seed: int, pinned: dict[str, str]) -> None:
    assert fingerprint(make_wild_trace(seed)) == pinned[f"wild-{seed}"]


if __name__ == "__main__":
    print(json.dumps(record(), indent=0))
