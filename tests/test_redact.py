"""Every credential form is masked wherever text leaves the process: plain strings, JSON,
exception messages and log records of any jitterline logger (issue 12, item 7)."""

from __future__ import annotations

import base64
import http.server
import io
import json
import logging
import os
import subprocess
import sys
import threading
import urllib.parse
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from fuzz_testkit import only_this_checkouts_plugins
from jitterline.emulator import Emulator
from jitterline.errors import AuthError, JitterlineError
from jitterline.redact import (
    MASK,
    RedactingFilter,
    forget_secrets,
    install_log_redaction,
    redact,
    redact_json,
    register_credentials,
    register_secret,
)

CLIENT_ID = "jitterline-canary-client"
SECRET = "canary-S3cret-7f1e"
BASIC = base64.b64encode(f"{CLIENT_ID}:{SECRET}".encode()).decode()


@pytest.fixture(autouse=True)
def _fresh_registry() -> Iterator[None]:
    forget_secrets()
    yield
    forget_secrets()


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (f"Authorization: Basic {BASIC}", "Authorization: ***"),
        (f"invalid_client: Basic {BASIC} refused", "invalid_client: Basic *** refused"),
        ("header Bearer eyJhbGciOi.J9-x_y", "header Bearer ***"),
        ("wss://h/p?access_token=abc&x=1", "wss://h/p?access_token=***&x=1"),
        ("https://h/cb?token=abc;key=def&sig=ghi", "https://h/cb?token=***;key=***&sig=***"),
        ("form grant_type=x&client_secret=hunter2", "form grant_type=x&client_secret=***"),
        ("X-API-KEY: 0123-abcd", "X-API-KEY: ***"),
        ("Signature: sig1=:zupMJUMfd/kMuvKc5zhRy+fJ=:", "Signature: sig1=:***:"),
        ('Signature-Input: sig1=();keyid="api-key-1";alg="x"', 'keyid="***";alg="x"'),
        ("X-Twilio-Signature: abc+def=", "X-Twilio-Signature: ***"),
        ("wss://user:pa55@host/p", "wss://user:***@host/p"),
    ],
)
def test_each_credential_form_is_masked(text: str, expected: str) -> None:
    assert expected in redact(text)


@pytest.mark.parametrize(
    "text",
    [
        "only bearer is supported; no bearer token; Basic auth",
        "token endpoint http://127.0.0.1:5/oauth/token answered 503",
        "frame of 962 bytes exceeds max_frame_bytes=640; the key=value form",
        "max_attempts=10 timeout_s=5.0 signature check failed",
    ],
)
def test_prose_without_credentials_is_left_alone(text: str) -> None:
    assert redact(text) == text


def test_json_stays_json_with_its_secret_members_masked() -> None:
    document = {
        "authorization": f"Basic {BASIC}",
        "access_token": "tok-1",
        "x-api-key": "k",
        "payload": {"message": "Bearer Abc9xyz"},
        "seq": 3,
    }

    masked = json.loads(redact(json.dumps(document)))

    assert masked == {
        "authorization": MASK,
        "access_token": MASK,
        "x-api-key": MASK,
        "payload": {"message": "Bearer ***"},
        "seq": 3,
    }
    assert redact_json(document) == masked


def test_registered_credentials_are_masked_raw_and_in_every_base64_form() -> None:
    register_credentials(CLIENT_ID, SECRET)
    urlsafe = base64.urlsafe_b64encode(f"{CLIENT_ID}:{SECRET}".encode()).decode().rstrip("=")
    text = f"a {SECRET} b {BASIC} c {urlsafe} d canary-S3cret-7f1e%21"

    masked = redact(text)

    assert SECRET not in masked
    assert BASIC not in masked
    assert urlsafe not in masked
    assert masked.startswith(f"a {MASK} b {MASK} c {MASK} d {MASK}")


def test_a_secret_too_short_to_be_one_is_not_registered() -> None:
    register_secret("ab")

    assert redact("abc ab") == "abc ab"


FRAGMENTS = st.sampled_from(
    [
        *("Basic ", "Bearer ", "Authorization: ", "X-API-KEY: ", '"token": ', "'secret': "),
        *("?access_token=", "&key=", "client_secret=", "keyid=", "sig1=:", "://u:p@", '"'),
        *("abcDEF123", "x+/=", " ", ",", ";", "\n", "***"),
    ]
)


@given(st.lists(FRAGMENTS | st.text(max_size=8), max_size=20).map("".join))
def test_redaction_is_idempotent(text: str) -> None:
    once = redact(text)

    assert redact(once) == once


def test_jitterline_errors_never_show_a_credential() -> None:
    error = AuthError(
        f"token endpoint answered 401 (invalid_client: Authorization: Basic {BASIC})"
    )

    assert BASIC not in str(error)
    assert "401" in str(error)
    assert isinstance(error, JitterlineError)


def test_the_filter_on_the_handler_masks_records_of_child_loggers_and_tracebacks() -> None:
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    child = logging.getLogger("jitterline.transport.tokens.test")
    child.addHandler(handler)
    child.setLevel(logging.DEBUG)
    try:
        install_log_redaction([handler])
        child.warning("echo %s and %r", f"Basic {BASIC}", {"access_token": "tok-42"})
        try:
            raise ValueError(f"Authorization: Bearer {BASIC}")
        except ValueError:
            child.exception("failed")
    finally:
        child.removeHandler(handler)

    written = stream.getvalue()
    assert BASIC not in written
    assert "tok-42" not in written
    assert "Basic ***" in written
    assert "ValueError: Authorization: ***" in written


