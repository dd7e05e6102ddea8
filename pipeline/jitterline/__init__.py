"""jitterline: a resilient, pluggable real-time audio stream pipeline for WebSocket voice.

Each live WebSocket audio stream (many at once, dialled out or connecting to us) becomes a
ReactiveX observable of frames that passes through, once per stream and channel::

    decode -> jitter buffer -> latency window -> buffer-size adjuster -> sinks (pluggy hooks)
                   ^                                      |
                   +---------- target delay --------------+

The names below are the public API; plugins use nothing else. ``jitterline.stages`` has
each stage as an operator for chains composed by hand.

The names load on first use (PEP 562): ``jitterline --version`` and ``--help`` must not
pay for numpy and reactivex, which the stages import.
"""

from __future__ import annotations

import importlib
import logging
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from . import stages
    from .adjuster import BufferPolicy
    from .codecs import Codec
    from .config import PipelineConfig
    from .diagnosis import Diagnosis, Thresholds, diagnose
    from .errors import (
        AuthError,
        CodecError,
        ConfigError,
        ConnectionLost,
        DialectError,
        JitterlineError,
        PluginError,
        RateLimited,
        TransportError,
    )
    from .frames import (
        Alert,
        AudioFrame,
        ConnectionEvent,
        FrameCounts,
        Message,
        Stats,
        StreamInfo,
    )
    from .hookspecs import hookimpl
    from .plugins import PluginHost
    from .schedulers import VirtualScheduler
    from .stages import Pipeline, build_pipeline, scheduler_clock

__version__ = "0.1.0"

__all__ = [
    "Alert",
    "AudioFrame",
    "AuthError",
    "BufferPolicy",
    "Codec",
    "CodecError",
    "ConfigError",
    "ConnectionEvent",
    "ConnectionLost",
    "Diagnosis",
    "DialectError",
    "FrameCounts",
    "JitterlineError",
    "Message",
    "Pipeline",
    "PipelineConfig",
    "PluginError",
    "PluginHost",
    "RateLimited",
    "Stats",
    "StreamInfo",
    "Thresholds",
    "TransportError",
    "VirtualScheduler",
    "__version__",
    "build_pipeline",
    "diagnose",
    "hookimpl",
    "scheduler_clock",
    "stages",
]

_HOMES = {
    "BufferPolicy": "adjuster",
    "Codec": "codecs",
    "PipelineConfig": "config",
    **dict.fromkeys(("Diagnosis", "Thresholds", "diagnose"), "diagnosis"),
    **dict.fromkeys(
        (
            "AuthError",
            "CodecError",
            "ConfigError",
            "ConnectionLost",
            "DialectError",
            "JitterlineError",
            "PluginError",
            "RateLimited",
            "TransportError",
        ),
        "errors",
    ),
    **dict.fromkeys(
        (
            "Alert",
            "AudioFrame",
            "ConnectionEvent",
            "FrameCounts",
            "Message",
            "Stats",
            "StreamInfo",
        ),
        "frames",
    ),
    "hookimpl": "hookspecs",
    "PluginHost": "plugins",
    "VirtualScheduler": "schedulers",
    **dict.fromkeys(("Pipeline", "build_pipeline", "scheduler_clock"), "stages"),
}
"""Where each public name lives."""


def __getattr__(name: str) -> Any:
    if name == "stages":
        return importlib.import_module(".stages", __name__)
    home = _HOMES.get(name)
    if home is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{home}", __name__), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))


logging.getLogger("jitterline").addHandler(logging.NullHandler())
