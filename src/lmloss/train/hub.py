"""Hugging Face Hub ids for models and data sets: online when allowed, else the local cache.

``model.name``, ``distill.teacher`` and ``data.path`` may name a Hub repository
(``"owner/name"``). Online, the files are fetched into the Hub cache; offline
(``HF_HUB_OFFLINE=1``, or the network is unreachable) the cached copy is used. An id
that is neither reachable nor cached stops the run with one line naming the key, the
id and the cache that was searched.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

from lmloss.models import BUNDLED_MODELS

# "name" or "owner/name" (the Hub's rule: letters, digits, '-', '_', '.')
HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*(/[A-Za-z0-9][\w.-]*)?$")
TRUE = ("1", "on", "yes", "true")


def is_hub_id(name: str) -> bool:
    return bool(HUB_ID.match(name)) and ".." not in name


def hub_offline() -> bool:
    """Whether the Hub must not be asked (``HF_HUB_OFFLINE`` or ``TRANSFORMERS_OFFLINE``)."""
    from huggingface_hub import constants

    env = os.environ.get("HF_HUB_OFFLINE") or os.environ.get("TRANSFORMERS_OFFLINE") or ""
    return env.lower() in TRUE or bool(constants.HF_HUB_OFFLINE)


def unavailable(where: str, name: str, what: str, error: Exception) -> ValueError:
    """The one-line error of a Hub id that can be had neither online nor from the cache."""
    from huggingface_hub import constants

    if hub_offline():
        why = f"is not in the Hub cache {constants.HF_HUB_CACHE} and the Hub is offline"
        hint = "run once online to cache it, or give a local path"
    else:
        why = f"could not be fetched from the Hub nor found in its cache {constants.HF_HUB_CACHE}"
        hint = "check the id and the network, or give a local path"
    text = str(error).strip()
    cause = text.splitlines()[0] if text else type(error).__name__
    return ValueError(f"{where} {name!r}: the {what} {why}; {hint} ({cause})")


def dataset_directory(name: str, where: str = "data.path") -> Path:
    """The local snapshot of Hub data set ``name`` (fetched when online, cached otherwise)."""
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import HfHubHTTPError, LocalEntryNotFoundError

    try:
        return Path(snapshot_download(name, repo_type="dataset", local_files_only=hub_offline()))
    except (OSError, HfHubHTTPError, LocalEntryNotFoundError) as error:
        raise unavailable(where, name, "Hub data set", error) from None


def resolve_model(name: str, where: str = "model.name") -> str:
    """A loadable location of ``name``: a bundled name, a local folder, the snapshot of a Hub
    id in the local cache, or (online) the Hub id itself, fetched when the model loads."""
    if name in BUNDLED_MODELS:
        from lmloss.models import smollm2_path

        smollm2_path()  # the package is installed
        return name
    path = Path(name)
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise ValueError(f"{where} {name!r} is a folder without config.json (not a model)")
        return name
    if is_hub_id(name) and not path.exists():
        from huggingface_hub import constants, try_to_load_from_cache

        found = try_to_load_from_cache(name, "config.json")
        if isinstance(found, str):
            return str(Path(found).parent)
        if not hub_offline():
            return name
        raise ValueError(
            f"{where} {name!r}: the Hub model is not in the Hub cache {constants.HF_HUB_CACHE} "
            "and the Hub is offline; run once online to cache it, or give a local path"
        )
    raise ValueError(
        f"{where} {name!r} is neither a bundled model ({', '.join(BUNDLED_MODELS)}), a local "
        "model directory nor a Hugging Face Hub id (owner/name)"
    )
