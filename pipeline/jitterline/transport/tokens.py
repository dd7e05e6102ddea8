"""OAuth2 client credentials (RFC 6749 section 4.4) against a Genesys Cloud region.

``POST https://login.<region domain>/oauth/token`` with ``grant_type=client_credentials``
and the client id and secret as HTTP Basic (the tutorial put them in the body, which Genesys
refuses). There is no refresh token: a new access token is requested before the cached one
expires, ``margin_s`` early, and at once after ``invalidate()`` (a handshake answered 401).

The secret and every access token live in ``Secret`` wrappers whose repr is redacted, and
no message built here contains them: a 4xx becomes an ``AuthError`` that names the cause
(bad client, missing scope, wrong region) and the next step instead. Text taken from the
endpoint's answer goes through ``redact``: an endpoint that echoes our Authorization
header would otherwise hand back ``Basic base64(id:secret)``.
"""

from __future__ import annotations

import base64
import logging
import math
import re
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import requests

from .. import checks
from ..errors import AuthError, ConfigError, RateLimited, TLSError, TransportError
from .backoff import parse_retry_after
from .urls import is_loopback_host, redact_url, split_url

__all__ = [
    "REGION_DOMAINS",
    "Secret",
    "TokenProvider",
    "redact",
    "resolve_auth_url",
]

logger = logging.getLogger(__name__)

REGION_DOMAINS: dict[str, str] = {
    "us-east-1": "mypurecloud.com",
    "us-west-2": "usw2.pure.cloud",
    "ca-central-1": "cac1.pure.cloud",
    "eu-west-1": "mypurecloud.ie",
    "eu-west-2": "euw2.pure.cloud",
    "eu-central-1": "mypurecloud.de",
    "eu-central-2": "euc2.pure.cloud",
    "ap-southeast-2": "mypurecloud.com.au",
    "ap-northeast-1": "mypurecloud.jp",
    "ap-northeast-2": "apne2.pure.cloud",
    "ap-northeast-3": "apne3.pure.cloud",
    "ap-south-1": "aps1.pure.cloud",
    "sa-east-1": "sae1.pure.cloud",
    "me-central-1": "mec1.pure.cloud",
    "us-east-2": "use2.us-gov-pure.cloud",
}
"""Genesys Cloud region -> domain (docs/protocols.md, OAuth); login host ``login.<domain>``."""

_DESCRIPTION_CHARS = 160


class Secret:
    """A string that never shows itself: repr and str are redacted; ``reveal()`` is explicit."""

    __slots__ = ("_value",)

    def __init__(self, value: str) -> None:
        self._value = value

    def reveal(self) -> str:
        return self._value

    def __repr__(self) -> str:
        return "Secret('***')"

    __str__ = __repr__


def resolve_auth_url(region_or_url: str) -> str:
    """The auth base URL for a region id (``eu-west-1``), a region domain
    (``mypurecloud.ie``, also as ``api.``/``login.`` host) or a full URL.

    A full URL must be https, except on loopback (how tests and the emulator serve it).
    """
    text = region_or_url.strip()
    if "://" in text:
        return _check_auth_url(text)
    key = text.lower().rstrip(".")
    domain = REGION_DOMAINS.get(key)
    if domain is None:
        for prefix in ("login.", "api."):
            key = key.removeprefix(prefix)
        if key in REGION_DOMAINS.values():
            domain = key
    if domain is None:
        known = ", ".join(f"{name} ({dom})" for name, dom in REGION_DOMAINS.items())
        raise ConfigError(
            f"unknown Genesys region {text!r}; use a region or domain from: {known}; "
            "or a full https:// URL"
        )
    return f"https://login.{domain}"


def _check_auth_url(url: str) -> str:
    parts = split_url(url, ("https", "http"), "auth URL")
    if parts.scheme.lower() == "http" and not is_loopback_host(parts.hostname or ""):
        raise ConfigError(
            f"auth URL {redact_url(url)!r} is cleartext http to a non-loopback host; the "
            "client secret would cross the network in the clear: use https://"
        )
    if parts.query or parts.fragment:
        raise ConfigError(f"auth URL {redact_url(url)!r} must not carry a query or fragment")
    return f"{parts.scheme.lower()}://{parts.netloc}{parts.path.rstrip('/')}"


@dataclass(frozen=True, slots=True)
class _Token:
    value: Secret
    fresh_until_s: float


