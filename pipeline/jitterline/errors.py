"""Every error jitterline raises, rooted in one class so callers can catch the family.

::

    JitterlineError
    ├── ConfigError          bad option or argument; fix the call
    ├── DialectError         a wire message that the dialect cannot parse
    ├── CodecError           audio bytes that the codec cannot decode
    ├── PluginError          a plugin that failed to load or register
    └── TransportError       the connection failed
        ├── AuthError        the token endpoint or the handshake refused the credentials
        ├── RateLimited      the peer answered 429; ``retry_after_s`` says how long to wait
        ├── TLSError         the peer's certificate was refused; retrying will not help
        └── ConnectionLost   the link dropped (and reconnects were exhausted or disabled)

Messages name the value, the limit and the next step, and never a secret: ``str()`` of
any of them goes through ``redact.redact``, so a credential quoted by a peer (a token
endpoint echoing the Authorization header) is masked wherever the error is shown.
"""

from __future__ import annotations

from .redact import redact

__all__ = [
    "AuthError",
    "CodecError",
    "ConfigError",
    "ConnectionLost",
    "DialectError",
    "JitterlineError",
    "PluginError",
    "RateLimited",
    "TLSError",
    "TransportError",
]


class JitterlineError(Exception):
    """Root of every error jitterline raises on purpose."""

    def __str__(self) -> str:
        return redact(super().__str__())


class ConfigError(JitterlineError, ValueError):
    """An option, argument or environment value is invalid."""


class DialectError(JitterlineError):
    """A wire message does not follow the dialect."""


class CodecError(JitterlineError):
    """Audio bytes cannot be decoded by the named codec."""


class PluginError(JitterlineError):
    """A plugin failed to load or to register what it offers."""


class TransportError(JitterlineError):
    """The WebSocket or HTTP side failed."""


class AuthError(TransportError):
    """Credentials were refused; retrying with the same ones will not help."""


class RateLimited(TransportError):
    """The peer asked us to slow down for ``retry_after_s`` seconds."""

    def __init__(self, message: str, retry_after_s: float) -> None:
        super().__init__(message)
        self.retry_after_s = retry_after_s


class TLSError(TransportError):
    """TLS verification failed (WebSocket or token endpoint); fix the certificate or the
    trust store, since retrying gets the same answer."""


class ConnectionLost(TransportError):
    """The link dropped and the session will not (or may no longer) reconnect."""
