"""Alert rules on each stream's snapshots and on the fleet, to the log and to webhooks.

A rule reads one number (or the verdict) off each ``Stats`` snapshot::

    --alert "jitter_ms > 30 for 5s clear 20"     # fires after 5 s above 30 ms,
                                                 # recovers after 5 s at or below 20 ms
    --alert "verdict != healthy for 10s"
    --alert-fleet "25% for 10s"                  # a quarter of the live streams degraded
    --alert-webhook https://hooks.example.com/x  # repeatable; or --alert-rules FILE (TOML)

Why hold times and hysteresis: snapshots come once a second and jitter is bursty; a bare
threshold would page on every burst and recover a second later. A rule fires only after
its condition held for ``for`` seconds, and recovers only after the ``clear`` side (the
threshold itself when not given) held as long, so one incident raises one alert and one
recovery. A stream that ends during an incident recovers with it, so nothing stays open.
A stream is *degraded* while any of its rules is firing; the fleet rule watches the share
of live streams that are, and says so in words (``3 of 12 streams degraded``).

Time is the snapshot's ``at_s`` (the pipeline clock), so rules behave the same live and on
a replay, and the rule core (``Incident``) is tested on scripted values without a clock.

Delivery must never touch the audio path: hooks only put the alert on a bounded queue
(``put_nowait``) and one worker thread posts it with ``requests`` (timeout, retries with
exponential backoff). A full queue drops the alert and counts it (``WebhookSender.dropped``);
a slow or dead webhook therefore costs nothing to the streams. The body is JSON with the
alert's fields and a Slack-compatible ``text``. Webhook URLs often carry their secret in
the path (Slack's do), so only scheme and host ever reach a log line.
"""

from __future__ import annotations

import argparse
import atexit
import contextlib
import logging
import math
import queue
import re
import sys
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal
from urllib.parse import urlsplit

import requests

from jitterline import Alert, ConfigError, Diagnosis, Stats, hookimpl
from jitterline.frames import StreamInfo

__all__ = [
    "METRICS",
    "AlertingSink",
    "FleetRule",
    "Incident",
    "Rule",
    "WebhookSender",
    "load_rules",
    "parse_fleet",
    "parse_rule",
    "plugin",
]

log = logging.getLogger(__name__)

Value = float | str | None
Change = Literal["fired", "recovered"]

METRICS: dict[str, Callable[[Stats, Diagnosis], Value]] = {
    "jitter_ms": lambda s, d: s.latency.jitter_rfc3550_ms,
    "delay_p95_ms": lambda s, d: s.latency.delay_p95_ms,
    "loss_pct": lambda s, d: 100.0 * s.frames.loss_rate,
    "late_pct": lambda s, d: 100.0 * s.frames.late_rate,
    "reconnects": lambda s, d: float(s.connection.reconnects),
    "rtt_ms": lambda s, d: s.rtt_ms,
    "buffer_target_ms": lambda s, d: s.buffer.target_ms,
    "verdict": lambda s, d: d.verdict,
}
"""What a rule can watch, read off a snapshot and its diagnosis."""

_OPS: dict[str, Callable[[Any, Any], bool]] = {
    ">": lambda a, b: a > b,
    ">=": lambda a, b: a >= b,
    "<": lambda a, b: a < b,
    "<=": lambda a, b: a <= b,
    "==": lambda a, b: a == b,
    "!=": lambda a, b: a != b,
}
_RULE = re.compile(
    r"^\s*(?P<metric>\w+)\s*(?P<op>>=|<=|==|!=|>|<)\s*(?P<threshold>[\w.+-]+)"
    r"(?:\s+for\s+(?P<hold>[\d.]+)\s*s)?(?:\s+clear\s+(?P<clear>[\w.+-]+))?\s*$"
)
_FLEET = re.compile(r"^\s*(?P<pct>[\d.]+)\s*%(?:\s+for\s+(?P<hold>[\d.]+)\s*s)?\s*$")


@dataclass(frozen=True, slots=True)
class Rule:
    """``metric op threshold``, held ``hold_s`` to fire; ``clear`` (default: the threshold)
    bounds the good side, held as long to recover."""

    metric: str
    op: str
    threshold: float | str
    hold_s: float = 0.0
    clear: float | str | None = None
    name: str = ""

    @property
    def label(self) -> str:
        return self.name or f"{self.metric} {self.op} {self.threshold}"

    def breached(self, value: float | str) -> bool:
        return _OPS[self.op](value, self.threshold)

    def cleared(self, value: float | str) -> bool:
        """On the good side of ``clear``: for ``>``/``>=`` at or below it, for ``<``/``<=``
        at or above it; an equality rule clears when it no longer holds."""
        if self.clear is None or self.op in {"==", "!="}:
            return not self.breached(value)
        fall = self.op in {">", ">="}
        return _OPS["<=" if fall else ">="](value, self.clear)


