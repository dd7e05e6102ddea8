"""The inbound fault soak: real servers take mixed faults while good calls stream.

``python -m jitterline.serve_soak [--faults N] [--seed S] [--good G] [--duration S]
[--json FILE]`` starts, in one runtime as ``jitterline serve`` would, two servers
(``server.InboundServer``: the upgrade gate, the ``websockets`` shell, one pipeline per
session and channel) on 127.0.0.1, port 0: AudioHook with an API key and client secret,
Twilio with an auth token, so that every upgrade is checked as in production. Good
sessions (``emulator.players``: Genesys as its reference client plays it, signed, stereo
PCMU in 200 ms messages; Twilio, signed, 20 ms media; both with pings) stream in rounds of
G for the whole run, while N faults are thrown at the same servers a few at a time:
malformed upgrades, bad credentials and signatures, slowloris clients, a flood past
``max_sessions``, protocol violations mid-session and abrupt TCP drops (``CATALOGUE``).

A fault is *answered* when its client gets, within the fault's budget, the answer
docs/serve.md documents for it: the HTTP status (and for credentials, no sooner than the
refusal delay), ``disconnect`` reason ``error`` naming the violation and then ``closed``
for our ``close``, a close code, or the connection cut at the handshake timeout without an
upgrade; for a drop, the server ended the session by itself and, if it had opened, wrote
its balanced summaries. A good session is *unaffected* when it completed the protocol's way
and the server's summary of each of its channels balances and counts exactly the frames
the player sent.

The flood needs the AudioHook server's sessions to be countable: it takes an exclusive
turn (``_Admission``) against everything else that upgrades there, so that a good session
is never refused for a slot the flood took, while the good sessions already streaming keep
streaming through it.

Then it reports (stdout, and ``--json``): answered / total with each failure and why; the
good sessions (completed, frames sent and counted); the servers' identity (every upgrade
the clients saw became one completed, probe or failed session; every refusal the clients
saw was counted once, by reason); the accounting identity of every summary and of the
servers' totals; leaks (descriptors, threads, resident memory before and after, the
sessions still held at the end). Exit 0 only if everything held, 1 otherwise, 2 when it
could not run.

The servers' timeouts are compressed (handshake, ``open`` or ``start``, and close
handshake 2 s) so that slow clients cost seconds, not tens of seconds; the refusal delay
keeps its 500 ms.
"""

from __future__ import annotations

from .faults import CATALOGUE, FLOOD_EXTRA, ServeFault, pick_faults
from .report import ServeSoakReport
from .run import CONCURRENCY, main, run_serve_soak

__all__ = [
    "CATALOGUE",
    "CONCURRENCY",
    "FLOOD_EXTRA",
    "ServeFault",
    "ServeSoakReport",
    "main",
    "pick_faults",
    "run_serve_soak",
]
