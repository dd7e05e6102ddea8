"""The plugin host: loads plugins, builds the registries, and calls sinks in isolation.

Built-in plugins load through the same ``jitterline`` entry-point group as third-party
ones. ``JITTERLINE_DISABLE_PLUGINS`` (comma-separated names) and ``disabled=`` block
plugins by name before they are imported, so a broken plugin can always be switched off;
``enabled=`` (the CLI's ``--enable``) overrides both.

Notification hooks are not called through pluggy's all-or-nothing ``hook(...)``: a
raising implementation there would stop the plugins after it. ``PluginHost.notify``
calls each implementation on its own, logs its first failure per hook, counts every
failure, and turns it into an ``Alert`` for the other plugins.
"""

from __future__ import annotations

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
        load_entrypoints: bool = True,
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
        if load_entrypoints:
            self._load_entrypoints()
        for plugin in plugins:
            self.pm.register(plugin)
        self.pm.check_pending()
        self.failures: Counter[tuple[str, str]] = Counter()
        self.dialects: Registry[DialectFactory] = builtin_dialects()
        self.codecs: Registry[Codec] = builtin_codecs()
        self.policies: Registry[Callable[..., BufferPolicy]] = builtin_policies()
        self._collect_registrations()

    def _load_entrypoints(self) -> None:
        try:
            self.pm.load_setuptools_entrypoints(ENTRY_POINT_GROUP)
        except Exception as exc:
            raise PluginError(
                f"a plugin of entry-point group {ENTRY_POINT_GROUP!r} failed to load: {exc}; "
                f"disable it with {DISABLE_ENV}=<name>"
            ) from exc

    def _collect_registrations(self) -> None:
        hook = self.pm.hook
        hook.jitterline_register_dialects(register=self.dialects.register)
        hook.jitterline_register_codecs(register=self.codecs.register)
        hook.jitterline_register_buffer_policies(register=self.policies.register)

    def register(self, plugin: object, name: str | None = None) -> None:
        """Add a plugin after start-up (tests, library users); its registrations apply to
        pipelines built afterwards."""
        self.pm.register(plugin, name=name)
        self.pm.check_pending()
        caller = self.pm.subset_hook_caller
        others = [p for p in self.pm.get_plugins() if p is not plugin]
        caller("jitterline_register_dialects", others)(register=self.dialects.register)
        caller("jitterline_register_codecs", others)(register=self.codecs.register)
        caller("jitterline_register_buffer_policies", others)(register=self.policies.register)

    def unregister(self, plugin: object) -> None:
        self.pm.unregister(plugin)

    def notify(self, hook_name: str, **kwargs: Any) -> None:
        """Call every implementation of a notification hook, isolating failures."""
        caller = getattr(self.pm.hook, hook_name)
        for impl in reversed(caller.get_hookimpls()):
            try:
                impl.function(*[kwargs[arg] for arg in impl.argnames])
            except Exception:
                self._failed(impl.plugin_name, hook_name)

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
            self.notify("jitterline_alert", alert=alert)

    def call(self, hook_name: str, **kwargs: Any) -> list[Any]:
        """Call a configuration hook through pluggy: errors propagate, because a
        misconfiguration must stop start-up rather than a running stream."""
        result: list[Any] = getattr(self.pm.hook, hook_name)(**kwargs)
        return result

    def info(self) -> list[PluginInfo]:
        """The registered and the blocked plugins, for ``jitterline plugins``."""
        dists = {id(plugin): dist.project_name for plugin, dist in self.pm.list_plugin_distinfo()}
        rows = []
        for name, plugin in self.pm.list_name_plugin():
            if plugin is None:
                rows.append(PluginInfo(name=name, hooks=(), enabled=False))
                continue
            hooks = tuple(sorted(caller.name for caller in self.pm.get_hookcallers(plugin) or []))
            rows.append(PluginInfo(name, hooks, True, dists.get(id(plugin), "")))
        listed = {row.name for row in rows}
        rows.extend(PluginInfo(n, (), False) for n in sorted(self.disabled - listed))
        return sorted(rows, key=lambda row: row.name)
