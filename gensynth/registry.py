"""Named registries filled by plugins through hooks."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Generic, Iterator, TypeVar

from gensynth.errors import RegistryError, suggest

T = TypeVar("T")


@dataclass(frozen=True)
class Entry(Generic[T]):
    """One registered thing: its name, the object, the plugin that registered it."""

    name: str
    obj: T
    plugin: str
    description: str = ""
    options: Any = None  # optional pydantic model class describing the factory's options
    extra: dict = field(default_factory=dict)


class Registry(Generic[T]):
    """A name -> entry table. ``kind`` is used in messages (``'discriminator'``)."""

    def __init__(self, kind: str):
        self.kind = kind
        self._entries: dict[str, Entry[T]] = {}
        self.note = ""  # appended to unknown-name errors (e.g. which plugins were skipped as broken)

    def register(self, name: str, obj: T, *, plugin: str, description: str = "", options: Any = None,
                 **extra: Any) -> None:
        if not isinstance(name, str) or not name:
            raise RegistryError(f"{self.kind} name must be a non-empty string, got {name!r} (plugin {plugin!r})")
        if name in self._entries:
            first = self._entries[name].plugin
            raise RegistryError(
                f"{self.kind} {name!r} is registered twice: by plugin {first!r} and by plugin {plugin!r}; "
                f"rename one of them or restrict plugins with GENSYNTH_LOAD_PLUGINS"
            )
        if not description:
            description = (getattr(obj, "__doc__", None) or "").strip().splitlines()[0:1]
            description = description[0] if description else ""
        self._entries[name] = Entry(name, obj, plugin, description, options, dict(extra))

    def entry(self, name: str) -> Entry[T]:
        try:
            return self._entries[name]
        except KeyError:
            available = ", ".join(sorted(self._entries)) or "(none: no plugin registered any)"
            raise RegistryError(
                f"unknown {self.kind} {name!r}.{suggest(name, self._entries)} Available: {available}{self.note}"
            ) from None

    def get(self, name: str) -> T:
        return self.entry(name).obj

    def names(self) -> list[str]:
        return sorted(self._entries)

    def entries(self) -> list[Entry[T]]:
        return [self._entries[n] for n in self.names()]

    def by_plugin(self, plugin: str) -> list[str]:
        return sorted(n for n, e in self._entries.items() if e.plugin == plugin)

    def __contains__(self, name: object) -> bool:
        return name in self._entries

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())

    def __len__(self) -> int:
        return len(self._entries)


def make_register(registry: Registry, plugin: str) -> Callable[..., None]:
    """The ``register`` callable handed to one plugin's hook implementation."""

    def register(name: str, obj: Any, **kwargs: Any) -> None:
        registry.register(name, obj, plugin=plugin, **kwargs)

    register.__name__ = f"register_{registry.kind}"
    return register
