"""Checking a "Hub id or local folder" argument before transformers / huggingface_hub see it.

A mistyped local path otherwise ends in a long traceback about repo-id syntax ("Repo id must be in
the form 'repo_name' or 'namespace/repo_name'") or about the network.
"""

from __future__ import annotations

import os
from pathlib import Path

from ..core.errors import UserFileNotFoundError, UserTypeError


def looks_like_path(text: str) -> bool:
    """Written as a path (``./x``, ``/x``, ``~/x``, ``a/b/c``, a Windows separator) rather than a Hub id."""
    return text.startswith((".", "/", "~")) or text.count("/") > 1 or "\\" in text


def is_valid_repo_id(text: str) -> bool:
    """True when huggingface_hub accepts ``text`` as a repo id."""
    from huggingface_hub.errors import HFValidationError
    from huggingface_hub.utils import validate_repo_id

    try:
        validate_repo_id(text)
    except HFValidationError:
        return False
    return True


def check_model_source(name_or_path, what: str = "model folder", need_config: bool = True) -> str:
    """Return ``name_or_path`` as a string if it is an existing folder or could be a Hub repo id.

    Raises ``FileNotFoundError`` (a :class:`~hf_collapse.errors.UserError`) naming the path when it is
    neither: no folder there and not a valid Hub id (or written as a path). ``need_config``: a
    folder must hold the ``config.json`` that ``save_pretrained`` writes.
    """
    if not isinstance(name_or_path, (str, os.PathLike)):
        raise UserTypeError(f"expected a Hub repo id or a local {what} path, got {type(name_or_path).__name__}")
    text = os.fspath(name_or_path)
    path = Path(text).expanduser()
    if path.is_dir():
        if need_config and not (path / "config.json").is_file():
            raise UserFileNotFoundError(
                f"{text!r} is a folder but holds no config.json: not a saved {what} (save_pretrained writes one)"
            )
        return text
    if path.exists():
        raise UserFileNotFoundError(f"{text!r} is a file, not a {what} or a Hub repo id")
    if looks_like_path(text) or not is_valid_repo_id(text):
        raise UserFileNotFoundError(f"no {what} at {text!r} (and it is not a valid Hub repo id either)")
    return text


def from_pretrained_or_explain(load, name_or_path: str, what: str = "model", **kwargs):
    """``load(name_or_path, **kwargs)`` where a name that is no local folder and fails to load from the
    Hub (unknown repo, no network, offline) becomes one clear ``FileNotFoundError``."""
    try:
        return load(name_or_path, **kwargs)
    except OSError as e:
        if Path(os.fspath(name_or_path)).expanduser().is_dir():
            raise
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise UserFileNotFoundError(
            f"no local folder {name_or_path!r}, and loading the {what} {name_or_path!r} from the Hub failed: {first}"
        ) from e
