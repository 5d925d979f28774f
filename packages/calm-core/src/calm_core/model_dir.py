"""Model directories: ``config.json`` + ``model.safetensors``, no pickle anywhere.

``config.json`` holds the full validated config, the library version, and for each component its
registered name and providing distribution, so loading a directory whose component is not installed
can say which distribution to install. Tied parameters are stored once and restored as aliases.
Each file is written to a temporary name and renamed, and both carry the same random ``save_id``
(``config.json`` and the safetensors metadata): a crash between the two renames leaves files from
two saves, which loading detects and refuses instead of pairing new weights with an old config.

Two kinds of object are saved here, by the functions :func:`save_pretrained` and
:func:`load_pretrained` (persistence is not part of the plugin contract):

* registered components (:class:`calm_core.interfaces.Component`: heads and codecs), saved under
  the name :meth:`calm_core.registry.Registry.build` recorded on them
  (:attr:`~calm_core.interfaces.Component.registered_name`) and rebuilt through their registry;
* core models (CALM, the AR baseline) that implement :class:`PretrainedModel`, rebuilt through
  :data:`MODEL_TYPES` (imported by name on load: the models import this module, not the reverse).
"""

from __future__ import annotations

import importlib
import json
import os
import uuid
from collections.abc import Mapping
from pathlib import Path
from typing import (
    Any,
    ClassVar,
    Generic,
    Protocol,
    Self,
    TypeVar,
    Unpack,
    overload,
    runtime_checkable,
)

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file
from torch import nn

from calm_core import __version__, model_checks
from calm_core.config import ConfigModel, validate_component_config
from calm_core.hub_cache import HubOptions, resolve_model_dir
from calm_core.interfaces import Component
from calm_core.load_errors import ComponentNotInstalledError, ModelLoadError
from calm_core.registry import DISABLE_ENV, discovery_disabled, registry_for

__all__ = [
    "CONFIG_NAME",
    "FORMAT_VERSION",
    "MODEL_TYPES",
    "WEIGHTS_NAME",
    "ComponentNotInstalledError",
    "ModelLoadError",
    "PretrainedModel",
    "PretrainedModule",
    "check_device",
    "component_name",
    "component_record",
    "ensure_installed",
    "load_pretrained",
    "load_weights",
    "read_config",
    "save_pretrained",
    "save_weights",
]

CONFIG_NAME = "config.json"
WEIGHTS_NAME = "model.safetensors"
FORMAT_VERSION = 1
_ALIASES_KEY = "calm.aliases"
_SAVE_ID_KEY = "calm.save_id"

M = TypeVar("M", bound=nn.Module)
C = TypeVar("C", bound=ConfigModel)

#: core model types, imported lazily by ``load_pretrained``: type name -> "module:Class".
MODEL_TYPES: dict[str, str] = {
    "calm": "calm_core.calm:CALM",
    "ar": "calm_core.ar:ARModel",
    # the AR baseline's type before it was named ``ar`` everywhere: old directories still load
    "transformer_lm": "calm_core.ar:ARModel",
}


@runtime_checkable
class PretrainedModel(Protocol):
    """A core model saved as a model directory (CALM, ARModel)."""

    model_type: ClassVar[str]

    def config_dict(self) -> dict[str, Any]:
        """The full validated config, JSON-serialisable."""
        ...

    def component_records(self) -> dict[str, dict[str, str]]:
        """For each registered component inside: its group, name, distribution and version."""
        ...

    @classmethod
    def from_config_dict(cls, config: Mapping[str, Any]) -> Self:
        """Build the model (random weights) from :meth:`config_dict`'s output."""
        ...


