"""OAuth2 client credentials against the emulator's real token endpoint on loopback.

A scripted ``http.server`` stands in only for answers the emulator cannot give (a 400
``invalid_scope``, a 429, a 503, a 200 without a token).
"""

from __future__ import annotations

import base64
import json
import logging
import ssl
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from jitterline.emulator import Emulator
from jitterline.errors import AuthError, ConfigError, RateLimited, TLSError, TransportError
from jitterline.transport import REGION_DOMAINS, Secret, TokenProvider, resolve_auth_url
from jitterline.transport.tokens import redact
from transport_testkit import SELF_SIGNED_PEM, FakeClock

CLIENT_ID = "jitterline-demo"
SECRET = "canary-secret-7f3a91"


@pytest.fixture
def emulator() -> Iterator[Emulator]:
    with Emulator(client_id=CLIENT_ID, client_secret=SECRET, token_lifetime_s=3600.0) as emu:
        yield emu


@pytest.fixture
def provider(emulator: Emulator) -> Iterator[tuple[TokenProvider, FakeClock]]:
    clock = FakeClock(start_s=1000.0)
    tokens = TokenProvider(emulator.auth_url, CLIENT_ID, SECRET, margin_s=60.0, clock=clock)
    yield tokens, clock
    tokens.close()


# -- caching and renewal -------------------------------------------------------------------


def test_token_is_fetched_once_and_reused_while_fresh(
    emulator: Emulator, provider: tuple[TokenProvider, FakeClock]
) -> None:
    tokens, clock = provider
    first = tokens.token()
    clock.now_s += 3500.0
    assert tokens.token() == first
    assert emulator.counters.token_requests == 1
    assert tokens.refreshes == 1


def test_token_is_renewed_once_it_is_within_the_margin_of_expiry(
    emulator: Emulator, provider: tuple[TokenProvider, FakeClock]
) -> None:
    tokens, clock = provider
    first = tokens.token()
    clock.now_s += 3600.0 - 60.0 - 0.001  # still outside the 60 s margin
    assert tokens.token() == first
    clock.now_s += 0.002
    second = tokens.token()
    assert second != first
    assert emulator.counters.token_requests == 2
    assert tokens.refreshes == 2


def test_token_shorter_lived_than_twice_the_margin_is_renewed_at_half_life() -> None:
    clock = FakeClock(start_s=1000.0)
    with Emulator(client_id=CLIENT_ID, client_secret=SECRET, token_lifetime_s=30.0) as emu:
        tokens = TokenProvider(emu.auth_url, CLIENT_ID, SECRET, margin_s=60.0, clock=clock)
        first = tokens.token()
        clock.now_s += 14.9
        assert tokens.token() == first
        clock.now_s += 0.2
        assert tokens.token() != first
        assert emu.counters.token_requests == 2
        tokens.close()


def test_invalidate_after_a_refused_handshake_forces_a_new_token(
    emulator: Emulator, provider: tuple[TokenProvider, FakeClock]
) -> None:
    tokens, _ = provider
    first = tokens.token()
    tokens.invalidate()
    assert tokens.token() != first
    assert emulator.counters.token_requests == 2


