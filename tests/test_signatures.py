"""Upgrade-request authentication: AudioHook signatures (Genesys' published example), key
sets, and Twilio's X-Twilio-Signature (twilio-python's test vectors)."""

from __future__ import annotations

import base64

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from jitterline.errors import ConfigError
from jitterline.protocols.signatures import (
    KeySet,
    Reason,
    Verdict,
    parse_api_keys,
    sign,
    sign_components,
    twilio_signature,
    verify,
    verify_twilio,
)

# The AudioHook documentation example, as the reference implementation's
# signature-builder test feeds it (its builder adds `expires` to `created`).
DOC_API_KEY = "SGVsbG8sIEkgYW0gdGhlIEFQSSBrZXkh"
DOC_SECRET = base64.b64decode("TXlTdXBlclNlY3JldEtleVRlbGxOby0xITJAMyM0JDU=")
DOC_NONCE = "VGhpc0lzQVVuaXF1ZU5vbmNl"
DOC_CREATED = 1641013200
DOC_EXPIRES = 1641013200 + 1641013230
ORG = "d7934305-0972-4844-938e-9060eef73d05"
SESSION = "30b0e395-84d3-4570-ac13-9a62d8f514c0"
CORRELATION = "e160e428-53e2-487c-977d-96989bf5c99d"
PATH = "/api/v1/voicebiometrics/ws"
HOST = "audiohook.example.com"
NONCE = "abcdefghijklmnopqrstuvwx"
NOW = 1_700_000_000


def doc_components(authority_name: str) -> list[tuple[str, str]]:
    return [
        ("@request-target", PATH),
        (authority_name, HOST),
        ("audiohook-organization-id", ORG),
        ("audiohook-session-id", SESSION),
        ("audiohook-correlation-id", CORRELATION),
        ("x-api-key", DOC_API_KEY),
    ]


@pytest.mark.parametrize(
    ("authority_name", "expected"),
    [
        ("host", "zupMJUMfd/kMuvKc5zhRyfJPE3jTROuz1S1hn8SCTpE="),
        ("@authority", "NZBwyBHRRyRoeLqy1IzOa9VYBuI8TgMFt2GRDkDuJh4="),
    ],
)
def test_documentation_example_signs_to_the_published_value(
    authority_name: str, expected: str
) -> None:
    headers = sign_components(
        doc_components(authority_name),
        key_id=DOC_API_KEY,
        key=DOC_SECRET,
        created_wall_s=DOC_CREATED,
        expires_wall_s=DOC_EXPIRES,
        nonce=DOC_NONCE,
    )
    assert headers["Signature"] == f"sig1=:{expected}:"
    assert headers["Signature-Input"] == (
        f'sig1=("@request-target" "{authority_name}" "audiohook-organization-id" '
        '"audiohook-session-id" "audiohook-correlation-id" "x-api-key");'
        f'keyid="{DOC_API_KEY}";nonce="{DOC_NONCE}";alg="hmac-sha256";'
        f"created={DOC_CREATED};expires={DOC_EXPIRES}"
    )


def test_documentation_example_verifies_at_its_creation_time() -> None:
    headers = {
        "Host": HOST,
        "Audiohook-Organization-Id": ORG,
        "Audiohook-Session-Id": SESSION,
        "Audiohook-Correlation-Id": CORRELATION,
        "X-API-KEY": DOC_API_KEY,
        "Signature": "sig1=:NZBwyBHRRyRoeLqy1IzOa9VYBuI8TgMFt2GRDkDuJh4=:",
        "Signature-Input": sign_components(
            doc_components("@authority"),
            key_id=DOC_API_KEY,
            key=DOC_SECRET,
            created_wall_s=DOC_CREATED,
            expires_wall_s=DOC_EXPIRES,
            nonce=DOC_NONCE,
        )["Signature-Input"],
    }
    keys = KeySet({DOC_API_KEY: DOC_SECRET})
    verdict = check(headers, keys=keys, now_wall_s=DOC_CREATED + 2)
    assert verdict == Verdict(Reason.VERIFIED) and verdict.ok