def component_name(component: Component, name: str | None = None) -> str:
    """The registered name ``component`` is saved under: ``name`` if given, else the one
    :meth:`~calm_core.registry.Registry.build` recorded on it.

    Raises:
        TypeError: a component constructed directly (no name recorded) and no ``name`` given, or
            a name under which another class is registered.
    """
    if not isinstance(component, Component):
        raise TypeError(f"{type(component).__qualname__} is not a calm component")
    cls = type(component)
    registry = registry_for(component.kind)
    chosen = name if name is not None else getattr(component, "registered_name", None)
    if chosen is None:
        raise TypeError(
            f"this {cls.__qualname__} was constructed directly, so its registered name is "
            f"unknown: build it with calm_core.registry.{registry.kind}.build({{'name': ..., "
            f"'config': ...}}), or name it (save_pretrained(obj, path, name=...), or set "
            "obj.registered_name)"
        )
    registered = registry.get(chosen)  # an unknown name raises, listing the available ones
    if registered is not cls:
        raise TypeError(
            f"{registry.kind[:-1]} '{chosen}' is {registered.__module__}."
            f"{registered.__qualname__}, not this {cls.__module__}.{cls.__qualname__}; name it "
            "with the name its class is registered under"
        )
    return chosen


def component_record(component: Component, name: str | None = None) -> dict[str, str]:
    """Name, group and provider of a registered component (for ``config.json``); the name is
    :func:`component_name`'s."""
    chosen = component_name(component, name)
    info = registry_for(component.kind).info(chosen)
    return {
        "group": info.group,
        "name": info.name,
        "distribution": info.distribution,
        "version": info.version,
    }


def ensure_installed(*records: Mapping[str, str]) -> None:
    """Raise :class:`ComponentNotInstalledError` naming every component of ``records`` that is
    not available (all of them at once, with the distribution to install for each)."""
    problems = []
    for record in records:
        group = record["group"]
        kind = group.split(".", 1)[-1]
        registry = registry_for(kind)
        if record["name"] in registry:
            continue
        dist = record.get("distribution", "?")
        version = record.get("version", "")
        what = f"the {kind[:-1]} '{record['name']}' (entry-point group '{group}')"
        if dist.startswith("<"):
            problems.append(
                f"{what} was registered in-process when saved; register it again before loading"
            )
        else:
            pin = f"{dist}=={version}" if version else dist
            problems.append(
                f"{what} from the distribution '{dist}' {version}, which is not installed: "
                f"pip install '{pin}' (installed {kind}: {', '.join(registry.names()) or 'none'})"
            )
    if not problems:
        return
    text = "this model needs " + "; and ".join(problems)
    if discovery_disabled():
        text += (
            f". Third-party discovery is off ({DISABLE_ENV} is set): a plugin that is installed "
            "is not seen; unset it"
        )
    raise ComponentNotInstalledError(text + ".")


# ------------------------------------------------------------------------------------------ weights
def _atomic_write(path: Path, write: Any) -> None:
    # One fixed temporary name per file: a save killed midway leaves one file that the next save
    # replaces (not a new one each time).
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = str(path.with_name(f".{path.name}.tmp"))
    try:
        write(tmp)
        # safetensors creates its files owner-only (0600); a model directory is meant to be
        # shared like any other file the user writes: the umask decides
        mask = os.umask(0)
        os.umask(mask)
        os.chmod(tmp, 0o666 & ~mask)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def save_weights(
    state: Mapping[str, torch.Tensor], path: str | Path, *, save_id: str | None = None
) -> None:
    """Write a state dict to safetensors atomically; tied tensors are stored once.

    ``save_id`` goes into the file's metadata, pairing it with the ``config.json`` of one save.
    """
    canonical: dict[tuple[Any, ...], str] = {}
    tensors: dict[str, torch.Tensor] = {}
    aliases: dict[str, str] = {}
    for name, tensor in state.items():
        t = tensor.detach()
        key = (
            t.untyped_storage().data_ptr(),
            t.storage_offset(),
            tuple(t.shape),
            t.stride(),
            t.dtype,
        )
        if t.numel() > 0 and key in canonical:
            aliases[name] = canonical[key]
            continue
        canonical[key] = name
        tensors[name] = t.contiguous().cpu()
    metadata = {"format": "pt", _ALIASES_KEY: json.dumps(aliases)}
    if save_id is not None:
        metadata[_SAVE_ID_KEY] = save_id
    _atomic_write(Path(path), lambda tmp: save_file(tensors, tmp, metadata=metadata))


