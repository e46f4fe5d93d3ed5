"""Make ``evaluate.load("neural_collapse")`` work offline, from any directory.

How evaluate resolves a bare name (evaluate 0.4.6, ``loading.evaluation_module_factory``), in order:

1. ``./neural_collapse/neural_collapse.py`` in the working directory (``hf-collapse install-metric
   --export ./neural_collapse`` puts the module there: no Hub request, no warning, that directory only);
2. the Hub Space ``evaluate-metric/neural_collapse`` (skipped with ``HF_EVALUATE_OFFLINE=1``; it does not
   exist, so online this costs a request, offline ~1.5 s of retries without the variable);
3. the copy with the newest script mtime under evaluate's modules cache,
   ``$HF_MODULES_CACHE/evaluate_modules/metrics/evaluate-metric--neural_collapse/<64 hex>/neural_collapse.py``
   (``HF_MODULES_CACHE`` defaults to ``$HF_HOME/modules``, ``HF_HOME`` to ``$XDG_CACHE_HOME/huggingface``
   or ``~/.cache/huggingface``); evaluate logs a WARNING "Using the latest cached version of the module
   ... since it couldn't be found locally ..., or remotely on the Hugging Face Hub" whenever it takes
   this path (there is no setting for it).

:func:`register_metric` (``hf-collapse install-metric``) writes step 3's copy, exactly the files evaluate
itself writes when it caches a module downloaded from the Hub: the script shipped inside this package,
byte for byte, under the sha256 of its bytes, the ``.json`` record beside it and the empty
``__init__.py`` files that make the folders importable. It makes the copy the newest (evaluate picks by
mtime), is idempotent (nothing is written when the copy is already there and newest) and atomic (temp
file + ``os.replace``), so concurrent processes may all register. Importing hf_collapse writes nothing
and changes nothing in evaluate.

In a cache where nothing was registered, ``evaluate.load("neural_collapse")`` fails with evaluate's own
``FileNotFoundError`` ("Couldn't find a module script ... doesn't exist on the Hugging Face Hub either");
evaluate raises it before any code of ours runs and offers no hook to extend it, so the hint to run
``hf-collapse install-metric`` lives in the documentation, in ``hf-collapse install-metric --check``
and in :data:`INSTALL_HINT`. :func:`load_metric` loads the shipped script by path instead: no
registration, no Hub request, no warning.

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

from ..core.errors import UserFileNotFoundError
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
    home = os.path.expanduser(
        os.getenv("HF_HOME", os.path.join(os.getenv("XDG_CACHE_HOME", "~/.cache"), "huggingface"))
    )
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
    for directory in (
        root,
        root / "evaluate_modules",
        root / "evaluate_modules" / "metrics",
        script.parent.parent,
        script.parent,
    ):
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


INSTALL_HINT = (
    "evaluate.load('neural_collapse') finds the module only after it was registered in evaluate's "
    "modules cache: run `hf-collapse install-metric` once per cache (scripts/setup.sh does, for its own "
    "cache), or use hf_collapse.load_metric(), which needs no registration"
)


def load_metric(config_name: Optional[str] = None, **kwargs):
    """``evaluate.load`` the ``neural_collapse`` metric shipped in this package, by path.

    Equivalent to ``evaluate.load("neural_collapse", config_name, **kwargs)`` after
    ``hf-collapse install-metric``, but it needs no registration, makes no Hub request (the bare
    name first tries the Hub: about 1.5 s without network unless ``HF_EVALUATE_OFFLINE=1``) and
    logs no "couldn't be found locally ... or remotely" warning.

    Args:
        config_name: ``None`` (features and labels through ``add_batch``) or ``"statistics"``.
        **kwargs: passed to ``evaluate.load`` (``num_process``, ``process_id``, ``experiment_id``, ...).

    Raises:
        FileNotFoundError: the package's copy of the module is missing (a broken install); the message
            says how to register it instead.
    """
    import evaluate

    script = shipped_metric_dir() / f"{METRIC_NAME}.py"
    if not script.is_file():
        raise UserFileNotFoundError(
            f"the neural_collapse module is missing from the installed package ({script}); "
            f"reinstall hf_collapse. {INSTALL_HINT}"
        )
    return evaluate.load(str(script), config_name, **kwargs)
