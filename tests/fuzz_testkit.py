"""What the fuzz tests share: the profile's example budget and the documented events."""

from __future__ import annotations

import importlib.metadata
import os
import typing
from pathlib import Path

from hypothesis import settings

from jitterline.frames import Event
from jitterline.plugins import DISABLE_ENV, ENTRY_POINT_GROUP

__all__ = ["DOCUMENTED_EVENTS", "examples", "only_this_checkouts_plugins"]

DOCUMENTED_EVENTS = typing.get_args(Event)
"""``frames.Event``: the only types a protocol object's ``receive`` and ``timer`` return."""


def examples(share: float) -> int:
    """``share`` of the loaded profile's ``max_examples`` (tests/conftest.py), at least 10:
    how a test with costly examples stays inside the CI budget and still grows with
    ``HYPOTHESIS_PROFILE=long``."""
    profile = settings.default
    budget = profile.max_examples if profile is not None else 100
    return max(10, int(budget * share))


def only_this_checkouts_plugins() -> dict[str, str]:
    """Environment for a CLI run that loads only the plugins of this checkout: the shared
    virtualenv may register entry points of another checkout (newer plugins whose hooks
    this one's hookspecs lack), which have nothing to do with the test."""
    plugins = Path(__file__).resolve().parent.parent / "plugins"
    foreign = [
        entry.name
        for entry in importlib.metadata.entry_points(group=ENTRY_POINT_GROUP)
        if not (plugins / (entry.value.split(":")[0].replace(".", "/") + ".py")).exists()
    ]
    named = [os.environ.get(DISABLE_ENV, ""), *foreign]
    return {DISABLE_ENV: ",".join(name for name in named if name)}
