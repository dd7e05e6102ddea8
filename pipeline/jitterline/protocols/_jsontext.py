"""JSON-text wire helpers shared by the dialects that speak JSON over text messages.

Each dialect passes its own words (``Wording``) so that error messages still say which
dialect refused what and what to do next; only the checks themselves live here.
"""

from __future__ import annotations

import base64
import binascii
import functools
import json
from dataclasses import dataclass
from typing import Any

from .. import checks
from ..errors import ConfigError, DialectError
from ..frames import Message

__all__ = [
    "Wording",
    "b64_text",
    "check_max_message_chars",
    "decode_audio",
    "dumps",
    "load_object",
    "short",
]

SHORT_CHARS = 40


@dataclass(frozen=True, slots=True)
class Wording:
    """A dialect's words for the errors ``load_object`` raises.

    ``binary_note`` follows "binary message of N bytes; ", ``size_hint`` the size limit,
    ``constant_hint`` (may be empty) the refusal of ``NaN``/``Infinity``; ``noun`` names the
    top-level object ("envelope", "message") and ``type_key`` the key naming its type.
    """

    binary_note: str
    size_hint: str
    noun: str
    type_key: str
    constant_hint: str = ""


def check_max_message_chars(value: object, default: int) -> int:
    """A dialect's ``max_message_chars`` option, refused unless a positive int."""
    return checks.count("max_message_chars", value, low=1, hint=f"the default is {default}")


def dumps(document: dict[str, Any], *, what: str, advice: str) -> str:
    """Compact JSON; ``ConfigError`` naming ``what`` when JSON cannot carry a value."""
    try:
        return json.dumps(document, separators=(",", ":"), allow_nan=False)
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"cannot serialize {what}: {exc}; {advice}") from exc


def load_object(message: Message, max_chars: int, wording: Wording) -> dict[str, Any]:
    """Decode a JSON object with a string type key, turning every foreign error into
    ``DialectError``; the size check comes first so a runaway peer costs no parsing."""
    data = message.data
    if not isinstance(data, str):
        raise DialectError(f"binary message of {len(data)} bytes; {wording.binary_note}")
    if len(data) > max_chars:
        raise DialectError(
            f"text message of {len(data)} chars exceeds max_message_chars={max_chars}; "
            f"{wording.size_hint}"
        )
    reject = functools.partial(_reject_constant, wording.constant_hint)
    try:
        document = json.loads(data, parse_constant=reject)
    except (ValueError, RecursionError) as exc:
        raise DialectError(f"message is not valid JSON: {short(str(exc))}") from exc
    if not isinstance(document, dict):
        raise DialectError(f"{wording.noun} is a JSON {type(document).__name__}, not an object")
    kind = document.get(wording.type_key)
    if not isinstance(kind, str):
        raise DialectError(f"{wording.noun} {wording.type_key} {short(kind)} is not a string")
    return document


def _reject_constant(hint: str, name: str) -> None:
    suffix = f"; {hint}" if hint else ""
    raise DialectError(f"JSON constant {name} is not a number{suffix}")


def b64_text(audio: bytes) -> str:
    return base64.b64encode(audio).decode("ascii")


def decode_audio(text: object, label: str, *, empty_hint: str) -> bytes:
    """Strict base64 (no newlines, no stray characters), refusing empty audio."""
    if not isinstance(text, str) or not text.isascii():
        raise DialectError(f"{label} {short(text)} is not a base64 string")
    try:
        audio = base64.b64decode(text, validate=True)
    except binascii.Error as exc:
        raise DialectError(f"{label} is not strict base64: {exc}") from exc
    if not audio:
        raise DialectError(f"{label} is empty; {empty_hint}")
    return audio


def short(value: object) -> str:
    """A repr cut to a few dozen chars: error messages name the value, never echo a payload.

    Containers are only described: their repr could be huge or nested deep enough to
    exhaust the recursion limit.
    """
    if isinstance(value, (dict, list)):
        return f"<JSON {'object' if isinstance(value, dict) else 'array'} of {len(value)}>"
    text = repr(value[: SHORT_CHARS + 1] if isinstance(value, str) else value)
    return text if len(text) <= SHORT_CHARS else text[: SHORT_CHARS - 3] + "..."
