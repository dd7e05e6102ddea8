"""A real local appfoundry endpoint for demos and tests: WebSocket audio plus OAuth tokens.

``Emulator`` streams a tone or a WAV in real time through a seeded impairment model
(``Impairments``, ``PROFILES``) to clients on loopback; see ``server`` for the conversation
and ``impairments`` for the model.
"""

from __future__ import annotations

from .audio import AudioSource, ToneSource, WavSource
from .impairments import PROFILES, FrameFate, ImpairmentModel, Impairments
from .server import WS_PATH, Emulator, EmulatorCounters
from .tokens import TOKEN_PATH

__all__ = [
    "PROFILES",
    "TOKEN_PATH",
    "WS_PATH",
    "AudioSource",
    "Emulator",
    "EmulatorCounters",
    "FrameFate",
    "ImpairmentModel",
    "Impairments",
    "ToneSource",
    "WavSource",
]
