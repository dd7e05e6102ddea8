"""The WebSocket side: OAuth tokens, backoff, send rate limiting and the dial-out session.

``Session`` keeps one stream alive (reconnect with capped, jittered backoff; Retry-After;
ping/pong; a bounded outbound queue; size and stall limits); ``TokenProvider`` gets Genesys
Cloud client-credentials tokens. Every session of the process shares one ``IOLoop`` (one
asyncio thread plus a small executor for blocking connects). The decisions live in the
sans-I/O ``SessionCore`` and the helpers (``backoff``, ``ratelimit``) so they can be tested
on virtual time; ``DialOut`` is the I/O shell around them.
"""

from __future__ import annotations

from .backoff import MAX_RETRY_AFTER_S, BackoffPolicy, ReconnectSchedule, parse_retry_after
from .core import SessionCore, classify
from .dialout import DialOut
from .ioloop import IOLoop
from .ratelimit import TokenBucket
from .session import FATAL_CLOSE_CODES, IO_TIMEOUT_S, Session, SessionDiagnostics
from .tokens import REGION_DOMAINS, Secret, TokenProvider, resolve_auth_url
from .urls import is_loopback_host, redact_url

__all__ = [
    "FATAL_CLOSE_CODES",
    "IO_TIMEOUT_S",
    "MAX_RETRY_AFTER_S",
    "REGION_DOMAINS",
    "BackoffPolicy",
    "DialOut",
    "IOLoop",
    "ReconnectSchedule",
    "Secret",
    "Session",
    "SessionCore",
    "SessionDiagnostics",
    "TokenBucket",
    "TokenProvider",
    "classify",
    "is_loopback_host",
    "parse_retry_after",
    "redact_url",
    "resolve_auth_url",
]
