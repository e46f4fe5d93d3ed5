"""Where a measured model is: a local folder, or a Hub repo's snapshot (downloaded, or cached when offline).

Offline, ``refs/main`` of the cache may point at a snapshot that lacks the model or the statistics (a later
commit of which only README.md was fetched) although an older complete one is cached: that older one is
used, with a warning. An explicit commit is never swapped for another.
"""

from __future__ import annotations

import logging
import os
import re
from pathlib import Path
from typing import Optional

from ..core.errors import UserFileNotFoundError
from .folder import COLLAPSE_DIR, METRICS_FILE, STATISTICS_FILE, measurement_subdir
from .model_source import check_model_source
from .weights_hash import has_weights

logger = logging.getLogger(__name__)


def _snapshot_complete(folder: Path, sub: str, need_weights: bool) -> bool:
    if not (folder / sub / STATISTICS_FILE).is_file() or not (folder / sub / METRICS_FILE).is_file():
        return False
    return not need_weights or ((folder / "config.json").is_file() and has_weights(folder))


def _fallback_snapshot(repo_id: str, cache_dir, sub: str, need_weights: bool, reason: str) -> Optional[Path]:
    """Offline: the newest cached snapshot of ``repo_id`` that holds the measurement (and weights).

    Works around the trap where ``refs/main`` points at a snapshot that lacks the model files (a
    later commit of which only README.md was fetched) although an older complete one is cached."""
    from huggingface_hub import constants
    from huggingface_hub.file_download import repo_folder_name

    root = (
        Path(cache_dir or constants.HF_HUB_CACHE) / repo_folder_name(repo_id=repo_id, repo_type="model") / "snapshots"
    )
    if not root.is_dir():
        return None
    complete = [p for p in root.iterdir() if p.is_dir() and _snapshot_complete(p, sub, need_weights)]
    if not complete:
        return None
    best = max(complete, key=lambda p: max((f.stat().st_mtime for f in p.rglob("*")), default=p.stat().st_mtime))
    logger.warning("%s; using the newest complete cached snapshot %s instead", reason, best.name)
    return best


def _hub_answers(repo_id: str, revision, token, local_files_only) -> bool:
    """Whether the Hub can be asked now (not offline and it answers, even with an HTTP error)."""
    from huggingface_hub import HfApi, constants
    from huggingface_hub.errors import HfHubHTTPError

    if local_files_only or constants.HF_HUB_OFFLINE:
        return False
    try:
        HfApi(token=token).repo_info(repo_id, revision=revision)
    except HfHubHTTPError:
        return True
    except Exception:  # connection refused, timeout, offline mode: we are offline in effect
        return False
    return True


def resolve_folder(repo_id_or_path, revision, name, need_weights, token, cache_dir, local_files_only, require=True):
    """Local folder or Hub repo -> (folder, repo_id, commit); with ``require``, the folder holds
    measurement ``name`` (and the weights if ``need_weights``)."""
    path = Path(os.fspath(repo_id_or_path)).expanduser()
    if path.is_dir():
        return path, None, None
    if (
        not isinstance(repo_id_or_path, str)
        or repo_id_or_path.count("/") > 1
        or path.is_absolute()
        or repo_id_or_path.startswith(".")
    ):
        raise UserFileNotFoundError(
            f"no measured model folder at {os.fspath(repo_id_or_path)!r} (and it is not a valid Hub repo id either)"
        )
    check_model_source(repo_id_or_path, "measured model folder", need_config=False)
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import IncompleteSnapshotError, RepositoryNotFoundError

    sub = measurement_subdir(name)
    # without weights, fetch only what a measurement needs
    patterns = None if need_weights else [f"{COLLAPSE_DIR}/*", "*.json", "README.md"]
    repo_id = repo_id_or_path
    try:
        folder = Path(
            snapshot_download(
                repo_id,
                revision=revision,
                token=token,
                cache_dir=cache_dir,
                local_files_only=bool(local_files_only),
                allow_patterns=patterns,
            )
        )
    except IncompleteSnapshotError as e:
        folder = None
        reason = str(e).split(". ")[0]
    except RepositoryNotFoundError as e:
        raise UserFileNotFoundError(
            f"{repo_id!r} is neither a local folder nor a Hub repo you can access ({str(e).splitlines()[0]})"
        ) from e
    except (OSError, ValueError) as e:  # no network / offline without a cached copy (LocalEntryNotFoundError)
        from huggingface_hub.errors import HfHubHTTPError

        if isinstance(e, HfHubHTTPError):  # the Hub answered (revision not found, ...): its own error
            raise
        raise UserFileNotFoundError(
            f"no local folder {repo_id!r}, and it could not be fetched from the Hub: "
            f"{str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__}"
        ) from e
    else:
        reason = f"cached snapshot {folder.name} of {repo_id} lacks {sub}/{STATISTICS_FILE} or the model files"
    if folder is None or (require and not _snapshot_complete(folder, sub, need_weights)):
        if revision is not None and re.fullmatch(r"[0-9a-f]{40}", revision):
            fallback = None  # an explicit commit must not be swapped for another one
        elif folder is not None and _hub_answers(repo_id, revision, token, local_files_only):
            raise UserFileNotFoundError(
                f"{repo_id} (revision {revision or 'main'}, commit {folder.name}) holds no "
                f"{sub}/{STATISTICS_FILE} with {METRICS_FILE}" + (" or no model files" if need_weights else "")
            )
        else:
            fallback = _fallback_snapshot(repo_id, cache_dir, sub, need_weights, reason)
        if fallback is None:
            raise UserFileNotFoundError(f"{reason}, and no other cached snapshot holds them")
        folder = fallback
    return folder, repo_id, folder.name
