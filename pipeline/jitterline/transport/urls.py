"""URL checks shared by the token provider and the session.

Cleartext (``http://``, ``ws://``) is only safe when the bytes never leave the machine, so
the scheme rules hinge on one question, "is this host loopback?", answered here once.
URLs are logged only through ``redact_url``: a query string may carry a token.
"""

from __future__ import annotations

import ipaddress
from urllib.parse import SplitResult, urlsplit

from ..errors import ConfigError

__all__ = ["is_loopback_host", "redact_url", "split_url"]


def is_loopback_host(host: str) -> bool:
    """True for ``localhost``, 127.0.0.0/8 and ::1: hosts whose traffic stays on the machine."""
    name = host.strip("[]").lower()
    if name == "localhost" or name.endswith(".localhost"):
        return True
    try:
        return ipaddress.ip_address(name).is_loopback
    except ValueError:
        return False


def split_url(url: str, schemes: tuple[str, ...], what: str) -> SplitResult:
    """Parse ``url`` and refuse what must never be in it: another scheme, no host, or
    credentials (``user:secret@host`` would end up in logs and proxies)."""
    try:
        parts = urlsplit(url.strip())
        parts.port  # noqa: B018  (raises ValueError on a bad port)
    except ValueError as exc:
        raise ConfigError(f"{what} {redact_url(url)!r} is not a valid URL: {exc}") from None
    if parts.scheme.lower() not in schemes:
        raise ConfigError(
            f"{what} {redact_url(url)!r} has scheme {parts.scheme!r}; expected one of "
            f"{', '.join(schemes)}"
        )
    if not parts.hostname:
        raise ConfigError(f"{what} {redact_url(url)!r} has no host")
    if parts.username is not None or parts.password is not None:
        raise ConfigError(
            f"{what} must not embed credentials (user:password@host); pass them separately"
        )
    return parts


def redact_url(url: str) -> str:
    """The URL without credentials, query or fragment: safe to log or put in an error."""
    try:
        parts = urlsplit(url.strip())
        host = parts.hostname or ""
        port = f":{parts.port}" if parts.port is not None else ""
    except ValueError:
        return "<unparseable URL>"
    if ":" in host:
        host = f"[{host}]"
    suffix = "?..." if parts.query else ""
    return f"{parts.scheme}://{host}{port}{parts.path}{suffix}"
