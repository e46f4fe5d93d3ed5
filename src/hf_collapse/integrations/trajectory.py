"""Collapse over a model's training checkpoints (``hf-collapse sweep``).

The paper reads NC against training progress; public checkpoint series (Trainer ``checkpoint-*``
folders, Hub branches/revisions) are how people study it. :func:`sweep` measures each checkpoint in
order with one set of settings and writes into ``output_dir``::

    trajectory.csv                 one row per checkpoint: checkpoint, step, revision, weights_sha256,
                                   duplicate_of, every measure, eval_loss (from trainer_state.json)
    trajectory.png                 each measure against step (log scale where the values span > 20x)
    checkpoints/<label>/collapse/  that checkpoint's statistics + metrics.json (the measured-folder format)
    checkpoints/<label>/sweep.json what was measured: the record's key, weights hash, source files, measures

Resumable: a checkpoint whose ``sweep.json`` has the same key (the ``MeasurementRecord`` of the sweep,
less what differs per checkpoint) and whose weight files are
unchanged (names, sizes, mtimes) is not measured again, so a second run measures nothing new.
Checkpoints whose ``weights_sha256`` equals an earlier one's are not measured either: their row copies
the measures and names the checkpoint it duplicates (public series hold byte-identical branches).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import math
import os
import re
import shutil
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

from ..core.errors import UserFileNotFoundError, UserValueError
from ..core.io import atomic_write_text, write_csv_rows
from ..core.registry import MEASURE_KEYS, MEASURES
from .folder import eval_loss, trainer_state
from .record import MeasurementRecord
from .weights_hash import WEIGHT_FILES, has_weights

logger = logging.getLogger(__name__)

TRAJECTORY_CSV = "trajectory.csv"
TRAJECTORY_PNG = "trajectory.png"
RECORD_FILE = "sweep.json"
CHECKPOINTS_DIR = "checkpoints"
_CHECKPOINT = re.compile(r"^checkpoint-(\d+)$")
ROW_COLUMNS = ("checkpoint", "step", "revision", "weights_sha256", "duplicate_of")


@dataclass
class Checkpoint:
    """One checkpoint to measure: ``label`` names its output folder and row; ``folder`` holds the
    weights (for a Hub revision it is filled in by :func:`resolve`)."""

    label: str
    step: Optional[int] = None
    folder: Optional[Path] = None
    repo_id: Optional[str] = None
    revision: Optional[str] = None


def run_checkpoints(run_dir: str | os.PathLike) -> list[Checkpoint]:
    """The ``checkpoint-<step>`` folders of a Trainer output directory in step order, then the run
    folder itself (label ``final``) when it holds weights. FileNotFoundError when there are none."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise UserFileNotFoundError(f"no run folder at {str(run_dir)!r}")
    found = []
    for p in run_dir.iterdir():
        m = _CHECKPOINT.match(p.name)
        if m and p.is_dir() and has_weights(p):
            found.append(Checkpoint(p.name, int(m.group(1)), p))
    found.sort(key=lambda c: c.step)
    if has_weights(run_dir):
        step = trainer_state(run_dir).get("global_step")
        found.append(Checkpoint("final", int(step) if step is not None else None, run_dir))
    if not found:
        raise UserFileNotFoundError(
            f"{str(run_dir)!r} holds no checkpoint-* folders with weights and no weights itself"
        )
    return found


def hub_checkpoints(repo_id: str, revisions: Sequence[str]) -> list[Checkpoint]:
    """Checkpoints for revisions (branches, tags, commits) of a Hub repo, in the order given; a
    revision named like ``step1000`` or ``checkpoint-1000`` gets that step."""
    if not revisions:
        raise UserValueError("give at least one revision")
    out = []
    for rev in revisions:
        m = re.search(r"(\d+)$", rev)
        label = re.sub(r"[^A-Za-z0-9._-]", "_", rev)
        out.append(Checkpoint(label, int(m.group(1)) if m else None, None, repo_id, rev))
    labels = [c.label for c in out]
    if len(set(labels)) != len(labels):
        raise UserValueError(f"revisions {list(revisions)} repeat (or differ only in characters replaced by '_')")
    return out


