"""The sans-I/O parts of ``serve``: the upgrade gate, the options and credentials, and
the status lines for many sessions."""

from __future__ import annotations

import base64
import time
from collections import Counter
from collections.abc import Iterable
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from jitterline.errors import ConfigError
from jitterline.frames import FrameCounts
from jitterline.protocols import signatures
from jitterline.serve_status import SessionRow, rank, render
from jitterline.server import Credentials, Decision, Gate, ServeOptions, Totals, load_credentials
from jitterline.server.config import is_loopback

SECRET = b"0123456789abcdef0123456789abcdef"
KEYS = signatures.parse_api_keys(f"key-1:{base64.b64encode(SECRET).decode()}")


def gate(**options: object) -> Gate:
    return Gate(ServeOptions(**options))  # type: ignore[arg-type]


def check(
    g: Gate,
    target: str = "/",
    headers: Iterable[tuple[str, str]] = (),
    draining: bool = False,
) -> Decision:
    return g.check(
        target=target,
        headers=headers,
        secure=False,
        draining=draining,
        now_wall_s=time.time(),
    )


@pytest.mark.parametrize("path", ["/health", "/health/check"])
def test_health_is_200_then_503_while_draining(path: str) -> None:
    g = gate(path="/audiohook")
    serving, draining = check(g, path), check(g, path, draining=True)
    assert (serving.status, draining.status) == (200, 503)
    assert not (serving.refused or draining.refused)  # a health check is no session


def test_path_is_a_prefix_since_audio_connector_appends_its_id() -> None:
    g = gate(path="/hook")
    assert check(g, "/hook").status == 101
    assert check(g, "/hook/connector-7?x=1").status == 101
    assert check(g, "/hooked").status == 404
    assert check(g, "/other").status == 404


def test_draining_and_full_answer_503_with_retry_after() -> None:
    g = gate(max_sessions=2, retry_after_s=7)
    draining = g.check(target="/", headers=[], secure=False, draining=True, now_wall_s=0.0)
    assert (draining.status, draining.headers) == (503, (("Retry-After", "7"),))
    assert draining.refused
    assert g.capacity(1).accepted
    full = g.capacity(2)
    assert (full.status, full.reason, full.headers) == (
        503,
        "max_sessions",
        (("Retry-After", "7"),),
    )


def test_audiohook_refusals_wait_and_name_the_reason_without_secrets() -> None:
    g = gate(credentials=Credentials(api_keys=KEYS))
    decision = g.check(
        target="/", headers=[("X-API-KEY", "key-1")], secure=False, draining=False, now_wall_s=0.0
    )
    assert (decision.status, decision.reason, decision.delay_s) == (401, "unsigned", 0.5)
    assert "key-1" not in repr(decision)


def test_audiohook_signature_covers_the_public_authority() -> None:
    headers = signatures.sign(
        path="/",
        authority="hook.example.com",
        organization_id="o",
        session_id="s",
        correlation_id="c",
        api_key="key-1",
        secret=SECRET,
        created_wall_s=int(time.time()),
        nonce="n" * 24,
    )
    behind_proxy = [*headers.items(), ("Host", "127.0.0.1:8080")]
    plain = gate(credentials=Credentials(api_keys=KEYS))
    proxied = gate(credentials=Credentials(api_keys=KEYS), public_url="wss://hook.example.com")
    assert check(plain, "/", behind_proxy).status == 401
    assert check(proxied, "/", behind_proxy).status == 101


def test_twilio_checks_the_public_url_when_a_token_is_set() -> None:
    url = "wss://voice.example.com/twilio?tenant=1"
    signature = signatures.twilio_signature(url, "token")
    g = gate(
        dialect="twilio",
        credentials=Credentials(twilio_token="token"),
        public_url="wss://voice.example.com",
    )
    good = check(g, "/twilio?tenant=1", [("X-Twilio-Signature", signature)])
    bad = check(g, "/twilio?tenant=2", [("X-Twilio-Signature", signature)])
    assert (good.status, bad.status) == (101, 403)


@pytest.mark.parametrize(
    ("host", "loopback"),
    [("127.0.0.1", True), ("::1", True), ("localhost", True), ("0.0.0.0", False), ("", False)],
)
def test_loopback_hosts(host: str, loopback: bool) -> None:
    assert is_loopback(host) is loopback


