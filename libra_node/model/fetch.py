"""Download the released Libra weights and RAD-DINO into one local folder.

    DIR/                 X-iZhang/libra-v1.0-<variant> (config, weights, tokenizer)
    DIR/rad-dino/        microsoft/rad-dino
    DIR/libra-node-fetch.json   the repositories and the exact revisions fetched

The node then loads DIR offline. Without network access this fails within
seconds, saying so, instead of hanging in retries.
"""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path
from typing import Any

from huggingface_hub import HfApi, snapshot_download
from huggingface_hub.errors import (
    GatedRepoError,
    HfHubHTTPError,
    OfflineModeIsEnabled,
    RepositoryNotFoundError,
)

from libra_node.logs import get_logger
from libra_node.model.layout import FETCH_RECORD, STAGE_ONE_CONNECTOR, VISION_FOLDER

log = get_logger(__name__)

REPOSITORIES = {"7b": "X-iZhang/libra-v1.0-7b", "3b": "X-iZhang/libra-v1.0-3b"}
RAD_DINO = "microsoft/rad-dino"
# Seconds to wait for the hub's first answer before calling it unreachable.
PROBE_TIMEOUT = 15.0
VISION_FILES = [
    "config.json",
    "preprocessor_config.json",
    "model.safetensors",
    "LICENSE*",
    "README.md",
]


class FetchError(RuntimeError):
    """The weights cannot be downloaded; the message says why and what to do."""


def fetch_checkpoint(variant: str, directory: str | Path) -> Path:
    """Download libra-v1.0-<variant> and RAD-DINO into ``directory`` (progress bars on stderr)."""
    if variant not in REPOSITORIES:
        raise FetchError(f"variant must be one of {', '.join(REPOSITORIES)}, not {variant!r}")
    directory = Path(directory)
    repo_id = REPOSITORIES[variant]
    api = HfApi()
    model_info = _probe(api, repo_id)
    vision_info = _probe(api, RAD_DINO)

    _download(repo_id, model_info.sha, directory, _model_patterns(model_info))
    _download(RAD_DINO, vision_info.sha, directory / VISION_FOLDER, VISION_FILES)
    record = {
        "repo_id": repo_id,
        "revision": model_info.sha,
        "vision_repo_id": RAD_DINO,
        "vision_revision": vision_info.sha,
        "fetched_at": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
    }
    (directory / FETCH_RECORD).write_text(json.dumps(record, indent=2) + "\n")
    log.info(
        "model.fetched", repo=repo_id, revision=model_info.sha, vision_revision=vision_info.sha
    )
    return directory


def _probe(api: HfApi, repo_id: str) -> Any:
    """The repository's metadata; the first network call, so that failures come fast and clear."""
    try:
        return api.model_info(repo_id, timeout=PROBE_TIMEOUT)
    except OfflineModeIsEnabled as exc:
        raise FetchError(
            f"cannot fetch {repo_id}: offline mode is on (HF_HUB_OFFLINE); unset it to download"
        ) from exc
    except (RepositoryNotFoundError, GatedRepoError) as exc:
        raise FetchError(
            f"cannot fetch {repo_id}: the hub refuses access ({type(exc).__name__})"
        ) from exc
    except HfHubHTTPError as exc:
        raise FetchError(f"cannot fetch {repo_id}: the hub answered with an error: {exc}") from exc
    except Exception as exc:  # connection, DNS, TLS and timeout errors of the HTTP client
        raise FetchError(
            f"cannot reach the Hugging Face Hub to fetch {repo_id} ({type(exc).__name__}: {exc}). "
            "Fetching needs internet access; on an offline machine, copy a folder fetched elsewhere "
            "and point model.path at it."
        ) from exc


def _model_patterns(model_info: Any) -> list[str] | None:
    """Every file, except .bin weights when safetensors are there (the same weights twice)."""
    names = [sibling.rfilename for sibling in model_info.siblings or []]
    if not names:
        return None  # no file list in the answer: take everything
    has_safetensors = any(name.endswith(".safetensors") for name in names)
    return [
        name
        for name in names
        if not (
            has_safetensors and name.startswith("pytorch_model") and name != STAGE_ONE_CONNECTOR
        )
    ]


def _download(repo_id: str, revision: str, directory: Path, patterns: list[str] | None) -> None:
    log.info("model.fetching", repo=repo_id, revision=revision)
    try:
        snapshot_download(repo_id, revision=revision, local_dir=directory, allow_patterns=patterns)
    except Exception as exc:  # a broken connection mid-download surfaces as many types
        raise FetchError(
            f"downloading {repo_id} into {directory} failed: {type(exc).__name__}: {exc}"
        ) from exc


__all__ = ["FetchError", "RAD_DINO", "REPOSITORIES", "fetch_checkpoint"]
