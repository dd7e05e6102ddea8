"""The dialects jitterline ships, as a fresh registry of per-stream factories.

This is wiring, not a sans-I/O core: it hands the live wall clock to dialects that stamp
what they send. A replay never calls ``opening()``, so the clock is never read there.
"""

from __future__ import annotations

import time

from ..registry import Registry
from . import DialectFactory
from .appfoundry import AppFoundryDialect
from .twilio import TwilioDialect

__all__ = ["builtin_dialects"]


def builtin_dialects() -> Registry[DialectFactory]:
    registry: Registry[DialectFactory] = Registry("dialect")
    registry.register("appfoundry", lambda: AppFoundryDialect(wall_clock=time.time))
    registry.register("twilio", TwilioDialect)
    return registry