_STEP = re.compile(r"(?:^|[^A-Za-z])(?:step|checkpoint-)(\d+)", re.IGNORECASE)


def revision_step(name: str) -> Optional[int]:
    """The training step a revision name carries (``step3000``, ``stage1-step3000-tokens12B``,
    ``checkpoint-3000``), else None."""
    m = _STEP.search(name)
    return int(m.group(1)) if m else None


def is_revision_pattern(revisions: Sequence[str]) -> bool:
    """Whether ``--revisions`` asks for discovery: ``all`` or a glob pattern (``*``, ``?``, ``[``)."""
    return any(r == "all" or any(c in r for c in "*?[") for r in revisions)


def discover_revisions(repo_id: str, patterns: Sequence[str], *, token: Optional[str] = None) -> list[str]:
    """The branches and tags of a Hub model repo matching ``patterns`` (``all`` for every one; globs as
    ``fnmatch``; plain names kept as given), ordered by step (``stepN`` / ``checkpoint-N``), the others
    after them by commit date. ValueError (one line) when nothing matches or the Hub cannot be asked."""
    import fnmatch

    from huggingface_hub import HfApi, constants

    if constants.HF_HUB_OFFLINE:
        raise UserValueError(
            f"--revisions {' '.join(patterns)} must list the refs of {repo_id} on the Hub, but HF_HUB_OFFLINE is "
            "set: name the revisions explicitly (e.g. --revisions step1000 step2000)"
        )
    api = HfApi(token=token)
    try:
        refs = api.list_repo_refs(repo_id)
    except Exception as e:  # noqa: BLE001  (offline, not found, no access: one line)
        why = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise UserValueError(
            f"cannot list the revisions of {repo_id!r} on the Hub ({why}): expected a reachable model repo"
        ) from e
    commits = {r.name: r.target_commit for r in [*refs.branches, *refs.tags]}
    names: list[str] = []
    for pat in patterns:
        hits = sorted(commits) if pat == "all" else [n for n in sorted(commits) if fnmatch.fnmatchcase(n, pat)]
        if not is_revision_pattern([pat]):
            hits = [pat]
        names += [n for n in hits if n not in names]
    if not names:
        raise UserValueError(
            f"--revisions {' '.join(patterns)} matches none of the {len(commits)} branches and tags of {repo_id} "
            f"({', '.join(sorted(commits)[:8])}{' ...' if len(commits) > 8 else ''})"
        )
    stepped = sorted((n for n in names if revision_step(n) is not None), key=lambda n: (revision_step(n), n))
    others = [n for n in names if revision_step(n) is None]
    if len(others) > 1:

        def date(name):
            try:
                return next(iter(api.list_repo_commits(repo_id, revision=name))).created_at.timestamp()
            except Exception:  # noqa: BLE001
                return 0.0

        others.sort(key=lambda n: (date(n), n))
    return stepped + others


def resolve(ck: Checkpoint) -> Path:
    """The local folder of a checkpoint (a Hub revision is downloaded into the Hub cache): its config and
    tokenizer files and whichever weights it holds, safetensors when there are any, else
    ``pytorch_model*.bin`` (which transformers and the weights hash read with ``weights_only=True``)."""
    if ck.folder is None:
        from huggingface_hub import HfApi, snapshot_download

        files = HfApi().list_repo_files(ck.repo_id, revision=ck.revision)
        weights = "*.safetensors" if any(f.endswith(".safetensors") for f in files) else "pytorch_model*.bin"
        ck.folder = Path(
            snapshot_download(ck.repo_id, revision=ck.revision, allow_patterns=["*.json", weights, "*.txt", "*.model"])
        )
    return ck.folder


def source_files(folder: Path) -> list[list]:
    """(name, size, mtime_ns) of the weight files: unchanged files keep their recorded hash."""
    out = []
    for pat in WEIGHT_FILES:
        for p in sorted(folder.glob(pat)):
            st = p.resolve().stat()
            out.append([p.name, st.st_size, st.st_mtime_ns])
    return out


PER_CHECKPOINT = ("weights_sha256", "revision", "commit", "step", "command", "library_version")


