"""The dialects jitterline ships, as a fresh registry of per-connection factories.

This is wiring, not a sans-I/O core: it hands the live wall clock to the dialect that
stamps what it sends. Only what a protocol object originates reads it (a replay only
receives), so a replay never reads the clock through it.
"""

from __future__ import annotations

import functools
import time

from ..registry import Registry
from . import DialectFactory
from .appfoundry import AppFoundryDialect
from .audioconnector import AudioConnectorDialect
from .audiohook import AudioHookDialect
from .twilio import TwilioDialect

__all__ = ["builtin_dialects"]


def builtin_dialects() -> Registry[DialectFactory]:
    """``registry.get(name)(role="client" | "server", **options)`` -> a new protocol object."""
    registry: Registry[DialectFactory] = Registry("dialect")
    registry.register("appfoundry", functools.partial(AppFoundryDialect, wall_clock=time.time))
    registry.register("audiohook", AudioHookDialect)
    registry.register("audioconnector", AudioConnectorDialect)
    registry.register("twilio", TwilioDialect)
    return registry
