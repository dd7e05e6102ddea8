"""The inbound soak's faults: what each sends, the answer docs/serve.md promises, and the
check that it came (``CATALOGUE``, ``SCRIPTS``, ``throw``)."""

from __future__ import annotations

import asyncio
import contextlib
import random
import time
import uuid
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from websockets.asyncio.client import ClientConnection
from websockets.exceptions import ConnectionClosed, InvalidStatus

from ..errors import ConfigError
from ..soak import FaultResult
from .peers import (
    AUDIO,
    CLOSE_TIMEOUT_S,
    HANDSHAKE_TIMEOUT_S,
    MARGIN_S,
    OPEN_TIMEOUT_S,
    ORGANIZATION_ID,
    REFUSAL_DELAY_S,
    Call,
    Soak,
    Wire,
    exchange,
    http_request,
    tcp_reset,
    twilio_signed,
    upgrade,
)

FLOOD_EXTRA = 4
"""Upgrades the flood sends beyond ``max_sessions``: at least this many must get 503."""


@dataclass(frozen=True, slots=True)
class ServeFault:
    """One kind of fault: ``answer`` is what docs/serve.md promises for it, ``budget_s``
    how long the answer may take."""

    name: str
    budget_s: float
    description: str
    answer: str


def _catalogue() -> tuple[ServeFault, ...]:
    quick_s = 5.0
    slow_s = HANDSHAKE_TIMEOUT_S + MARGIN_S + 3.0
    session_s = 8.0
    return (
        ServeFault("not_http", quick_s, "bytes that are no HTTP request", "closed, no answer"),
        ServeFault("no_upgrade", quick_s, "a plain GET without Upgrade", "426"),
        ServeFault("no_websocket_key", quick_s, "an quick_s without Sec-WebSocket-Key", "400"),
        ServeFault("bad_websocket_version", quick_s, "Sec-WebSocket-Version: 8", "400"),
        ServeFault("wrong_method", quick_s, "an quick_s with POST", "405"),
        ServeFault("wrong_path", quick_s, "an quick_s to a path outside --path", "404"),
        ServeFault("huge_headers", quick_s, "20 KB of request headers", "431"),
        ServeFault("http_1_0", quick_s, "GET / HTTP/1.0", "505"),
        ServeFault("missing_api_key", quick_s, "no X-API-KEY", "401 after 500 ms"),
        ServeFault("unknown_api_key", quick_s, "an X-API-KEY not configured", "401 after 500 ms"),
        ServeFault("unsigned", quick_s, "the key has a secret, no signature", "401 after 500 ms"),
        ServeFault("bad_signature", quick_s, "signed with the wrong secret", "401 after 500 ms"),
        ServeFault("stale_signature", quick_s, "signed 60 s ago", "401 after 500 ms"),
        ServeFault("future_signature", quick_s, "signed 60 s ahead", "401 after 500 ms"),
        ServeFault("short_nonce", quick_s, "a 10-character nonce", "401 after 500 ms"),
        ServeFault("seq_gap", session_s, "a seq skipped after open", "disconnect error seq_gap"),
        ServeFault("duplicate_seq", session_s, "a seq repeated", "disconnect error duplicate_seq"),
        ServeFault("wrong_id", session_s, "another session's id", "disconnect error wrong_id"),
        ServeFault("unknown_type", session_s, "type bogus", "disconnect error unknown_type"),
        ServeFault(
            "binary_before_opened",
            session_s,
            "audio before open",
            "disconnect error audio_before_open",
        ),
        ServeFault(
            "binary_while_paused",
            session_s,
            "audio after paused",
            "disconnect error audio_while_paused",
        ),
        ServeFault("truncated_json", session_s, "JSON cut short", "disconnect error bad_json"),
        ServeFault("text_100kb", session_s, "a 100 KB text message", "disconnect error oversized"),
        ServeFault("message_200kb", session_s, "a 200 KB binary message", "close 1009"),
        ServeFault("drop_mid_upgrade", quick_s, "half a request, then TCP reset", "nothing held"),
        ServeFault("drop_before_open", session_s, "upgraded, then TCP reset", "session ended"),
        ServeFault(
            "drop_mid_stream",
            session_s,
            "open, audio, then TCP reset",
            "session ended, summaries balanced",
        ),
        ServeFault(
            "eof_mid_stream",
            session_s,
            "open, audio, then FIN without a close frame",
            "session ended, summaries balanced",
        ),
        ServeFault(
            "silent", slow_s, "TCP open, never a byte", "cut at the handshake timeout, no 101"
        ),
        ServeFault(
            "trickle", slow_s, "the quick_s one byte a second", "cut at the handshake timeout"
        ),
        ServeFault(
            "never_opens",
            slow_s,
            "upgraded, never sends open",
            "socket closed at the open timeout, no opened",
        ),
        ServeFault(
            "twilio_unsigned", quick_s, "Twilio: no X-Twilio-Signature", "403 after 500 ms"
        ),
        ServeFault(
            "twilio_bad_signature",
            quick_s,
            "Twilio: a signature over another URL",
            "403 after 500 ms",
        ),
        ServeFault("twilio_no_start", slow_s, "Twilio: upgraded, never sends start", "close 1008"),
        ServeFault(
            "twilio_bad_media",
            session_s,
            "Twilio: a media message cut short between good ones",
            "counted malformed, the stream goes on",
        ),
        ServeFault(
            "twilio_drop_mid_stream",
            session_s,
            "Twilio: start, media, then TCP reset",
            "session ended, summary balanced",
        ),
        ServeFault(
            "flood",
            15.0,
            f"max_sessions + {FLOOD_EXTRA} upgrades at once beside the good sessions",
            f"101 or 503 with Retry-After each, >= {FLOOD_EXTRA} 503",
        ),
    )


