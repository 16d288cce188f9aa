"""One generic registry: duplicate names raise, unknown names suggest close ones."""

from __future__ import annotations

import difflib
import importlib
from collections.abc import Callable, Iterator, Sequence
from typing import Any, Generic, TypeVar

from transferkit.errors import ConfigError, UnknownNameError

T = TypeVar("T")

_MISSING: Any = object()


class Registry(Generic[T]):
    """A name -> object table for one kind of thing (models, datasets, objectives, ...).

    Args:
        kind: What the registry holds, used in error messages ("model", "dataset").
        modules: Modules whose import registers more entries; they are imported before the first
            lookup, so every registered name is available whatever the caller imported before.

    Names are case-insensitive (stored lower-case). :meth:`register` refuses a name that is taken;
    :meth:`get` (and ``registry[name]``) raise :class:`~transferkit.errors.UnknownNameError` with
    close matches for a name that is not. The registry also reads like a read-mostly mapping
    (``in``, iteration over sorted names, ``keys()``, ``values()``, ``items()``, ``{**registry}``);
    ``registry[name] = obj`` and ``del registry[name]`` replace or remove an entry *on purpose*
    (e.g. ``monkeypatch.setitem`` in a test), unlike :meth:`register`.
    """

    def __init__(self, kind: str, modules: Sequence[str] = ()) -> None:
        self.kind = kind
        self._items: dict[str, T] = {}
        self._modules = tuple(modules)
        self._loaded = not self._modules

    def _load(self) -> None:
        if self._loaded:
            return
        self._loaded = True  # first: a module that looks names up while it is imported won't recurse
        for module in self._modules:
            importlib.import_module(module)

    def register(self, name: str, obj: T | None = None) -> Callable[[T], T] | T:
        """Register ``obj`` under ``name``; without ``obj`` it works as a decorator."""

        def _add(item: T) -> T:
            key = name.lower()
            if key in self._items:
                raise ConfigError(f"{self.kind} {name!r} is already registered; choose another name")
            self._items[key] = item
            return item

        return _add if obj is None else _add(obj)

    def get(self, name: str, default: Any = _MISSING) -> T:
        """Return the object registered as ``name`` (case-insensitive).

        Args:
            name: The name to look up.
            default: Returned for an unknown name instead of raising (as ``dict.get``).

        Raises:
            UnknownNameError: ``name`` is not registered (and no ``default`` was given); the one-line
                message names it, close matches and every known name.
        """
        self._load()
        key = str(name).lower()
        if key not in self._items:
            if default is not _MISSING:
                return default
            close = difflib.get_close_matches(key, list(self._items), n=3, cutoff=0.5)
            hint = f" Did you mean {', '.join(repr(c) for c in close)}?" if close else ""
            raise UnknownNameError(
                f"unknown {self.kind} {name!r}.{hint} Known: {', '.join(sorted(self._items))}"
            )
        return self._items[key]

    def names(self) -> list[str]:
        """All registered names, sorted."""
        self._load()
        return sorted(self._items)

    def name_of(self, obj: object) -> str | None:
        """The name ``obj`` is registered under, or ``None``. Loads no module: an object that
        exists was registered when its own module was imported."""
        for name in sorted(self._items):
            if self._items[name] is obj:
                return name
        return None

    def keys(self) -> list[str]:
        """All registered names, sorted (as :meth:`names`)."""
        return self.names()

    def values(self) -> list[T]:
        """The registered objects, in the order of :meth:`names`."""
        return [self._items[key] for key in self.names()]

    def items(self) -> list[tuple[str, T]]:
        """``(name, object)`` pairs, in the order of :meth:`names`."""
        return [(key, self._items[key]) for key in self.names()]

    def __getitem__(self, name: str) -> T:
        return self.get(name)

    def __setitem__(self, name: str, obj: T) -> None:
        self._load()  # a later lazy import must not collide with the replacement
        self._items[str(name).lower()] = obj

    def __delitem__(self, name: str) -> None:
        self._load()
        key = str(name).lower()
        if key not in self._items:
            raise KeyError(name)
        del self._items[key]

    def __repr__(self) -> str:
        return f"Registry({self.kind!r}, names={self.names()!r})"

    def __contains__(self, name: object) -> bool:
        self._load()
        return isinstance(name, str) and name.lower() in self._items

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())

    def __len__(self) -> int:
        self._load()
        return len(self._items)