def test_concurrent_callers_share_one_request(
    emulator: Emulator, provider: tuple[TokenProvider, FakeClock]
) -> None:
    tokens, _ = provider
    seen: list[str] = []
    threads = [threading.Thread(target=lambda: seen.append(tokens.token())) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(10.0)
    assert len(set(seen)) == 1
    assert len(seen) == 8
    assert emulator.counters.token_requests == 1


# -- refusals ------------------------------------------------------------------------------


def test_wrong_secret_is_a_fatal_auth_error_naming_the_client_not_the_secret(
    emulator: Emulator,
) -> None:
    wrong = "wrong-secret-5521"
    tokens = TokenProvider(emulator.auth_url, CLIENT_ID, wrong)
    with pytest.raises(AuthError) as caught:
        tokens.token()
    text = str(caught.value)
    assert "invalid_client" in text
    assert CLIENT_ID in text
    assert "region" in text
    assert wrong not in text
    assert wrong not in repr(caught.value)
    assert tokens.refreshes == 0
    tokens.close()


def test_unknown_client_in_this_region_is_refused_with_a_region_hint(emulator: Emulator) -> None:
    tokens = TokenProvider(emulator.auth_url, "client-from-another-region", SECRET)
    with pytest.raises(AuthError, match="exists in this region"):
        tokens.token()
    tokens.close()


def test_wrong_auth_path_answers_404_and_suggests_checking_the_region(
    emulator: Emulator,
) -> None:
    tokens = TokenProvider(emulator.auth_url + "/not-login", CLIENT_ID, SECRET)
    with pytest.raises(AuthError, match=r"404.*check the region"):
        tokens.token()
    tokens.close()


def test_unreachable_token_endpoint_is_a_retryable_transport_error() -> None:
    with Emulator() as emu:
        dead_url = emu.auth_url
    tokens = TokenProvider(dead_url, CLIENT_ID, SECRET, timeout_s=2.0)
    with pytest.raises(TransportError) as caught:
        tokens.token()
    assert not isinstance(caught.value, AuthError)
    assert "cannot reach token endpoint" in str(caught.value)
    assert caught.value.__cause__ is not None  # the requests error, chained
    tokens.close()


# -- answers only a scripted server can give -----------------------------------------------


class _QuietHTTPServer(ThreadingHTTPServer):
    daemon_threads = True

    def handle_error(self, request: Any, client_address: Any) -> None:
        pass  # a client refusing our certificate is the expected outcome, not noise


class ScriptedTokenServer:
    """Answers every POST with one canned response and records what it was sent; a
    callable ``body`` is given the request's Authorization header (to echo it)."""

    def __init__(
        self,
        status: int,
        body: Any,
        headers: dict[str, str] | None = None,
        *,
        tls: ssl.SSLContext | None = None,
    ) -> None:
        self.status = status
        self.body = body
        self.headers = headers or {}
        self.requests: list[tuple[str, str, str]] = []
        server = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length", "0"))
                form = self.rfile.read(length).decode()
                authorization = self.headers.get("Authorization", "")
                server.requests.append((self.path, authorization, form))
                body = server.body(authorization) if callable(server.body) else server.body
                payload = json.dumps(body).encode()
                self.send_response(server.status)
                for key, value in server.headers.items():
                    self.send_header(key, value)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self._httpd = _QuietHTTPServer(("127.0.0.1", 0), Handler)
        self.scheme = "http"
        if tls is not None:
            self._httpd.socket = tls.wrap_socket(self._httpd.socket, server_side=True)
            self.scheme = "https"
        self._thread = threading.Thread(
            target=self._httpd.serve_forever,
            kwargs={"poll_interval": 0.05},
            name="test-scripted-token-server",
        )

    @property
    def url(self) -> str:
        host, port = self._httpd.server_address[:2]
        return f"{self.scheme}://{host!s}:{port}"

    def __enter__(self) -> ScriptedTokenServer:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()
        self._thread.join(5.0)


def _token_error(status: int, body: Any, headers: dict[str, str] | None = None) -> Exception:
    with ScriptedTokenServer(status, body, headers) as server:
        tokens = TokenProvider(server.url, CLIENT_ID, SECRET)
        with pytest.raises(TransportError) as caught:
            tokens.token()
        tokens.close()
    return caught.value


def test_missing_scope_is_a_fatal_auth_error_that_says_so() -> None:
    error = _token_error(400, {"error": "invalid_scope", "error_description": "no such scope"})
    assert isinstance(error, AuthError)
    assert "invalid_scope" in str(error)
    assert "lacks a requested scope" in str(error)


def test_error_description_echoing_the_secret_is_redacted() -> None:
    error = _token_error(401, {"error": "invalid_client", "error_description": f"bad {SECRET}"})
    assert isinstance(error, AuthError)
    assert SECRET not in str(error)
    assert "bad ***" in str(error)


def test_error_description_echoing_the_authorization_header_is_redacted() -> None:
    def echo(authorization: str) -> dict[str, str]:
        return {"error": "invalid_client", "error_description": f"refused {authorization}"}

    error = _token_error(401, echo)
    basic = base64.b64encode(f"{CLIENT_ID}:{SECRET}".encode()).decode()
    assert isinstance(error, AuthError)
    assert basic not in str(error)
    assert SECRET not in str(error)
    assert "refused Basic ***" in str(error)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("header was Basic am1lOnNlY3JldA==", "header was Basic ***"),
        ("got bearer eyJhbGciOi.J9.sig-_~+/ back", "got bearer *** back"),
        ("the secret s3cr3t leaked", "the secret *** leaked"),
        ("nothing to hide", "nothing to hide"),
    ],
)
def test_redact_removes_every_credential_form(text: str, expected: str) -> None:
    assert redact(text, ("s3cr3t",)) == expected


def test_token_endpoint_429_is_rate_limited_with_its_retry_after() -> None:
    error = _token_error(429, {"error": "too_many_requests"}, {"Retry-After": "7"})
    assert isinstance(error, RateLimited)
    assert error.retry_after_s == 7.0


