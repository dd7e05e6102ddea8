"""Every credential form is masked wherever text leaves the process: plain strings, JSON,
exception messages and log records of any jitterline logger (issue 12, item 7)."""

from __future__ import annotations

import base64
import io
import json
import logging
from collections.abc import Iterator

import pytest
from hypothesis import given
from hypothesis import strategies as st

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


@given(st.text(max_size=200))
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