def test_installing_twice_adds_one_filter() -> None:
    handler = logging.StreamHandler(io.StringIO())

    first = install_log_redaction([handler])
    second = install_log_redaction([handler])

    assert first is second
    assert sum(isinstance(f, RedactingFilter) for f in handler.filters) == 1


# -- the canary: everything a run writes, scanned for the secret in every form --------------


class _EchoingTokenEndpoint:
    """A token endpoint that puts the request's Authorization header in its
    ``error_description`` (item 7): ``answers`` lists the statuses of the requests in turn
    (the last repeats); a 200 grants ``BEARER``."""

    def __init__(self, answers: list[int]) -> None:
        self.answers = answers
        self.requests = 0
        endpoint = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                self.rfile.read(int(self.headers.get("Content-Length", "0")))
                status = endpoint.answers[min(endpoint.requests, len(endpoint.answers) - 1)]
                endpoint.requests += 1
                if status == 200:
                    body = {"access_token": BEARER, "token_type": "bearer", "expires_in": 3600}
                else:
                    body = {
                        "error": "invalid_client",
                        "error_description": f"refused {self.headers.get('Authorization')}",
                    }
                data = json.dumps(body).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, format: str, *args: object) -> None:
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}"

    def __enter__(self) -> _EchoingTokenEndpoint:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(5.0)


BEARER = "canary-Bearer-0f9e8d7c6b5a"
ROOT = Path(__file__).resolve().parent.parent


def _forms(client_id: str, secret: str) -> dict[str, str]:
    pair = f"{client_id}:{secret}".encode()
    return {
        "raw secret": secret,
        "quoted secret": urllib.parse.quote(secret, safe=""),
        "Basic": base64.b64encode(pair).decode(),
        "Basic, unpadded": base64.b64encode(pair).decode().rstrip("="),
        "Basic, urlsafe": base64.urlsafe_b64encode(pair).decode().rstrip("="),
        "Bearer": BEARER,
    }


def _jitterline(
    args: list[str], *, env: dict[str, str], timeout_s: float = 60.0
) -> subprocess.CompletedProcess[str]:
    environment = {**os.environ, **only_this_checkouts_plugins(), **env}
    environment["PYTHONPATH"] = os.pathsep.join(
        [str(ROOT / "pipeline"), str(ROOT / "plugins"), os.environ.get("PYTHONPATH", "")]
    )
    return subprocess.run(
        [sys.executable, "-m", "jitterline.cli", *args],
        capture_output=True,
        text=True,
        timeout=timeout_s,
        env=environment,
        check=False,
    )


def _written(done: subprocess.CompletedProcess[str], *files: Path) -> dict[str, str]:
    texts = {"stdout": done.stdout, "stderr": done.stderr}
    texts.update({path.name: path.read_text() for path in files if path.exists()})
    return texts


@pytest.mark.parametrize(
    ("answers", "exit_code"),
    [([503, 200], 0), ([401], 3)],
    ids=["503-echo-then-stream", "401-echo-is-fatal"],
)
def test_canary_secret_never_leaves_the_process_in_any_form(
    tmp_path: Path, answers: list[int], exit_code: int
) -> None:
    """``jitterline run`` with a canary client secret from the environment, a token
    endpoint echoing the Authorization header, ``--record``, ``--json`` and debug logs.
    (``jitterline demo`` uses the emulator's built-in credentials and token endpoint, so
    it cannot carry a canary: the run command is where a user's secret travels.)"""
    capture, summary = tmp_path / "run.jsonl", tmp_path / "summary.json"
    with (
        Emulator(duration_s=1.0, require_token=False) as emulator,
        _EchoingTokenEndpoint(answers) as tokens,
    ):
        done = _jitterline(
            [
                *("run", emulator.ws_url, "--auth-url", tokens.url, "--duration", "8"),
                *("--record", str(capture), "--json", str(summary), "--log-level", "debug"),
                *("--quiet", "--max-attempts", "5"),
            ],
            env={"JITTERLINE_CLIENT_ID": CLIENT_ID, "JITTERLINE_CLIENT_SECRET": SECRET},
        )
        requests = tokens.requests

    assert done.returncode == exit_code, done.stderr
    assert requests == len(answers)
    written = _written(done, capture, summary)
    assert "Basic ***" in written["stderr"]  # the echo came through, masked
    if exit_code == 0:
        assert json.loads(written["summary.json"])["frames"]["received"] > 0
    leaks = [
        f"{form} in {where}"
        for where, text in written.items()
        for form, value in _forms(CLIENT_ID, SECRET).items()
        if value in text
    ]
    assert leaks == []


def test_demo_writes_no_form_of_its_own_credentials(tmp_path: Path) -> None:
    """The demo's emulator credentials stand in for a canary: none of their forms may
    reach stdout, stderr, the capture or the summary at debug level."""
    capture, summary = tmp_path / "demo.jsonl", tmp_path / "summary.json"

    done = _jitterline(
        [
            *("demo", "--duration", "1", "--profile", "flaky", "--quiet"),
            *("--record", str(capture), "--json", str(summary), "--log-level", "debug"),
        ],
        env={},
    )

    assert done.returncode == 0, done.stderr
    written = _written(done, capture, summary)
    assert {"demo.jsonl", "summary.json"} <= set(written)
    forms = _forms("jitterline-demo", "demo-secret")
    del forms["Bearer"]  # the emulator's tokens are random; the capture holds no header
    leaks = [f"{f} in {w}" for w, text in written.items() for f, v in forms.items() if v in text]
    assert leaks == []
