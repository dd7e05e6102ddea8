"""Shared test parts for the transport tests: a self-signed certificate, a manual clock, a
minimal client protocol object and a hand-written WebSocket peer for misbehaviour."""

from __future__ import annotations

import base64
import contextlib
import gc
import hashlib
import json
import os
import re
import socket
import ssl
import struct
import threading
import time
from collections.abc import Callable
from pathlib import Path
from types import TracebackType
from typing import Literal, TypeAlias

from jitterline.frames import Event, Message

# A throwaway self-signed certificate for 127.0.0.1 (EC P-256, valid to 2126) and its key:
# test data, not a secret. No trust store holds it, so a client that verifies TLS must refuse.
SELF_SIGNED_PEM = """\
-----BEGIN PRIVATE KEY-----
MIGHAgEAMBMGByqGSM49AgEGCCqGSM49AwEHBG0wawIBAQQgDiVge77f6WEwRBKN
uO6aBNvo5RYGo4c6Pv8MXlSsKtChRANCAAQur8gl/9DX7Ni8bda7eVPdcxGqn6Ea
CM3v+5+ZfGaReRZDJ3r8GcSVMKJkM5C/DDtcMy1hCkw9vqUMA6msW76W
-----END PRIVATE KEY-----
-----BEGIN CERTIFICATE-----
MIIBkDCCATagAwIBAgIUSvWoJ4d8E4lTOhfX6bbKWj1RGAYwCgYIKoZIzj0EAwIw
FDESMBAGA1UEAwwJMTI3LjAuMC4xMCAXDTI2MTEyNTEwMDc1MloYDzIxMjYxMTAx
MTAwNzUyWjAUMRIwEAYDVQQDDAkxMjcuMC4wLjEwWTATBgcqhkjOPQIBBggqhkjO
PQMBBwNCAAQur8gl/9DX7Ni8bda7eVPdcxGqn6EaCM3v+5+ZfGaReRZDJ3r8GcSV
MKJkM5C/DDtcMy1hCkw9vqUMA6msW76Wo2QwYjAdBgNVHQ4EFgQUKT4Mn6VnmErq
//VGvAhMjPX1j30wHwYDVR0jBBgwFoAUKT4Mn6VnmErq//VGvAhMjPX1j30wDwYD
VR0TAQH/BAUwAwEB/zAPBgNVHREECDAGhwR/AAABMAoGCCqGSM49BAMCA0gAMEUC
IQDTEdNpYROMHV5bg/UmrypHVYvYs7zfU4PMd+d9Ql9DDwIgd/buC3Ez11JHEP5t
yAD2FRC7WhldbI1Hh5WaBVJuj60=
-----END CERTIFICATE-----
"""


class FakeClock:
    """Monotonic seconds that only move when the test says so."""

    def __init__(self, start_s: float = 0.0) -> None:
        self.now_s = start_s

    def __call__(self) -> float:
        return self.now_s


class ClientDialect:
    """A minimal client protocol object for transport tests: on every connection it queues
    one JSON ``initialize`` (what the emulator waits for; ``greet=False``: the test sends it
    itself) and otherwise stays silent.

    The transport only calls ``connection_made`` and ``data_to_send``; the rest of the
    contract is here so that the object satisfies ``jitterline.protocols.Dialect``.
    """

    name = "test-client"
    role: Literal["client", "server"] = "client"

    def __init__(
        self,
        session_id: str = "test-session",
        metadata: dict[str, object] | None = None,
        *,
        greet: bool = True,
    ) -> None:
        self.session_id = session_id
        self.greet = greet
        self.metadata = metadata or {}
        self.connections: list[float] = []
        self._outbox: list[str | bytes] = []

    def connection_made(self, now_s: float) -> None:
        self.connections.append(now_s)
        if self.greet:
            self._outbox.append(self.initialize())

    def initialize(self) -> str:
        payload = {"sessionId": self.session_id, "metadata": self.metadata}
        return json.dumps({"type": "initialize", "timestamp": 1.7e9, "payload": payload})

    def receive(self, message: Message) -> list[Event]:
        return []

    def data_to_send(self) -> list[str | bytes]:
        outbox, self._outbox = self._outbox, []
        return outbox

    def next_deadline_s(self) -> float | None:
        return None

    def timer(self, now_s: float) -> list[Event]:
        return []

    def end(self, reason: str, now_s: float) -> None:
        """Nothing to say on the way out."""

    def connection_lost(self, now_s: float) -> list[Event]:
        return []

    def close_expected(self) -> bool:
        return False


def user_input(n: int) -> str:
    """A numbered client message in the appfoundry envelope."""
    return json.dumps(
        {"type": "user_input", "timestamp": 1.7e9 + n, "payload": {"text": f"message {n}"}}
    )


def open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


def settled_fds(attempts: int = 50) -> int:
    """Open descriptors once earlier tests' leftovers are gone: garbage (a dropped
    ``requests`` pool) collected and the count steady for 50 ms."""
    count = -1
    for _ in range(attempts):
        gc.collect()
        now = open_fds()
        if now == count:
            return now
        count = now
        time.sleep(0.05)
    return count


Script: TypeAlias = Callable[[socket.socket, int], None]
"""What a ``RawPeer`` does with an upgraded connection (and its number, from 1)."""

_GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"