def signed(**overrides: object) -> dict[str, str]:
    options: dict[str, object] = {
        "path": PATH,
        "authority": HOST,
        "organization_id": ORG,
        "session_id": SESSION,
        "correlation_id": CORRELATION,
        "api_key": DOC_API_KEY,
        "secret": DOC_SECRET,
        "created_wall_s": NOW,
        "nonce": NONCE,
    }
    options.update(overrides)
    return sign(**options)  # type: ignore[arg-type]


def check(
    headers: dict[str, str],
    *,
    keys: KeySet | None = None,
    now_wall_s: float = NOW + 1,
    path: str = PATH,
) -> Verdict:
    return verify(
        headers,
        method="GET",
        path=path,
        authority=HOST,
        keys=KeySet({DOC_API_KEY: DOC_SECRET}) if keys is None else keys,
        now_wall_s=now_wall_s,
    )


def test_our_signature_verifies() -> None:
    headers = signed()
    assert headers["X-API-KEY"] == DOC_API_KEY
    assert check(headers).reason is Reason.VERIFIED


def test_authority_is_compared_in_lowercase_and_must_be_known() -> None:
    headers = signed(authority="AudioHook.Example.com:443")
    assert check(headers).reason is Reason.VERIFIED
    as_pairs = [*headers.items()]
    assert verify(
        as_pairs,
        method="GET",
        path=PATH,
        authority=None,
        keys={DOC_API_KEY: DOC_SECRET},
        now_wall_s=NOW,
    ) == Verdict(Reason.MISSING_COMPONENT)  # no Host header and no authority given


@pytest.mark.parametrize(
    ("headers", "now_wall_s", "reason"),
    [
        (signed(), NOW + 11, Reason.STALE),
        (signed(created_wall_s=NOW + 60), NOW, Reason.FUTURE),
        (signed(lifetime_s=2), NOW + 5, Reason.EXPIRED),
        (signed(nonce="tooshort"), NOW, Reason.SHORT_NONCE),
        (signed(secret=b"another secret"), NOW, Reason.BAD_SIGNATURE),
        (signed(api_key="unknown-key"), NOW, Reason.UNKNOWN_KEY),
        (signed() | {"Audiohook-Session-Id": CORRELATION}, NOW, Reason.BAD_SIGNATURE),
        (signed() | {"X-API-KEY": "other"}, NOW, Reason.KEYID_MISMATCH),
        (signed() | {"Signature": "sig1=:not base64!:"}, NOW, Reason.MALFORMED),
        (signed() | {"Signature-Input": "sig1=broken"}, NOW, Reason.MALFORMED),
        ({k: v for k, v in signed().items() if k != "X-API-KEY"}, NOW, Reason.MISSING_API_KEY),
    ],
)
def test_refusals(headers: dict[str, str], now_wall_s: float, reason: Reason) -> None:
    verdict = check(headers, now_wall_s=now_wall_s)
    assert verdict.reason is reason
    assert not verdict.ok


def test_a_tampered_path_fails() -> None:
    assert check(signed(), path="/other").reason is Reason.BAD_SIGNATURE


def test_keyid_must_equal_the_api_key_header() -> None:
    headers = signed()
    headers["Signature-Input"] = headers["Signature-Input"].replace(DOC_API_KEY, "someone-else")
    assert check(headers).reason is Reason.KEYID_MISMATCH


def test_signature_must_cover_every_required_component() -> None:
    components = doc_components("@authority")[:-1]  # without x-api-key
    headers = signed() | sign_components(
        components,
        key_id=DOC_API_KEY,
        key=DOC_SECRET,
        created_wall_s=NOW,
        expires_wall_s=NOW + 30,
        nonce=NONCE,
    )
    assert check(headers).reason is Reason.MISSING_COMPONENT


def test_unknown_algorithm_is_refused() -> None:
    headers = signed()
    headers["Signature-Input"] = headers["Signature-Input"].replace("hmac-sha256", "rsa-pss")
    assert check(headers).reason is Reason.UNSUPPORTED_ALGORITHM