@dataclass(frozen=True, slots=True)
class FleetRule:
    """The fleet is degraded when at least ``degraded_pct`` % of live streams are."""

    degraded_pct: float
    hold_s: float = 0.0

    def as_rule(self) -> Rule:
        return Rule("degraded_pct", ">=", self.degraded_pct, self.hold_s, name="fleet")


@dataclass(slots=True)
class Incident:
    """One rule on one stream: the hold-and-hysteresis state machine, sans clock.

    ``update`` returns "fired" or "recovered" exactly once per incident; an unmeasured
    value (None) changes nothing.
    """

    rule: Rule
    active: bool = False
    since_s: float | None = None

    def update(self, value: Value, now_s: float) -> Change | None:
        if value is None or (isinstance(value, float) and math.isnan(value)):
            return None
        moving = self.rule.cleared(value) if self.active else self.rule.breached(value)
        if not moving:
            self.since_s = None
            return None
        if self.since_s is None:
            self.since_s = now_s
        if now_s - self.since_s < self.rule.hold_s:
            return None
        self.active = not self.active
        self.since_s = None
        return "fired" if self.active else "recovered"


def parse_rule(text: str, name: str = "") -> Rule:
    """``"jitter_ms > 30 for 5s clear 20"`` (``for`` and ``clear`` optional)."""
    match = _RULE.match(text)
    if match is None:
        raise ConfigError(
            f"alert rule {text!r} is not METRIC OP VALUE [for Ns] [clear VALUE], "
            "e.g. 'jitter_ms > 30 for 5s clear 20'"
        )
    metric = match["metric"]
    if metric not in METRICS:
        raise ConfigError(
            f"alert rule {text!r} watches {metric!r}; pick one of {', '.join(METRICS)}"
        )
    threshold, clear = match["threshold"], match["clear"]
    if metric == "verdict":
        if match["op"] not in {"==", "!="}:
            raise ConfigError(f"alert rule {text!r}: compare the verdict with == or !=")
        return Rule(metric, match["op"], threshold, float(match["hold"] or 0), None, name)
    return Rule(
        metric,
        match["op"],
        _number(threshold, text),
        float(match["hold"] or 0),
        None if clear is None else _number(clear, text),
        name,
    )


def parse_fleet(text: str) -> FleetRule:
    """``"25% for 10s"``."""
    match = _FLEET.match(text)
    if match is None or not 0 < float(match["pct"]) <= 100:
        raise ConfigError(
            f"fleet rule {text!r} is not PERCENT% [for Ns] with 0 < PERCENT <= 100, "
            "e.g. '25% for 10s'"
        )
    return FleetRule(float(match["pct"]), float(match["hold"] or 0))


def _number(text: str, rule: str) -> float:
    try:
        return float(text)
    except ValueError:
        raise ConfigError(f"alert rule {rule!r}: {text!r} is not a number") from None


@dataclass(frozen=True, slots=True)
class RuleFile:
    """What ``--alert-rules FILE`` holds (see ``load_rules``)."""

    rules: tuple[Rule, ...] = ()
    fleet: FleetRule | None = None
    webhooks: tuple[str, ...] = ()


def load_rules(path: Path) -> RuleFile:
    """Read a TOML rule file::

    webhooks = ["https://hooks.slack.com/services/..."]
    fleet = "25% for 10s"

    [[rule]]
    name = "jitter"
    when = "jitter_ms > 30 for 5s clear 20"
    """
    if sys.version_info >= (3, 11):
        import tomllib
    else:  # pragma: no cover - Python 3.10
        try:
            import tomli as tomllib
        except ImportError:
            raise ConfigError(
                "--alert-rules needs tomli on Python 3.10: pip install 'jitterline[alerting]'"
            ) from None
    try:
        document = tomllib.loads(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise ConfigError(f"cannot read alert rules {str(path)!r} ({exc.strerror})") from exc
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"alert rules {str(path)!r} are not valid TOML: {exc}") from exc
    tables = document.get("rule", [])
    if not isinstance(tables, list) or not all(
        isinstance(t, dict) and isinstance(t.get("when"), str) for t in tables
    ):
        raise ConfigError(
            f'alert rules {str(path)!r}: each [[rule]] needs when = "METRIC OP VALUE ..."'
        )
    fleet = document.get("fleet")
    webhooks = document.get("webhooks", [])
    if not isinstance(webhooks, list) or not all(isinstance(u, str) for u in webhooks):
        raise ConfigError(f"alert rules {str(path)!r}: webhooks must be a list of URLs")
    return RuleFile(
        rules=tuple(parse_rule(t["when"], str(t.get("name", ""))) for t in tables),
        fleet=None if fleet is None else parse_fleet(str(fleet)),
        webhooks=tuple(webhooks),
    )