CATALOGUE: tuple[ServeFault, ...] = _catalogue()
"""Every fault the soak throws; ``--faults N`` below its size takes its first N, above it
the whole catalogue and then seeded random picks."""

BY_NAME = {fault.name: fault for fault in CATALOGUE}


def pick_faults(count: int, seed: int) -> list[ServeFault]:
    """The faults of a run: the catalogue's first ``count``, or all of it and then seeded
    random picks (the flood once per 20 faults at most: it waits for a turn of its own)."""
    if count < 1:
        raise ConfigError(f"--faults {count} must be at least 1; try 100")
    if count <= len(CATALOGUE):
        return list(CATALOGUE[:count])
    rng = random.Random(seed)
    weights = [0.2 if fault.name == "flood" else 1.0 for fault in CATALOGUE]
    return list(CATALOGUE) + rng.choices(CATALOGUE, weights, k=count - len(CATALOGUE))


# -- the faults ------------------------------------------------------------------------------

Script = Callable[[Soak], Awaitable[str]]
"""A fault: returns "" when the server answered the documented way, else what it did."""


def _http(status: int, *, extra: Mapping[str, str] | None = None, **request: Any) -> Script:
    """A request with valid credentials and one thing wrong: the gate lets it through,
    and ``websockets`` refuses the handshake with ``status``."""

    async def script(soak: Soak) -> str:
        headers = {**soak.signed(str(uuid.uuid4())), **(extra or {})}
        data = http_request(soak.genesys, headers=headers, **request)
        return (await exchange(soak, data)).expect(status)

    return script


async def _not_http(soak: Soak) -> str:
    return (await exchange(soak, b"\x16\x03\x01\x02\x00HELLO\r\n\r\n")).expect(None)


def _unauthorized(headers: Callable[[Soak], Mapping[str, str]], *, twilio: bool = False) -> Script:
    """Refused, no sooner than the refusal delay (docs/serve.md): AudioHook with 401,
    Twilio with 403."""

    async def script(soak: Soak) -> str:
        target = soak.twilio if twilio else soak.genesys
        request = http_request(target, headers=headers(soak))
        reply = await exchange(soak, request, target=target)
        problem = reply.expect(403 if twilio else 401)
        if not problem and (reply.first_s or 0.0) < REFUSAL_DELAY_S - 0.05:
            problem = f"refused after {reply.first_s:.3f} s, before the refusal delay"
        return problem

    return script