def _weights_save_id(path: Path) -> str | None:
    """The ``save_id`` in a safetensors file's metadata (None if absent or unreadable)."""
    try:
        with safe_open(str(path), framework="pt") as f:  # type: ignore[no-untyped-call]
            meta = f.metadata() or {}
    except (SafetensorError, OSError, ValueError):
        return None  # load_weights reports the file's problem with its own message
    value = meta.get(_SAVE_ID_KEY)
    return str(value) if value is not None else None


def check_device(device: str | torch.device) -> torch.device:
    """``device`` as a :class:`torch.device`, refused with a clear error when it is not a valid
    device name or its backend is not available in this process."""
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError, ValueError):
        raise ModelLoadError(
            f"'{device}' is not a torch device; use e.g. 'cpu', 'cuda' or 'cuda:1'"
        ) from None
    if dev.type == "cpu":
        return dev
    if dev.type == "meta":
        raise ModelLoadError("weights cannot be loaded onto the 'meta' device; use 'cpu'")
    backend = getattr(torch, dev.type, None)
    available = getattr(backend, "is_available", None)
    if not (callable(available) and available()):
        raise ModelLoadError(
            f"device '{device}' is not available in this process (no {dev.type} backend or "
            "device); use 'cpu'"
        )
    count = getattr(backend, "device_count", None)
    if dev.index is not None and callable(count) and dev.index >= count():
        raise ModelLoadError(
            f"device '{device}' does not exist: {count()} {dev.type} device(s) visible"
        )
    return dev


def load_weights(path: str | Path, device: str | torch.device = "cpu") -> dict[str, torch.Tensor]:
    """Read a safetensors file (aliases restored), with errors that name the file.

    Raises:
        ModelLoadError: a missing or corrupted file, or a device that is not available.
    """
    p = Path(path)
    if not p.is_file():
        raise ModelLoadError(f"weights file {p} does not exist")
    dev = check_device(device)  # before opening: a device error is not a file error
    out: dict[str, torch.Tensor] = {}
    try:
        with safe_open(str(p), framework="pt", device=str(dev)) as f:  # type: ignore[no-untyped-call]
            meta = f.metadata() or {}
            for name in f.keys():  # noqa: SIM118 (safe_open is not a dict)
                out[name] = f.get_tensor(name)
    except (SafetensorError, OSError, ValueError) as exc:
        raise ModelLoadError(
            f"weights file {p} is corrupted or truncated ({exc}); re-save or re-download it"
        ) from None
    for alias, target in json.loads(meta.get(_ALIASES_KEY, "{}")).items():
        if target not in out:
            raise ModelLoadError(f"weights file {p}: alias '{alias}' points at missing '{target}'")
        out[alias] = out[target]
    return out


def load_state_into(module: nn.Module, state: Mapping[str, torch.Tensor], source: str) -> None:
    """Copy ``state`` into ``module`` strictly, with errors naming the file and tensor."""
    expected = module.state_dict()
    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected]
    if missing:
        raise ModelLoadError(
            f"{source} lacks tensor '{missing[0]}' expected by {type(module).__qualname__}"
            + (f" (and {len(missing) - 1} more)" if len(missing) > 1 else "")
        )
    if unexpected:
        raise ModelLoadError(
            f"{source} has tensor '{unexpected[0]}' that {type(module).__qualname__} does not have"
            + (f" (and {len(unexpected) - 1} more)" if len(unexpected) > 1 else "")
        )
    for name, ref in expected.items():
        got = state[name]
        if got.shape != ref.shape:
            raise ModelLoadError(
                f"{source}: tensor '{name}' has shape {tuple(got.shape)} but the model expects "
                f"{tuple(ref.shape)} (does config.json match the weights?)"
            )
    with torch.no_grad():
        module.load_state_dict({k: state[k] for k in expected}, strict=True)