def where(url: str) -> str:
    """A webhook URL as logs may show it: scheme and host only."""
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.hostname or '?'}"


@dataclass(slots=True)
class WebhookSender:
    """Posts alert bodies from a bounded queue on one worker thread of its own.

    ``sent``, ``failed`` (gave up after the retries) and ``dropped`` (queue full) count
    deliveries; ``post`` never blocks its caller.
    """

    urls: tuple[str, ...]
    timeout_s: float = 2.0
    retries: int = 3
    backoff_s: float = 0.5
    capacity: int = 100
    sent: int = 0
    failed: int = 0
    dropped: int = 0
    _queue: queue.Queue[dict[str, Any] | None] = field(init=False)
    _thread: threading.Thread | None = field(default=None, init=False)
    _stop: threading.Event = field(default_factory=threading.Event, init=False)

    def __post_init__(self) -> None:
        self._queue = queue.Queue(self.capacity)

    def post(self, body: dict[str, Any]) -> None:
        if not self.urls:
            return
        if self._thread is None:
            self._thread = threading.Thread(
                target=self._run, name="jitterline-webhooks", daemon=True
            )
            self._thread.start()
        try:
            self._queue.put_nowait(body)
        except queue.Full:
            self.dropped += 1
            if self.dropped == 1:
                log.warning(
                    "webhook queue full (%d alerts): dropping alerts until it drains; "
                    "is %s slow or down?",
                    self.capacity,
                    ", ".join(where(u) for u in self.urls),
                )

    def close(self, timeout_s: float = 5.0) -> None:
        """Deliver what is queued within ``timeout_s``, then stop the worker."""
        if self._thread is None:
            return
        deadline = time.monotonic() + timeout_s
        while not self._queue.empty() and time.monotonic() < deadline:
            time.sleep(0.01)
        self._stop.set()
        with contextlib.suppress(queue.Full):
            self._queue.put_nowait(None)
        self._thread.join(max(deadline - time.monotonic(), 0.1))
        self._thread = None

    def _run(self) -> None:
        with requests.Session() as session:
            while not self._stop.is_set():
                body = self._queue.get()
                if body is None:
                    return
                for url in self.urls:
                    self._deliver(session, url, body)

    def _deliver(self, session: requests.Session, url: str, body: dict[str, Any]) -> None:
        for attempt in range(self.retries + 1):
            try:
                response = session.post(url, json=body, timeout=self.timeout_s)
                if response.status_code < 300:
                    self.sent += 1
                    return
                reason = f"HTTP {response.status_code}"
            except requests.RequestException as exc:
                reason = type(exc).__name__
            if attempt < self.retries and self._stop.wait(self.backoff_s * 2**attempt):
                break
        self.failed += 1
        log.warning("webhook %s: alert not delivered (%s)", where(url), reason)


