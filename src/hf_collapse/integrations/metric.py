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
:func:`register_metric`; importing hf_collapse writes nothing. :func:`load_metric` loads the shipped
script by path instead: no registration, no Hub request. Set ``HF_EVALUATE_OFFLINE=1`` to skip
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
    "modules cache: run `hf-collapse install-metric` once (scripts/setup.sh does, for its own "
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
        raise FileNotFoundError(
            f"the neural_collapse module is missing from the installed package ({script}); "
            f"reinstall hf_collapse. {INSTALL_HINT}"
        )
    return evaluate.load(str(script), config_name, **kwargs)


class _CachedCopyNotice(logging.Filter):
    """Drops evaluate's warning that it fell back to the cached copy of *our* registered metric.

    For a bare name evaluate tries the Hub Space ``evaluate-metric/neural_collapse`` (which does
    not exist), then loads the newest cached copy and always logs, at WARNING, "Using the latest
    cached version of the module from ... since it couldn't be found locally at
    evaluate-metric--neural_collapse, or remotely on the Hugging Face Hub" (evaluate 0.4,
    ``loading.CachedEvaluationModuleFactory.get_module``; there is no switch for it). That cached
    copy is the one registration put there, so the message is expected; other modules' messages pass.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        msg = record.getMessage()
        return not (CACHE_NAME in msg and "couldn't be found locally" in msg)


def silence_cached_copy_notice() -> None:
    """Install ``_CachedCopyNotice`` on evaluate's loading logger (idempotent; evaluate need not be imported)."""
    log = logging.getLogger("evaluate.loading")  # the logger evaluate.loading gets from its get_logger(__name__)
    if not any(isinstance(f, _CachedCopyNotice) for f in log.filters):
        log.addFilter(_CachedCopyNotice())
