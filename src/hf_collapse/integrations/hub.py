"""Pre-measured checkpoints: save a model with its measurements, push it to the Hub, load or find it again.

The folder format is :mod:`hf_collapse.integrations.folder`; the card is
:mod:`hf_collapse.integrations.model_card`. Statistics record ``weights_sha256``, so ``load_measured``
refuses statistics measured on other weights. Nothing here unpickles.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Optional

from ..core.errors import UserFileNotFoundError, UserValueError
from ..core.measures import CollapseResult
from ..core.statistics import CollapseStatistics
from .folder import (
    COLLAPSE_DIR,
    REPO_ID_PLACEHOLDER,
    SKIP_PARTS,
    STATISTICS_FILE,
    list_measurements,
    measurement_subdir,
    read_measurement,
    verify_weights,
    write_report,
)
from .model_card import write_model_card
from .model_source import is_valid_repo_id
from .record import MeasurementRecord
from .snapshot import resolve_folder

__all__ = ["MeasuredModel", "find_measurement", "load_measured", "push_measured", "save_measured"]

if TYPE_CHECKING:  # annotations only: importing them here would load transformers for every reader
    from huggingface_hub import CommitInfo
    from transformers import PreTrainedModel

logger = logging.getLogger(__name__)


# ---------------------------------------------------------------------------------------- loading
@dataclass
class MeasuredModel:
    """A model with its collapse measurement, as returned by :func:`load_measured`."""

    path: str  # local folder (a cache snapshot for Hub repos)
    statistics: CollapseStatistics
    metrics: dict
    result: CollapseResult  # the measures as stored in metrics.json, with .per_class
    model: Any = None
    tokenizer: Any = None
    name: Optional[str] = None  # measurement name; None for collapse/
    repo_id: Optional[str] = None
    commit: Optional[str] = None  # snapshot commit for Hub repos
    weights_sha256: Optional[str] = None  # verified hash, None when not checked
    measurements: list = field(default_factory=list)  # all measurement names in the folder
    record: Optional[MeasurementRecord] = None  # what was measured (model, data, budgets, options)

    @property
    def per_class(self) -> Optional[dict]:
        return self.result.per_class

    @property
    def metadata(self) -> dict:
        return self.statistics.metadata

    def __repr__(self) -> str:
        source = f"{self.repo_id}@{self.commit[:10]}" if self.repo_id and self.commit else self.path
        model = type(self.model).__name__ if self.model is not None else None
        head = (
            f"MeasuredModel({source!r}, measurement={self.name or 'default'!s}, model={model}, "
            f"classes={int(self.statistics.present.sum())}/{self.statistics.num_classes}, "
            f"dim={self.statistics.dim}, tokens={self.statistics.num_tokens}, "
            f"weights={'verified' if self.weights_sha256 else 'unchecked'})"
        )
        return head + ("\n" + self.result.table() if len(self.result) else "")


def load_measured(
    repo_id_or_path: str | os.PathLike,
    revision: Optional[str] = None,
    *,
    name: Optional[str] = None,
    load_model: bool = True,
    load_tokenizer: bool = True,
    check_weights: bool = True,
    model_class: Optional[type] = None,
    token: Optional[str] = None,
    cache_dir: Optional[str | os.PathLike] = None,
    local_files_only: Optional[bool] = None,
    **model_kwargs: Any,
) -> MeasuredModel:
    """Load a pre-measured model: weights, tokenizer, collapse statistics and measures, in one call.

    Args:
        repo_id_or_path: a local measured-model folder or a Hub repo id (downloaded with
            ``snapshot_download``; with ``HF_HUB_OFFLINE=1`` it is read from the cache).
        revision: branch, tag or commit of a Hub repo.
        name: which measurement (``collapse/<name>/``); None for the default ``collapse/``.
        load_model: set False to read the statistics only (then only ``collapse/`` and the JSON
            files are downloaded and the weights are not checked).
        load_tokenizer: set False to skip the tokenizer.
        check_weights: compare the ``weights_sha256`` recorded with the statistics against the
            weights in the folder; a mismatch raises ValueError.
        model_class: the class whose ``from_pretrained`` loads the model (default
            ``AutoModelForCausalLM``); ``model_kwargs`` go to it (e.g. ``torch_dtype``).

    Never unpickles code: statistics are safetensors, metrics JSON, and weights safetensors or, as older
    Hub revisions hold them, ``pytorch_model*.bin``, which transformers reads with ``weights_only=True``.
    """
    folder, repo_id, commit = resolve_folder(
        repo_id_or_path, revision, name, load_model, token, cache_dir, local_files_only
    )
    stats, _per_class, metrics, result, record = read_measurement(folder, name)
    stats_path = str(folder / measurement_subdir(name) / STATISTICS_FILE)
    verified = verify_weights(folder, stats, stats_path) if (check_weights and load_model) else None
    model = tokenizer = None
    if load_model:
        if model_class is None:
            from transformers import AutoModelForCausalLM as model_class
        model = model_class.from_pretrained(folder, **model_kwargs)
    if load_tokenizer and any((folder / f).is_file() for f in ("tokenizer.json", "tokenizer_config.json")):
        from transformers import AutoTokenizer

        tokenizer = AutoTokenizer.from_pretrained(folder)
    return MeasuredModel(
        path=str(folder),
        statistics=stats,
        metrics=metrics,
        result=result,
        model=model,
        tokenizer=tokenizer,
        name=name,
        repo_id=repo_id,
        commit=commit,
        weights_sha256=verified,
        measurements=list_measurements(folder),
        record=record,
    )


def find_measurement(
    repo_id_or_path: str | os.PathLike,
    record: MeasurementRecord,
    revision: Optional[str] = None,
    *,
    token: Optional[str] = None,
    cache_dir: Optional[str | os.PathLike] = None,
) -> Optional[MeasuredModel]:
    """The first measurement (default, then named ones) of a folder or Hub repo whose record answers
    ``record`` (:meth:`MeasurementRecord.mismatches` is empty), without model or tokenizer; None if there
    is none. Fetches only ``collapse/`` and the JSON files: for ``hf-collapse measure`` to skip the
    collection pass when the repo already holds matching statistics. A stored measurement that cannot
    be read is reported (a warning naming the file and the problem), not silently skipped."""
    try:
        folder, repo_id, commit = resolve_folder(
            repo_id_or_path, revision, None, False, token, cache_dir, None, require=False
        )
    except FileNotFoundError:
        return None
    names = list_measurements(folder)
    for name in names:
        try:
            stats, _, metrics, result, stored = read_measurement(folder, name)
        except (FileNotFoundError, ValueError) as e:
            logger.warning(
                "stored measurement %s of %s is unreadable, measuring again: %s", name or "default", repo_id_or_path, e
            )
            continue
        problems = stored.mismatches(record)
        if not problems:
            return MeasuredModel(
                path=str(folder),
                statistics=stats,
                metrics=metrics,
                result=result,
                name=name,
                repo_id=repo_id,
                commit=commit,
                measurements=names,
                record=stored,
            )
        logger.info("measurement %s of %s does not match: %s", name or "default", repo_id_or_path, "; ".join(problems))
    return None


# ---------------------------------------------------------------------------------------- pushing
def _files_to_push(folder: Path) -> list[Path]:
    """Every file but hidden ones, ``__pycache__`` and, as ``Trainer.push_to_hub`` does, top-level
    ``checkpoint-*`` and ``_*`` entries."""
    out = []
    for p in sorted(folder.rglob("*")):
        rel = p.relative_to(folder)
        if rel.parts[0].startswith(("checkpoint-", "_")):
            continue
        if p.is_file() and not any(part.startswith(".") or part in SKIP_PARTS for part in rel.parts):
            out.append(p)
    return out


def default_commit_message(folder: str | os.PathLike) -> str:
    """E.g. ``Add llama model with neural-collapse statistics (default: 20000 tokens, 312 classes, k=2)``."""
    folder = Path(folder)
    parts = []
    for name in list_measurements(folder):
        stats_path = folder / measurement_subdir(name) / STATISTICS_FILE
        try:
            stats = CollapseStatistics.load(stats_path)
        except (ValueError, FileNotFoundError):
            continue
        k = stats.metadata.get("k")
        parts.append(
            f"{name or 'default'}: {stats.num_tokens} tokens, {int(stats.present.sum())} classes"
            + (f", k={k}" if k else "")
        )
    model_type = "model"
    try:
        model_type = json.loads((folder / "config.json").read_text()).get("model_type") or model_type
    except (OSError, ValueError):
        pass
    return f"Add {model_type} with neural-collapse statistics ({'; '.join(parts)})"


def push_measured(
    folder: str | os.PathLike,
    repo_id: str,
    *,
    private: bool = False,
    token: Optional[str] = None,
    revision: Optional[str] = None,
    commit_message: Optional[str] = None,
    commit_description: Optional[str] = None,
) -> CommitInfo:
    """Push a measured-model folder to the Hub in ONE commit; returns the ``CommitInfo``.

    Creates the repo if needed (``private`` applies only then) and the branch ``revision`` if it
    does not exist. Every non-hidden file of the folder is committed with ``HfApi.create_commit``
    (``upload_folder`` may split large folders into several commits when ``hf_xet`` is installed).
    The folder is only read: a failed push leaves it as it was (a card written before the repo id
    was known says ``REPO_ID``; the uploaded copy names ``repo_id`` instead).
    """
    from huggingface_hub import CommitOperationAdd, HfApi

    folder = Path(folder)
    if not folder.is_dir():
        raise UserFileNotFoundError(f"no measured model folder at {str(folder)!r}")
    if not isinstance(repo_id, str) or not is_valid_repo_id(repo_id):
        raise UserValueError(
            f"{repo_id!r} is not a valid Hub repo id: expected 'name' or 'namespace/name' of letters, "
            "digits, '-', '_' and '.'"
        )
    names = list_measurements(folder)
    if not names:
        raise UserFileNotFoundError(
            f"{str(folder)!r} holds no {COLLAPSE_DIR}/{STATISTICS_FILE} (nor "
            f"{COLLAPSE_DIR}/<name>/{STATISTICS_FILE}): measure it first"
        )
    for name in names:  # fail before any network traffic on files a reader would reject
        read_measurement(folder, name)
    if not (folder / "README.md").is_file():
        logger.warning("%s has no README.md: the repo will have no model card (see write_model_card)", folder)
    files = _files_to_push(folder)
    operations = []
    for p in files:
        rel = p.relative_to(folder).as_posix()
        content = str(p)
        if rel == "README.md":  # a card rendered before the repo id was known: fill it in the upload only
            text = p.read_text(encoding="utf-8")
            if REPO_ID_PLACEHOLDER in text:
                content = text.replace(REPO_ID_PLACEHOLDER, repo_id).encode("utf-8")
        operations.append(CommitOperationAdd(path_in_repo=rel, path_or_fileobj=content))
    api = HfApi(token=token)
    api.create_repo(repo_id, private=private, exist_ok=True, repo_type="model")
    if revision not in (None, "main"):
        api.create_branch(repo_id, branch=revision, exist_ok=True, repo_type="model")
    info = api.create_commit(
        repo_id,
        operations=operations,
        commit_message=commit_message or default_commit_message(folder),
        commit_description=commit_description,
        revision=revision,
        repo_type="model",
    )
    logger.info("pushed %d files of %s to %s (%s)", len(operations), folder, repo_id, info.commit_url)
    return info


# ---------------------------------------------------------------------------------------- saving
def save_measured(
    output_dir: str | os.PathLike,
    report: Any,
    *,
    model: PreTrainedModel,
    tokenizer: Any = None,
    save_model: bool = True,
    card: bool = True,
    card_info: Optional[Mapping] = None,
    extra_metrics: Optional[Mapping] = None,
) -> MeasurementRecord:
    """Write a measured model folder: ``save_pretrained`` (model, tokenizer), every measurement of the
    ``CollapseReport`` (:func:`~hf_collapse.integrations.folder.write_report`) and the card. Returns the
    record written (with the weights hash). Under several processes call it on the main process only.
    """
    output_dir = os.fspath(output_dir)
    os.makedirs(output_dir, exist_ok=True)
    if save_model:
        model.save_pretrained(output_dir)
        if tokenizer is not None:
            tokenizer.save_pretrained(output_dir)
    record = write_report(output_dir, report, model=model, extra_metrics=extra_metrics)
    if card:
        write_model_card(output_dir, **dict(card_info or {}))
    return record
