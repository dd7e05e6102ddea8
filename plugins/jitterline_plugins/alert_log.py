"""Logs every alert, at the level its severity asks for, on ``jitterline.alerts``."""

from __future__ import annotations

import logging

from jitterline import hookimpl
from jitterline.frames import Alert, StreamInfo

__all__ = ["AlertLog", "plugin"]

log = logging.getLogger("jitterline.alerts")

_LEVELS = {"info": logging.INFO, "warning": logging.WARNING, "error": logging.ERROR}


class AlertLog:
    """Alerts become log records, so any logging setup (file, syslog, JSON) gets them."""

    @hookimpl
    def jitterline_alert(self, alert: Alert, stream: StreamInfo | None) -> None:
        if stream is None:
            log.log(_LEVELS[alert.severity], "%s: %s", alert.kind, alert.message)
            return
        where = stream.stream_id + (f"/{stream.channel}" if stream.channel else "")
        log.log(_LEVELS[alert.severity], "%s: %s: %s", where, alert.kind, alert.message)


plugin = AlertLog()
