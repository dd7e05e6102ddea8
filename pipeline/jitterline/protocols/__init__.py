"""Sans-I/O wire dialects: each turns a received ``Message`` into events and builds the
messages we send, with no socket inside (the websockets ``Protocol`` model).

A dialect object is stateful (sequence counters, the stream id it learned) and belongs to
one stream; a registry therefore holds dialect *factories*.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any, Protocol, runtime_checkable

from ..frames import Event, Message

__all__ = ["Dialect", "DialectFactory"]


@runtime_checkable
class Dialect(Protocol):
    """One stream's parser and serializer.

    ``parse`` raises only ``DialectError`` (or ``CodecError``) for bad input; the decode
    stage counts those as malformed and goes on. ``opening`` gives the messages to send
    right after the WebSocket opens (the handshake of the dialect).
    """

    name: str

    def parse(self, message: Message) -> list[Event]: ...

    def opening(self, session_id: str, metadata: Mapping[str, Any]) -> list[str | bytes]: ...


DialectFactory = Callable[[], Dialect]
