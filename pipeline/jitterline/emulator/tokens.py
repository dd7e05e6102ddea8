"""The emulator's OAuth2 token endpoint: client credentials grant over real HTTP on loopback.

It answers like the Genesys Cloud login service (docs/protocols.md, RFC 6749 section
4.4): ``POST /oauth/token`` with HTTP Basic client credentials and the form body
``grant_type=client_credentials`` gives ``{"access_token", "token_type": "bearer",
"expires_in"}``; errors follow RFC 6749 section 5.2. A ``ThreadingHTTPServer`` in its own
named daemon thread serves it, so a client blocked on its token never stalls the audio loop.

Tokens and secrets are compared in constant time and never logged; the request log line
(method, path, status) is all that reaches ``logging``.
"""

from __future__ import annotations

import base64
import binascii
import hmac
import json
import logging
import secrets
import threading
from collections import OrderedDict
from collections.abc import Callable
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, cast
from urllib.parse import parse_qs

from ..errors import ConfigError, TransportError

__all__ = ["TOKEN_PATH", "TokenEndpoint", "TokenStore"]

logger = logging.getLogger(__name__)

TOKEN_PATH = "/oauth/token"
_MAX_BODY_BYTES = 64 * 1024
_FORM_TYPE = "application/x-www-form-urlencoded"


class TokenStore:
    """Bearer tokens issued and when they expire, on ``clock`` (monotonic seconds).

    Shared by the token endpoint's request threads and the WebSocket handshake on the
    event loop thread, hence the lock. At most ``max_tokens`` are kept: the oldest is
    forgotten first (it then fails like an expired token), so a client that fetches a
    token per connection cannot grow the store without bound.
    """

    def __init__(
        self, *, lifetime_s: float, clock: Callable[[], float], max_tokens: int = 10_000
    ) -> None:
        if not lifetime_s > 0:
            raise ConfigError(f"token lifetime_s={lifetime_s!r} must be positive, e.g. 3600")
        self.lifetime_s = lifetime_s
        self._clock = clock
        self._max_tokens = max_tokens
        self._expiry_s: OrderedDict[str, float] = OrderedDict()
        self._lock = threading.Lock()

    def issue(self) -> str:
        token = secrets.token_urlsafe(32)
        with self._lock:
            self._expiry_s[token] = self._clock() + self.lifetime_s
            while len(self._expiry_s) > self._max_tokens:
                self._expiry_s.popitem(last=False)
        return token

    def is_valid(self, token: str) -> bool:
        with self._lock:
            expiry_s = self._expiry_s.get(token)
        return expiry_s is not None and self._clock() < expiry_s

    def expire_all(self) -> None:
        with self._lock:
            self._expiry_s.clear()


