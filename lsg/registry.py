"""A name -> object map with a `register` decorator, shared by every registry in the project.

Registering a name twice raises; an unknown name raises `KeyError` with a did-you-mean hint and the
list of available names, so a typo on the command line fails at startup with a useful message. A registry
built with `on_add` also hands every new entry to it (the attention variants go on to transformers).
"""

from __future__ import annotations

import difflib
from collections.abc import Callable, Iterator
from typing import Generic, TypeVar

T = TypeVar("T")


class Registry(Generic[T]):
    """Named objects of one kind (attention variants, sparse selectors, tasks, ...)."""

    def __init__(self, kind: str, on_add: Callable[[str, T], None] | None = None) -> None:
        """`kind` names the entries in error messages; `on_add(name, obj)` runs for every entry added."""
        self.kind = kind
        self._entries: dict[str, T] = {}
        self._on_add = on_add

    def register(self, name: str) -> Callable[[T], T]:
        """Decorator adding an object under `name`; a second object under the same name raises."""

        def add(obj: T) -> T:
            if name in self._entries and self._entries[name] is not obj:
                raise ValueError(f"{self.kind} {name!r} is already registered")
            self._entries[name] = obj
            if self._on_add is not None:
                self._on_add(name, obj)
            return obj

        return add

    def get(self, name: str) -> T:
        if name not in self._entries:
            close = difflib.get_close_matches(str(name), self._entries, n=1)
            hint = f" Did you mean {close[0]!r}?" if close else ""
            raise KeyError(f"Unknown {self.kind} {name!r}.{hint} Available: {sorted(self._entries)}")
        return self._entries[name]

    def names(self) -> list[str]:
        return sorted(self._entries)

    def __contains__(self, name: object) -> bool:
        return name in self._entries

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())