def record_key(record: MeasurementRecord) -> str:
    """sha256 of what the sweep measures (the record less its per-checkpoint fields): equal keys mean
    the same measurement."""
    fields = {k: v for k, v in record.to_metrics().items() if k not in PER_CHECKPOINT}
    return hashlib.sha256(json.dumps(fields, sort_keys=True, default=str).encode()).hexdigest()


def _read_record(path: Path) -> Optional[dict]:
    try:
        return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else None
    except ValueError:
        logger.warning("%s is unreadable: measuring that checkpoint again", path)
        return None


def sweep(
    checkpoints: Sequence[Checkpoint],
    output_dir: str | os.PathLike,
    measure: Callable,
    record: MeasurementRecord,
    *,
    hasher: Optional[Callable] = None,
    plot: bool = True,
) -> list[dict]:
    """Measure each checkpoint (see the module docstring) and write the trajectory.

    ``measure(folder)`` returns a ``CollapseReport`` of the weights in ``folder``; ``record`` describes
    the measurement (each checkpoint's copy adds its weights hash, revision and step); ``hasher(folder)``
    gives the weights hash (default :func:`hf_collapse.integrations.weights_hash.weights_sha256`).
    Returns the rows (also written to ``trajectory.csv``).
    """
    if hasher is None:
        from ..integrations.weights_hash import weights_sha256 as hasher
    out = Path(output_dir)
    key = record_key(record)
    rows: list[dict] = []
    for ck in checkpoints:
        row = _checkpoint_row(ck, out / CHECKPOINTS_DIR / ck.label, measure, record, key, hasher, rows)
        rows.append(row)
        write_csv_rows(rows, out / TRAJECTORY_CSV, _columns(rows))  # after each checkpoint: a partial sweep is readable
    if plot:
        first = checkpoints[0] if checkpoints else None
        model = (
            ""
            if first is None
            else first.repo_id or str(first.folder if first.label == "final" else first.folder.parent)
        )
        plot_trajectory(rows, out / TRAJECTORY_PNG, model=model, data=record.data or "")
    return rows


def _checkpoint_row(ck, sub: Path, measure, base: MeasurementRecord, key, hasher, earlier) -> dict:
    """The row of one checkpoint: from its record when it is up to date, copied from an earlier
    checkpoint with the same weights hash, or measured now (statistics + record written)."""
    folder = resolve(ck)
    files = source_files(folder)
    done = _read_record(sub / RECORD_FILE)
    if done and done.get("settings_key") == key and done.get("source_files") == files:
        logger.info("%s: measured before with these settings, skipped", ck.label)
        return done["row"]
    digest = hasher(folder)
    row = {
        "checkpoint": ck.label,
        "step": ck.step,
        "revision": ck.revision,
        "weights_sha256": digest,
        "duplicate_of": None,
    }
    twin = next((r for r in earlier if r["weights_sha256"] == digest), None)
    if twin is not None:
        logger.info("%s: weights identical to %s, measures copied", ck.label, twin["checkpoint"])
        row.update({k: v for k, v in twin.items() if k in MEASURES})
        row["duplicate_of"] = twin["duplicate_of"] or twin["checkpoint"]
        if (sub / "collapse").is_dir():  # statistics of an earlier sweep with other settings: stale now
            shutil.rmtree(sub / "collapse")
    else:
        from ..integrations.folder import write_report

        logger.info("%s: measuring %s", ck.label, folder)
        report = measure(folder)
        record = base.replace(weights_sha256=digest, revision=ck.revision, step=ck.step)
        write_report(sub, dataclasses.replace(report, record=record), extra_metrics={"checkpoint": ck.label})
        row.update({k: float(v) for k, v in report.result.items()})
    row["eval_loss"] = eval_loss(folder)
    sub.mkdir(parents=True, exist_ok=True)
    atomic_write_text(
        sub / RECORD_FILE,
        json.dumps(
            {"settings_key": key, "settings": base.to_metrics(), "source_files": files, "row": row},
            indent=2,
            default=str,
        )
        + "\n",
    )
    return row


def _columns(rows) -> list[str]:
    measures = [k for k in MEASURE_KEYS if any(r.get(k) is not None for r in rows)]
    return [*ROW_COLUMNS, *measures, "eval_loss"]


