"""Draining with a grace: a worker leaving the fleet lets its calls end by themselves
(``--drain-grace``) instead of ending them, so that a rolling restart cuts no call; the
health check says 503 all along, so the load balancer sends nothing new."""

from __future__ import annotations

import asyncio
import json
import urllib.error
import urllib.request
from pathlib import Path
from urllib.parse import urlsplit

from serve_testkit import WAIT_S, Genesys, Served, serving


def health(url: str) -> int:
    port = urlsplit(url).port
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=WAIT_S) as reply:
            return int(reply.status)
    except urllib.error.HTTPError as error:
        return error.code


def test_a_call_in_progress_ends_by_itself_within_the_grace(tmp_path: Path) -> None:
    async def call(served: Served) -> tuple[str, int, list[str]]:
        client = await Genesys.connect(served.url)
        await client.open()
        await client.audio(3)
        draining = asyncio.wrap_future(served.ioloop.run(served.server.drain()))
        await asyncio.sleep(0.3)
        status = await asyncio.to_thread(health, served.url)
        await client.audio(4)  # the call goes on while the server drains
        await client.close()  # and ends the ordinary way: our close, its closed
        await asyncio.wait_for(draining, WAIT_S)
        return client.session_id, status, [t["type"] for t in client.texts]

    with serving(tmp_path, drain_grace_s=30.0) as served:
        session_id, status, texts = asyncio.run(call(served))
        summaries = served.summaries(lambda d: d["stream"]["session_id"] == session_id, 2)

    assert status == 503
    assert "disconnect" not in texts  # never ended by the server
    assert texts[-1] == "closed"
    assert [doc["frames"]["received"] for doc in summaries] == [7, 7]


def test_a_call_still_running_when_the_grace_ends_is_ended_the_protocols_way(
    tmp_path: Path,
) -> None:
    async def long_call(served: Served) -> dict[str, object]:
        client = await Genesys.connect(served.url)
        await client.open()
        await client.audio(2)
        draining = asyncio.wrap_future(served.ioloop.run(served.server.drain()))
        disconnect = await client.until("disconnect")  # after the 0.2 s grace
        await client.flush()
        await client.until("closed")
        await client.closed()
        await asyncio.wait_for(draining, WAIT_S)
        return disconnect

    with serving(tmp_path, drain_grace_s=0.2) as served:
        disconnect = asyncio.run(long_call(served))

    assert json.dumps(disconnect["parameters"]).count('"completed"') == 1