class TokenEndpoint:
    """``POST /oauth/token`` on ``host:port`` (0: a free port) until ``stop()``.

    ``requests`` counts every POST to the token path, ``issued`` the tokens given out.
    """

    def __init__(
        self,
        store: TokenStore,
        *,
        client_id: str,
        client_secret: str,
        host: str = "127.0.0.1",
        port: int = 0,
    ) -> None:
        self.store = store
        self._client_id = client_id.encode()
        self._client_secret = client_secret.encode()
        self._host = host
        self._port = port
        self._httpd: _TokenHTTPServer | None = None
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()
        self._requests = 0
        self._issued = 0

    def __repr__(self) -> str:
        return f"TokenEndpoint(host={self._host!r}, port={self._port})"

    @property
    def url(self) -> str:
        """Base URL; the token endpoint is ``url + TOKEN_PATH``."""
        if self._httpd is None:
            raise ConfigError("the token endpoint has no URL before start(); call start()")
        host, port = self._httpd.server_address[:2]
        return f"http://{host!s}:{port}"

    @property
    def requests(self) -> int:
        with self._lock:
            return self._requests

    @property
    def issued(self) -> int:
        with self._lock:
            return self._issued

    def start(self) -> None:
        try:
            httpd = _TokenHTTPServer((self._host, self._port), _TokenHandler)
        except OSError as exc:
            raise TransportError(
                f"token endpoint cannot listen on {self._host}:{self._port}: {exc}; "
                "pick another port (0 picks a free one)"
            ) from exc
        httpd.endpoint = self
        self._httpd = httpd
        self._thread = threading.Thread(
            target=httpd.serve_forever,
            kwargs={"poll_interval": 0.05},
            name="jitterline-emulator-token",
            daemon=True,
        )
        self._thread.start()

    def stop(self, timeout_s: float = 2.0) -> None:
        """Stop serving and join the thread; calling it again does nothing."""
        httpd, thread = self._httpd, self._thread
        self._thread = None
        if httpd is None or thread is None:
            return
        httpd.shutdown()
        httpd.server_close()
        thread.join(timeout_s)

    def answer(self, authorization: str | None, content_type: str, body: bytes) -> _Answer:
        """The status and JSON body for one token request: the whole OAuth logic, no I/O."""
        with self._lock:
            self._requests += 1
        if not self._client_ok(authorization):
            return _oauth_error(
                HTTPStatus.UNAUTHORIZED, "invalid_client", "unknown client or wrong secret"
            )
        if content_type.partition(";")[0].strip().lower() != _FORM_TYPE:
            return _oauth_error(
                HTTPStatus.BAD_REQUEST, "invalid_request", f"the body must be {_FORM_TYPE}"
            )
        grants = parse_qs(body.decode("latin-1")).get("grant_type", [])
        if grants != ["client_credentials"]:
            return _oauth_error(
                HTTPStatus.BAD_REQUEST,
                "unsupported_grant_type" if grants else "invalid_request",
                "only grant_type=client_credentials is supported",
            )
        token = self.store.issue()
        with self._lock:
            self._issued += 1
        return HTTPStatus.OK, {
            "access_token": token,
            "token_type": "bearer",
            "expires_in": int(self.store.lifetime_s),
        }

    def _client_ok(self, authorization: str | None) -> bool:
        scheme, _, encoded = (authorization or "").partition(" ")
        if scheme.lower() != "basic":
            return False
        try:
            decoded = base64.b64decode(encoded.strip(), validate=True)
        except (binascii.Error, ValueError):
            return False
        client_id, colon, secret = decoded.partition(b":")
        id_ok = hmac.compare_digest(client_id, self._client_id)
        secret_ok = hmac.compare_digest(secret, self._client_secret)
        return bool(colon) and id_ok and secret_ok


_Answer = tuple[HTTPStatus, dict[str, Any]]


def _oauth_error(status: HTTPStatus, error: str, description: str) -> _Answer:
    return status, {"error": error, "error_description": description}


class _TokenHTTPServer(ThreadingHTTPServer):
    daemon_threads = True
    endpoint: TokenEndpoint


class _TokenHandler(BaseHTTPRequestHandler):
    """Moves bytes between HTTP and ``TokenEndpoint.answer``."""

    server_version = "jitterline-emulator"
    protocol_version = "HTTP/1.1"

    def do_POST(self) -> None:
        if self.path.split("?")[0] != TOKEN_PATH:
            self.close_connection = True  # the unread body would corrupt the next request
            self._send_json(HTTPStatus.NOT_FOUND, {"error": "not_found"})
            return
        length = self._content_length()
        if length is None:
            self.close_connection = True
            self._send_json(
                HTTPStatus.REQUEST_ENTITY_TOO_LARGE,
                {"error": "invalid_request", "error_description": "body too large or unsized"},
            )
            return
        endpoint = cast(_TokenHTTPServer, self.server).endpoint
        status, document = endpoint.answer(
            self.headers.get("Authorization"),
            self.headers.get("Content-Type", ""),
            self.rfile.read(length),
        )
        self._send_json(status, document)

    def do_GET(self) -> None:
        self._send_json(
            HTTPStatus.METHOD_NOT_ALLOWED,
            {"error": "invalid_request", "error_description": "use POST"},
            allow="POST",
        )

    def _content_length(self) -> int | None:
        try:
            length = int(self.headers.get("Content-Length", "0"))
        except ValueError:
            return None
        return length if 0 <= length <= _MAX_BODY_BYTES else None

    def _send_json(self, status: HTTPStatus, document: dict[str, Any], allow: str = "") -> None:
        body = json.dumps(document).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Cache-Control", "no-store")
        self.send_header("Pragma", "no-cache")
        if status == HTTPStatus.UNAUTHORIZED:
            self.send_header("WWW-Authenticate", 'Basic realm="jitterline-emulator"')
        if allow:
            self.send_header("Allow", allow)
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:
        # The default writes to stderr; the request line holds no credential.
        logger.debug("token endpoint: " + format, *args)