def plot_trajectory(rows: Sequence[dict], path: str | os.PathLike, model: str = "", data: str = "") -> Optional[Path]:
    """Each measure (and eval_loss) against step, one panel each (see :func:`trajectory_figure`),
    saved as a PNG at ``path``. None when nothing is plottable."""
    import matplotlib.pyplot as plt

    fig = trajectory_figure(rows, model=model, data=data)
    if fig is None:
        return None
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp.png")
    fig.savefig(tmp, dpi=110)
    plt.close(fig)
    os.replace(tmp, path)
    return path


def trajectory_figure(rows: Sequence[dict], model: str = "", data: str = ""):
    """The trajectory figure (a matplotlib Figure, or None when nothing is plottable): each measure and
    eval_loss against step, one panel each, its y label naming the measure, its kind of number and its
    collapse direction (the measure registry); a log y-axis where the positive values span more than
    20x; no offset labels. The title names ``model`` (the run folder or Hub repo) and ``data`` (what was
    measured on). Checkpoints whose weights repeat an earlier one are drawn hollow, with a legend."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from .plots import axis_label, no_offsets, scale_y

    keys = [
        k
        for k in _columns(rows)[len(ROW_COLUMNS) :]
        if any(r.get(k) is not None and math.isfinite(float(r[k])) for r in rows)
    ]
    if not keys or not rows:
        return None
    have_steps = all(r.get("step") is not None for r in rows)
    if have_steps:  # the run folder's final weights may share a step with a checkpoint
        rows = sorted(rows, key=lambda r: r["step"])
    x = [r["step"] if have_steps else i for i, r in enumerate(rows)]
    dup = [r.get("duplicate_of") is not None for r in rows]
    cols = min(4, len(keys))
    nrows = math.ceil(len(keys) / cols)
    fig, axes = plt.subplots(nrows, cols, figsize=(4.0 * cols, 3.1 * nrows + 1.0), squeeze=False, layout="constrained")
    for ax in axes.flat[len(keys) :]:
        ax.set_visible(False)
    for ax, key in zip(axes.flat, keys):
        ys = [float(r[key]) if r.get(key) is not None else math.nan for r in rows]
        ax.plot(x, ys, "-", color="C0", lw=1)
        ax.plot([a for a, d in zip(x, dup) if not d], [y for y, d in zip(ys, dup) if not d], "o", color="C0", ms=4)
        if any(dup):
            ax.plot(
                [a for a, d in zip(x, dup) if d], [y for y, d in zip(ys, dup) if d], "o", mfc="none", color="C1", ms=8
            )
        scale_y(ax, ys)
        ax.set_title(MEASURES[key].name if key in MEASURES else "validation loss", fontsize=9)
        ax.set_xlabel("training step" if have_steps else "checkpoint", fontsize=8)
        ax.set_ylabel(axis_label(key), fontsize=8)
        ax.tick_params(labelsize=7)
        no_offsets(ax)
    if not have_steps:
        for ax in axes.flat[: len(keys)]:
            ax.set_xticks(x, [r["checkpoint"] for r in rows], rotation=45, fontsize=6)
    if any(dup):  # one legend entry for plain points says nothing: only when some are copies
        from matplotlib.lines import Line2D

        handles = [
            Line2D([], [], ls="", marker="o", color="C0", ms=4, label="measured checkpoint"),
            Line2D(
                [],
                [],
                ls="",
                marker="o",
                mfc="none",
                color="C1",
                ms=8,
                label="weights identical to an earlier checkpoint (measures copied)",
            ),
        ]
        fig.legend(handles=handles, loc="outside lower center", ncols=2, fontsize=8, frameon=False)
    n = len(rows) - sum(dup)
    head = f"Neural collapse over {len(rows)} training checkpoints ({n} measured)"
    context = "; ".join(t for t in (f"model: {model}" if model else "", f"data: {data}" if data else "") if t)
    fig.suptitle(head + (f"\n{context}" if context else ""), fontsize=10)
    return fig


# ---------------------------------------------------------------------------------------- publishing
def _stage(ck: Checkpoint, measured: Path, stage: Path) -> Path:
    """A measured folder for ``ck`` in ``stage``: links to the checkpoint's top-level files (weights,
    config, tokenizer) and a copy of the sweep's ``collapse/`` of it."""
    stage.mkdir(parents=True, exist_ok=True)
    for p in sorted(resolve(ck).iterdir()):
        if p.is_file() and not p.name.startswith(".") and p.name not in ("README.md", RECORD_FILE):
            os.symlink(p.resolve(), stage / p.name)
    shutil.copytree(measured / "collapse", stage / "collapse")
    return stage


