"""Upgrade-request authentication: AudioHook HTTP message signatures and Twilio's signature.

Sans-I/O: every function takes the request's parts and the wall-clock time as arguments.

**AudioHook** (docs/protocols.md, "AudioHook signatures") signs the WebSocket upgrade in the
style of RFC 9421 (HTTP Message Signatures) with HMAC-SHA256, label ``sig1``, over the
components ``"@request-target"``, ``"@authority"``, ``audiohook-organization-id``,
``audiohook-session-id``, ``audiohook-correlation-id`` and ``x-api-key``. The signature base
is one ``"name": value`` line per component (RFC 9421 section 2.5), then the
``"@signature-params"`` line, joined by ``\\n``. The key is the base64-decoded client secret.
We verify like Genesys' reference server: ``keyid`` must equal ``X-API-KEY``, the nonce must
have at least 22 characters, the signature must be at most 10 s old, and a request without a
signature passes only when its API key is configured with an empty secret.

The verifier rebuilds ``@signature-params`` from the parsed parameters rather than hashing the
received text, so a signer's odd spacing or padding cannot smuggle bytes into the base (the
reference does the same). Every comparison of secret-derived bytes is
``hmac.compare_digest``; an unknown key still costs one HMAC, so the time spent does not
tell a prober whether the key exists. The shell should also answer every refusal after the
same fixed delay (the reference waits at least 500 ms), which is timing it owns.

No result, error or repr here contains a secret, an API key or a signature.

**Twilio** signs the upgrade with ``X-Twilio-Signature`` = base64(HMAC-SHA1(auth token, the
full URL)), with any POST parameters appended as sorted ``name + value`` pairs (none for a
``wss://`` upgrade). Like Twilio's own helpers, we accept the URL with or without its
scheme's default port.
"""

from __future__ import annotations

import base64
import binascii
import enum
import hashlib
import hmac
import re
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from urllib.parse import urlsplit, urlunsplit

from ..errors import ConfigError

__all__ = [
    "ALGORITHM",
    "CLOCK_SKEW_S",
    "COMPONENTS",
    "LABEL",
    "MAX_AGE_S",
    "MIN_NONCE_CHARS",
    "KeySet",
    "Reason",
    "Verdict",
    "parse_api_keys",
    "sign",
    "sign_components",
    "signature_base",
    "twilio_signature",
    "verify",
    "verify_twilio",
]

LABEL = "sig1"
ALGORITHM = "hmac-sha256"
COMPONENTS = (
    "@request-target",
    "@authority",
    "audiohook-organization-id",
    "audiohook-session-id",
    "audiohook-correlation-id",
    "x-api-key",
)
"""What Genesys signs, in its order; the verifier requires all of them, in any order."""

MAX_AGE_S = 10.0
"""The reference server refuses signatures created longer ago than this."""

CLOCK_SKEW_S = 3.0
"""How far in the future ``created`` may lie (the reference allows 3 s of clock skew)."""

MIN_NONCE_CHARS = 22
DEFAULT_LIFETIME_S = 30
"""``expires - created`` of signatures we make (the reference signer's default)."""

_PARAMS = ("keyid", "nonce", "alg", "created", "expires")
_STRING_PARAMS = ("keyid", "nonce", "alg")
_TOKEN_KEY = re.compile(r"[a-z*][a-z0-9_.*-]*")
_SF_STRING = re.compile(r'"((?:[\x20\x21\x23-\x5b\x5d-\x7e]|\\["\\])*)"')
_SF_INTEGER = re.compile(r"-?[0-9]{1,15}")
_SF_BYTES = re.compile(r":([A-Za-z0-9+/=]*):")
_API_KEY = re.compile(r"[\x21-\x7e]+")
_DUMMY_KEY = hashlib.sha256(b"jitterline: no such API key").digest()


