"""Make ``evaluate.load("neural_collapse")`` work offline, from any directory.

How evaluate resolves a bare name (evaluate 0.4, ``loading.evaluation_module_factory``):
``./neural_collapse/neural_collapse.py``, then the Hub Space ``evaluate-metric/neural_collapse``,
then the copy with the newest script mtime under

    $HF_MODULES_CACHE/evaluate_modules/metrics/evaluate-metric--neural_collapse/<64-hex hash>/neural_collapse.py

(``HF_MODULES_CACHE`` defaults to ``$HF_HOME/modules``, ``HF_HOME`` to ``$XDG_CACHE_HOME/huggingface``
or ``~/.cache/huggingface``). Registration writes the metric script shipped inside this package
(``hf_collapse/evaluate_module/``) to that last place, byte for byte, under the sha256 of its bytes,
and makes it the newest copy. It is idempotent (nothing is written when the copy is already there
and newest) and atomic (temp file + ``os.replace``), so concurrent processes may all register.

It runs through ``hf-collapse install-metric`` (which ``scripts/setup.sh`` runs) or
:func:`register_metric`; importing hf_collapse writes nothing. Set ``HF_EVALUATE_OFFLINE=1`` to skip
evaluate's Hub attempt (about 1.5 s per load without network).

The module's files live once, in the repository's ``metrics/neural_collapse/`` (evaluate's layout);
setuptools maps that folder to the package ``hf_collapse.evaluate_module``, so wheels and editable
installs both reach it through ``importlib.resources``.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import time
from pathlib import Path
from typing import Optional

from ..core.io import atomic_write_bytes

logger = logging.getLogger(__name__)

METRIC_NAME = "neural_collapse"
CACHE_NAME = f"evaluate-metric--{METRIC_NAME}"  # evaluate's folder name for the bare name
SHIPPED_FILES = ("neural_collapse.py", "README.md", "app.py", "requirements.txt")


def shipped_metric_dir() -> Path:
    """The metric module inside the installed package (the files a wheel carries)."""
    from importlib.resources import files

    return Path(str(files("hf_collapse.evaluate_module")))


def modules_cache() -> Path:
    """evaluate's ``HF_MODULES_CACHE``, resolved from the environment exactly as evaluate.config does."""
    home = os.path.expanduser(os.getenv("HF_HOME", os.path.join(os.getenv("XDG_CACHE_HOME", "~/.cache"), "huggingface")))
    return Path(os.getenv("HF_MODULES_CACHE", os.path.join(home, "modules")))


def source_hash(source: bytes) -> str:
    """Folder name of a registered copy: sha256 of the script bytes (64 hex digits, as evaluate expects)."""
    return hashlib.sha256(source).hexdigest()


def registered_script(cache: Optional[os.PathLike] = None) -> Path:
    """Where the shipped script is (or would be) registered."""
    source = (shipped_metric_dir() / f"{METRIC_NAME}.py").read_bytes()
    return _metric_root(cache) / source_hash(source) / f"{METRIC_NAME}.py"


def _metric_root(cache) -> Path:
    return Path(cache if cache is not None else modules_cache()) / "evaluate_modules" / "metrics" / CACHE_NAME


def _touch_init(directory: Path) -> None:
    init = directory / "__init__.py"
    if not init.exists():
        atomic_write_bytes(init, b"")


def is_registered(cache: Optional[os.PathLike] = None) -> bool:
    """True when the shipped script is registered, byte for byte, and is the copy evaluate picks."""
    source = (shipped_metric_dir() / f"{METRIC_NAME}.py").read_bytes()
    script = _metric_root(cache) / source_hash(source) / f"{METRIC_NAME}.py"
    try:
        if script.read_bytes() != source:
            return False
        return _newest_other_mtime(script) < script.stat().st_mtime
    except OSError:
        return False


def _newest_other_mtime(script: Path) -> float:
    """Newest script mtime among the other registered versions (evaluate loads the newest)."""
    newest = float("-inf")
    for entry in os.scandir(script.parent.parent):
        if entry.is_dir() and len(entry.name) == 64 and entry.name != script.parent.name:
            try:
                newest = max(newest, os.stat(os.path.join(entry.path, script.name)).st_mtime)
            except OSError:
                pass
    return newest


def register_metric(cache: Optional[os.PathLike] = None) -> Path:
    """Register the shipped metric for ``evaluate.load("neural_collapse")``; return the script path.

    Idempotent. Raises OSError when the modules cache cannot be written.
    """
    source = (shipped_metric_dir() / f"{METRIC_NAME}.py").read_bytes()
    root = Path(cache) if cache is not None else modules_cache()
    script = _metric_root(root) / source_hash(source) / f"{METRIC_NAME}.py"
    # evaluate imports it as evaluate_modules.metrics.<CACHE_NAME>.<hash>.neural_collapse from root
    script.parent.mkdir(parents=True, exist_ok=True)
    for directory in (root, root / "evaluate_modules", root / "evaluate_modules" / "metrics",
                      script.parent.parent, script.parent):
        _touch_init(directory)
    if not script.is_file() or script.read_bytes() != source:
        atomic_write_bytes(script, source)
        logger.info("registered the neural_collapse metric at %s", script)
    meta = script.with_suffix(".json")
    if not meta.exists():  # the record evaluate keeps beside a cached script
        record = {"original file path": str(shipped_metric_dir() / script.name), "local file path": str(script)}
        atomic_write_bytes(meta, json.dumps(record).encode())
    newest = _newest_other_mtime(script)
    if script.stat().st_mtime <= newest:  # an older/other version would win: make ours the newest
        t = max(time.time(), newest + 1.0)
        os.utime(script, (t, t))
    return script
