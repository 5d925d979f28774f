"""Hub ids as model references: resolving ``org/name`` to a snapshot in the Hugging Face cache.

The lower half of :mod:`calm_core.hub`: :func:`calm_core.model_dir.load_pretrained` resolves its
argument here, so this module needs nothing of the model-directory layer (publishing, which
does, lives in :mod:`calm_core.hub`). ``HF_HUB_OFFLINE`` and ``HF_HUB_CACHE`` are read when a
reference is resolved, not when ``huggingface_hub`` was imported. Without the extra
``calm-core[hub]`` a Hub-looking reference gets an error saying what to install.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any, TypedDict

from calm_core.load_errors import ModelLoadError

__all__ = [
    "HUB_INSTALL",
    "HubError",
    "HubNotInstalledError",
    "HubOptions",
    "is_hub_id",
    "resolve_model_dir",
]

HUB_INSTALL = "pip install 'calm-core[hub]'"
# the Hub's own rule for repository ids: namespace/name, letters, digits, "-", "_", "."
_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,95}/[A-Za-z0-9][A-Za-z0-9_.-]{0,95}$")
_TRUE = {"1", "true", "yes", "on"}


class HubError(ModelLoadError):
    """A Hub reference that cannot be resolved or a model that cannot be uploaded."""


class HubNotInstalledError(HubError):
    """A Hub id was given but ``huggingface_hub`` (``calm-core[hub]``) is not installed."""


class HubOptions(TypedDict, total=False):
    """Keyword arguments for resolving a Hub id (ignored for local directories)."""

    #: branch, tag or full commit hash (default: ``main``)
    revision: str | None
    #: Hugging Face cache directory (default: ``HF_HUB_CACHE``, else huggingface_hub's default)
    cache_dir: str | Path | None
    #: never touch the network: the files must already be in the cache (also ``HF_HUB_OFFLINE``)
    local_files_only: bool
    #: access token for private or gated repositories (default: the logged-in user's)
    token: str | bool | None


def is_hub_id(ref: str | os.PathLike[str]) -> bool:
    """True when ``ref`` has the form of a Hub repository id (``org/name``)."""
    text = os.fspath(ref)
    return bool(_ID.match(text)) and ".." not in text and "--" not in text


def _import_hub(ref: str) -> Any:
    try:
        import huggingface_hub
        import huggingface_hub.constants
        import huggingface_hub.errors
    except ImportError:
        raise HubNotInstalledError(
            f"'{ref}' is not a local directory and looks like a Hugging Face Hub id; loading it "
            f"needs huggingface_hub: {HUB_INSTALL}"
        ) from None
    return huggingface_hub


def _offline_env() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in _TRUE


def resolve_model_dir(
    ref: str | os.PathLike[str],
    *,
    revision: str | None = None,
    cache_dir: str | Path | None = None,
    local_files_only: bool = False,
    token: str | bool | None = None,
) -> Path:
    """The local directory ``ref`` names: an existing path as is, a Hub id fetched or cached.

    A missing path that does not look like a Hub id is returned unchanged, so the caller's own
    "does not exist" error names it.

    Raises:
        HubNotInstalledError: a Hub id without ``calm-core[hub]``.
        HubError: a revision given for a local directory; a repository, revision or file that
            the Hub (or, offline, the cache) does not have.
    """
    path = Path(ref)
    if path.exists():
        if revision is not None:
            raise HubError(
                f"{path} is a local directory; a revision ({revision!r}) applies to Hub ids only"
            )
        return path
    text = os.fspath(ref)
    if not is_hub_id(text):
        return path
    hub = _import_hub(text)
    errors = hub.errors
    offline = local_files_only or _offline_env()
    cache = cache_dir if cache_dir is not None else os.environ.get("HF_HUB_CACHE") or None
    at = f" at revision {revision!r}" if revision else ""
    try:
        local = hub.snapshot_download(
            text,
            revision=revision,
            cache_dir=cache,
            local_files_only=offline,
            token=token,
            library_name="calm-core",
        )
    except errors.LocalEntryNotFoundError:
        if _offline_env():
            why = "downloads are off: HF_HUB_OFFLINE is set"
        elif local_files_only:
            why = "downloads are off: local_files_only"
        else:  # huggingface_hub falls back to the cache when the Hub cannot be reached
            why = "the Hub could not be reached"
        where = cache or hub.constants.HF_HUB_CACHE
        raise HubError(
            f"'{text}'{at} is not in the Hugging Face cache ({where}) and {why}, and no local "
            f"directory {text} exists; download it once with network access, or pass a local "
            "model directory"
        ) from None
    except errors.GatedRepoError:
        raise HubError(
            f"'{text}' is a gated Hub repository: accept its terms on the Hub, then log in "
            "(`hf auth login`) or pass a token"
        ) from None
    except errors.RepositoryNotFoundError:
        raise HubError(
            f"no Hub repository '{text}' (or it is private: log in with `hf auth login` or pass "
            f"a token); no local directory {text} exists either"
        ) from None
    except errors.RevisionNotFoundError:
        raise HubError(
            f"the Hub repository '{text}' has no revision {revision!r}; give a branch, tag or "
            "commit hash it has"
        ) from None
    except (errors.HfHubHTTPError, OSError) as exc:
        raise HubError(
            f"could not fetch '{text}'{at} from the Hub ({exc}); check the network, or set "
            "HF_HUB_OFFLINE=1 to use the cached copy"
        ) from None
    return Path(local)