class Reason(str, enum.Enum):
    """Why a request passed or was refused; safe to log and to count (no secrets)."""

    VERIFIED = "verified"
    UNSIGNED_ALLOWED = "unsigned_allowed"
    MISSING_API_KEY = "missing_api_key"
    UNKNOWN_KEY = "unknown_key"
    UNSIGNED = "unsigned"
    MALFORMED = "malformed"
    MISSING_COMPONENT = "missing_component"
    UNSUPPORTED_ALGORITHM = "unsupported_algorithm"
    KEYID_MISMATCH = "keyid_mismatch"
    SHORT_NONCE = "short_nonce"
    NO_CREATED = "no_created"
    STALE = "stale"
    FUTURE = "created_in_future"
    EXPIRED = "expired"
    BAD_SIGNATURE = "bad_signature"


@dataclass(frozen=True, slots=True)
class Verdict:
    """The outcome of ``verify``: ``ok`` and the reason, never the material checked."""

    reason: Reason

    @property
    def ok(self) -> bool:
        return self.reason in (Reason.VERIFIED, Reason.UNSIGNED_ALLOWED)


class KeySet(Mapping[str, bytes]):
    """API key -> decoded client secret (``b""``: unsigned requests allowed for that key).

    A mapping whose repr shows only how many keys it holds, so logging a configuration
    object that carries it leaks nothing.
    """

    __slots__ = ("_keys",)

    def __init__(self, keys: Mapping[str, bytes] | None = None) -> None:
        self._keys = dict(keys or {})

    def __getitem__(self, api_key: str) -> bytes:
        return self._keys[api_key]

    def __iter__(self) -> Iterator[str]:
        return iter(self._keys)

    def __len__(self) -> int:
        return len(self._keys)

    def __repr__(self) -> str:
        return f"KeySet(<{len(self._keys)} keys>)"


def parse_api_keys(text: str, *, source: str = "JITTERLINE_AUDIOHOOK_API_KEYS") -> KeySet:
    """Parse ``KEY`` or ``KEY:BASE64SECRET`` entries separated by commas or newlines.

    The same text format serves the environment variable (one line, commas) and a key file
    (one entry per line, ``#`` starting a comment line). A bare ``KEY`` (or ``KEY:``) has an
    empty secret: that key may connect unsigned. Errors name the entry by its position and
    ``source``, never its key or secret.
    """
    keys: dict[str, bytes] = {}
    for position, entry in enumerate(_entries(text), start=1):
        api_key, _, secret_text = entry.partition(":")
        api_key = api_key.strip()
        where = f"{source} entry {position}"
        if not _API_KEY.fullmatch(api_key):
            raise ConfigError(
                f"{where} has an empty or non-printable API key; write KEY or "
                "KEY:BASE64SECRET, entries separated by commas or lines"
            )
        if api_key in keys:
            raise ConfigError(f"{where} repeats an API key given before; list each key once")
        keys[api_key] = _decode_secret(secret_text.strip(), where)
    return KeySet(keys)


def _entries(text: str) -> Iterator[str]:
    for line in text.splitlines():
        if line.lstrip().startswith("#"):
            continue
        for entry in line.split(","):
            if entry.strip():
                yield entry


def _decode_secret(secret_text: str, where: str) -> bytes:
    try:
        return base64.b64decode(secret_text, validate=True)
    except (binascii.Error, ValueError):
        raise ConfigError(
            f"{where}: the client secret is not valid base64 (the secret is not shown); "
            "paste the secret exactly as Genesys displays it"
        ) from None


def signature_base(components: Sequence[tuple[str, str]], signature_params: str) -> bytes:
    """RFC 9421 section 2.5: one ``"name": value`` line per covered component, then the
    ``"@signature-params"`` line; lines joined by ``\\n`` with no trailing newline."""
    lines = [f'"{name}": {_canonical_value(value)}' for name, value in components]
    lines.append(f'"@signature-params": {signature_params}')
    return "\n".join(lines).encode("utf-8")


