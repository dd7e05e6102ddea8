"""What ``jitterline serve`` is told: where to listen, which dialect, the limits, and the
credentials that authenticate Genesys and Twilio.

Credentials come from the environment or a file, never from the command line, where
``ps`` and shell history would show them. ``Credentials`` keeps them out of every repr.
A server bound to anything but loopback refuses to start without credentials for its
dialect: an unauthenticated AudioHook endpoint on a public address would record any
caller's audio for anyone who finds it.
"""

from __future__ import annotations

import ipaddress
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from .. import checks
from ..errors import ConfigError
from ..protocols.signatures import KeySet, parse_api_keys

__all__ = [
    "API_KEYS_ENV",
    "GENESYS_DIALECTS",
    "SERVE_DIALECTS",
    "TWILIO_TOKEN_ENV",
    "Credentials",
    "ServeOptions",
    "is_loopback",
    "load_credentials",
]

API_KEYS_ENV = "JITTERLINE_AUDIOHOOK_API_KEYS"
TWILIO_TOKEN_ENV = "JITTERLINE_TWILIO_AUTH_TOKEN"

GENESYS_DIALECTS = ("audiohook", "audioconnector")
SERVE_DIALECTS = (*GENESYS_DIALECTS, "twilio")

MAX_TEXT_CHARS = 65535
"""AudioHook's limit on a text message (docs/audiohook.md); the protocol object answers a
longer one with ``disconnect`` reason ``error``."""

MAX_MESSAGE_BYTES = 2 * (MAX_TEXT_CHARS + 1)
"""websockets' ``max_size``: nothing larger is even buffered (the connection is closed
with 1009). Twice the protocol's text limit, so that a text message just over 64 KiB still
reaches the protocol object and gets the protocol's own answer."""


@dataclass(frozen=True, slots=True)
class Credentials:
    """AudioHook API keys (with their client secrets) and the Twilio auth token.

    ``api_keys`` None: AudioHook upgrades are not checked; ``twilio_token`` None: Twilio
    signatures are not checked. Neither ever appears in a repr."""

    api_keys: KeySet | None = None
    twilio_token: str | None = field(default=None, repr=False)

    def configured_for(self, dialect: str) -> bool:
        if dialect in GENESYS_DIALECTS:
            return self.api_keys is not None and len(self.api_keys) > 0
        return bool(self.twilio_token)


def load_credentials(
    environ: Mapping[str, str] | None = None, *, api_keys_file: str | Path | None = None
) -> Credentials:
    """Keys from ``--api-keys-file`` (one per line) or else ``JITTERLINE_AUDIOHOOK_API_KEYS``
    (comma-separated ``KEY`` or ``KEY:BASE64SECRET``); the token from
    ``JITTERLINE_TWILIO_AUTH_TOKEN``."""
    env = os.environ if environ is None else environ
    keys: KeySet | None = None
    if api_keys_file is not None:
        try:
            text = Path(api_keys_file).read_text(encoding="utf-8")
        except OSError as exc:
            raise ConfigError(
                f"cannot read the API keys file {str(api_keys_file)!r} ({exc.strerror}); "
                "give a readable file with one KEY or KEY:BASE64SECRET per line"
            ) from None
        keys = parse_api_keys(text, source=f"API keys file {str(api_keys_file)!r}")
    elif env.get(API_KEYS_ENV, "").strip():
        keys = parse_api_keys(env[API_KEYS_ENV])
    token = env.get(TWILIO_TOKEN_ENV, "").strip() or None
    return Credentials(api_keys=keys, twilio_token=token)


def is_loopback(host: str) -> bool:
    """True for ``localhost`` and loopback addresses; an empty host (every interface) is
    not loopback."""
    if host.strip().lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


@dataclass(frozen=True, slots=True)
class ServeOptions:
    """One server's settings. Times in seconds.

    ``path``: the WebSocket path sessions must use (health paths answer whatever it is).
    ``public_url``: the ``wss://host[:port]`` Twilio dials, behind a TLS-terminating proxy
    (the signature covers the URL Twilio used, which our socket never sees); None: taken
    from ``X-Forwarded-Proto`` / ``X-Forwarded-Host``, else from ``Host``.
    ``refusal_delay_s``: a refused upgrade is answered this long after its request came
    (the reference server waits at least 500 ms), whatever failed.
    ``drain_grace_s``: on a drain, how long sessions may go on before they are ended
    (0: at once); ``drain_timeout_s`` then bounds their closing.
    ``handshake_timeout_s``: TCP accepted to upgrade done (a peer that never speaks, or
    trickles its request). ``open_timeout_s`` / ``close_timeout_s``: the protocol's own
    (AudioHook: no ``open`` after the upgrade; no ``close`` after our ``disconnect``).
    """

    host: str = "127.0.0.1"
    port: int = 0
    dialect: str = "audiohook"
    path: str = "/"
    max_sessions: int = 500
    drain_timeout_s: float = 30.0
    drain_grace_s: float = 0.0
    credentials: Credentials = Credentials()
    public_url: str | None = None
    certfile: str | None = None
    keyfile: str | None = None
    refusal_delay_s: float = 0.5
    retry_after_s: int = 5
    handshake_timeout_s: float = 10.0
    open_timeout_s: float = 10.0
    close_timeout_s: float = 10.0
    max_message_bytes: int = MAX_MESSAGE_BYTES

    def __post_init__(self) -> None:
        if self.dialect not in SERVE_DIALECTS:
            raise ConfigError(
                f"dialect {self.dialect!r} cannot be served; pick one of {SERVE_DIALECTS}"
            )
        if not self.path.startswith("/"):
            raise ConfigError(f"path {self.path!r} must start with '/', e.g. /audiohook")
        checks.count("port", self.port, low=0, high=65535, hint="0 picks a free port")
        checks.count("retry_after_s", self.retry_after_s, low=0, hint="try 5")
        checks.count("max_sessions", self.max_sessions, low=1, hint="try 500")
        for name in ("drain_timeout_s", "handshake_timeout_s", "open_timeout_s"):
            checks.number(name, getattr(self, name), low=0.0, above=True, unit="s")
        checks.number("close_timeout_s", self.close_timeout_s, low=0.0, above=True, unit="s")
        checks.number("refusal_delay_s", self.refusal_delay_s, low=0.0, unit="s")
        checks.number("drain_grace_s", self.drain_grace_s, low=0.0, unit="s")
        if (self.certfile is None) != (self.keyfile is None):
            raise ConfigError("TLS needs both --certfile and --keyfile; give both or neither")

    def check_exposure(self) -> None:
        """Refuse to listen beyond loopback without credentials for the dialect."""
        if is_loopback(self.host) or self.credentials.configured_for(self.dialect):
            return
        where = (
            f"{API_KEYS_ENV} or --api-keys-file"
            if self.dialect in GENESYS_DIALECTS
            else TWILIO_TOKEN_ENV
        )
        raise ConfigError(
            f"refusing to serve {self.dialect} on {self.host or 'every interface'} without "
            f"credentials; set {where}, or bind to 127.0.0.1"
        )
