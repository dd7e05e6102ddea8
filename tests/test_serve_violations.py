"""Each broken client gets the protocol's answer while ten good sessions on the same server
keep full accounting (docs/serve.md, "Bad peers")."""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections.abc import Awaitable, Callable, Iterator
from typing import Any

import pytest

from jitterline.frames import Message
from jitterline.runtime import Connection
from serve_testkit import WAIT_S, Genesys, Served, Wire, serving, whole_session

GOOD_SESSIONS = 10
GOOD_MESSAGES = 5


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    with serving(
        tmp_path_factory.mktemp("violations"),
        handshake_timeout_s=1.0,
        open_timeout_s=2.0,
        close_timeout_s=2.0,
    ) as running:
        yield running


async def answered(wire: Wire) -> str:
    """The ``disconnect`` the server sent (reason ``error``: its info), then our ``close``
    answered by ``closed`` and the socket's end."""
    disconnect = await wire.until("disconnect")
    assert disconnect["parameters"]["reason"] == "error"
    await wire.send("close", {"reason": "error"})
    await wire.until("closed")
    await asyncio.wait_for(wire.ws.wait_closed(), WAIT_S)
    info: str = disconnect["parameters"]["info"]
    return info.partition(":")[0]


async def seq_gap(wire: Wire) -> str:
    await wire.open()
    wire.seq += 1
    await wire.send("ping")
    return await answered(wire)


async def duplicate_seq(wire: Wire) -> str:
    await wire.open()
    await wire.send("ping", seq=wire.seq)
    return await answered(wire)


async def wrong_id(wire: Wire) -> str:
    await wire.open()
    await wire.send("ping", id="11111111-2222-4333-8444-555555555555")
    return await answered(wire)


async def unknown_type(wire: Wire) -> str:
    await wire.open()
    await wire.send("bogus")
    return await answered(wire)


async def binary_before_opened(wire: Wire) -> str:
    await wire.ws.send(bytes(3200))
    return await answered(wire)


async def binary_while_paused(wire: Wire) -> str:
    await wire.open()
    await wire.send("paused")
    await wire.ws.send(bytes(3200))
    return await answered(wire)


async def truncated_json(wire: Wire) -> str:
    await wire.open()
    await wire.ws.send(wire.text("ping")[:-7])
    return await answered(wire)


async def text_of_100_kb(wire: Wire) -> str:
    await wire.open()
    await wire.ws.send(wire.text("update", {"language": "x" * 100_000}))
    return await answered(wire)


PROTOCOL_CASES: dict[str, tuple[Callable[[Wire], Awaitable[str]], str]] = {
    "seq gap": (seq_gap, "seq_gap"),
    "duplicate seq": (duplicate_seq, "duplicate_seq"),
    "wrong id": (wrong_id, "wrong_id"),
    "unknown type": (unknown_type, "unknown_type"),
    "binary before opened": (binary_before_opened, "audio_before_open"),
    "binary while paused": (binary_while_paused, "audio_while_paused"),
    "truncated JSON": (truncated_json, "bad_json"),
    "100 KB text message": (text_of_100_kb, "oversized"),
}


async def alongside_good_sessions(url: str, bad: Awaitable[Any]) -> tuple[Any, list[str]]:
    good = [whole_session(url, GOOD_MESSAGES) for _ in range(GOOD_SESSIONS)]
    result, *session_ids = await asyncio.gather(bad, *good)
    return result, session_ids


def assert_full_accounting(served: Served, session_ids: list[str]) -> None:
    wanted = set(session_ids)
    summaries = served.summaries(lambda doc: doc["stream"]["session_id"] in wanted, 20)
    assert len(summaries) == 2 * GOOD_SESSIONS
    for doc in summaries:
        assert doc["frames"]["received"] == GOOD_MESSAGES
        assert doc["frames"]["malformed"] == 0
        assert doc["frames"]["balanced"] is True


@pytest.mark.parametrize("case", list(PROTOCOL_CASES))
def test_violation_is_answered_and_other_sessions_keep_accounting(
    served: Served, case: str
) -> None:
    script, kind = PROTOCOL_CASES[case]

    async def bad() -> str:
        return await script(await Wire.connect(served.url))

    answer, session_ids = asyncio.run(alongside_good_sessions(served.url, bad()))
    assert answer == kind
    assert_full_accounting(served, session_ids)


async def silent(host: str, port: int) -> bytes:
    """Open the TCP connection and never speak; returns what came before the server
    hung up."""
    reader, writer = await asyncio.open_connection(host, port)
    try:
        return await asyncio.wait_for(_read_to_end(reader), WAIT_S)
    finally:
        writer.close()
        with contextlib.suppress(ConnectionError):
            await writer.wait_closed()


async def trickling(host: str, port: int) -> bytes:
    """Send the upgrade request one byte a second; returns what came before the server
    hung up (it must not wait for the whole request)."""
    request = (
        f"GET / HTTP/1.1\r\nHost: {host}:{port}\r\nUpgrade: websocket\r\n"
        "Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
        "Sec-WebSocket-Version: 13\r\n\r\n"
    ).encode()
    reader, writer = await asyncio.open_connection(host, port)

    async def trickle() -> None:
        with contextlib.suppress(ConnectionError):
            for index in range(len(request)):
                writer.write(request[index : index + 1])
                await writer.drain()
                await asyncio.sleep(1.0)

    sender = asyncio.get_running_loop().create_task(trickle())
    try:
        return await asyncio.wait_for(_read_to_end(reader), WAIT_S)
    finally:
        sender.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await sender
        writer.close()
        with contextlib.suppress(ConnectionError):
            await writer.wait_closed()


async def _read_to_end(reader: asyncio.StreamReader) -> bytes:
    received = b""
    with contextlib.suppress(ConnectionError):
        while chunk := await reader.read(4096):
            received += chunk
    return received


@pytest.mark.parametrize("client", [silent, trickling], ids=["never speaks", "1 byte/s"])
def test_slow_or_silent_peer_is_cut_at_the_handshake_timeout(
    served: Served, client: Callable[[str, int], Awaitable[bytes]]
) -> None:
    before = served.totals()
    answer, session_ids = asyncio.run(
        alongside_good_sessions(served.url, client("127.0.0.1", served.server.port))
    )
    assert b"101 Switching Protocols" not in answer  # hung up on, never upgraded
    assert_full_accounting(served, session_ids)
    after = served.totals()
    assert after.failed == before.failed  # no session was ever made for it
    assert after.completed == before.completed + GOOD_SESSIONS


def test_a_session_whose_processing_fails_is_closed_with_1011_and_the_others_keep_accounting(
    served: Served, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A bug in a stage or plugin on one session's messages (here: its capture cannot be
    written) closes that session with 1011; the ten beside it are served in full."""
    doomed = str(uuid.uuid4())
    receive = Connection.receive

    def failing(self: Connection, message: Message) -> None:
        if self.info.session_id == doomed:
            raise OSError(28, "No space left on device")
        receive(self, message)

    monkeypatch.setattr(Connection, "receive", failing)

    async def bad() -> int | None:
        client = await Genesys.connect(served.url, session_id=doomed)
        await client.open()
        await client.audio(3)
        await client.closed()
        return client.ws.close_code

    code, session_ids = asyncio.run(alongside_good_sessions(served.url, bad()))
    assert code == 1011
    assert_full_accounting(served, session_ids)
