"""``jitterline serve`` as a real subprocess: SIGTERM drains (closing handshake, summaries,
exit 0), health answers 200 then 503, ``--max-sessions`` refuses with 503."""

from __future__ import annotations

import asyncio
import json
import os
import queue
import signal
import subprocess
import sys
import threading
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from websockets.exceptions import InvalidStatus

from jitterline.frames import Message
from serve_testkit import WAIT_S, Genesys

ROOT = Path(__file__).resolve().parent.parent


def environment() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("JITTERLINE_")}
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT / "pipeline"), str(ROOT / "plugins")])
    return env


def command(*args: str) -> list[str]:
    return [sys.executable, "-m", "jitterline.cli", "serve", *args]


@contextmanager
def serve_process(*args: str) -> Iterator[tuple[subprocess.Popen[str], int, list[str]]]:
    """``jitterline serve --port 0 ...``; yields the process, its port and its stderr
    lines so far (a thread keeps reading them, so the pipe never fills)."""
    process = subprocess.Popen(
        command("--port", "0", "--quiet", *args),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        env=environment(),
    )
    lines: queue.Queue[str] = queue.Queue()
    seen: list[str] = []
    stderr = process.stderr
    assert stderr is not None

    def read() -> None:
        for line in stderr:
            lines.put(line)

    reader = threading.Thread(target=read)
    reader.start()
    try:
        while True:
            line = lines.get(timeout=WAIT_S)
            seen.append(line)
            if "listening on" in line:
                port = int(line.rsplit(":", 1)[1].split("/", 1)[0])
                break
        yield process, port, seen
    finally:
        if process.poll() is None:
            process.kill()
        process.wait(WAIT_S)
        reader.join(WAIT_S)
        stderr.close()
        while not lines.empty():
            seen.append(lines.get())


def health(port: int) -> int:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=WAIT_S) as reply:
            return int(reply.status)
    except urllib.error.HTTPError as error:
        return error.code


async def refused_status(url: str) -> tuple[int, str | None]:
    with pytest.raises(InvalidStatus) as refused:
        await Genesys.connect(url)
    response = refused.value.response
    return response.status_code, response.headers.get("Retry-After")


def test_sigterm_drains_sessions_in_flight_then_exits_0(tmp_path: Path) -> None:
    summaries = tmp_path / "sessions.jsonl"
    args = ("--json", str(summaries), "--max-sessions", "1", "--drain-timeout", "10")
    with serve_process(*args) as (process, port, _):
        url = f"ws://127.0.0.1:{port}/"
        assert health(port) == 200

        async def in_flight() -> tuple[str, dict[str, object]]:
            client = await Genesys.connect(url)
            await client.open()
            await client.audio(3)
            seen["busy"] = await refused_status(url)  # --max-sessions 1
            process.send_signal(signal.SIGTERM)
            while True:  # read until the server's disconnect, without answering yet
                data = await asyncio.wait_for(client.ws.recv(), WAIT_S)
                client.proto.receive(Message(data, 0.0))
                if isinstance(data, str) and json.loads(data)["type"] == "disconnect":
                    break
            seen["draining health"] = await asyncio.to_thread(health, port)
            seen["draining upgrade"] = await refused_status(url)
            await client.flush()  # our close, answering the disconnect
            closed = await client.until("closed")
            await client.closed()
            return client.session_id, closed

        seen: dict[str, object] = {}
        session_id, closed = asyncio.run(in_flight())
        assert process.wait(WAIT_S) == 0

    assert closed["type"] == "closed"
    assert seen == {
        "busy": (503, "5"),
        "draining health": 503,
        "draining upgrade": (503, "5"),
    }
    lines = [json.loads(line) for line in summaries.read_text(encoding="utf-8").splitlines()]
    assert sorted(doc["stream"]["channel"] for doc in lines) == ["external", "internal"]
    for doc in lines:
        assert doc["stream"]["session_id"] == session_id
        assert doc["frames"]["received"] == 3
        assert doc["frames"]["balanced"] is True
        assert doc["run"]["command"] == "serve"


def test_a_public_address_without_credentials_is_refused_before_listening() -> None:
    result = subprocess.run(
        command("--host", "0.0.0.0", "--port", "0", "--dialect", "twilio"),
        capture_output=True,
        text=True,
        env=environment(),
        timeout=WAIT_S,
        check=False,
    )
    assert result.returncode == 2
    assert result.stderr.count("\n") == 1
    assert "JITTERLINE_TWILIO_AUTH_TOKEN" in result.stderr
