"""One registry shape for every extension point, in the timm style.

A `Registry` knows its built-in entries by module path, so listing names (what config
validation needs) imports nothing; `get` imports the entry's module on first use, and the
module registers itself with `@REGISTRY.register(name)`. A plugin registers the same way from
its own module. A leaf: it imports only retrofit.errors, so anything may import it.
"""

from __future__ import annotations

import difflib
import importlib
from collections.abc import Callable
from typing import Any, Generic, TypeVar

from retrofit.errors import ConfigError

T = TypeVar("T")


class Registry(Generic[T]):
    """Names → objects of one kind; `builtins` maps a built-in name to the module defining it."""

    def __init__(self, kind: str, builtins: dict[str, str] | None = None) -> None:
        self.kind = kind
        self._builtins = dict(builtins or {})
        self._entries: dict[str, T] = {}

    def register(self, name: str) -> Callable[[T], T]:
        """Decorator: register the decorated object under `name` (replacing an earlier one)."""

        def decorate(obj: T) -> T:
            self._entries[name] = obj
            return obj

        return decorate

    def unregister(self, name: str) -> None:
        """Remove a registered entry (a plugin or test that registered one for a while)."""
        self._entries.pop(name, None)

    def names(self) -> list[str]:
        """Every name, built-in or registered, without importing anything."""
        return sorted({*self._builtins, *self._entries})

    def __contains__(self, name: object) -> bool:
        return name in self._builtins or name in self._entries

    def get(self, name: str) -> T:
        """The entry `name`, importing its built-in module on first use."""
        if name not in self._entries and name in self._builtins:
            importlib.import_module(self._builtins[name])
        if name not in self._entries:
            close = difflib.get_close_matches(str(name), self.names(), n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            raise ConfigError(
                f"Unknown {self.kind} {name!r}{hint}; registered ones are {self.names()}. A "
                "plugin registers itself when its module is imported: import it first."
            )
        return self._entries[name]

    def load_all(self) -> dict[str, Any]:
        """Every entry, importing every built-in module (for contract tests and listings)."""
        return {name: self.get(name) for name in self.names()}


HEADS: Registry[Any] = Registry(
    "head method",
    {
        name: f"retrofit.methods.{name}.head"
        for name in ("dense", "flint", "qpm", "qsenn", "sparse")
    },
)
