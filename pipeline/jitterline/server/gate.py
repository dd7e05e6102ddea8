"""Who gets through the upgrade: health checks, the path, draining, capacity, credentials.

Sans-I/O: ``Gate.check`` takes the request's parts, whether we are draining and the wall
clock, and returns a ``Decision``; the shell turns it into an HTTP response. Everything
that can refuse a session does it here, at the upgrade, before a protocol object or a
pipeline exists, so an unauthenticated or surplus peer costs no per-session state.

Answers (docs/serve.md, "Refusals"):

- ``GET /health`` and ``/health/check`` (the Genesys reference's path): 200, or 503 while
  draining, so a load balancer takes the instance out before its sessions end.
- a path outside ``--path``: 404. Audio Connector appends the connector id to the base URI,
  so ``--path`` is a prefix.
- draining, or ``--max-sessions`` sessions running: 503 with ``Retry-After`` (RFC 9110
  section 15.6.4: a temporary overload, not the client's fault, so not 429).
- AudioHook credentials that fail ``signatures.verify``: 401; Twilio's signature: 403.
  Both after ``refusal_delay_s`` (500 ms) from the request, whatever failed, so the answer's
  timing does not tell a prober which check failed. We refuse at the upgrade rather than
  accepting and sending ``disconnect`` reason ``unauthorized`` as the reference server
  does: the outcome for Genesys is the same failed connection, and we hold no session for
  a peer we do not trust.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from dataclasses import dataclass

from ..protocols import signatures
from .config import GENESYS_DIALECTS, ServeOptions

__all__ = ["HEALTH_PATHS", "Decision", "Gate"]

log = logging.getLogger(__name__)

HEALTH_PATHS = ("/health", "/health/check")

Headers = Iterable[tuple[str, str]]


@dataclass(frozen=True, slots=True)
class Decision:
    """``status`` 101 lets the upgrade go on; anything else is the HTTP answer, sent
    ``delay_s`` after the request. ``reason`` is safe to log and count (no secrets);
    ``refused`` says whether it turned a session away (not a health check, not a 404)."""

    status: int
    reason: str
    body: str = ""
    delay_s: float = 0.0
    headers: tuple[tuple[str, str], ...] = ()

    @property
    def accepted(self) -> bool:
        return self.status == 101

    @property
    def refused(self) -> bool:
        return self.status >= 400 and self.reason not in ("health", "not_found")


ACCEPT = Decision(101, "accepted")


class Gate:
    """The upgrade checks of one server; see the module docstring."""

    def __init__(self, options: ServeOptions) -> None:
        self._options = options
        base = options.path.rstrip("/")
        self._prefix = f"{base}/"

    def check(
        self,
        *,
        target: str,
        headers: Headers,
        secure: bool,
        draining: bool,
        now_wall_s: float,
    ) -> Decision:
        """``target``: the request target as received (path and query)."""
        path = target.partition("?")[0]
        if path in HEALTH_PATHS:
            if draining:
                return Decision(503, "health", "draining\n")
            return Decision(200, "health", "ok\n")
        if not self._routed(path):
            return Decision(404, "not_found", f"no WebSocket endpoint at {path}\n")
        if draining:
            return self._busy("draining")
        pairs = list(headers)
        return self._authenticate(target, pairs, secure, now_wall_s)

    def capacity(self, active: int) -> Decision:
        """The upgrade is valid; admit it unless ``max_sessions`` sessions run already."""
        return ACCEPT if active < self._options.max_sessions else self._busy("max_sessions")

    def _routed(self, path: str) -> bool:
        return path == self._options.path or path.startswith(self._prefix)

    def _busy(self, reason: str) -> Decision:
        retry = str(self._options.retry_after_s)
        return Decision(503, reason, f"{reason}; retry later\n", headers=(("Retry-After", retry),))

    def _authenticate(
        self, target: str, headers: list[tuple[str, str]], secure: bool, now_wall_s: float
    ) -> Decision:
        credentials = self._options.credentials
        if self._options.dialect in GENESYS_DIALECTS:
            if credentials.api_keys is None:
                return ACCEPT
            verdict = signatures.verify(
                headers,
                method="GET",
                path=target,
                authority=self._public_authority(headers),
                keys=credentials.api_keys,
                now_wall_s=now_wall_s,
            )
            if verdict.ok:
                return ACCEPT
            return self._refuse(401, verdict.reason.value)
        token = credentials.twilio_token
        if token is None:
            return ACCEPT
        signature = _header(headers, "x-twilio-signature")
        url = self._public_base(headers, secure) + target
        if signature and signatures.verify_twilio(url, signature, token):
            return ACCEPT
        return self._refuse(403, "bad_signature" if signature else "unsigned")

    def _refuse(self, status: int, reason: str) -> Decision:
        return Decision(
            status, reason, "authentication failed\n", delay_s=self._options.refusal_delay_s
        )

    def _public_base(self, headers: list[tuple[str, str]], secure: bool) -> str:
        """The scheme and authority the peer dialled: ``--public-url``, else the
        proxy's ``X-Forwarded-Proto`` / ``X-Forwarded-Host``, else our own view."""
        if self._options.public_url:
            return self._options.public_url.rstrip("/")
        forwarded = _header(headers, "x-forwarded-proto").split(",")[0].strip().lower()
        if forwarded in ("https", "wss"):
            scheme = "wss"
        elif forwarded in ("http", "ws"):
            scheme = "ws"
        else:
            scheme = "wss" if secure else "ws"
        return f"{scheme}://{self._public_authority(headers)}"

    def _public_authority(self, headers: list[tuple[str, str]]) -> str:
        if self._options.public_url:
            return self._options.public_url.split("://", 1)[-1].split("/", 1)[0]
        forwarded = _header(headers, "x-forwarded-host").split(",")[0].strip()
        return forwarded or _header(headers, "host")


def _header(headers: list[tuple[str, str]], name: str) -> str:
    """The first value of ``name`` (case-insensitive), stripped; "" when absent."""
    for key, value in headers:
        if key.lower() == name:
            return value.strip()
    return ""
