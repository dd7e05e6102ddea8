"""``InboundServer`` with AudioHook on loopback: whole sessions, stereo, the probe, and the
credentials refused at the upgrade (docs/serve.md)."""

from __future__ import annotations

import asyncio
import base64
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

import pytest
from websockets.exceptions import InvalidStatus

from jitterline import AudioFrame, StreamInfo, hookimpl
from jitterline.protocols.audioconnector import AudioConnectorDialect
from jitterline.protocols.signatures import parse_api_keys
from jitterline.server import Credentials
from serve_testkit import (
    CONVERSATION,
    PARTICIPANT,
    WAIT_S,
    Genesys,
    Served,
    Wire,
    serving,
    signed_headers,
    whole_session,
)
from transport_testkit import SELF_SIGNED_PEM, tls_client_context

API_KEY = "jitterline-test-key"
SECRET = b"a client secret of 32 bytes!!!!!"
KEYS = parse_api_keys(f"{API_KEY}:{base64.b64encode(SECRET).decode()},unsigned-key")


def by_session(session_id: str) -> Any:
    return lambda doc: doc["stream"]["session_id"] == session_id


def test_whole_session_counts_every_frame_per_channel(tmp_path: Path) -> None:
    async def session(url: str) -> tuple[str, list[str]]:
        wire = await Wire.connect(url)
        answers = [(await wire.open())["type"]]
        for _ in range(5):
            await wire.ws.send(bytes(3200))  # 200 ms of stereo PCMU
        await wire.send("ping", {"rtt": "PT0.01S"})
        pong = await wire.until("pong")
        assert pong["clientseq"] == wire.seq
        answers.append(pong["type"])
        await wire.send("paused")
        await wire.send("resumed", {"start": "PT1S", "discarded": "PT0S"})
        for _ in range(3):
            await wire.ws.send(bytes(3200))
        await wire.send("update", {"language": "fr-FR"})
        answers.append((await wire.until("updated"))["type"])
        await wire.send("close", {"reason": "end"})
        answers.append((await wire.until("closed"))["type"])
        await asyncio.wait_for(wire.ws.wait_closed(), WAIT_S)
        return wire.session_id, answers

    with serving(tmp_path) as served:
        session_id, answers = asyncio.run(session(served.url))
        summaries = served.summaries(by_session(session_id), 2)
        totals = served.totals()

    assert answers == ["opened", "pong", "updated", "closed"]
    assert sorted(doc["stream"]["channel"] for doc in summaries) == ["external", "internal"]
    for doc in summaries:
        assert doc["frames"]["received"] == 8
        assert doc["frames"]["malformed"] == 0
        assert doc["frames"]["balanced"] is True
        assert doc["stream"]["call_id"] == CONVERSATION
        assert doc["stream"]["participant_id"] == PARTICIPANT
        assert doc["stream"]["dialect"] == "audiohook"
        assert doc["stream"]["probe"] is False
    assert (totals.completed, totals.failed, totals.probes) == (1, 0, 0)


class Played:
    """Collects the frames each channel played."""

    def __init__(self) -> None:
        self.frames: dict[tuple[str, str], list[AudioFrame]] = defaultdict(list)

    @hookimpl
    def jitterline_frame_played(self, frame: AudioFrame, stream: StreamInfo) -> None:
        if not frame.concealed:
            self.frames[stream.key].append(frame)


def test_stereo_audio_is_split_into_two_channels_with_the_samples_sent(tmp_path: Path) -> None:
    played = Played()

    async def session(served: Served) -> tuple[str, list[bytes]]:
        client = await Genesys.connect(served.url)
        await client.open()
        sent = await client.audio(5, paced=True)
        deadline = time.monotonic() + WAIT_S
        for channel in ("external", "internal"):
            # The buffer may still hold the newest frames; three played is plenty.
            while len(played.frames[(client.session_id, channel)]) < 3:
                assert time.monotonic() < deadline, "the audio was not played"
                await asyncio.sleep(0.02)
        await client.close()
        return client.session_id, sent

    with serving(tmp_path, plugins=(played,)) as served:
        session_id, sent = asyncio.run(session(served))
        served.summaries(by_session(session_id), 2)

    wire = b"".join(sent)
    for index, channel in enumerate(("external", "internal")):
        received = b"".join(f.payload for f in played.frames[(session_id, channel)])
        assert len(received) >= 3 * 1600
        assert received == wire[index::2][: len(received)]


def test_the_probe_is_answered_and_not_counted_as_a_call(tmp_path: Path) -> None:
    async def probe(url: str) -> dict[str, Any]:
        client = await Genesys.connect(url, probe=True)
        opened = await client.open()
        await client.close()
        return opened

    with serving(tmp_path) as served:
        opened = asyncio.run(probe(served.url))
        session_id = asyncio.run(whole_session(served.url, messages=2))
        served.summaries(by_session(session_id), 2)
        totals = served.totals_when(lambda t: t.probes == 1)
        lines = served.summaries(lambda doc: True, 0)

    assert opened["parameters"]["media"]
    assert (totals.probes, totals.completed) == (1, 1)
    assert all(not doc["stream"]["probe"] for doc in lines)
    assert len(lines) == 2  # the call's two channels; nothing for the probe


