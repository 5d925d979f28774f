"""Typed component registries fed by Python entry points.

One :class:`Registry` per entry-point group: ``heads`` reads ``calm.heads`` and ``codecs`` reads
``calm.codecs``. First-party components are published through the same entry points as third-party
plugins, so nothing is privileged.

Discovery is lazy. Importing :mod:`calm_core` scans nothing; :meth:`Registry.names` reads
entry-point metadata without importing any plugin module; :meth:`Registry.get` imports exactly one
entry point, once, and caches the class. A plugin that fails to import, or exports something that
is not a subclass of the group's base class, is recorded in :meth:`Registry.load_errors` and
skipped: it never breaks the host or the other plugins. Two distributions claiming one name is an
error naming both (never first-wins). ``CALM_DISABLE_PLUGINS=1`` hides every third-party
distribution.

Names without a dot are reserved for the first-party distributions; third parties use
``vendor.name``.

:meth:`Registry.build` records the name it built under on the instance
(:attr:`calm_core.interfaces.Component.registered_name`); saving a component reads that record, so
nothing ever looks a class's name up in reverse. A third-party entry point that resolves to a
class of a first-party distribution (a re-export of a built-in component) is refused, so a
plugin can never become the recorded provider of calm's own code.
"""

from __future__ import annotations

import difflib
import os
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from importlib import metadata
from typing import Any, Generic, TypeVar, overload

from pydantic import BaseModel

from calm_core.config import ComponentSpec, validate_component_config, validate_config
from calm_core.interfaces import Codec, Component, GenerativeHead
from calm_core.plugin_watch import slow_import_notice

__all__ = [
    "FIRST_PARTY_DISTRIBUTIONS",
    "ComponentInfo",
    "PluginConflictError",
    "PluginLoadError",
    "Registry",
    "UnknownComponentError",
    "codecs",
    "discovery_disabled",
    "heads",
    "registry_for",
]

FIRST_PARTY_DISTRIBUTIONS = frozenset({"calm-core", "calm-heads", "calm-codecs"})
DISABLE_ENV = "CALM_DISABLE_PLUGINS"
IN_PROCESS = "<in-process>"

T = TypeVar("T", bound=Component)


def _normalise_dist(name: str) -> str:
    return name.lower().replace("_", "-").replace(".", "-")


def _borrowed_builtin(obj: object, info: ComponentInfo) -> str | None:
    """A third-party entry point whose class is defined by a first-party package (issue 23)."""
    module = getattr(obj, "__module__", "") or ""
    owner = _normalise_dist(module.split(".", 1)[0])
    if info.first_party or owner not in FIRST_PARTY_DISTRIBUTIONS:
        return None
    qualname = getattr(obj, "__qualname__", repr(obj))
    return (
        f"it re-exports {module}.{qualname}, a built-in component of {owner}; a plugin may "
        f"register only its own classes (use the built-in name, or subclass it)"
    )


@dataclass(frozen=True)
class ComponentInfo:
    """Where a registered name comes from, known without importing it."""

    name: str
    group: str
    distribution: str
    version: str
    value: str  # "module:attr" for entry points, the qualified name for in-process registrations

    @property
    def first_party(self) -> bool:
        """True for calm's own distributions (calm-core, calm-heads, calm-codecs)."""
        return _normalise_dist(self.distribution) in FIRST_PARTY_DISTRIBUTIONS


@dataclass(frozen=True)
class PluginLoadError:
    """A plugin that could not be used, recorded instead of raised."""

    group: str
    name: str
    distribution: str
    version: str
    error: str

    def __str__(self) -> str:
        return f"{self.group}:{self.name} from {self.distribution} {self.version}: {self.error}"