def _remote_statistics_sha(api, repo_id: str, branch: str) -> Optional[str]:
    from huggingface_hub.errors import RepositoryNotFoundError

    from .folder import COLLAPSE_DIR, STATISTICS_FILE

    try:  # ask for the refs first (a GET): no repo or no branch yet means push it
        refs = api.list_repo_refs(repo_id)
    except RepositoryNotFoundError:
        return None
    if branch not in {b.name for b in refs.branches}:
        return None
    infos = api.get_paths_info(repo_id, [f"{COLLAPSE_DIR}/{STATISTICS_FILE}"], revision=branch)
    for info in infos:
        lfs = getattr(info, "lfs", None)
        if lfs is not None:
            return lfs.sha256
    return None


def push_sweep(
    checkpoints: Sequence[Checkpoint],
    rows: Sequence[dict],
    output_dir: str | os.PathLike,
    measured_repo: str,
    *,
    index: Optional[str] = None,
    token: Optional[str] = None,
    private: bool = False,
) -> list[dict]:
    """Publish a sweep: each checkpoint's measured folder (its weights, config and tokenizer files with the
    sweep's ``collapse/``) to the branch of ``measured_repo`` named like its revision (``label`` for run
    folders; ``main`` stays ``main``), one commit each, and its rows to the measurements dataset ``index``.
    A checkpoint whose weights repeat an earlier one's carries that one's statistics. A branch whose
    ``collapse/statistics.safetensors`` is already these bytes is not pushed again (resumable).
    Returns ``{"checkpoint", "branch", "commit", "pushed"}`` per checkpoint."""
    import hashlib
    import tempfile

    from huggingface_hub import HfApi

    from .hub import push_measured
    from .measurements import push_measurements

    out = Path(output_dir)
    api = HfApi(token=token)
    done = []
    for ck, row in zip(checkpoints, rows):
        measured = out / CHECKPOINTS_DIR / (row.get("duplicate_of") or ck.label)
        branch = ck.revision or ck.label
        local = measured / "collapse" / "statistics.safetensors"
        if not local.is_file():
            raise UserFileNotFoundError(
                f"no statistics of checkpoint {ck.label} at {str(local)!r}: run the sweep first"
            )
        digest = hashlib.sha256(local.read_bytes()).hexdigest()
        with tempfile.TemporaryDirectory(prefix="hf_collapse_push_") as tmp:
            stage = _stage(ck, measured, Path(tmp) / ck.label)
            if _remote_statistics_sha(api, measured_repo, branch) == digest:
                logger.info(
                    "%s: branch %s of %s already holds these statistics, skipped", ck.label, branch, measured_repo
                )
                commit, pushed = api.model_info(measured_repo, revision=branch).sha, False
            else:
                try:
                    from .model_card import write_model_card

                    write_model_card(stage, figure=False, **({"base_model": ck.repo_id} if ck.repo_id else {}))
                except Exception as e:  # noqa: BLE001  (the card is a courtesy: the statistics are what counts)
                    logger.warning("%s: no model card (%s)", ck.label, e)
                info = push_measured(
                    stage,
                    measured_repo,
                    revision=branch,
                    token=token,
                    private=private,
                    commit_message=f"Neural-collapse statistics of {ck.repo_id or 'checkpoint'} at {branch}",
                )
                commit, pushed = info.oid, True
            if index:
                push_measurements(
                    stage, index, model_repo=measured_repo, revision=branch, commit=commit, step=ck.step, token=token
                )
        done.append({"checkpoint": ck.label, "branch": branch, "commit": commit, "pushed": pushed})
    return done
