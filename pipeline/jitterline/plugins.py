"""The plugin host: loads plugins, builds the registries, and calls sinks in isolation.

Built-in plugins load through the same ``jitterline`` entry-point group as third-party
ones, but only when asked (``load_entrypoints=True``, as the command line does): a library
user's host runs the plugins it was given and nothing that happens to be installed.
``JITTERLINE_DISABLE_PLUGINS`` (comma-separated names) and ``disabled=`` block plugins by
name before they are imported, so a broken plugin can always be switched off;
``enabled=`` (the CLI's ``--enable``) overrides both. An entry point that fails to import
or to register is named in one warning and skipped (``PluginHost.broken``): one bad
plugin never stops the others, ``--help`` or ``plugins``.

Notification hooks are not called through pluggy's all-or-nothing ``hook(...)``: a
raising implementation there would stop the plugins after it. ``PluginHost.notify``
calls each implementation on its own, logs its first failure per hook, counts every
failure, and turns it into an ``Alert`` for the other plugins.
"""

from __future__ import annotations

import importlib.metadata
import logging
import os
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

import pluggy

from . import hookspecs
from .adjuster import BufferPolicy, builtin_policies
from .codecs import Codec, builtin_codecs
from .errors import PluginError
from .frames import Alert
from .protocols import DialectFactory
from .protocols.builtin import builtin_dialects
from .registry import Registry

__all__ = ["DISABLE_ENV", "ENTRY_POINT_GROUP", "PluginHost", "PluginInfo"]

log = logging.getLogger(__name__)

ENTRY_POINT_GROUP = "jitterline"
DISABLE_ENV = "JITTERLINE_DISABLE_PLUGINS"
NOTIFICATION_HOOKS = frozenset(
    {
        "jitterline_stream_opened",
        "jitterline_outbound_ready",
        "jitterline_raw_message",
        "jitterline_frame_played",
        "jitterline_stats",
        "jitterline_alert",
        "jitterline_connection_event",
        "jitterline_stream_closed",
    }
)
"""The hooks ``notify`` calls, each implementation isolated from the others."""


@dataclass(frozen=True, slots=True)
class PluginInfo:
    """One registered plugin as ``jitterline plugins`` lists it."""

    name: str
    hooks: tuple[str, ...]
    enabled: bool
    distribution: str = ""


