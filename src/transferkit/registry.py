"""One generic registry: duplicate names raise, unknown names suggest close ones."""

from __future__ import annotations

import difflib
from collections.abc import Callable, Iterator
from typing import Generic, TypeVar

from transferkit.errors import ConfigError, UnknownNameError

T = TypeVar("T")


class Registry(Generic[T]):
    """A name -> object table for one kind of thing (models, datasets, objectives, ...).

    Args:
        kind: What the registry holds, used in error messages ("model", "dataset").
    """

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._items: dict[str, T] = {}

    def register(self, name: str, obj: T | None = None) -> Callable[[T], T] | T:
        """Register ``obj`` under ``name``; without ``obj`` it works as a decorator."""

        def _add(item: T) -> T:
            key = name.lower()
            if key in self._items:
                raise ConfigError(f"{self.kind} {name!r} is already registered; choose another name")
            self._items[key] = item
            return item

        return _add if obj is None else _add(obj)

    def get(self, name: str) -> T:
        """Return the object registered as ``name`` (case-insensitive).

        Raises:
            UnknownNameError: ``name`` is not registered; the message lists close matches.
        """
        key = str(name).lower()
        if key not in self._items:
            close = difflib.get_close_matches(key, list(self._items), n=3, cutoff=0.5)
            hint = f" Did you mean {', '.join(repr(c) for c in close)}?" if close else ""
            raise UnknownNameError(
                f"unknown {self.kind} {name!r}.{hint} Known: {', '.join(sorted(self._items))}"
            )
        return self._items[key]

    def names(self) -> list[str]:
        """All registered names, sorted."""
        return sorted(self._items)

    def __contains__(self, name: object) -> bool:
        return isinstance(name, str) and name.lower() in self._items

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())

    def __len__(self) -> int:
        return len(self._items)