def _without_api_key(soak: Soak) -> dict[str, str]:
    headers = soak.signed(str(uuid.uuid4()))
    del headers["X-API-KEY"]
    return headers


def _unknown_api_key(soak: Soak) -> dict[str, str]:
    return {**_unsigned(soak), "X-API-KEY": "not-a-configured-key"}


def _unsigned(soak: Soak) -> dict[str, str]:
    return {
        "Audiohook-Organization-Id": ORGANIZATION_ID,
        "Audiohook-Session-Id": str(uuid.uuid4()),
        "Audiohook-Correlation-Id": str(uuid.uuid4()),
        "X-API-KEY": soak.api_key,
    }


async def _slow(soak: Soak, data: bytes, every_s: float) -> str:
    """Cut without an upgrade once the handshake timeout passed."""
    reply = await exchange(soak, data, every_s=every_s)
    if reply.status is not None:
        return f"answered {reply.status} to an unfinished request"
    limit_s = HANDSHAKE_TIMEOUT_S + MARGIN_S
    if reply.closed_s is not None and reply.closed_s > limit_s:
        return f"cut after {reply.closed_s:.1f} s, past the handshake timeout"
    return ""


async def _silent(soak: Soak) -> str:
    return await _slow(soak, b"", 0.0)


async def _trickle(soak: Soak) -> str:
    return await _slow(soak, http_request(soak.genesys, headers=_unsigned(soak)), 1.0)


def _violation(
    kind: str, act: Callable[[Wire], Awaitable[None]], *, opened: bool = True
) -> Script:
    """``disconnect`` reason ``error`` naming ``kind``, then ``closed`` for our ``close``
    and the socket's end (docs/audiohook.md, "Violations")."""

    async def script(soak: Soak) -> str:
        async with Wire.upgraded(soak) as wire:
            if opened:
                await wire.open()
            await act(wire)
            parameters = (await wire.until("disconnect")).get("parameters", {})
            reason, info = parameters.get("reason"), str(parameters.get("info", ""))
            if reason != "error" or info.partition(":")[0] != kind:
                return f"disconnect reason {reason!r} info {info[:40]!r}, expected error {kind}"
            await wire.send("close", {"reason": "error"})
            await wire.until("closed")
            await wire.ws.wait_closed()
            return ""

    return script


async def _seq_gap(wire: Wire) -> None:
    wire.seq += 1
    await wire.send("ping")


async def _duplicate_seq(wire: Wire) -> None:
    await wire.send("ping", seq=wire.seq)


async def _wrong_id(wire: Wire) -> None:
    await wire.send("ping", id=str(uuid.uuid4()))


async def _unknown_type(wire: Wire) -> None:
    await wire.send("bogus")


async def _audio(wire: Wire) -> None:
    await wire.ws.send(AUDIO)


async def _audio_while_paused(wire: Wire) -> None:
    await wire.send("paused")
    await wire.ws.send(AUDIO)


async def _truncated_json(wire: Wire) -> None:
    await wire.ws.send(wire.text("ping")[:-7])


async def _text_100kb(wire: Wire) -> None:
    await wire.ws.send(wire.text("update", {"language": "x" * 100_000}))


async def _message_200kb(soak: Soak) -> str:
    """Over ``max_message_bytes``: ``websockets`` closes with 1009 without buffering it."""
    async with Wire.upgraded(soak) as wire:
        await wire.open()
        with contextlib.suppress(ConnectionClosed):
            await wire.ws.send(bytes(200_000))
        await wire.drained()
        received = wire.ws.protocol.close_rcvd
        code = None if received is None else received.code
        return "" if code == 1009 else f"closed with {code}, expected 1009"


async def _never_opens(soak: Soak) -> str:
    async with Wire.upgraded(soak) as wire:
        started_s = time.monotonic()
        await wire.drained()
        waited_s = time.monotonic() - started_s
        if "opened" in wire.types:
            return "opened a session that never sent open"
        if waited_s > OPEN_TIMEOUT_S + MARGIN_S:
            return f"closed after {waited_s:.1f} s, past the open timeout"
        return ""


