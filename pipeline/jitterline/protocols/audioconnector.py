"""Genesys Audio Connector: AudioHook v2 for voice bots, in both directions.

Audio Connector keeps AudioHook's envelope, sequencing, signatures and close handshake
(docs/protocols.md, "Audio Connector") and differs only in tables and defaults, so it is
``AudioHookDialect`` with other class attributes plus the bot's verbs:

- only the ``external`` channel (the caller) reaches the server, in PCMU;
- ``open`` carries ``inputVariables`` (copied into ``StreamOpened.info``);
- the client adds ``dtmf {digit}``, ``playback_started`` and ``playback_completed``
  (each becomes a ``StreamSignal`` named by its type);
- the server sends ``event`` entities ``barge_in`` and ``bot_turn_response``, and
  ``disconnect`` may carry ``outputVariables`` (what the bot hands back to the flow);
- the server sends the bot's audio back as binary PCMU messages.

Outbound audio is cut into messages of at most ``FRAME_BYTES`` (1600 bytes = 200 ms of
PCMU), the size the reference AudioHook client sends: Genesys answers larger bursts with
429 (rate limiting). Pacing those frames in real time is the shell's job, since this object
reads no clock; it exposes ``frame_bytes`` so the shell knows the unit it paces.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, ClassVar

import numpy.typing as npt

from .. import checks
from ..errors import ConfigError
from .audiohook import (
    CLIENT_MESSAGES,
    CLIENT_SESSION_TYPES,
    SERVER_MESSAGES,
    AudioHookDialect,
    Field,
    MediaOffer,
    Parameters,
)

__all__ = ["BOT_DISPOSITIONS", "FRAME_BYTES", "AudioConnectorDialect"]

FRAME_BYTES = 1600
"""Largest outbound audio message: 200 ms of 8 kHz PCMU, which Genesys does not throttle."""

BOT_DISPOSITIONS = ("no_input", "no_match", "match")
"""``bot_turn_response.data.disposition`` values."""

_BOT_CLIENT_TYPES = ("dtmf", "playback_started", "playback_completed")


class AudioConnectorDialect(AudioHookDialect):
    """One Audio Connector connection; options as ``AudioHookDialect`` plus
    ``frame_bytes`` (server role: the largest outbound audio message)."""

    name: str = "audioconnector"
    client_messages: ClassVar[Mapping[str, Parameters]] = {
        **CLIENT_MESSAGES,
        "open": (*CLIENT_MESSAGES["open"], Field("inputVariables", "object")),
        "dtmf": (Field("digit", "str", True),),
        "playback_started": (),
        "playback_completed": (),
    }
    server_messages: ClassVar[Mapping[str, Parameters]] = {
        **SERVER_MESSAGES,
        "disconnect": (*SERVER_MESSAGES["disconnect"], Field("outputVariables", "object")),
    }
    client_session_types: ClassVar[tuple[str, ...]] = (*CLIENT_SESSION_TYPES, *_BOT_CLIENT_TYPES)
    server_audio: ClassVar[bool] = True
    default_formats: ClassVar[tuple[str, ...]] = ("PCMU",)
    default_channels: ClassVar[tuple[str, ...]] = ("external",)
    default_offers: ClassVar[tuple[MediaOffer, ...]] = (("PCMU", ("external",)),)
    open_info_keys: ClassVar[tuple[str, ...]] = (
        *AudioHookDialect.open_info_keys,
        "inputVariables",
    )

    def __init__(self, *, frame_bytes: int = FRAME_BYTES, **options: Any) -> None:
        super().__init__(**options)
        self.frame_bytes = checks.count(
            "frame_bytes", frame_bytes, low=1, hint=f"Genesys accepts up to {FRAME_BYTES}"
        )

    def send_audio(self, audio: bytes | npt.ArrayLike) -> bool:
        """Server: the bot's PCMU audio, queued as messages of at most ``frame_bytes``.
        Client: as ``AudioHookDialect.send_audio``. False when the session does not run."""
        if self.role == "client":
            return super().send_audio(audio)
        if not isinstance(audio, bytes):
            raise ConfigError("the bot's audio must be PCMU bytes (8 kHz mono)")
        if self.state not in ("open", "ending") or self.media is None:
            return False
        self._queue.extend(
            audio[start : start + self.frame_bytes]
            for start in range(0, len(audio), self.frame_bytes)
        )
        return True

    def barge_in(self) -> bool:
        """Server: the caller spoke over the bot; Genesys stops playing the bot's audio."""
        return self.send_event([{"type": "barge_in", "data": {}}])

    def bot_turn_response(
        self, disposition: str, text: str | None = None, confidence: float | None = None
    ) -> bool:
        """Server: how the bot understood the caller's turn."""
        if disposition not in BOT_DISPOSITIONS:
            raise ConfigError(f"disposition {disposition!r} must be one of {BOT_DISPOSITIONS}")
        data: dict[str, Any] = {"disposition": disposition}
        if text is not None:
            data["text"] = text
        if confidence is not None:
            data["confidence"] = checks.number("confidence", confidence, low=0.0, high=1.0)
        return self.send_event([{"type": "bot_turn_response", "data": data}])

    def disconnect(
        self,
        now_s: float,
        reason: str = "completed",
        info: str = "",
        output_variables: Mapping[str, str] | None = None,
    ) -> None:
        """Server: end the bot session, handing ``output_variables`` back to the flow."""
        self._require("server", "disconnect")
        extra = {} if output_variables is None else {"outputVariables": dict(output_variables)}
        self._queue_disconnect(reason, info, now_s, extra)

    def send_dtmf(self, digit: str) -> bool:
        """Client: a key the caller pressed."""
        return self._send_bot_message("dtmf", {"digit": digit})

    def playback_started(self) -> bool:
        """Client: Genesys started playing the bot's audio."""
        return self._send_bot_message("playback_started", {})

    def playback_completed(self) -> bool:
        """Client: Genesys finished playing the bot's audio."""
        return self._send_bot_message("playback_completed", {})

    def _send_bot_message(self, kind: str, parameters: dict[str, Any]) -> bool:
        self._require("client", kind)
        if self.state != "open":
            return False
        self._send(kind, parameters)
        return True