# ------------------------------------------------------------------------------------ directories
def read_config(path: str | Path) -> dict[str, Any]:
    """Read and sanity-check a model directory's ``config.json``."""
    d = Path(path)
    cfg_path = d / CONFIG_NAME
    if not d.is_dir():
        raise ModelLoadError(f"model directory {d} does not exist")
    if not cfg_path.is_file():
        raise ModelLoadError(f"{d} is not a calm model directory: {CONFIG_NAME} is missing")
    try:
        data = json.loads(cfg_path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise ModelLoadError(f"{cfg_path} is not valid JSON: {exc}") from None
    if not isinstance(data, dict) or "type" not in data or "config" not in data:
        raise ModelLoadError(
            f"{cfg_path} is not a calm model config (no 'type'/'config'); reference checkpoints "
            "must be converted first: calm convert-reference SRC DST"
        )
    return data


def save_pretrained(model: nn.Module, path: str | Path, *, name: str | None = None) -> Path:
    """Save a registered component or a core model as a model directory (``config.json`` +
    ``model.safetensors``); returns the directory.

    Args:
        model: a head or codec, or a core model (:class:`PretrainedModel`).
        path: the directory (created if missing).
        name: for a component, the registered name to save it under; default: the name
            :meth:`~calm_core.registry.Registry.build` recorded on it. Not for core models.

    Raises:
        TypeError: neither a component nor a core model, or a component whose name is unknown.
    """
    if isinstance(model, Component):
        record: dict[str, Any] = {
            "type": model.kind,
            "component": component_record(model, name),
            "context": model.context(),
            "config": model.config.model_dump(mode="json"),
        }
    elif isinstance(model, PretrainedModel):
        if name is not None:
            raise TypeError(
                "name= names a head or codec; a core model records its components' names itself"
            )
        record = {
            "type": model.model_type,
            "components": model.component_records(),
            "config": model.config_dict(),
        }
    else:
        raise TypeError(
            f"cannot save {type(model).__qualname__}: it is neither a registered component nor a "
            "calm core model"
        )
    save_id = uuid.uuid4().hex
    record = {
        "calm_format": FORMAT_VERSION,
        "library_version": __version__,
        "save_id": save_id,
        **record,
    }
    d = Path(path)
    d.mkdir(parents=True, exist_ok=True)
    save_weights(model.state_dict(), d / WEIGHTS_NAME, save_id=save_id)
    text = json.dumps(record, indent=2, sort_keys=False) + "\n"
    _atomic_write(d / CONFIG_NAME, lambda tmp: Path(tmp).write_text(text, encoding="utf-8"))
    return d


def build_from_record(record: Mapping[str, Any]) -> nn.Module:
    """Construct (random weights) the object a ``config.json`` record describes."""
    kind = record["type"]
    if kind in ("head", "codec"):
        comp = record["component"]
        ensure_installed(comp)
        cls = registry_for(kind).get(comp["name"])
        config = validate_component_config(cls, record["config"], path=kind)
        component: Component = cls(config, **record.get("context", {}))
        component.registered_name = comp["name"]
        return component
    if kind in MODEL_TYPES:
        ensure_installed(*record.get("components", {}).values())
        module_name, _, attr = MODEL_TYPES[kind].partition(":")
        cls = getattr(importlib.import_module(module_name), attr)
        return cls.from_config_dict(record["config"])  # type: ignore[no-any-return]
    raise ModelLoadError(
        f"unknown model type '{kind}'; known: head, codec, {', '.join(MODEL_TYPES)}"
    )


@overload
def load_pretrained(
    path: str | Path,
    *,
    map_location: str | torch.device = "cpu",
    expected: None = None,
    **hub: Unpack[HubOptions],
) -> nn.Module: ...


@overload
def load_pretrained(
    path: str | Path,
    *,
    map_location: str | torch.device = "cpu",
    expected: type[M],
    **hub: Unpack[HubOptions],
) -> M: ...


def load_pretrained(
    path: str | Path,
    *,
    map_location: str | torch.device = "cpu",
    expected: type[Any] | None = None,
    **hub: Unpack[HubOptions],
) -> nn.Module:
    """Load any model directory written by :func:`save_pretrained` (in eval mode).

    Args:
        path: the model directory, or a Hugging Face Hub id (``org/name``, with
            ``calm-core[hub]``).
        map_location: device the weights are loaded onto.
        expected: a class the loaded object must be an instance of (``Codec``, ``CALM``, ...);
            checked before any weights are read.
        hub: ``revision``, ``cache_dir``, ``local_files_only`` and ``token`` for a Hub id
            (:class:`calm_core.hub.HubOptions`).

    Raises:
        ModelLoadError: a missing, torn or corrupted directory, or an unavailable device.
        ComponentNotInstalledError: a component whose distribution is not installed.
        TypeError: the directory holds something other than ``expected``.
    """
    d = resolve_model_dir(path, **hub)
    record = read_config(d)
    # --- issue 23 hook: config.json against the weights' header, before real memory is used
    try:
        header, meta = model_checks.read_header(d / WEIGHTS_NAME)
        probe = model_checks.meta_build(
            lambda: build_from_record(record), passthrough=(ModelLoadError,)
        )
        model_checks.check_memory(probe)
        aliases = json.loads(meta.get(_ALIASES_KEY, "{}"))
        model_checks.check_against_header(probe, header, aliases, WEIGHTS_NAME)
    except (model_checks.ModelCheckError, json.JSONDecodeError) as exc:
        raise ModelLoadError(f"{d}: {exc}") from None
    # ---
    save_id = record.get("save_id")
    found = _weights_save_id(d / WEIGHTS_NAME)
    if save_id is not None and found is not None and found != save_id:
        raise ModelLoadError(
            f"{d}: {CONFIG_NAME} and {WEIGHTS_NAME} come from two different saves (a save was "
            "interrupted between writing them); save the model again"
        )
    model = build_from_record(record)
    if expected is not None and not isinstance(model, expected):
        raise TypeError(f"{d} holds a {type(model).__qualname__}, not a {expected.__qualname__}")
    state = load_weights(d / WEIGHTS_NAME, device=map_location)
    try:  # issue 23 hook: NaN / inf weights are refused, not evaluated
        model_checks.check_finite(state)
    except model_checks.ModelCheckError as exc:
        raise ModelLoadError(f"{d / WEIGHTS_NAME}: {exc}") from None
    load_state_into(model, state, str(d / WEIGHTS_NAME))
    model.to(map_location)
    model.eval()
    return model


class PretrainedModule(nn.Module, Generic[C]):
    """Base of the core models: their ``config`` and the model-directory methods they share.

    A subclass sets ``model_type`` (a key of :data:`MODEL_TYPES`), ``self.config`` and the two
    methods that differ per model, ``component_records`` and ``from_config_dict``.
    """

    model_type: ClassVar[str]
    config: C

    def save_pretrained(self, path: str | Path) -> Path:
        """Write ``config.json`` + ``model.safetensors`` to the directory ``path`` (the weights of
        every component inside, e.g. CALM's codec, included); see :func:`save_pretrained`."""
        return save_pretrained(self, path)

    @classmethod
    def from_pretrained(
        cls,
        path: str | Path,
        *,
        map_location: str | torch.device = "cpu",
        **hub: Unpack[HubOptions],
    ) -> Self:
        """Load a directory written by :meth:`save_pretrained` (in eval mode), or a Hub id
        (``hub``: ``revision``, ``cache_dir``, ``local_files_only``, ``token``); see
        :func:`load_pretrained`."""
        return load_pretrained(path, map_location=map_location, expected=cls, **hub)

    def config_dict(self) -> dict[str, Any]:
        """The full validated config, JSON-serialisable."""
        return self.config.model_dump(mode="json")
