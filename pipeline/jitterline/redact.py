"""One redaction for every credential form, applied wherever text leaves the process.

Secrets reach text in more shapes than the raw value: a token endpoint that echoes the
request's ``Authorization: Basic base64(id:secret)`` in its ``error_description``, a URL with
``?access_token=``, a bearer token in a proxy's error page, an AudioHook upgrade's
``X-API-KEY`` or ``Signature`` header quoted by a refusal. Replacing only the raw secret
(what the token provider did) leaks the others, so this module recognises each *form*, and
additionally any value registered as secret (``register_secret``, ``register_credentials``)
in its raw, URL-quoted and base64 forms, wherever it appears.

Where it applies (docs/reliability.md lists the boundaries): ``JitterlineError`` messages,
capture lines (``capture.CaptureWriter``), log records (``RedactingFilter``, installed on
the handlers by ``install_log_redaction``: a filter on the "jitterline" *logger* would not
see records of its child loggers, since Python consults only the emitting logger's
filters), and summaries.

Redaction is idempotent and keeps the text's shape (``Bearer ***``, ``?token=***``), so a
reader still sees *which* credential was there. It is pattern matching, so it may also
mask a harmless value that looks like a credential; that is the price of never showing one.
"""

from __future__ import annotations

import base64
import logging
import re
import threading
import urllib.parse
from collections.abc import Callable, Iterable, Mapping
from typing import Any

__all__ = [
    "MASK",
    "MIN_SECRET_CHARS",
    "RedactingFilter",
    "forget_secrets",
    "install_log_redaction",
    "redact",
    "redact_json",
    "register_credentials",
    "register_secret",
]

MASK = "***"

MIN_SECRET_CHARS = 4
"""Shorter registered values are refused: masking every "ab" in every log line would make
the logs useless and such a secret is no secret anyway."""

_TOKEN_CHARS = r"[A-Za-z0-9._~+/=\-]+"
"""RFC 6750 b64token (bearer) and base64 (Basic) characters."""

_SECRET_NAMES = (
    r"access_token|refresh_token|id_token|client_secret|api_key|apikey|x-api-key|password"
    r"|passwd|secret|authorization|proxy-authorization|x-twilio-signature|signature"
)
"""Names whose value is a credential wherever they appear as ``name=value`` or a header."""

_QUERY_ONLY_NAMES = r"token|key|sig|auth|code"
"""Generic names that are credentials in a query string (``?token=``) but common words
elsewhere, so they are masked only after ``?``, ``&`` or ``;``."""


def _keep_quotes(match: re.Match[str]) -> str:
    """The mask in the value's own quotes, so a JSON document stays JSON."""
    value = match.group(2)
    quote = value[0] if value[:1] in ("'", '"') else ""
    return f"{match.group(1)}{quote}{MASK}{quote}"


_PATTERNS: tuple[tuple[re.Pattern[str], str | Callable[[re.Match[str]], str]], ...] = (
    # Authorization schemes: "Basic <b64>", "Bearer <token>". The credential must be 6+
    # characters with a capital, a digit or a symbol: prose ("bearer token.", "Basic
    # auth") stays readable.
    (
        re.compile(
            rf"\b((?i:basic|bearer))(\s+)(?=[A-Za-z0-9._~+/=\-]{{6}})"
            rf"(?=[a-z.]*[A-Z0-9_~+/=\-]){_TOKEN_CHARS}"
        ),
        rf"\1\2{MASK}",
    ),
    # Header lines: "Authorization: ...", "X-API-KEY: ..." (the value up to the end of the
    # line, a comma or a quote; a quoted value keeps its quotes, so JSON stays JSON).
    (
        re.compile(
            r"((?:^|[\s\"'{,(])(?:authorization|proxy-authorization|x-api-key"
            r"|x-twilio-signature|cookie|set-cookie)\"?\s*:\s*)"
            r"(\"(?!\*\*\*\")[^\"]*\"|'(?!\*\*\*')[^']*'|(?![\s\"'*])[^\r\n,;}]+)",
            re.IGNORECASE,
        ),
        _keep_quotes,
    ),
    # JSON or Python-repr members: "access_token": "...", 'client_secret': '...'.
    (
        re.compile(
            rf"([\"'](?:{_SECRET_NAMES}|token|api-key|apiKey|clientSecret|accessToken)[\"']"
            r"\s*:\s*)(\"(?!\*\*\*\")(?:[^\"\\]|\\.)*\"|'(?!\*\*\*')(?:[^'\\]|\\.)*')",
            re.IGNORECASE,
        ),
        _keep_quotes,
    ),
    # name=value pairs in URLs, forms and log lines.
    (
        re.compile(rf"((?<![\w-])(?:{_SECRET_NAMES})=)(?![*\"\s])[^&#\s\"',;)]+", re.IGNORECASE),
        rf"\1{MASK}",
    ),
    (
        re.compile(rf"([?&;](?:{_QUERY_ONLY_NAMES})=)(?![*\"\s])[^&#\s\"',;)]+", re.IGNORECASE),
        rf"\1{MASK}",
    ),
    # RFC 9421 signature parameters: keyid is the AudioHook API key itself.
    (
        re.compile(r"(\bkeyid=)(?!\"\*\*\*\")(?:\"[^\"]*\"|[^;,\s]+)", re.IGNORECASE),
        rf'\1"{MASK}"',
    ),
    # A signature value in structured-field form: sig1=:base64:
    (re.compile(r"(\b[\w-]+=:)[A-Za-z0-9+/=]+(:)"), rf"\1{MASK}\2"),
    # user:password@host in a URL.
    (re.compile(r"(://[^/\s:@]+:)(?!\*\*\*@)[^/\s@]+(@)"), rf"\1{MASK}\2"),
)