class TokenProvider:
    """Hands out a valid bearer token, asking the token endpoint only when needed.

    ``margin_s`` renews that long before expiry so that a token never dies during a
    handshake; a token living less than twice the margin is renewed at half its life
    instead, or it would never be fresh. ``refreshes`` counts tokens obtained (the first
    one included). ``clock`` is monotonic (expiry); ``wall_clock`` only dates a 429's
    HTTP-date Retry-After. Thread-safe: concurrent callers share one request.
    """

    def __init__(
        self,
        auth_url_or_region: str,
        client_id: str,
        client_secret: str,
        *,
        margin_s: float = 60.0,
        clock: Callable[[], float] = time.monotonic,
        http: requests.Session | None = None,
        timeout_s: float = 10.0,
        verify: bool = True,
        wall_clock: Callable[[], float] = time.time,
    ) -> None:
        if not isinstance(client_id, str) or not client_id.strip():
            raise ConfigError("client_id is empty; pass the OAuth client's id")
        if not isinstance(client_secret, str) or not client_secret:
            raise ConfigError(f"client secret for client {client_id!r} is empty")
        checks.number("margin_s", margin_s, low=0.0, unit="s", hint="try 60.0")
        checks.number("timeout_s", timeout_s, low=0.0, above=True, unit="s", hint="try 10.0")
        self.auth_url = resolve_auth_url(auth_url_or_region)
        self.token_url = self.auth_url + "/oauth/token"
        self.client_id = client_id
        self.margin_s = margin_s
        self.timeout_s = timeout_s
        self.verify = verify
        self._secret = Secret(client_secret)
        self._clock = clock
        self._wall_clock = wall_clock
        self._owns_http = http is None
        self._http = http if http is not None else requests.Session()
        self._lock = threading.Lock()
        self._token: _Token | None = None
        self._refreshes = 0
        if not verify:
            logger.warning(
                "TLS verification is OFF for %s: anyone on the path can steal the client "
                "secret; use it only against a test server",
                self.token_url,
            )

    def __repr__(self) -> str:
        return (
            f"TokenProvider({self.auth_url!r}, client_id={self.client_id!r}, "
            f"client_secret=Secret('***'), margin_s={self.margin_s})"
        )

    @property
    def refreshes(self) -> int:
        return self._refreshes

    def token(self) -> str:
        """A bearer token fresh for at least the margin; fetched if the cached one is not.

        Raises ``AuthError`` (credentials or scope refused: fatal), ``TLSError`` (the
        endpoint's certificate was refused: fatal, like a ``wss://`` one), ``RateLimited``
        (429) or ``TransportError`` (network, 5xx: worth retrying).
        """
        with self._lock:
            cached = self._token
            if cached is not None and self._clock() < cached.fresh_until_s:
                return cached.value.reveal()
            fetched = self._fetch()
            self._token = fetched
            self._refreshes += 1
            return fetched.value.reveal()

    def invalidate(self) -> None:
        """Forget the cached token: the peer refused it, so the next ``token()`` fetches."""
        with self._lock:
            self._token = None

    def close(self) -> None:
        """Close the HTTP session if this provider created it."""
        if self._owns_http:
            self._http.close()

    def _fetch(self) -> _Token:
        started_s = self._clock()
        response = self._post()
        with response:
            if response.status_code != 200:
                raise self._refusal(response)
            value, lifetime_s = self._parse_grant(response)
        margin_s = min(self.margin_s, lifetime_s / 2)
        logger.info(
            "token obtained from %s for client %s, valid %.0f s (renewed %.0f s early)",
            self.token_url,
            self.client_id,
            lifetime_s,
            margin_s,
        )
        # Expiry counts from the request, not the answer: the server's clock started then.
        return _Token(Secret(value), started_s + lifetime_s - margin_s)

    def _post(self) -> requests.Response:
        try:
            return self._http.post(
                self.token_url,
                data={"grant_type": "client_credentials"},
                auth=(self.client_id, self._secret.reveal()),
                headers={"Accept": "application/json"},
                timeout=self.timeout_s,
                verify=self.verify,
                allow_redirects=False,
            )
        except requests.exceptions.SSLError as exc:
            raise TLSError(
                f"TLS verification of {self.token_url} failed; fix the server certificate "
                "or the trust store (REQUESTS_CA_BUNDLE) rather than disabling verify"
            ) from exc
        except requests.Timeout as exc:
            raise TransportError(
                f"token endpoint {self.token_url} did not answer within "
                f"timeout_s={self.timeout_s}; check the network or raise timeout_s"
            ) from exc
        except requests.RequestException as exc:
            raise TransportError(
                f"cannot reach token endpoint {self.token_url} ({type(exc).__name__}); "
                "check the region and the network"
            ) from exc

    def _parse_grant(self, response: requests.Response) -> tuple[str, float]:
        body = _json_object(response)
        value = body.get("access_token") if body is not None else None
        lifetime = body.get("expires_in") if body is not None else None
        token_type = body.get("token_type", "bearer") if body is not None else None
        if not isinstance(value, str) or not value:
            raise TransportError(
                f"token endpoint {self.token_url} answered 200 without an access_token; "
                "is the auth URL really a Genesys login host?"
            )
        if isinstance(lifetime, bool) or not isinstance(lifetime, (int, float)):
            raise TransportError(
                f"token endpoint {self.token_url} answered without a numeric expires_in"
            )
        if not (math.isfinite(lifetime) and lifetime > 0):
            raise TransportError(f"token endpoint gave expires_in={lifetime}; expected > 0 s")
        if not isinstance(token_type, str) or token_type.lower() != "bearer":
            raise TransportError(
                f"token endpoint gave token_type {token_type!r}; only bearer is supported"
            )
        return value, float(lifetime)

    def _refusal(self, response: requests.Response) -> TransportError:
        """The error for a non-200 answer: fatal ``AuthError`` for the client's own
        mistakes, retryable ``RateLimited``/``TransportError`` for the server's state."""
        status = response.status_code
        code, description = self._error_body(response)
        detail = f" ({code}{': ' + description if description else ''})" if code else ""
        where = f"token endpoint {self.token_url} answered {status}{detail}"
        if status == 429:
            retry_after_s = parse_retry_after(
                response.headers.get("Retry-After"), self._wall_clock()
            )
            return RateLimited(
                f"{where}; retrying after the server's delay",
                retry_after_s if retry_after_s is not None else 0.0,
            )
        if status >= 500 or status == 408:
            return TransportError(f"{where}; the server failed, retrying may help")
        return AuthError(f"{where}; {_advice(status, code, self.client_id)}")

    def _error_body(self, response: requests.Response) -> tuple[str, str]:
        body = _json_object(response)
        if body is None:
            return "", ""
        code = body.get("error")
        description = body.get("error_description") or body.get("description") or ""
        code_text = code if isinstance(code, str) else ""
        text = description if isinstance(description, str) else ""
        secrets = self._credentials()
        return redact(code_text, secrets)[:40], redact(text, secrets)[:_DESCRIPTION_CHARS]

    def _credentials(self) -> tuple[str, ...]:
        """Every form in which our secrets can come back in an answer: the raw secret, the
        Basic credentials requests sent (RFC 7617: base64 of ``id:secret``) and the cached
        token."""
        secret = self._secret.reveal()
        basic = base64.b64encode(
            f"{self.client_id}:{secret}".encode("latin-1", "replace")
        ).decode()
        cached = self._token
        return (secret, basic) if cached is None else (secret, basic, cached.value.reveal())


