"""``InboundServer`` with Twilio Media Streams on loopback: a whole stream with both tracks,
and ``X-Twilio-Signature`` checked against the URL Twilio dialled."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest
from websockets.asyncio.client import connect
from websockets.exceptions import InvalidStatus

from jitterline.protocols.signatures import twilio_signature
from jitterline.protocols.twilio import TwilioDialect
from jitterline.server import Credentials
from serve_testkit import WAIT_S, Served, serving

TOKEN = "twilio-auth-token-for-tests"
CALL_SID = "CA0123456789abcdef0123456789abcdef"


async def twilio_stream(
    url: str, stream_sid: str, chunks: int, headers: dict[str, str] | None = None
) -> None:
    """Play Twilio: connected, start (both tracks), ``chunks`` 20 ms media per track, stop,
    then close the socket as Twilio does."""
    proto = TwilioDialect(
        role="client", stream_sid=stream_sid, call_sid=CALL_SID, tracks=("inbound", "outbound")
    )
    async with connect(url, additional_headers=headers, open_timeout=WAIT_S) as ws:
        proto.connection_made(0.0)
        for index in range(chunks):
            proto.send_audio(bytes([index % 256]) * 160, track="inbound")
            proto.send_audio(bytes([255 - index % 256]) * 160, track="outbound")
        proto.stop()
        for data in proto.data_to_send():
            await ws.send(data)
        await asyncio.wait_for(ws.wait_closed(), WAIT_S)  # the server closes after stop


def test_twilio_stream_gives_one_summary_per_track(tmp_path: Path) -> None:
    with serving(tmp_path, dialect="twilio") as served:
        asyncio.run(twilio_stream(served.url, "MZ0000000000000000000000000000001", 25))
        summaries = served.summaries(lambda doc: True, 2)
        totals = served.totals()

    assert sorted(doc["stream"]["channel"] for doc in summaries) == ["inbound", "outbound"]
    for doc in summaries:
        assert doc["frames"]["received"] == 25
        assert doc["frames"]["balanced"] is True
        assert doc["stream"]["session_id"] == "MZ0000000000000000000000000000001"
        assert doc["stream"]["call_id"] == CALL_SID
        assert doc["stream"]["dialect"] == "twilio"
    assert (totals.completed, totals.failed) == (1, 0)


def signed(url: str, token: str = TOKEN, **extra: str) -> dict[str, str]:
    return {"X-Twilio-Signature": twilio_signature(url, token), **extra}


def test_a_signed_stream_is_accepted(tmp_path: Path) -> None:
    credentials = Credentials(twilio_token=TOKEN)
    with serving(tmp_path, dialect="twilio", path="/twilio", credentials=credentials) as served:
        url = served.url + "?tenant=7"
        asyncio.run(twilio_stream(url, "MZ0000000000000000000000000000002", 3, signed(url)))
        summaries = served.summaries(lambda doc: True, 2)
    assert all(doc["frames"]["received"] == 3 for doc in summaries)


def test_behind_a_proxy_the_forwarded_url_is_the_one_checked(tmp_path: Path) -> None:
    public = "wss://voice.example.com/twilio"
    forwarded = {"X-Forwarded-Proto": "https", "X-Forwarded-Host": "voice.example.com"}
    credentials = Credentials(twilio_token=TOKEN)
    with serving(tmp_path, dialect="twilio", path="/twilio", credentials=credentials) as served:
        headers = signed(public, **forwarded)
        asyncio.run(twilio_stream(served.url, "MZ0000000000000000000000000000003", 3, headers))
        summaries = served.summaries(lambda doc: True, 2)
    assert len(summaries) == 2


@pytest.mark.parametrize(
    ("case", "headers"),
    [
        ("no signature", lambda url: {}),
        ("wrong token", lambda url: signed(url, "another token")),
        ("signed for another URL", lambda url: signed(url + "/elsewhere")),
    ],
)
def test_bad_twilio_signature_gets_403(tmp_path: Path, case: str, headers: Any) -> None:
    async def attempt(url: str) -> int:
        with pytest.raises(InvalidStatus) as refused:
            await twilio_stream(url, "MZ0000000000000000000000000000004", 1, headers(url))
        return refused.value.response.status_code

    credentials = Credentials(twilio_token=TOKEN)
    with serving(tmp_path, dialect="twilio", credentials=credentials) as served:
        status = asyncio.run(attempt(served.url))
        refused = sum(served.totals().refused.values())
    assert status == 403, case
    assert refused == 1


def test_a_socket_that_never_starts_a_stream_is_closed(tmp_path: Path) -> None:
    async def silent(url: str) -> int | None:
        async with connect(url, open_timeout=WAIT_S) as ws:
            await asyncio.wait_for(ws.wait_closed(), WAIT_S)
            return ws.close_code

    with serving(tmp_path, dialect="twilio", open_timeout_s=0.5) as served:
        code = asyncio.run(silent(served.url))
        totals = served.totals_when(lambda t: t.failed == 1)
    assert code == 1008
    assert totals.completed == 0


async def received(served: Served, frames: int) -> None:
    """Until a running session's snapshot shows ``frames`` received (the server read
    them), so a drain cannot overtake audio still in the socket."""

    def seen() -> bool:
        snapshots = [
            stats
            for session in served.server.sessions.values()
            for stats in session.latest.values()
        ]
        return any(stats.frames.received >= frames for stats in snapshots)

    while not served.call(seen):
        await asyncio.sleep(0.02)


def test_drain_closes_a_twilio_stream_and_writes_its_summaries(tmp_path: Path) -> None:
    async def streaming(served: Served) -> int | None:
        proto = TwilioDialect(role="client", stream_sid="MZ0000000000000000000000000000005")
        async with connect(served.url, open_timeout=WAIT_S) as ws:
            proto.connection_made(0.0)
            for _ in range(5):
                proto.send_audio(bytes(160))
            for data in proto.data_to_send():
                await ws.send(data)
            await asyncio.wait_for(received(served, 5), WAIT_S)
            draining = asyncio.wrap_future(served.ioloop.run(served.server.drain()))
            await asyncio.wait_for(ws.wait_closed(), WAIT_S)
            await asyncio.wait_for(draining, WAIT_S)
            return ws.close_code

    with serving(tmp_path, dialect="twilio") as served:
        code = asyncio.run(streaming(served))
        [summary] = served.summaries(lambda doc: True, 1)
    assert code == 1000
    assert summary["stream"]["channel"] == "inbound"
    assert summary["frames"]["received"] == 5