class PluginHost:
    """One plugin manager with its registries; build one per process or per test."""

    def __init__(
        self,
        *,
        plugins: Iterable[object] = (),
        load_entrypoints: bool = False,
        disabled: Iterable[str] = (),
        enabled: Iterable[str] = (),
    ) -> None:
        self.pm = pluggy.PluginManager(ENTRY_POINT_GROUP)
        self.pm.add_hookspecs(hookspecs)
        env_disabled = os.environ.get(DISABLE_ENV, "")
        named = (*disabled, *env_disabled.split(","))
        self.disabled = frozenset(n.strip() for n in named if n.strip()) - {
            n.strip() for n in enabled
        }
        for name in self.disabled:
            self.pm.set_blocked(name)
        self.broken: dict[str, str] = {}
        self._dists: dict[str, str] = {}
        self._impls: dict[str, tuple[tuple[str, Callable[..., object], tuple[str, ...]], ...]] = {}
        if load_entrypoints:
            self._load_entrypoints()
        for plugin in plugins:
            self._register(plugin)
        self.pm.check_pending()
        self.failures: Counter[tuple[str, str]] = Counter()
        self.dialects: Registry[DialectFactory] = builtin_dialects()
        self.codecs: Registry[Codec] = builtin_codecs()
        self.policies: Registry[Callable[..., BufferPolicy]] = builtin_policies()
        self._collect_registrations()

    def _load_entrypoints(self) -> None:
        found = set()
        for entry in importlib.metadata.entry_points(group=ENTRY_POINT_GROUP):
            found.add(entry.name)
            if self.pm.is_blocked(entry.name) or self.pm.has_plugin(entry.name):
                continue
            try:
                self._register(entry.load(), entry.name)
            except Exception as exc:
                self.broken[entry.name] = f"{type(exc).__name__}: {exc}"
                log.warning(
                    "plugin %r (%s) is skipped: it failed to load (%s: %s); disable it with %s=%s",
                    entry.name,
                    entry.value,
                    type(exc).__name__,
                    exc,
                    DISABLE_ENV,
                    entry.name,
                )
                continue
            if entry.dist is not None:
                self._dists[entry.name] = entry.dist.name
        unknown = sorted(self.disabled - found)
        if unknown:
            log.warning(
                "%s names %s, which no installed plugin is called; installed: %s",
                DISABLE_ENV,
                ", ".join(unknown),
                ", ".join(sorted(found)) or "none",
            )

    def _register(self, plugin: object, name: str | None = None) -> None:
        """Register, refusing wrapper implementations of notification hooks: ``notify``
        calls implementations one at a time to isolate failures, which a wrapper (that
        must surround the others) cannot take part in."""
        for attr in dir(plugin):
            options = getattr(getattr(plugin, attr, None), "jitterline_impl", None)
            wrapper = isinstance(options, dict) and (
                options.get("wrapper") or options.get("hookwrapper")
            )
            if attr in NOTIFICATION_HOOKS and wrapper:
                raise PluginError(
                    f"plugin {name or plugin!r}: {attr} is a wrapper hookimpl; "
                    "notification hooks are called one plugin at a time, so drop "
                    "wrapper=True / hookwrapper=True and handle the call directly"
                )
        self.pm.register(plugin, name=name)
        self._impls.clear()

    def _collect_registrations(self) -> None:
        hook = self.pm.hook
        hook.jitterline_register_dialects(register=self.dialects.register)
        hook.jitterline_register_codecs(register=self.codecs.register)
        hook.jitterline_register_buffer_policies(register=self.policies.register)

    def register(self, plugin: object, name: str | None = None) -> None:
        """Add a plugin after start-up (tests, library users); its registrations apply to
        pipelines built afterwards."""
        self._register(plugin, name)
        self.pm.check_pending()
        caller = self.pm.subset_hook_caller
        others = [p for p in self.pm.get_plugins() if p is not plugin]
        caller("jitterline_register_dialects", others)(register=self.dialects.register)
        caller("jitterline_register_codecs", others)(register=self.codecs.register)
        caller("jitterline_register_buffer_policies", others)(register=self.policies.register)

    def unregister(self, plugin: object) -> None:
        self.pm.unregister(plugin)
        self._impls.clear()

    def notify(self, hook_name: str, **kwargs: Any) -> None:
        """Call every implementation of a notification hook, isolating failures.

        Runs per frame and per stream, so each hook's implementations (most recently
        registered first, as pluggy orders them) are looked up once and cached until the
        set of plugins changes."""
        impls = self._impls.get(hook_name)
        if impls is None:
            caller = getattr(self.pm.hook, hook_name)
            impls = tuple(
                (impl.plugin_name, impl.function, tuple(impl.argnames))
                for impl in reversed(caller.get_hookimpls())
            )
            self._impls[hook_name] = impls
        for plugin_name, function, argnames in impls:
            try:
                function(*[kwargs[arg] for arg in argnames])
            except Exception:
                self._failed(plugin_name, hook_name)

    def _failed(self, plugin_name: str, hook_name: str) -> None:
        key = (plugin_name, hook_name)
        self.failures[key] += 1
        if self.failures[key] > 1:
            return
        log.exception("plugin %r failed in %s; it stays registered", plugin_name, hook_name)
        if hook_name != "jitterline_alert":
            alert = Alert(
                kind="plugin_error",
                message=f"plugin {plugin_name!r} raised in {hook_name}",
                at_s=0.0,
                severity="error",
            )
            self.notify("jitterline_alert", alert=alert, stream=None)

    def failures_by_plugin(self) -> dict[str, int]:
        """How often each plugin raised, over all hooks: the summary's
        ``plugins.failures``."""
        totals: Counter[str] = Counter()
        for (plugin_name, _), count in self.failures.items():
            totals[plugin_name] += count
        return dict(sorted(totals.items()))

    def call(self, hook_name: str, **kwargs: Any) -> list[Any]:
        """Call a configuration hook through pluggy: errors propagate, because a
        misconfiguration must stop start-up rather than a running stream."""
        result: list[Any] = getattr(self.pm.hook, hook_name)(**kwargs)
        return result

    def info(self) -> list[PluginInfo]:
        """The registered and the blocked plugins, for ``jitterline plugins``."""
        rows = []
        for name, plugin in self.pm.list_name_plugin():
            if plugin is None:
                rows.append(PluginInfo(name=name, hooks=(), enabled=False))
                continue
            hooks = tuple(sorted(caller.name for caller in self.pm.get_hookcallers(plugin) or []))
            rows.append(PluginInfo(name, hooks, True, self._dists.get(name, "")))
        listed = {row.name for row in rows}
        rows.extend(PluginInfo(n, (), False) for n in sorted(self.disabled - listed))
        return sorted(rows, key=lambda row: row.name)