def sign_components(
    components: Sequence[tuple[str, str]],
    *,
    key_id: str,
    key: bytes,
    created_wall_s: int,
    expires_wall_s: int,
    nonce: str,
    label: str = LABEL,
) -> dict[str, str]:
    """``Signature-Input`` and ``Signature`` headers over ``components`` (names lowercase,
    in the order given). The caller chooses ``nonce`` (use ``secrets.token_urlsafe(18)``)."""
    params = _encode_params(
        [name.lower() for name, _ in components],
        {
            "keyid": key_id,
            "nonce": nonce,
            "alg": ALGORITHM,
            "created": created_wall_s,
            "expires": expires_wall_s,
        },
    )
    lowered = [(name.lower(), value) for name, value in components]
    digest = hmac.new(key, signature_base(lowered, params), hashlib.sha256).digest()
    return {
        "Signature-Input": f"{label}={params}",
        "Signature": f"{label}=:{base64.b64encode(digest).decode('ascii')}:",
    }


def sign(
    *,
    path: str,
    authority: str,
    organization_id: str,
    session_id: str,
    correlation_id: str,
    api_key: str,
    secret: bytes,
    created_wall_s: int,
    nonce: str,
    lifetime_s: int = DEFAULT_LIFETIME_S,
) -> dict[str, str]:
    """The headers Genesys sends on an AudioHook upgrade, signed: for our client role."""
    values = (path, _authority(authority), organization_id, session_id, correlation_id, api_key)
    headers = {
        "Audiohook-Organization-Id": organization_id,
        "Audiohook-Session-Id": session_id,
        "Audiohook-Correlation-Id": correlation_id,
        "X-API-KEY": api_key,
    }
    headers.update(
        sign_components(
            list(zip(COMPONENTS, values, strict=True)),
            key_id=api_key,
            key=secret,
            created_wall_s=created_wall_s,
            expires_wall_s=created_wall_s + lifetime_s,
            nonce=nonce,
        )
    )
    return headers


def verify(
    headers: Mapping[str, str] | Iterable[tuple[str, str]],
    *,
    method: str,
    path: str,
    authority: str | None,
    keys: Mapping[str, bytes],
    now_wall_s: float,
    max_age_s: float = MAX_AGE_S,
) -> Verdict:
    """Check an AudioHook upgrade request; see the module docstring for the rules.

    ``path`` is the request target as received (path and query); ``authority`` the host the
    client addressed (``None``: take the ``Host`` header); ``keys`` maps API keys to decoded
    secrets (see ``parse_api_keys``); ``now_wall_s`` is our wall clock in epoch seconds.
    """
    fields = _lower_headers(headers)
    api_key = fields.get("x-api-key", "")
    if not api_key:
        return Verdict(Reason.MISSING_API_KEY)
    if "signature-input" not in fields and "signature" not in fields:
        unsigned_ok = keys.get(api_key) == b""
        return Verdict(Reason.UNSIGNED_ALLOWED if unsigned_ok else Reason.UNSIGNED)
    parsed = _parse_signature(fields)
    if parsed is None:
        return Verdict(Reason.MALFORMED)
    names, params, signature = parsed
    refusal = _check_params(params, api_key, now_wall_s, max_age_s)
    if refusal is not None:
        return Verdict(refusal)
    derived = {
        "@request-target": path,
        "@authority": _authority(authority or fields.get("host", "")),
        "@method": method.upper(),
    }
    components: list[tuple[str, str]] = []
    for name in names:
        value = derived.get(name) if name.startswith("@") else fields.get(name)
        if not value:
            return Verdict(Reason.MISSING_COMPONENT)
        components.append((name, value))
    if not set(COMPONENTS) <= set(names):
        return Verdict(Reason.MISSING_COMPONENT)
    secret = keys.get(api_key)
    base = signature_base(components, _encode_params(names, params))
    expected = hmac.new(_DUMMY_KEY if secret is None else secret, base, hashlib.sha256)
    matches = hmac.compare_digest(expected.digest(), signature)
    if secret is None:
        return Verdict(Reason.UNKNOWN_KEY)
    return Verdict(Reason.VERIFIED if matches else Reason.BAD_SIGNATURE)