_AUTH_SCHEME = re.compile(r"\b(Basic|Bearer)\s+[A-Za-z0-9._~+/=-]+", re.IGNORECASE)


def redact(text: str, secrets: tuple[str, ...] = ()) -> str:
    """``text`` without any of ``secrets`` and without the credential of any ``Basic`` or
    ``Bearer`` authorization it quotes (an endpoint may echo our header back)."""
    for secret in secrets:
        if secret:
            text = text.replace(secret, "***")
    return _AUTH_SCHEME.sub(lambda match: f"{match.group(1)} ***", text)


def _json_object(response: requests.Response) -> dict[str, Any] | None:
    try:
        body = response.json()
    except ValueError:
        return None
    return body if isinstance(body, dict) else None


def _advice(status: int, code: str, client_id: str) -> str:
    """The next step for a refused token request (RFC 6749 section 5.2 error codes)."""
    if code == "invalid_scope":
        return (
            f"the client {client_id!r} lacks a requested scope; grant the scope to the "
            "OAuth client in Genesys Cloud admin"
        )
    if code in {"unsupported_grant_type", "unauthorized_client"}:
        return (
            f"client {client_id!r} is not a Client Credentials grant; create one with "
            "that grant type"
        )
    if status == 401 or code == "invalid_client":
        return (
            f"client id {client_id!r} or its secret was refused; check both, and that "
            "the client exists in this region (clients belong to one region)"
        )
    if status == 403:
        return f"client {client_id!r} is not allowed to get tokens; check its roles"
    if status == 404:
        return "there is no token endpoint here; check the region or auth URL"
    return "check the client id, secret, grant type and region"