@pytest.mark.parametrize("dialect", ["audiohook", "audioconnector", "twilio"])
def test_a_public_bind_needs_credentials_for_its_dialect(dialect: str) -> None:
    ServeOptions(host="127.0.0.1", dialect=dialect).check_exposure()
    with pytest.raises(ConfigError, match="refusing to serve"):
        ServeOptions(host="0.0.0.0", dialect=dialect).check_exposure()
    wrong = Credentials(twilio_token="t") if dialect != "twilio" else Credentials(api_keys=KEYS)
    with pytest.raises(ConfigError):
        ServeOptions(host="0.0.0.0", dialect=dialect, credentials=wrong).check_exposure()
    right = Credentials(api_keys=KEYS) if dialect != "twilio" else Credentials(twilio_token="t")
    ServeOptions(host="0.0.0.0", dialect=dialect, credentials=right).check_exposure()


def test_credentials_from_the_environment_or_a_file_never_shown(tmp_path: Path) -> None:
    secret_b64 = base64.b64encode(SECRET).decode()
    env = {
        "JITTERLINE_AUDIOHOOK_API_KEYS": f"env-key:{secret_b64},open-key",
        "JITTERLINE_TWILIO_AUTH_TOKEN": "tok-secret",
    }
    credentials = load_credentials(env)
    assert credentials.api_keys is not None
    assert dict(credentials.api_keys) == {"env-key": SECRET, "open-key": b""}
    assert credentials.twilio_token == "tok-secret"
    for hidden in ("env-key", secret_b64, "tok-secret"):
        assert hidden not in repr(credentials)
    keys_file = tmp_path / "keys"
    keys_file.write_text(f"# Genesys integration\nfile-key:{secret_b64}\n", encoding="utf-8")
    from_file = load_credentials(env, api_keys_file=keys_file)
    assert from_file.api_keys is not None
    assert list(from_file.api_keys) == ["file-key"]
    with pytest.raises(ConfigError, match="cannot read the API keys file"):
        load_credentials({}, api_keys_file=tmp_path / "missing")


def row(name: str, verdict: str, lost: int, played: int = 100) -> SessionRow:
    return SessionRow(
        name, "external", verdict, FrameCounts(received=played, played=played, lost=lost)
    )


def test_status_shows_totals_and_only_the_worst_sessions() -> None:
    rows = [row(f"s{i}", "healthy", 0) for i in range(300)]
    rows += [
        row("lossy", "loss", 20),
        row("worse", "loss", 40),
        row("jittery", "network_jitter", 1),
    ]
    totals = Totals(completed=5, probes=1, failed=2, refused=Counter({"max_sessions": 3}))
    totals.add_frames(FrameCounts(received=10, played=9, late=1))

    lines = render(totals, len(rows), rows, worst=2)

    assert len(lines) == 4
    assert "303 active, 5 completed, 1 probes, 2 failed, 3 refused" in lines[0]
    assert f"{10 + 303 * 100} received" in lines[0]
    assert [line.split(":")[0].strip() for line in lines[2:]] == [
        "worse/external",
        "lossy/external",
    ]
    assert rank(rows, 10)[-1].session_id == "jittery"
    assert len(render(totals, len(rows), rows, every_session=True)) == 1 + len(rows)


HEADER_NAMES = st.sampled_from(
    ["X-API-KEY", "Signature", "Signature-Input", "Host", "X-Forwarded-Host",
     "X-Forwarded-Proto", "X-Twilio-Signature", "Audiohook-Session-Id"]
)  # fmt: skip


@settings(max_examples=300, deadline=None)
@given(
    dialect=st.sampled_from(["audiohook", "twilio"]),
    target=st.text(max_size=40),
    headers=st.lists(st.tuples(HEADER_NAMES | st.text(max_size=12), st.text(max_size=60))),
    draining=st.booleans(),
)
def test_any_request_gets_a_decision_never_an_exception(
    dialect: str, target: str, headers: list[tuple[str, str]], draining: bool
) -> None:
    credentials = Credentials(api_keys=KEYS, twilio_token="token")
    g = gate(dialect=dialect, credentials=credentials)
    decision = check(g, target, headers, draining)
    # With credentials configured, made-up headers never pass.
    assert decision.status in (200, 401, 403, 404, 503)
    assert decision.refused == (decision.status in (401, 403, 503) and decision.reason != "health")