class RawPeer:
    """A hand-written WebSocket server on loopback for what a real server will not do.

    Each connection is upgraded (after TLS with ``tls``) on its own thread, then
    ``script(connection, number)`` runs there (number from 1); without a script the peer
    goes silent. With ``upgrade=False`` nothing is ever accepted: the client's TCP connect
    succeeds from the listen backlog, then silence. Scripts must return once ``stop`` is
    set; everything stops when the ``with`` block ends.
    """

    def __init__(
        self,
        script: Script | None = None,
        *,
        tls: ssl.SSLContext | None = None,
        upgrade: bool = True,
    ) -> None:
        self._script = script
        self._tls = tls
        self._upgrade = upgrade
        self._server = socket.create_server(("127.0.0.1", 0))
        self._server.settimeout(0.05)
        self.stop = threading.Event()
        self.connections = 0
        self._lock = threading.Lock()
        self._open: list[socket.socket] = []
        self._threads: list[threading.Thread] = []
        self._thread = threading.Thread(target=self._accept, name="test-raw-peer")

    @property
    def port(self) -> int:
        port: int = self._server.getsockname()[1]
        return port

    @property
    def url(self) -> str:
        scheme = "ws" if self._tls is None else "wss"
        return f"{scheme}://127.0.0.1:{self.port}/"

    def __enter__(self) -> RawPeer:
        if self._upgrade:
            self._thread.start()
        return self

    def __exit__(self, exc_type: object, exc: object, tb: TracebackType | None) -> None:
        self.stop.set()
        if self._thread.is_alive():
            self._thread.join(5.0)
        with self._lock:
            threads, connections = list(self._threads), list(self._open)
        for connection in connections:
            with contextlib.suppress(OSError):
                connection.shutdown(socket.SHUT_RDWR)
        for thread in threads:
            thread.join(5.0)
        for connection in connections:
            connection.close()
        self._server.close()

    def _accept(self) -> None:
        while not self.stop.is_set():
            try:
                connection, _ = self._server.accept()
            except TimeoutError:
                continue
            with self._lock:
                self._open.append(connection)
                self.connections += 1
                number = self.connections
                thread = threading.Thread(
                    target=self._serve, args=(connection, number), name=f"test-raw-peer-{number}"
                )
                self._threads.append(thread)
            thread.start()

    def _serve(self, connection: socket.socket, number: int) -> None:
        try:
            upgraded = self._handshake(connection)
            if upgraded is not None and self._script is not None:
                self._script(upgraded, number)
        except (OSError, ssl.SSLError):
            pass  # the client went away or refused our certificate

    def _handshake(self, connection: socket.socket) -> socket.socket | None:
        connection.settimeout(2.0)
        if self._tls is not None:
            connection = self._tls.wrap_socket(connection, server_side=True)
            with self._lock:
                self._open.append(connection)
        request = b""
        while b"\r\n\r\n" not in request and len(request) < 65536:
            chunk = connection.recv(4096)
            if not chunk:
                return None
            request += chunk
        match = re.search(rb"sec-websocket-key:\s*(\S+)", request, re.IGNORECASE)
        if match is None:
            return None
        accept = base64.b64encode(hashlib.sha1(match.group(1) + _GUID).digest())
        connection.sendall(
            b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n"
            b"Connection: Upgrade\r\nSec-WebSocket-Accept: " + accept + b"\r\n\r\n"
        )
        return connection


def read_client_frame(connection: socket.socket) -> tuple[int, bytes]:
    """One frame from a client (masked, RFC 6455 section 5.3): opcode and unmasked payload."""
    head = _recv_exact(connection, 2)
    length = head[1] & 0x7F
    if length == 126:
        length = int.from_bytes(_recv_exact(connection, 2), "big")
    elif length == 127:
        length = int.from_bytes(_recv_exact(connection, 8), "big")
    mask = _recv_exact(connection, 4) if head[1] & 0x80 else b""
    payload = _recv_exact(connection, length)
    if mask:
        payload = bytes(byte ^ mask[i % 4] for i, byte in enumerate(payload))
    return head[0] & 0x0F, payload


def _recv_exact(connection: socket.socket, size: int) -> bytes:
    data = b""
    while len(data) < size:
        chunk = connection.recv(size - len(data))
        if not chunk:
            raise ConnectionResetError("the client closed")
        data += chunk
    return data


def abort(connection: socket.socket) -> None:
    """Reset the TCP connection (SO_LINGER 0): a drop without a close frame or FIN."""
    connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    connection.close()


def frame_header(opcode: int, length: int, *, fin: bool = True) -> bytes:
    """An unmasked server frame header (RFC 6455 section 5.2) announcing ``length``."""
    first = (0x80 if fin else 0) | opcode
    if length < 126:
        return bytes([first, length])
    if length < 1 << 16:
        return bytes([first, 126]) + length.to_bytes(2, "big")
    return bytes([first, 127]) + length.to_bytes(8, "big")


def server_frame(opcode: int, payload: bytes, *, fin: bool = True) -> bytes:
    return frame_header(opcode, len(payload), fin=fin) + payload


def tls_server_context(tmp_dir: Path) -> ssl.SSLContext:
    pem = tmp_dir / "peer.pem"
    pem.write_text(SELF_SIGNED_PEM)
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(pem)
    return context


def tls_client_context(tmp_dir: Path) -> ssl.SSLContext:
    """A client context that trusts the self-signed certificate (and checks 127.0.0.1)."""
    pem = tmp_dir / "trust.pem"
    pem.write_text(SELF_SIGNED_PEM)
    return ssl.create_default_context(cafile=str(pem))
