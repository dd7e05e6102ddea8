"""jitterline: a resilient, pluggable real-time audio stream pipeline for WebSocket voice.

A live WebSocket audio stream becomes a ReactiveX observable of frames that passes through
decode -> jitter buffer -> latency window -> buffer-size adjuster -> sinks (pluggy hooks).
"""

from __future__ import annotations

import logging

__version__ = "0.1.0"

logging.getLogger("jitterline").addHandler(logging.NullHandler())