def test_token_endpoint_503_is_retryable_not_an_auth_error() -> None:
    error = _token_error(503, {"error": "temporarily_unavailable"})
    assert not isinstance(error, (AuthError, RateLimited))
    assert "retrying may help" in str(error)


def test_200_without_an_access_token_is_a_clear_error() -> None:
    error = _token_error(200, {"token_type": "bearer", "expires_in": 60})
    assert not isinstance(error, AuthError)
    assert "without an access_token" in str(error)


def test_credentials_go_as_http_basic_and_the_grant_in_the_form_body() -> None:
    grant = {"access_token": "t-123", "token_type": "bearer", "expires_in": 600}
    with ScriptedTokenServer(200, grant) as server:
        tokens = TokenProvider(server.url + "/", CLIENT_ID, SECRET)
        assert tokens.token() == "t-123"
        tokens.close()
    path, authorization, form = server.requests[0]
    assert path == "/oauth/token"
    assert authorization.startswith("Basic ")
    assert form == "grant_type=client_credentials"
    assert SECRET not in form


def test_token_endpoint_with_an_untrusted_certificate_is_refused(tmp_path: Path) -> None:
    pem = tmp_path / "server.pem"
    pem.write_text(SELF_SIGNED_PEM)
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(pem)
    grant = {"access_token": "t-123", "token_type": "bearer", "expires_in": 600}
    with ScriptedTokenServer(200, grant, tls=context) as server:
        tokens = TokenProvider(server.url, CLIENT_ID, SECRET, timeout_s=5.0)
        with pytest.raises(TLSError, match=r"TLS verification of https://127\.0\.0\.1"):
            tokens.token()
        tokens.close()
    assert server.requests == []  # the credentials never left the client


# -- configuration -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("given", "expected"),
    [
        ("us-east-1", "https://login.mypurecloud.com"),
        ("mypurecloud.com", "https://login.mypurecloud.com"),
        ("usw2.pure.cloud", "https://login.usw2.pure.cloud"),
        ("EU-WEST-1", "https://login.mypurecloud.ie"),
        ("api.mypurecloud.de", "https://login.mypurecloud.de"),
        ("login.mypurecloud.com.au", "https://login.mypurecloud.com.au"),
        ("use2.us-gov-pure.cloud", "https://login.use2.us-gov-pure.cloud"),
        ("https://login.mypurecloud.jp/", "https://login.mypurecloud.jp"),
        ("http://127.0.0.1:8080", "http://127.0.0.1:8080"),
        ("http://localhost:9/auth/", "http://localhost:9/auth"),
    ],
)
def test_auth_url_from_region_domain_or_url(given: str, expected: str) -> None:
    assert resolve_auth_url(given) == expected


def test_every_region_in_the_table_resolves_to_its_login_host() -> None:
    for region, domain in REGION_DOMAINS.items():
        assert resolve_auth_url(region) == f"https://login.{domain}"
    assert len(REGION_DOMAINS) == 15


def test_unknown_region_is_refused_with_the_known_ones_listed() -> None:
    with pytest.raises(ConfigError, match=r"unknown Genesys region 'mars-1'.*mypurecloud\.ie"):
        resolve_auth_url("mars-1")


@pytest.mark.parametrize(
    "url",
    [
        "http://login.mypurecloud.com",  # the secret would travel in the clear
        "https://user:pw@login.mypurecloud.com",
        "ftp://login.mypurecloud.com",
        "https://login.mypurecloud.com/?x=1",
    ],
)
def test_unsafe_or_odd_auth_urls_are_refused(url: str) -> None:
    with pytest.raises(ConfigError):
        resolve_auth_url(url)


def test_provider_refuses_empty_credentials() -> None:
    with pytest.raises(ConfigError):
        TokenProvider("us-east-1", "", SECRET)
    with pytest.raises(ConfigError):
        TokenProvider("us-east-1", CLIENT_ID, "")


def test_repr_and_secret_wrapper_never_show_the_secret() -> None:
    tokens = TokenProvider("us-east-1", CLIENT_ID, SECRET)
    assert SECRET not in repr(tokens)
    assert CLIENT_ID in repr(tokens)
    assert SECRET not in repr(Secret(SECRET)) + str(Secret(SECRET))
    assert Secret(SECRET).reveal() == SECRET
    tokens.close()


def test_tls_verification_is_on_by_default_and_turning_it_off_is_logged(
    caplog: pytest.LogCaptureFixture,
) -> None:
    assert TokenProvider("us-east-1", CLIENT_ID, SECRET).verify is True
    with caplog.at_level(logging.WARNING, logger="jitterline"):
        TokenProvider("us-east-1", CLIENT_ID, SECRET, verify=False)
    assert "TLS verification is OFF" in caplog.text