class _Known:
    """The registered secret forms, longest first (a form inside a longer one must not
    break the longer one's match); replaced whole under a lock, read without one."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.forms: tuple[str, ...] = ()

    def add(self, forms: Iterable[str]) -> None:
        with self._lock:
            merged = set(self.forms) | {form for form in forms if len(form) >= MIN_SECRET_CHARS}
            self.forms = tuple(sorted(merged, key=len, reverse=True))

    def clear(self) -> None:
        with self._lock:
            self.forms = ()


_KNOWN = _Known()


def register_secret(value: str) -> None:
    """Mask ``value`` from now on, in its raw, URL-quoted and base64 forms, wherever it
    appears; for values no pattern can recognise (a client secret in free text)."""
    if len(value) < MIN_SECRET_CHARS:
        return
    forms = {value, urllib.parse.quote(value, safe=""), urllib.parse.quote_plus(value)}
    forms |= _base64_forms(value.encode())
    _KNOWN.add(forms)


def register_credentials(client_id: str, client_secret: str) -> None:
    """Mask an OAuth client's secret and the HTTP Basic form of the pair
    (``base64(client_id:client_secret)``, RFC 7617), which contains the secret but not as
    a substring."""
    register_secret(client_secret)
    if len(client_secret) >= MIN_SECRET_CHARS:
        _KNOWN.add(_base64_forms(f"{client_id}:{client_secret}".encode()))


def forget_secrets() -> None:
    """Forget every registered value (tests; a process that rotated its credentials)."""
    _KNOWN.clear()


_TRIGGERS = (
    *("basic", "bearer", "authorization", "apikey", "api-key", "api_key", "token", "secret"),
    *("passw", "signature", "cookie", "keyid", "key=", "sig=", "auth=", "code=", "=:", "://"),
)
"""Lower-case text every pattern above needs somewhere: text without any of it (most
audio messages) skips the patterns. Substring tests on the lowered text cost well under a
microsecond; a case-insensitive regex alternation costs hundreds on a capture's hot path.
A pattern added above must add its trigger here."""


def redact(text: str) -> str:
    """``text`` with every credential form masked; unchanged when it holds none."""
    for known in _KNOWN.forms:
        if known in text:
            text = text.replace(known, MASK)
    lowered = text.lower()
    if not any(trigger in lowered for trigger in _TRIGGERS):
        return text
    # A mask can complete another pattern's match (``"keyid=x`` becomes ``"keyid="***"``,
    # whose quotes a header's quoted value then spans), so run to a fixed point: what
    # ``redact`` returns, a second ``redact`` leaves alone.
    for _ in range(_MAX_PASSES):
        before = text
        for pattern, replacement in _PATTERNS:
            text = pattern.sub(replacement, text)
        if text == before:
            break
    return text


_MAX_PASSES = 4


_SECRET_KEYS = re.compile(
    rf"^(?:{_SECRET_NAMES}|token|api-key|apiKey|clientSecret|accessToken)$", re.IGNORECASE
)


def redact_json(value: Any) -> Any:
    """A copy of a JSON-like value with credential-named members masked and every string
    redacted: for headers, summaries and capture lines built as dicts."""
    if isinstance(value, str):
        return redact(value)
    if isinstance(value, Mapping):
        return {
            key: MASK
            if isinstance(key, str) and _SECRET_KEYS.match(key) and value[key]
            else redact_json(value[key])
            for key in value
        }
    if isinstance(value, (list, tuple)):
        return [redact_json(item) for item in value]
    return value


class RedactingFilter(logging.Filter):
    """Rewrites each record's message, arguments and traceback text through ``redact``.

    The message is formatted here once (``getMessage``) and the arguments dropped, so a
    secret inside an argument's ``repr`` is masked too; the traceback is formatted into
    ``exc_text``, which formatters print instead of formatting ``exc_info`` again.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        record.msg = redact(message)
        record.args = None
        if record.exc_info and not record.exc_text:
            record.exc_text = logging.Formatter().formatException(record.exc_info)
        if record.exc_text:
            record.exc_text = redact(record.exc_text)
        if record.stack_info:
            record.stack_info = redact(record.stack_info)
        return True


def install_log_redaction(handlers: Iterable[logging.Handler] | None = None) -> RedactingFilter:
    """Add one ``RedactingFilter`` to ``handlers`` (default: the root logger's, where the
    CLI's ``basicConfig`` puts its stderr handler); returns it. Call after the handlers
    exist. Handlers, not loggers: a logger's filters only see records logged on it."""
    found = list(logging.getLogger().handlers if handlers is None else handlers)
    shared = next(
        (f for h in found for f in h.filters if isinstance(f, RedactingFilter)),
        RedactingFilter(),
    )
    for handler in found:
        if shared not in handler.filters:
            handler.addFilter(shared)
    return shared


def _base64_forms(raw: bytes) -> set[str]:
    standard = base64.b64encode(raw).decode("ascii")
    urlsafe = base64.urlsafe_b64encode(raw).decode("ascii")
    return {standard, standard.rstrip("="), urlsafe, urlsafe.rstrip("=")}