def _authority(host: str) -> str:
    """RFC 9421 section 2.2.3: lowercase, without the default port (443 for ``wss``; 80 is
    dropped too, since we cannot tell a ``ws`` upgrade behind a proxy)."""
    lowered = host.strip().lower()
    for default in (":443", ":80"):
        if lowered.endswith(default):
            return lowered[: -len(default)]
    return lowered


def _check_params(
    params: Mapping[str, str | int], api_key: str, now_wall_s: float, max_age_s: float
) -> Reason | None:
    if params.get("alg", ALGORITHM) != ALGORITHM:
        return Reason.UNSUPPORTED_ALGORITHM
    key_id = params.get("keyid")
    if not isinstance(key_id, str) or not hmac.compare_digest(
        key_id.encode("utf-8"), api_key.encode("utf-8")
    ):
        return Reason.KEYID_MISMATCH
    nonce = params.get("nonce")
    if not isinstance(nonce, str) or len(nonce) < MIN_NONCE_CHARS:
        return Reason.SHORT_NONCE
    created = params.get("created")
    if not isinstance(created, int):
        return Reason.NO_CREATED
    if created > now_wall_s + CLOCK_SKEW_S:
        return Reason.FUTURE
    if now_wall_s - created > max_age_s:
        return Reason.STALE
    expires = params.get("expires")
    if isinstance(expires, int) and expires < now_wall_s:
        return Reason.EXPIRED
    return None


def _lower_headers(headers: Mapping[str, str] | Iterable[tuple[str, str]]) -> dict[str, str]:
    """Header names lowercased; repeated fields joined with ``", "`` (RFC 9421 section 2.1)."""
    pairs = headers.items() if isinstance(headers, Mapping) else headers
    fields: dict[str, str] = {}
    for name, value in pairs:
        key = name.lower()
        clean = _canonical_value(value)
        fields[key] = f"{fields[key]}, {clean}" if key in fields else clean
    return fields


def _canonical_value(value: str) -> str:
    """RFC 9421 section 2.1: strip surrounding whitespace, fold obsolete line folding."""
    return re.sub(r"[ \t]*\r\n[ \t]+", " ", value.strip())


def _encode_params(names: Sequence[str], params: Mapping[str, str | int]) -> str:
    """The ``@signature-params`` inner list, as RFC 8941 serializes it."""
    inner = " ".join(_sf_string(name) for name in names)
    encoded = "".join(
        f";{key}={_sf_string(value) if isinstance(value, str) else value}"
        for key, value in params.items()
    )
    return f"({inner}){encoded}"


def _sf_string(value: str) -> str:
    escaped = value.replace("\\", "\\\\").replace('"', '\\"')
    return f'"{escaped}"'


def _parse_signature(
    fields: Mapping[str, str],
) -> tuple[list[str], dict[str, str | int], bytes] | None:
    """The ``sig1`` signature (else the first label) from the two header fields, or None
    when either field is missing or not the RFC 8941 subset AudioHook uses."""
    inputs = _parse_dictionary(fields.get("signature-input", ""))
    signatures = _parse_dictionary(fields.get("signature", ""))
    if not inputs or not signatures:
        return None
    label = LABEL if LABEL in inputs else next(iter(inputs))
    parsed = _parse_inner_list(inputs[label])
    match = _SF_BYTES.fullmatch(signatures.get(label, ""))
    if parsed is None or match is None:
        return None
    try:
        signature = base64.b64decode(match.group(1), validate=True)
    except (binascii.Error, ValueError):
        return None
    return parsed[0], parsed[1], signature


def _parse_dictionary(text: str) -> dict[str, str]:
    """Split an RFC 8941 dictionary into ``label -> member text``; {} if malformed.

    Members are split on commas outside quoted strings and parentheses.
    """
    members: dict[str, str] = {}
    for member in _split_outside_quotes(text, ","):
        label, equals, value = member.strip().partition("=")
        if not equals or not _TOKEN_KEY.fullmatch(label) or label in members:
            return {}
        members[label] = value
    return members


