"""Hook specifications: everything a plugin can receive or add, grouped by phase.

Write a plugin as a module or object with functions named like these specs and marked with
``jitterline.hookimpl``; register it under the ``jitterline`` entry-point group::

    [project.entry-points.jitterline]
    my_sink = "my_package.my_sink:plugin"

An implementation may accept any subset of a spec's arguments (pluggy matches them by
name), so specs can gain arguments without breaking plugins. Hooks are called with
keywords, most recently registered plugin first.

Notification hooks (frame, message, stats, alert, connection, stream closed) are called
one plugin at a time by jitterline itself: a plugin that raises is logged once per hook,
counted in ``PluginHost.failures`` and reported as an ``Alert``; the stream goes on. They
run on the pipeline's thread: return quickly and hand slow work (disk, network) to a
thread of your own.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any

import pluggy

from .frames import Alert, AudioFrame, ConnectionEvent, Message, Stats

if TYPE_CHECKING:
    from .adjuster import BufferPolicy
    from .codecs import Codec
    from .diagnosis import Diagnosis
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
def jitterline_configure(options: Mapping[str, Any]) -> None:
    """Receive the parsed options (argparse dest names) before the stream starts."""


# -- the stream: called per message, frame, snapshot ---------------------------------------


@hookspec
def jitterline_raw_message(message: Message, stream_id: str) -> None:
    """A message arrived, before any parsing (for capture and debugging). ``message``
    holds the raw text or bytes and its monotonic arrival time."""


@hookspec
def jitterline_frame_played(frame: AudioFrame) -> None:
    """A frame left the jitter buffer at its playout time (``frame.playout_s``).
    ``frame.concealed`` is True for a frame synthesised in place of a missing one;
    ``frame.samples`` holds the decoded int16 audio."""


@hookspec
def jitterline_stats(stats: Stats, diagnosis: Diagnosis) -> None:
    """A periodic snapshot (once a second by default) and its diagnosis."""


@hookspec
def jitterline_alert(alert: Alert) -> None:
    """Something worth a human's attention: the diagnosis changed, a plugin failed, the
    connection dropped."""


@hookspec
def jitterline_connection_event(event: ConnectionEvent) -> None:
    """The session's lifecycle: connecting, connected, disconnected (code, reason),
    reconnect_scheduled (delay_s), token_refreshed, rate_limited, pong (rtt_ms), closed."""


@hookspec
def jitterline_stream_closed(stream_id: str, stats: Stats, diagnosis: Diagnosis) -> None:
    """The stream ended; ``stats`` is final (its frame counts balance). Flush and forget
    per-stream state here so memory stays bounded."""
