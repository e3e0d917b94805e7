"""A registry of named entries: the built-in ones, plus those a user's installed package adds.

Models, data sources, pruning methods and IMP siblings are each one ``Registry``. A user's
distribution adds entries through an entry-point group (``lotterylab.models``,
``lotterylab.datasets``, ``lotterylab.pruning_methods``, ``lotterylab.imp_siblings``) whose
entry name is the name specs use and whose object is an entry of the registry's own type. Plugins
load on the first lookup, not at import, so a plugin module can import the platform freely.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from importlib.metadata import entry_points
from typing import Generic, TypeVar

T = TypeVar("T")

BUILT_IN = "lotterylab"


class PluginError(ValueError):
    """An installed plugin that cannot be registered; the message names its distribution."""


class Registry(Mapping[str, T], Generic[T]):
    """Name -> entry, in registration order: built-ins first, then plugins by distribution."""

    def __init__(
        self,
        what: str,
        group: str,
        entry_type: type,
        builtins: Mapping[str, T],
        check: Callable[[str, T], None] | None = None,
    ):
        self.what, self.group, self.entry_type = what, group, entry_type
        self._builtins = dict(builtins)
        self._check = check
        self._entries: dict[str, T] | None = None
        self._origins: dict[str, str] = {}

    def _load(self) -> dict[str, T]:
        if self._entries is not None:
            return self._entries
        entries = dict(self._builtins)
        origins = dict.fromkeys(entries, BUILT_IN)
        for name, dist, load in _plugins(self.group):
            if name in origins:
                raise PluginError(
                    f"{self.what} {name!r} of distribution {dist!r} (entry point group "
                    f"{self.group!r}) clashes with the {self.what} of the same name from "
                    f"distribution {origins[name]!r}; rename one of them"
                )
            try:
                entry = load()
            except Exception as exc:  # a broken plugin must name itself, whatever it raised
                raise PluginError(
                    f"{self.what} {name!r} of distribution {dist!r} (entry point group "
                    f"{self.group!r}) failed to load: {type(exc).__name__}: {exc}"
                ) from exc
            if not isinstance(entry, self.entry_type):
                raise PluginError(
                    f"{self.what} {name!r} of distribution {dist!r} (entry point group "
                    f"{self.group!r}) is a {type(entry).__name__}, not a "
                    f"{self.entry_type.__name__}"
                )
            if self._check is not None:
                try:
                    self._check(name, entry)
                except ValueError as exc:
                    raise PluginError(f"distribution {dist!r}: {exc}") from None
            entries[name], origins[name] = entry, dist
        if self._check is not None:
            for name, entry in self._builtins.items():
                self._check(name, entry)
        self._entries, self._origins = entries, origins
        return entries

    def __getitem__(self, name: str) -> T:
        return self._load()[name]

    def __iter__(self) -> Iterator[str]:
        return iter(self._load())

    def __len__(self) -> int:
        return len(self._load())

    def names(self) -> list[str]:
        return list(self._load())

    def entry(self, name: str) -> T:
        """The entry of ``name``; unknown names are an error listing the allowed ones."""
        entries = self._load()
        if name not in entries:
            raise ValueError(f"unknown {self.what} {name!r}; allowed: {list(entries)}")
        return entries[name]

    def origin(self, name: str) -> str:
        """The distribution that registered ``name`` (``lotterylab`` for built-ins)."""
        self._load()
        return self._origins[name]


def _plugins(group: str) -> list[tuple[str, str, Callable[[], object]]]:
    """(name, distribution, loader) of every entry point of ``group``, each once."""
    seen: dict[tuple[str, str, str], Callable[[], object]] = {}
    for point in entry_points(group=group):
        dist = point.dist.name if point.dist is not None else "an unknown distribution"
        seen.setdefault((point.name, dist, point.value), point.load)
    by_name: dict[str, str] = {}
    found = []
    for (name, dist, _), load in seen.items():
        if name in by_name and by_name[name] != dist:
            raise PluginError(
                f"entry point {name!r} of group {group!r} is registered by two distributions, "
                f"{by_name[name]!r} and {dist!r}; uninstall or rename one of them"
            )
        if name not in by_name:
            by_name[name] = dist
            found.append((name, dist, load))
    return found