def test_unsigned_requests_pass_only_for_keys_with_an_empty_secret() -> None:
    unsigned = {
        k: v for k, v in signed().items() if k.lower() not in ("signature", "signature-input")
    }
    assert check(unsigned).reason is Reason.UNSIGNED
    open_keys = parse_api_keys(DOC_API_KEY)
    verdict = check(unsigned, keys=open_keys)
    assert verdict.reason is Reason.UNSIGNED_ALLOWED and verdict.ok
    assert check(unsigned | {"X-API-KEY": "stranger"}, keys=open_keys).reason is Reason.UNSIGNED


def test_a_verdict_never_carries_the_material_it_checked() -> None:
    verdict = check(signed(secret=b"wrong"))
    assert DOC_API_KEY not in repr(verdict)
    assert "sig1" not in repr(verdict)


@settings(max_examples=200, deadline=None)
@given(
    st.dictionaries(
        st.sampled_from(
            ["Signature", "Signature-Input", "X-API-KEY", "Host", "Audiohook-Session-Id"]
        ),
        st.text(max_size=80),
    )
)
def test_arbitrary_headers_give_a_verdict_never_an_exception(headers: dict[str, str]) -> None:
    mixed = signed() | headers
    verdict = check(mixed)
    assert isinstance(verdict.reason, Reason)


# -- key sets -------------------------------------------------------------------------------

SECRET_B64 = base64.b64encode(b"s3cr3t-bytes").decode()


def test_api_keys_from_the_environment_form() -> None:
    keys = parse_api_keys(f"alpha:{SECRET_B64}, beta ,gamma:")
    assert dict(keys) == {"alpha": b"s3cr3t-bytes", "beta": b"", "gamma": b""}
    assert repr(keys) == "KeySet(<3 keys>)"
    assert "alpha" not in repr(keys) and SECRET_B64 not in repr(keys)


def test_api_keys_from_a_file_with_comments() -> None:
    text = f"# production\nalpha:{SECRET_B64}\n\n  # staging\nbeta\n"
    assert dict(parse_api_keys(text, source="keys.txt")) == {"alpha": b"s3cr3t-bytes", "beta": b""}


@pytest.mark.parametrize(
    ("text", "match"),
    [
        ("alpha:not*base64", "entry 1: the client secret is not valid base64"),
        (f"alpha:{SECRET_B64},alpha", "entry 2 repeats an API key"),
        (f":{SECRET_B64}", "entry 1 has an empty or non-printable API key"),
    ],
)
def test_bad_key_entries_are_named_by_position_never_echoed(text: str, match: str) -> None:
    with pytest.raises(ConfigError, match=match) as caught:
        parse_api_keys(text)
    message = str(caught.value)
    assert "not*base64" not in message and SECRET_B64 not in message and "alpha" not in message


# -- Twilio ---------------------------------------------------------------------------------

TWILIO_URL = "https://mycompany.com/myapp.php?foo=1&bar=2"
TWILIO_PARAMS = {
    "CallSid": "CA1234567890ABCDE",
    "Digits": "1234",
    "From": "+14158675309",
    "To": "+18005551212",
    "Caller": "+14158675309",
}


def test_twilio_signature_matches_twilio_python_vector() -> None:
    assert twilio_signature(TWILIO_URL, "12345", TWILIO_PARAMS) == "RSOYDt4T1cUTdK1PDd93/VVr8B8="
    assert verify_twilio(TWILIO_URL, "RSOYDt4T1cUTdK1PDd93/VVr8B8=", "12345", TWILIO_PARAMS)


def test_twilio_default_port_is_accepted_either_way() -> None:
    with_port = "https://mycompany.com:1234/myapp.php?foo=1&bar=2"
    assert verify_twilio(with_port, "RSOYDt4T1cUTdK1PDd93/VVr8B8=", "12345", TWILIO_PARAMS)
    assert verify_twilio(TWILIO_URL, "kvajT1Ptam85bY51eRf/AJRuM3w=", "12345", TWILIO_PARAMS)


def test_twilio_websocket_upgrade_signature() -> None:
    url = "wss://media.example.com/twilio/stream"
    signature = twilio_signature(url, "token")
    assert verify_twilio(url, signature, "token")
    assert verify_twilio("wss://media.example.com:443/twilio/stream", signature, "token")
    assert not verify_twilio(url, signature, "other token")
    assert not verify_twilio(url + "?x=1", signature, "token")
    assert not verify_twilio(url, "", "token")
