"""Hook specifications: everything a plugin can receive or add, grouped by phase.

Write a plugin as a module or object with functions named like these specs and marked with
``jitterline.hookimpl``; register it under the ``jitterline`` entry-point group::

    [project.entry-points.jitterline]
    my_sink = "my_package.my_sink:plugin"

An implementation may accept any subset of a spec's arguments (pluggy matches them by
name), so specs can gain arguments without breaking plugins. Hooks are called with
keywords, most recently registered plugin first.

Notification hooks (stream opened, message, frame, stats, alert, connection, stream
closed) are called one plugin at a time by jitterline itself: a plugin that raises is
logged once per hook, counted per plugin (``PluginHost.failures``, and the JSON summary's
``plugins.failures``) and reported as an ``Alert``; the stream goes on. A wrapper
implementation (``hookimpl(wrapper=True)`` or ``hookwrapper=True``) of a notification hook
is refused when it is registered, since it could not be isolated that way.

Every notification names its stream with ``stream`` (a ``StreamInfo``: ``stream_id``,
``channel``, ``dialect`` and, where the protocol has them, ``session_id``, ``call_id``,
``participant_id``). One process runs many streams at once, so a sink keeps per-stream
state in a dict under ``stream.key`` and drops it in ``jitterline_stream_closed``: no
globals, bounded memory.

Threads: notifications run on the thread that runs the pipelines, which for live
commands (``demo``, ``run``, ``serve``) is the runtime's single event loop thread shared
by every stream, and for ``replay`` the main thread. Return quickly: a hook that blocks
stalls every stream. Hand slow work (disk, network) to a bounded queue and a thread of
your own, and count what you drop.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any

import pluggy

from .frames import Alert, AudioFrame, ConnectionEvent, Message, Stats, StreamInfo

if TYPE_CHECKING:
    from .adjuster import BufferPolicy
    from .codecs import Codec
    from .diagnosis import Diagnosis
    from .outbound import Outbound
    from .protocols import DialectFactory

__all__ = ["hookimpl", "hookspec"]

hookspec = pluggy.HookspecMarker("jitterline")
hookimpl = pluggy.HookimplMarker("jitterline")


# -- registration: called once when a PluginHost is built --------------------------------


@hookspec
def jitterline_register_dialects(register: Callable[[str, DialectFactory], None]) -> None:
    """Add wire dialects: call ``register(name, factory)`` where ``factory()`` returns a
    new ``jitterline.protocols.Dialect`` for one stream."""


@hookspec
def jitterline_register_codecs(register: Callable[[str, Codec], None]) -> None:
    """Add audio codecs: call ``register(name, codec)`` with a ``jitterline.codecs.Codec``
    (for example Opus through libopus)."""


@hookspec
def jitterline_register_buffer_policies(
    register: Callable[[str, Callable[..., BufferPolicy]], None],
) -> None:
    """Add jitter-buffer sizing policies: call ``register(name, factory)`` where
    ``factory(target_ms=None)`` returns a ``jitterline.adjuster.BufferPolicy``."""


# -- configuration: called by the CLI -------------------------------------------------------


@hookspec
def jitterline_add_options(parser: argparse.ArgumentParser) -> None:
    """Add command-line options to ``demo``, ``run`` and ``replay``. Prefix
    them with your plugin's name (``--wav``, ``--metrics-port``)."""


@hookspec
def jitterline_register_commands(
    subparsers: argparse._SubParsersAction[argparse.ArgumentParser],
) -> None:
    """Add subcommands to ``jitterline`` (``jitterline report``): call
    ``subparsers.add_parser(name, help=...)``, add its arguments, and
    ``set_defaults(handler=fn)`` where ``fn(args, host)`` runs the command and returns the
    exit code. Called on the main thread while the command line is built; a
    ``ConfigError`` from ``fn`` becomes one error line and exit code 2."""


@hookspec
def jitterline_configure(options: Mapping[str, Any]) -> None:
    """Receive the parsed options (argparse dest names) before the stream starts."""


# -- the stream: called per message, frame, snapshot ---------------------------------------


@hookspec
def jitterline_stream_opened(stream: StreamInfo) -> None:
    """A stream (one channel of a connection) starts: set up its per-stream state here,
    under ``stream.key``. Called before its first frame or snapshot."""


@hookspec
def jitterline_outbound_ready(stream: StreamInfo, outbound: Outbound) -> None:
    """A connection that can talk back opened (``serve`` with Audio Connector or Twilio;
    not a Genesys connection probe, never AudioHook, which is monitor-only). ``stream`` is
    the connection (``channel`` empty). Keep ``outbound`` under ``stream.key`` to answer
    the caller later: ``outbound.send(pcm, rate)`` plays mono int16 samples (or their
    little-endian bytes) after what is queued, paced in real time, and returns a
    ``Playback`` whose ``add_done_callback(fn)`` fires once the peer played it (Twilio
    ``mark`` echo, Audio Connector ``playback_completed``) or it was cleared;
    ``outbound.clear()`` stops the audio (Twilio ``clear``, Audio Connector ``barge_in``).
    Call both on the loop thread (from this or another hook); from another thread use
    ``loop.call_soon_threadsafe``."""


@hookspec
def jitterline_raw_message(message: Message, stream_id: str, stream: StreamInfo) -> None:
    """A message arrived, before any parsing (for capture and debugging). ``message``
    holds the raw text or bytes and its monotonic arrival time. ``stream`` is the
    connection (``channel`` empty); ``stream_id`` is ``stream.stream_id``, kept for older
    plugins."""


@hookspec
def jitterline_frame_played(frame: AudioFrame, stream: StreamInfo) -> None:
    """A frame left the jitter buffer at its playout time (``frame.playout_s``).
    ``frame.concealed`` is True for a frame synthesised in place of a missing one;
    ``frame.samples`` holds the decoded int16 audio."""


@hookspec
def jitterline_stats(stats: Stats, diagnosis: Diagnosis, stream: StreamInfo) -> None:
    """A periodic snapshot (once a second by default) and its diagnosis."""


@hookspec
def jitterline_alert(alert: Alert, stream: StreamInfo | None) -> None:
    """Something worth a human's attention: the diagnosis changed, a plugin failed, the
    connection dropped. ``stream`` is None for what concerns no single stream."""


@hookspec
def jitterline_connection_event(event: ConnectionEvent, stream: StreamInfo) -> None:
    """A connection's lifecycle: connecting, connected, disconnected (code, reason),
    reconnect_scheduled (delay_s), token_refreshed, rate_limited, pong (rtt_ms), closed.
    ``stream`` is the connection (``channel`` empty)."""


@hookspec
def jitterline_stream_closed(
    stream_id: str, stats: Stats, diagnosis: Diagnosis, stream: StreamInfo
) -> None:
    """The stream ended; ``stats`` is final (its frame counts balance). Flush and forget
    the per-stream state kept under ``stream.key`` so memory stays bounded."""