class UnknownComponentError(KeyError):
    """No component of that name is registered in the group."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message

    def __str__(self) -> str:  # KeyError would repr() the message
        return self.message


class PluginConflictError(RuntimeError):
    """Two distributions provide the same component name."""


@dataclass
class _Entry:
    info: ComponentInfo
    entry_point: metadata.EntryPoint | None = None
    cls: Any = None
    config: Any = None
    conflicts: list[ComponentInfo] = field(default_factory=list)


class Registry(Generic[T]):
    """Named components of one kind (one entry-point group).

    Args:
        kind: short plural name used in messages (``"heads"``).
        group: the entry-point group (``"calm.heads"``).
        base: the base class every component must subclass.
    """

    def __init__(self, kind: str, group: str, base: type[Any]) -> None:
        self.kind = kind
        self.group = group
        self.base = base
        self._lock = threading.RLock()
        self._entries: dict[str, _Entry] | None = None
        self._errors: list[PluginLoadError] = []

    # ----------------------------------------------------------------------------------- discovery
    def _discover(self) -> dict[str, _Entry]:
        with self._lock:
            if self._entries is not None:
                return self._entries
            entries: dict[str, _Entry] = {}
            disabled = discovery_disabled()
            seen: set[tuple[str, str]] = set()
            for ep in metadata.entry_points(group=self.group):
                dist = ep.dist
                dist_name = dist.metadata["Name"] if dist is not None else "<unknown>"
                version = dist.version if dist is not None else "?"
                key = (_normalise_dist(dist_name), ep.name)
                if key in seen:  # the same distribution seen twice on sys.path
                    continue
                seen.add(key)
                info = ComponentInfo(ep.name, self.group, dist_name, version, ep.value)
                if disabled and not info.first_party:
                    continue
                if not info.first_party and "." not in ep.name:
                    self._errors.append(
                        PluginLoadError(
                            self.group,
                            ep.name,
                            dist_name,
                            version,
                            "names without a dot are reserved for first-party components; "
                            f"publish it as 'vendor.{ep.name}'",
                        )
                    )
                    continue
                if ep.name in entries:
                    entries[ep.name].conflicts.append(info)
                else:
                    entries[ep.name] = _Entry(info=info, entry_point=ep)
            for name, entry in entries.items():
                if entry.conflicts:
                    providers = ", ".join(
                        f"{i.distribution} {i.version}" for i in [entry.info, *entry.conflicts]
                    )
                    self._errors.append(
                        PluginLoadError(
                            self.group,
                            name,
                            entry.info.distribution,
                            entry.info.version,
                            f"name provided by more than one distribution ({providers})",
                        )
                    )
            self._entries = entries
            return entries

    def refresh(self) -> None:
        """Forget everything discovered (in-process registrations too); rescan on next use."""
        with self._lock:
            self._entries = None
            self._errors = []

    # -------------------------------------------------------------------------------------- lookup
    def names(self) -> list[str]:
        """Registered names, sorted. Imports no plugin module."""
        return sorted(self._discover())

    def __contains__(self, name: object) -> bool:
        return isinstance(name, str) and name in self._discover()

    def info(self, name: str) -> ComponentInfo:
        """Provider of ``name`` (distribution and version) without importing it."""
        return self._entry(name).info

    def available(self) -> dict[str, ComponentInfo]:
        """Every name with its provider, without importing anything."""
        return {name: entry.info for name, entry in sorted(self._discover().items())}

    def load_errors(self) -> list[PluginLoadError]:
        """Plugins that were skipped: import failures, wrong types, name clashes, bad names."""
        self._discover()
        return list(self._errors)

    def _entry(self, name: str) -> _Entry:
        entries = self._discover()
        if name not in entries:
            raise UnknownComponentError(self._unknown_message(name))
        entry = entries[name]
        if entry.conflicts:
            providers = " and ".join(
                f"'{i.distribution}' ({i.version}, {i.value})"
                for i in [entry.info, *entry.conflicts]
            )
            raise PluginConflictError(
                f"{self.kind[:-1]} '{name}' is provided by more than one distribution: "
                f"{providers}. "
                "Uninstall one of them; calm never picks one silently."
            )
        return entry

    def _unknown_message(self, name: str) -> str:
        entries = self._discover()
        lines = [f"no {self.kind[:-1]} named '{name}' (entry-point group '{self.group}')."]
        close = difflib.get_close_matches(name, list(entries), n=3, cutoff=0.5)
        if close:
            lines.append("Did you mean: " + ", ".join(repr(c) for c in close) + "?")
        if entries:
            lines.append(f"Available {self.kind}:")
            for n, e in sorted(entries.items()):
                lines.append(f"  {n}  ({e.info.distribution} {e.info.version})")
        else:
            hint = {"heads": "calm-heads", "codecs": "calm-codecs"}.get(self.kind, "a plugin")
            lines.append(f"No {self.kind} are installed: pip install {hint}.")
        if discovery_disabled():
            lines.append(
                f"Third-party discovery is off ({DISABLE_ENV}={os.environ.get(DISABLE_ENV)!r})."
            )
        if self._errors:
            lines.append("Plugins that failed to load:")
            lines.extend(f"  {e}" for e in self._errors)
        return "\n".join(lines)

    def get(self, name: str) -> type[T]:
        """The component class registered as ``name``, imported once and cached.

        Raises:
            UnknownComponentError: no such name (a ``KeyError``), with suggestions.
            PluginConflictError: two distributions provide the name.
        """
        with self._lock:
            entry = self._entry(name)
            if entry.cls is not None:
                return entry.cls  # type: ignore[no-any-return]
            assert entry.entry_point is not None
            info = entry.info
            try:
                ep = entry.entry_point  # issue 23 hook: a slow import is named, not silent
                with slow_import_notice(f"{ep.name} = {ep.value}", info.distribution):
                    obj = ep.load()
            # a broken plugin must never break the host, not even one that exits at import
            except (Exception, SystemExit) as exc:
                self._drop(name, f"import failed: {type(exc).__name__}: {exc}")
                raise UnknownComponentError(
                    f"{self.kind[:-1]} '{name}' from {info.distribution} {info.version} failed to "
                    f"load: {type(exc).__name__}: {exc}"
                ) from exc
            problem = self._check_class(obj) or _borrowed_builtin(obj, info)
            if problem:
                self._drop(name, problem)
                raise UnknownComponentError(
                    f"{self.kind[:-1]} '{name}' from {info.distribution} {info.version} is not "
                    f"usable: {problem}"
                )
            entry.cls = obj
            return obj  # type: ignore[no-any-return]

    def _drop(self, name: str, error: str) -> None:
        assert self._entries is not None
        entry = self._entries.pop(name)
        self._errors.append(
            PluginLoadError(self.group, name, entry.info.distribution, entry.info.version, error)
        )

    def _check_class(self, obj: object) -> str | None:
        base = self.base
        if not isinstance(obj, type) or not issubclass(obj, base):
            return f"{obj!r} is not a subclass of {base.__module__}.{base.__qualname__}"
        config_class = getattr(obj, "config_class", None)
        if not (isinstance(config_class, type) and issubclass(config_class, BaseModel)):
            return f"{obj.__qualname__} has no pydantic 'config_class'"
        if config_class.model_config.get("extra") != "forbid":
            return (
                f"{obj.__qualname__}.config_class {config_class.__name__} accepts unknown fields "
                "(a misspelt key would be dropped silently); derive it from "
                "calm_core.config.ConfigModel"
            )
        return None

    def load_all(self) -> dict[str, type[T]]:
        """Import every registered component, skipping (and recording) broken ones."""
        out: dict[str, type[T]] = {}
        for name in self.names():
            try:
                out[name] = self.get(name)
            except (UnknownComponentError, PluginConflictError):
                continue
        return out

    # --------------------------------------------------------------------------------- registering
    @overload
    def register(
        self,
        name: str,
        cls: type[T],
        *,
        config: type[BaseModel] | None = None,
        replace: bool = False,
    ) -> type[T]: ...

    @overload
    def register(
        self,
        name: str,
        cls: None = None,
        *,
        config: type[BaseModel] | None = None,
        replace: bool = False,
    ) -> Callable[[type[T]], type[T]]: ...

    def register(
        self,
        name: str,
        cls: type[T] | None = None,
        *,
        config: type[BaseModel] | None = None,
        replace: bool = False,
    ) -> type[T] | Callable[[type[T]], type[T]]:
        """Register a component class in this process (notebooks, tests).

        Usable directly (``heads.register("acme.mine", MineHead)``) or as a class decorator.
        ``config`` names the pydantic config class for a class that does not declare
        ``config_class`` itself (it is set on the class). Overriding a name that already exists
        needs ``replace=True``.
        """

        def _do(c: type[T]) -> type[T]:
            declared = getattr(c, "config_class", None)
            if config is not None:
                if declared is not None and declared is not config:
                    raise TypeError(
                        f"cannot register {self.kind[:-1]} '{name}': {c.__qualname__} declares "
                        f"config_class {declared.__name__} but config={config.__name__} "
                        "was given; drop one of them"
                    )
                setattr(c, "config_class", config)  # noqa: B010 (any class, typed or not)
            problem = self._check_class(c)
            if problem:
                if config is not None:  # a refused registration leaves the class as it was
                    setattr(c, "config_class", declared)  # noqa: B010
                raise TypeError(f"cannot register {self.kind[:-1]} '{name}': {problem}")
            with self._lock:
                entries = self._discover()
                if name in entries and not replace:
                    if config is not None:
                        setattr(c, "config_class", declared)  # noqa: B010
                    old = entries[name].info
                    raise ValueError(
                        f"{self.kind[:-1]} '{name}' is already registered by {old.distribution} "
                        f"{old.version}; pass replace=True to override it"
                    )
                info = ComponentInfo(
                    name, self.group, IN_PROCESS, "", f"{c.__module__}:{c.__qualname__}"
                )
                entries[name] = _Entry(info=info, cls=c)
            return c

        return _do(cls) if cls is not None else _do

    def unregister(self, name: str) -> None:
        """Remove a name (in-process registrations, or to hide an entry point in tests)."""
        with self._lock:
            entries = self._discover()
            entry = entries.pop(name, None)
            if entry is None:
                raise UnknownComponentError(self._unknown_message(name))

    # ------------------------------------------------------------------------------------ building
    def build(self, spec: Any, **context: Any) -> T:
        """Validate a spec's config against the component's config class and construct it.

        The instance's :attr:`~calm_core.interfaces.Component.registered_name` is set to the
        spec's name: saving the component (or a model holding it) records that name.

        Args:
            spec: a :class:`calm_core.config.ComponentSpec`, a mapping ``{"name", "config"}`` or a
                bare name (default config).
            **context: values the host supplies (``hidden_size``/``latent_size`` for heads).
        """
        if isinstance(spec, str):
            spec = ComponentSpec(name=spec)
        elif isinstance(spec, Mapping):
            spec = validate_config(ComponentSpec, dict(spec), path=self.kind[:-1])
        cls = self.get(spec.name)
        config = validate_component_config(cls, spec.config, path=self.kind[:-1])
        obj = cls(config, **context)
        obj.registered_name = spec.name
        return obj


def discovery_disabled() -> bool:
    """Whether ``CALM_DISABLE_PLUGINS`` turns third-party discovery off ("1", "true", ...)."""
    return os.environ.get(DISABLE_ENV, "").strip().lower() in {"1", "true", "yes", "on"}


heads: Registry[GenerativeHead] = Registry("heads", "calm.heads", GenerativeHead)
codecs: Registry[Codec] = Registry("codecs", "calm.codecs", Codec)


def registry_for(kind: str) -> Registry[Any]:
    """The registry for ``"head"``/``"heads"`` or ``"codec"``/``"codecs"``."""
    table: dict[str, Registry[Any]] = {"heads": heads, "codecs": codecs}
    key = kind if kind.endswith("s") else kind + "s"
    if key not in table:
        raise UnknownComponentError(f"no registry '{kind}'; available: {', '.join(table)}")
    return table[key]
