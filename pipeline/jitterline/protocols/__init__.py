"""Sans-I/O protocol objects: one state machine per WebSocket connection, in either role.

The model is websockets' ``Protocol`` and h11's ``Connection(our_role=...)``: the object
owns no socket and reads no clock. A shell (the dial-out transport, an inbound server, a
replay, a test) feeds it what arrived and sends what it asks for::

    proto = registry.get("audiohook")(role="server")
    events = proto.receive(message)          # Message in (with its arrival time)
    for data in proto.data_to_send():        # replies and originated messages out
        await websocket.send(data)
    if proto.close_expected():               # the protocol is done with this connection
        await websocket.close()

Rules every protocol object keeps (the pipeline and the shells rely on them):

- ``receive`` never raises for anything a peer can send. A message it cannot use, or one
  that breaks the protocol's rules, becomes exactly one ``Malformed`` event; when the
  protocol prescribes an answer (AudioHook: ``disconnect`` reason ``error``) the answer is
  queued and the event has ``fatal=True``. Other sessions are never affected.
- Each received audio message becomes one ``AudioFrame`` per channel it carries (stereo
  AudioHook audio is split), with ``channel`` set, ``seq`` counting that channel's frames
  from 0 and ``media_ms`` its place on the sender's media clock.
- Legal transitions are data (a table per role), not scattered ifs.
- Time is passed in: ``receive`` uses ``message.arrival_s``; ``timer(now_s)`` runs the
  protocol's own deadlines (pings, handshake timeouts) when ``next_deadline_s()`` is due.

A registry holds *factories* ``factory(role=...)``, since each connection needs its own
object.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Literal, Protocol, TypeAlias, runtime_checkable

from ..frames import Event, Message

__all__ = ["ROLES", "Dialect", "DialectFactory", "Role"]

Role: TypeAlias = Literal["client", "server"]
"""``client``: we opened the connection (dial-out, or playing Genesys/Twilio toward a
server); ``server``: the peer connected to us."""

ROLES: tuple[Role, ...] = ("client", "server")


@runtime_checkable
class Dialect(Protocol):
    """One connection's protocol state machine; see the module docstring for the rules."""

    name: str
    role: Role

    def connection_made(self, now_s: float) -> None:
        """The transport is open: queue what our role sends first (a client's ``open`` or
        ``initialize``). A reconnect of a dial-out session calls it again."""

    def receive(self, message: Message) -> list[Event]:
        """Feed one received message; returns the events it produced, in order."""

    def data_to_send(self) -> list[str | bytes]:
        """Take the messages the protocol wants sent now (text as ``str``, binary as
        ``bytes``), in order; the queue is empty afterwards."""

    def next_deadline_s(self) -> float | None:
        """When ``timer`` should run next (monotonic seconds); None: no timer pending."""

    def timer(self, now_s: float) -> list[Event]:
        """Run the deadlines due at ``now_s`` (send a ping, give up on a silent peer)."""

    def end(self, reason: str, now_s: float) -> None:
        """We want to end the session the protocol's way (drain, shutdown): queue the
        closing message (AudioHook server: ``disconnect``; client: ``close``)."""

    def connection_lost(self, now_s: float) -> list[Event]:
        """The transport is gone (a drop, or a close without the protocol's own end).
        Returns what that means for the stream: usually nothing, since whether a stream
        ends or reconnects is the shell's decision (a dial-out session reconnects and the
        stream goes on); an object that knows its session is over may return
        ``StreamClosed``."""

    def close_expected(self) -> bool:
        """True once the protocol is done: close the connection after flushing
        ``data_to_send()``."""


DialectFactory: TypeAlias = Callable[..., Dialect]
"""``factory(role="client" | "server", **options)`` -> a new ``Dialect`` for one connection."""