def test_signed_session_is_accepted(tmp_path: Path) -> None:
    async def signed(url: str) -> str:
        headers = signed_headers(url, SESSION_ID, api_key=API_KEY, secret=SECRET)
        client = await Genesys.connect(url, session_id=SESSION_ID, headers=headers)
        await client.open()
        await client.audio(2)
        await client.close()
        return client.session_id

    with serving(tmp_path, credentials=Credentials(api_keys=KEYS), path="/hook") as served:
        session_id = asyncio.run(signed(served.url + "/connector-1"))
        summaries = served.summaries(by_session(session_id), 2)
    assert all(doc["frames"]["received"] == 2 for doc in summaries)


SESSION_ID = "5a7b3c1d-0e2f-4a6b-8c9d-1e2f3a4b5c6d"


BAD_CREDENTIALS = {
    # case: (API key, secret it signs with, signature age in s, unsigned)
    "unknown API key": ("not-a-key", SECRET, 0, False),
    "bad signature": (API_KEY, b"another secret, not the real one", 0, False),
    "stale signature": (API_KEY, SECRET, 60, False),
    "unsigned, key needs a signature": (API_KEY, SECRET, 0, True),
}


@pytest.mark.parametrize("case", list(BAD_CREDENTIALS))
def test_bad_credentials_get_401_after_half_a_second(tmp_path: Path, case: str) -> None:
    api_key, secret, age_s, unsigned = BAD_CREDENTIALS[case]

    async def attempt(url: str) -> tuple[int, float]:
        headers = signed_headers(
            url,
            SESSION_ID,
            api_key=api_key,
            secret=secret,
            created_wall_s=int(time.time()) - age_s,
        )
        if unsigned:
            headers = {"X-API-KEY": api_key}
        started = time.monotonic()
        with pytest.raises(InvalidStatus) as refused:
            await Genesys.connect(url, session_id=SESSION_ID, headers=headers)
        return refused.value.response.status_code, time.monotonic() - started

    with serving(tmp_path, credentials=Credentials(api_keys=KEYS)) as served:
        status, waited_s = asyncio.run(attempt(served.url))
        totals = served.totals()
        active = served.active()
    assert status == 401, case
    assert waited_s >= 0.5  # the documented refusal delay, a lower bound
    assert sum(totals.refused.values()) == 1
    assert active == 0


def test_a_key_without_secret_accepts_unsigned_sessions(tmp_path: Path) -> None:
    async def unsigned(url: str) -> None:
        client = await Genesys.connect(url, headers={"X-API-KEY": "unsigned-key"})
        await client.open()
        await client.close()

    with serving(tmp_path, credentials=Credentials(api_keys=KEYS)) as served:
        asyncio.run(unsigned(served.url))
        assert served.totals().refused == {}


def test_drain_closes_a_session_that_ignores_disconnect_after_the_timeout(
    tmp_path: Path,
) -> None:
    async def deaf_client(served: Served) -> tuple[str, int | None, str]:
        client = await Genesys.connect(served.url)
        await client.open()
        await client.audio(2)
        draining = asyncio.wrap_future(served.ioloop.run(served.server.drain()))
        data = await asyncio.wait_for(client.ws.recv(), WAIT_S)  # never answered
        await client.closed()
        await asyncio.wait_for(draining, WAIT_S)
        assert isinstance(data, str)
        return client.session_id, client.ws.close_code, data

    with serving(tmp_path, drain_timeout_s=0.5) as served:
        session_id, code, disconnect = asyncio.run(deaf_client(served))
        summaries = served.summaries(by_session(session_id), 2)

    assert '"disconnect"' in disconnect
    assert '"completed"' in disconnect
    assert code == 1001
    assert all(doc["frames"]["received"] == 2 for doc in summaries)


def test_audio_connector_session_under_its_connector_path(tmp_path: Path) -> None:
    async def bot_call(url: str) -> tuple[str, list[str]]:
        client = await Genesys.connect(
            url, media=(("PCMU", ("external",)),), dialect=AudioConnectorDialect
        )
        await client.open()
        assert isinstance(client.proto, AudioConnectorDialect)
        assert client.proto.send_dtmf("5")
        await client.audio(4)
        await client.close()
        return client.session_id, [type(event).__name__ for event in client.events]

    with serving(tmp_path, dialect="audioconnector", path="/connector") as served:
        session_id, events = asyncio.run(bot_call(served.url + "/0b6f1c2e-connector"))
        [summary] = served.summaries(by_session(session_id), 1)

    assert events[0] == "StreamOpened"
    assert summary["stream"]["channel"] == "external"
    assert summary["stream"]["dialect"] == "audioconnector"
    assert summary["frames"]["received"] == 4
    assert summary["frames"]["balanced"] is True


def test_a_session_over_tls_with_certfile_and_keyfile(tmp_path: Path) -> None:
    pem = tmp_path / "server.pem"
    pem.write_text(SELF_SIGNED_PEM, encoding="utf-8")

    async def secure(url: str) -> str:
        client = await Genesys.connect(url, tls=tls_client_context(tmp_path))
        await client.open()
        await client.audio(2)
        await client.close()
        return client.session_id

    with serving(tmp_path, certfile=str(pem), keyfile=str(pem)) as served:
        assert served.url.startswith("wss://")
        session_id = asyncio.run(secure(served.url))
        summaries = served.summaries(by_session(session_id), 2)
    assert all(doc["frames"]["received"] == 2 for doc in summaries)