class AlertingSink:
    """Rules per stream (state under ``stream.key``) and for the fleet; see the module."""

    def __init__(
        self,
        rules: Sequence[Rule] = (),
        *,
        fleet: FleetRule | None = None,
        webhooks: Sequence[str] = (),
        timeout_s: float = 2.0,
        retries: int = 3,
        capacity: int = 100,
    ) -> None:
        self.alerts: list[Alert] = []
        self._max_kept = 1000
        self._setup(rules, fleet, webhooks, timeout_s, retries=retries, capacity=capacity)
        atexit.register(self.close)

    def _setup(
        self,
        rules: Sequence[Rule],
        fleet: FleetRule | None,
        webhooks: Sequence[str],
        timeout_s: float,
        *,
        retries: int = 3,
        capacity: int = 100,
    ) -> None:
        self.rules = tuple(rules)
        self.fleet = fleet
        self.sender = WebhookSender(tuple(webhooks), timeout_s, retries, capacity=capacity)
        self._streams: dict[tuple[str, str], list[Incident]] = {}
        self._fleet = None if fleet is None else Incident(fleet.as_rule())

    @hookimpl
    def jitterline_add_options(self, parser: argparse.ArgumentParser) -> None:
        group = parser.add_argument_group("alerting (plugin alerting)")
        group.add_argument(
            "--alert",
            action="append",
            default=[],
            metavar="RULE",
            help="alert rule, e.g. 'jitter_ms > 30 for 5s clear 20' (repeatable); "
            "metrics: " + ", ".join(METRICS),
        )
        group.add_argument("--alert-fleet", metavar="PCT", help="fleet rule, e.g. '25%% for 10s'")
        group.add_argument(
            "--alert-webhook",
            action="append",
            default=[],
            metavar="URL",
            help="also POST alerts (JSON with a Slack-compatible text) to URL (repeatable)",
        )
        group.add_argument(
            "--alert-rules", metavar="FILE", help="rules, fleet rule and webhooks from TOML"
        )
        group.add_argument(
            "--alert-timeout-s", type=float, default=2.0, metavar="S", help="per POST (2)"
        )

    @hookimpl
    def jitterline_configure(self, options: Mapping[str, Any]) -> None:
        if "alert" not in options:
            return
        loaded = RuleFile()
        if options.get("alert_rules"):
            loaded = load_rules(Path(options["alert_rules"]))
        fleet_text = options.get("alert_fleet")
        self.sender.close(0.0)
        self._setup(
            (*loaded.rules, *(parse_rule(text) for text in options["alert"])),
            parse_fleet(fleet_text) if fleet_text else loaded.fleet,
            (*loaded.webhooks, *options.get("alert_webhook", [])),
            float(options.get("alert_timeout_s") or 2.0),
        )

    @hookimpl
    def jitterline_stream_opened(self, stream: StreamInfo) -> None:
        if self.rules:
            self._incidents(stream)

    @hookimpl
    def jitterline_stats(self, stats: Stats, diagnosis: Diagnosis, stream: StreamInfo) -> None:
        if not self.rules:
            return
        incidents = self._incidents(stream)
        for incident in incidents:
            value = METRICS[incident.rule.metric](stats, diagnosis)
            value = float(value) if isinstance(value, int) else value
            change = incident.update(value, stats.at_s)
            if change is not None:
                self._raise(change, incident.rule, value, stats.at_s, stream)
        self._check_fleet(stats.at_s)

    @hookimpl
    def jitterline_stream_closed(self, stats: Stats, stream: StreamInfo) -> None:
        for incident in self._streams.pop(stream.key, []):
            if incident.active:
                self._raise("recovered", incident.rule, "stream ended", stats.at_s, stream)
        if self.rules:
            self._check_fleet(stats.at_s)

    def close(self, timeout_s: float = 5.0) -> None:
        """Deliver what is queued (bounded by ``timeout_s``) and stop the worker."""
        self.sender.close(timeout_s)

    def _incidents(self, stream: StreamInfo) -> list[Incident]:
        """The stream's rule states; a live stream counts in the fleet from its opening."""
        incidents = self._streams.get(stream.key)
        if incidents is None:
            incidents = self._streams[stream.key] = [Incident(rule) for rule in self.rules]
        return incidents

    def _check_fleet(self, now_s: float) -> None:
        if self._fleet is None or not self._streams:
            return
        degraded = sum(any(i.active for i in found) for found in self._streams.values())
        total = len(self._streams)
        change = self._fleet.update(100.0 * degraded / total, now_s)
        if change is not None:
            self._raise(change, self._fleet.rule, f"{degraded} of {total}", now_s, None)

    def _raise(
        self, change: Change, rule: Rule, value: Value, at_s: float, stream: StreamInfo | None
    ) -> None:
        alert = _alert(change, rule, value, at_s, stream)
        self.alerts.append(alert)
        del self.alerts[: -self._max_kept]
        level = logging.INFO if change == "recovered" else logging.WARNING
        log.log(level, "%s", alert.message)
        self.sender.post(_body(alert, change, rule, stream))


def _alert(
    change: Change, rule: Rule, value: Value, at_s: float, stream: StreamInfo | None
) -> Alert:
    if stream is None:
        what = f"fleet: {value} streams degraded"
        severity: Literal["info", "warning", "error"] = "error"
    else:
        where_ = stream.stream_id + (f"/{stream.channel}" if stream.channel else "")
        shown = f"{value:.1f}" if isinstance(value, float) else value
        what = f"{where_}: {rule.label} (now {shown})"
        severity = "warning"
    if change == "recovered":
        return Alert("alert_recovered", f"RECOVERED {what}", at_s, "info")
    values = {"value": value} if isinstance(value, float) else {}
    return Alert("alert_fired", f"ALERT {what}", at_s, severity, values)


def _body(alert: Alert, change: Change, rule: Rule, stream: StreamInfo | None) -> dict[str, Any]:
    return {
        "text": alert.message,  # what Slack (and Mattermost, Teams workflows) display
        "status": change,
        "rule": rule.label,
        "metric": rule.metric,
        "threshold": rule.threshold,
        "severity": alert.severity,
        "at_s": alert.at_s,
        "values": dict(alert.values),
        "stream": None
        if stream is None
        else {
            "stream_id": stream.stream_id,
            "channel": stream.channel,
            "dialect": stream.dialect,
            "call_id": stream.call_id,
        },
    }


plugin = AlertingSink()
