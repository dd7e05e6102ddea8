"""The inbound side: Genesys AudioHook, Audio Connector and Twilio Media Streams dial us.

``config`` (options and credentials), ``gate`` (who gets through the upgrade, sans-I/O),
``shell`` (the ``websockets`` server on the runtime's loop: sessions, drain), ``report``
(per-session summaries), ``command`` (``jitterline serve``), ``workers`` (``serve
--workers N``: a parent and N worker processes on one port), ``fleet`` (HAProxy and
Prometheus over ``serve`` processes on loopback, for the tests and the benchmark).
docs/serve.md tells how to run it, docs/deploy.md how to run a fleet.
"""

from __future__ import annotations

from .config import API_KEYS_ENV, TWILIO_TOKEN_ENV, Credentials, ServeOptions, load_credentials
from .gate import HEALTH_PATHS, Decision, Gate
from .report import SessionIdentity, SinkLag, SummaryWriter, session_summary
from .shell import InboundServer, ServedSession, Totals

__all__ = [
    "API_KEYS_ENV",
    "HEALTH_PATHS",
    "TWILIO_TOKEN_ENV",
    "Credentials",
    "Decision",
    "Gate",
    "InboundServer",
    "ServeOptions",
    "ServedSession",
    "SessionIdentity",
    "SinkLag",
    "SummaryWriter",
    "Totals",
    "load_credentials",
    "session_summary",
]