def _split_outside_quotes(text: str, separator: str) -> list[str]:
    parts: list[str] = []
    current: list[str] = []
    quoted = escaped = False
    for char in text:
        if quoted:
            quoted = escaped or char != '"'
            escaped = not escaped and char == "\\"
        elif char == '"':
            quoted = True
        elif char == separator:
            parts.append("".join(current))
            current = []
            continue
        current.append(char)
    parts.append("".join(current))
    return [part for part in parts if part.strip()] if text.strip() else []


def _parse_inner_list(text: str) -> tuple[list[str], dict[str, str | int]] | None:
    """``("a" "b");key="v";n=1`` -> names and parameters; None unless exactly that shape
    with known parameters, each at most once."""
    if not text.startswith("("):
        return None
    close = _closing_paren(text)
    if close < 0:
        return None
    names: list[str] = []
    for item in text[1:close].split(" "):
        if not item:
            continue
        match = _SF_STRING.fullmatch(item)
        if match is None:
            return None
        names.append(_unescape(match.group(1)))
    params: dict[str, str | int] = {}
    for param in _split_outside_quotes(text[close + 1 :], ";"):
        key, _, raw = param.partition("=")
        if key not in _PARAMS or key in params:
            return None
        value = _param_value(key, raw)
        if value is None:
            return None
        params[key] = value
    if len(names) != len(set(names)) or "@signature-params" in names:
        return None
    return names, params


def _closing_paren(text: str) -> int:
    quoted = escaped = False
    for index, char in enumerate(text):
        if quoted:
            quoted = escaped or char != '"'
            escaped = not escaped and char == "\\"
        elif char == '"':
            quoted = True
        elif char == ")":
            return index
    return -1


def _param_value(key: str, raw: str) -> str | int | None:
    if key in _STRING_PARAMS:
        match = _SF_STRING.fullmatch(raw)
        return None if match is None else _unescape(match.group(1))
    if _SF_INTEGER.fullmatch(raw) and not raw.startswith("-"):
        return int(raw)
    return None


def _unescape(text: str) -> str:
    return re.sub(r"\\(.)", r"\1", text)


def twilio_signature(url: str, auth_token: str, params: Mapping[str, str] | None = None) -> str:
    """``X-Twilio-Signature`` for ``url``: base64(HMAC-SHA1(auth token, url + sorted
    ``name + value`` of the POST parameters)). For our client role and tests."""
    payload = url + "".join(name + value for name, value in sorted((params or {}).items()))
    digest = hmac.new(auth_token.encode("utf-8"), payload.encode("utf-8"), hashlib.sha1)
    return base64.b64encode(digest.digest()).decode("ascii")


def verify_twilio(
    url: str, signature: str, auth_token: str, params: Mapping[str, str] | None = None
) -> bool:
    """True when ``signature`` signs ``url`` (as given, or with its scheme's default port
    added or removed, since a proxy may change which form we see)."""
    given = signature.encode("utf-8")
    results = [
        hmac.compare_digest(twilio_signature(form, auth_token, params).encode("utf-8"), given)
        for form in _port_forms(url)
    ]
    return any(results)


_DEFAULT_PORTS = {"https": 443, "wss": 443, "http": 80, "ws": 80}


def _port_forms(url: str) -> list[str]:
    """``url`` as given, then with the default port removed or added."""
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError:
        return [url]
    default = _DEFAULT_PORTS.get(parts.scheme.lower())
    host = parts.hostname or ""
    if default is None or not host:
        return [url]
    userinfo = parts.netloc.rpartition("@")[0]
    prefix = f"{userinfo}@" if userinfo else ""
    shown_host = f"[{host}]" if ":" in host else host
    bare = urlunsplit(parts._replace(netloc=f"{prefix}{shown_host}"))
    with_default = urlunsplit(parts._replace(netloc=f"{prefix}{shown_host}:{default}"))
    return [url, with_default] if port is None else [url, bare]
