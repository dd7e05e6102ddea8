"""A named registry of what plugins can add: dialects, codecs, buffer policies.

One registry per plugin manager, never a module-level mutable one, so two pipelines (or two
tests) with different plugins never see each other's entries.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Generic, TypeVar

from .errors import ConfigError, PluginError

__all__ = ["Registry"]

T = TypeVar("T")


class Registry(Generic[T]):
    """Maps a case-insensitive name to an entry; ``what`` names the family in errors."""

    def __init__(self, what: str) -> None:
        self.what = what
        self._entries: dict[str, T] = {}

    def register(self, name: str, entry: T, *, replace: bool = False) -> None:
        key = name.strip().lower()
        if not key:
            raise PluginError(f"a {self.what} needs a non-empty name")
        if key in self._entries and not replace:
            raise PluginError(
                f"{self.what} {name!r} is already registered; pass replace=True to override it"
            )
        self._entries[key] = entry

    def get(self, name: str) -> T:
        try:
            return self._entries[name.strip().lower()]
        except KeyError:
            known = ", ".join(sorted(self._entries)) or "none"
            raise ConfigError(f"unknown {self.what} {name!r}; known: {known}") from None

    def __contains__(self, name: object) -> bool:
        return isinstance(name, str) and name.strip().lower() in self._entries

    def __iter__(self) -> Iterator[str]:
        return iter(sorted(self._entries))

    def __len__(self) -> int:
        return len(self._entries)