async def _drop_mid_upgrade(soak: Soak) -> str:
    request = http_request(soak.genesys, headers=soak.signed(str(uuid.uuid4())))
    await exchange(soak, request[: len(request) // 2], reset_after=True)
    return ""


def _dropped(*, opened: bool, reset: bool) -> Script:
    """The server ends the session by itself; one that opened wrote a balanced summary
    per channel, counting no more frames than were sent."""

    async def script(soak: Soak) -> str:
        async with Wire.upgraded(soak) as wire:
            sent = 0
            if opened:
                await wire.open()
                for _ in range(3):
                    await wire.ws.send(AUDIO)
                    sent += 1
                await asyncio.sleep(0.1)
            if reset:
                tcp_reset(wire.ws.transport)
            else:
                transport = wire.ws.transport
                assert isinstance(transport, asyncio.WriteTransport)
                transport.write_eof()
            if not await soak.genesys.ended(wire.session_id, CLOSE_TIMEOUT_S + MARGIN_S):
                return "the server still holds the session"
            if not opened:
                return ""
            docs = await soak.genesys.summaries_of(wire.session_id)
            return _check_summaries(docs, ["external", "internal"], at_most=sent)

    return script


def _check_summaries(
    docs: Sequence[Mapping[str, Any]], channels: Sequence[str], *, at_most: int
) -> str:
    found = sorted(str(doc["stream"]["channel"]) for doc in docs)
    if found != sorted(channels):
        return f"summaries for channels {found}, expected {sorted(channels)}"
    for doc in docs:
        frames = doc["frames"]
        if not frames["balanced"] or frames["received"] > at_most:
            return f"summary of {doc['stream']['channel']} not accounted: {frames}"
    return ""


async def _flood(soak: Soak) -> str:
    """``max_sessions + FLOOD_EXTRA`` upgrades at once, in a turn of its own: each gets 101
    or 503 with Retry-After; the admitted ones close at once and the server lets go."""
    count = soak.genesys.server.options.max_sessions + FLOOD_EXTRA
    async with soak.admission.exclusive():
        ids = [str(uuid.uuid4()) for _ in range(count)]
        attempts = await asyncio.gather(
            *(upgrade(soak.genesys, soak.signed(i)) for i in ids), return_exceptions=True
        )
        admitted: list[str] = []
        problems: list[str] = []
        refused = 0
        for session_id, attempt in zip(ids, attempts, strict=True):
            if isinstance(attempt, ClientConnection):
                soak.ledger.saw(101)
                admitted.append(session_id)
                await attempt.close()
            elif isinstance(attempt, InvalidStatus):
                response = attempt.response
                soak.ledger.saw(response.status_code)
                refused += 1
                if response.status_code != 503 or "Retry-After" not in response.headers:
                    problems.append(f"answered {response.status_code}")
            else:
                problems.append(f"{type(attempt).__name__}: {attempt}")
        for session_id in admitted:
            if not await soak.genesys.ended(session_id, CLOSE_TIMEOUT_S + MARGIN_S):
                problems.append("a closed flood session was still held")
                break
    if refused < FLOOD_EXTRA:
        problems.append(f"only {refused} of {count} refused, expected >= {FLOOD_EXTRA}")
    return "; ".join(problems[:3])


async def _twilio_no_start(soak: Soak) -> str:
    """Twilio has no open timer of its own: the shell closes with 1008 (docs/serve.md)."""
    async with Call.upgraded(soak) as call:
        started_s = time.monotonic()
        code = await call.drained()
        waited_s = time.monotonic() - started_s
        if code != 1008:
            return f"closed with {code}, expected 1008"
        if waited_s > OPEN_TIMEOUT_S + MARGIN_S:
            return f"closed after {waited_s:.1f} s, past the open timeout"
        return ""


async def _twilio_bad_media(soak: Soak) -> str:
    """A media message cut short costs that message only: counted malformed, the stream
    goes on, and ``stop`` ends it the protocol's way with every good chunk counted."""
    async with Call.upgraded(soak) as call:
        await call.start()
        await call.media(3)
        await call.ws.send(call.media_text()[:-9])
        call.chunks -= 1  # the cut message carried no chunk the server could count
        await call.media(2)
        await call.stop()
        await call.drained()
        if not await soak.twilio.ended(call.stream_sid, CLOSE_TIMEOUT_S + MARGIN_S):
            return "the server still holds the session"
        docs = await soak.twilio.summaries_of(call.stream_sid)
        problem = _check_summaries(docs, ["inbound"], at_most=6)
        frames = docs[0]["frames"] if docs else {}
        if not problem and (frames["malformed"], frames["played"]) != (1, 5):
            problem = f"expected 5 played and 1 malformed of 6 received, summary {frames}"
        return problem


async def _twilio_drop(soak: Soak) -> str:
    async with Call.upgraded(soak) as call:
        await call.start()
        await call.media(3)
        await asyncio.sleep(0.1)
        tcp_reset(call.ws.transport)
        if not await soak.twilio.ended(call.stream_sid, CLOSE_TIMEOUT_S + MARGIN_S):
            return "the server still holds the session"
        docs = await soak.twilio.summaries_of(call.stream_sid)
        return _check_summaries(docs, ["inbound"], at_most=3)


SCRIPTS: dict[str, Script] = {
    "not_http": _not_http,
    "no_upgrade": _http(426, upgrade=False),
    "no_websocket_key": _http(400, key=False),
    "bad_websocket_version": _http(400, ws_version="8"),
    "wrong_method": _http(405, method="POST"),
    "wrong_path": _http(404, path="/elsewhere"),
    "huge_headers": _http(431, extra={"X-Padding": "a" * 20_000}),
    "http_1_0": _http(505, version="HTTP/1.0"),
    "missing_api_key": _unauthorized(_without_api_key),
    "unknown_api_key": _unauthorized(_unknown_api_key),
    "unsigned": _unauthorized(_unsigned),
    "bad_signature": _unauthorized(lambda s: s.signed(str(uuid.uuid4()), secret=b"x" * 32)),
    "stale_signature": _unauthorized(lambda s: s.signed(str(uuid.uuid4()), age_s=60)),
    "future_signature": _unauthorized(lambda s: s.signed(str(uuid.uuid4()), age_s=-60)),
    "short_nonce": _unauthorized(lambda s: s.signed(str(uuid.uuid4()), nonce="abcdefghij")),
    "seq_gap": _violation("seq_gap", _seq_gap),
    "duplicate_seq": _violation("duplicate_seq", _duplicate_seq),
    "wrong_id": _violation("wrong_id", _wrong_id),
    "unknown_type": _violation("unknown_type", _unknown_type),
    "binary_before_opened": _violation("audio_before_open", _audio, opened=False),
    "binary_while_paused": _violation("audio_while_paused", _audio_while_paused),
    "truncated_json": _violation("bad_json", _truncated_json),
    "text_100kb": _violation("oversized", _text_100kb),
    "message_200kb": _message_200kb,
    "drop_mid_upgrade": _drop_mid_upgrade,
    "drop_before_open": _dropped(opened=False, reset=True),
    "drop_mid_stream": _dropped(opened=True, reset=True),
    "eof_mid_stream": _dropped(opened=True, reset=False),
    "silent": _silent,
    "trickle": _trickle,
    "never_opens": _never_opens,
    "flood": _flood,
    "twilio_unsigned": _unauthorized(lambda s: {}, twilio=True),
    "twilio_bad_signature": _unauthorized(
        lambda s: twilio_signed(s, s.twilio.url + "?tenant=other"), twilio=True
    ),
    "twilio_no_start": _twilio_no_start,
    "twilio_bad_media": _twilio_bad_media,
    "twilio_drop_mid_stream": _twilio_drop,
}


async def throw(soak: Soak, fault: ServeFault, turns: asyncio.Semaphore) -> FaultResult:
    async with turns:
        started_s = time.monotonic()
        try:
            problem = await asyncio.wait_for(SCRIPTS[fault.name](soak), fault.budget_s)
        except (asyncio.TimeoutError, TimeoutError):
            problem = f"no documented answer within {fault.budget_s:g} s"
        except (OSError, ConnectionClosed, InvalidStatus, ValueError) as exc:
            problem = f"{type(exc).__name__}: {exc}"
        return FaultResult(fault.name, not problem, time.monotonic() - started_s, problem)
