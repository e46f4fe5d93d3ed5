"""Model cards for measured models: a Jinja template rendered through ``huggingface_hub.ModelCard``.

``write_model_card(folder, **info)`` reads every measurement of a measured-model folder (see
:mod:`hf_collapse.integrations.folder`), draws one figure per measurement from its per-class outputs
(``collapse[/<name>]/collapse.png``) and writes ``README.md`` whose YAML carries a ``model-index``
with each NC measure as a result (metric type ``neural-collapse/<key>``, with dataset and split),
so the numbers are machine-readable on the Hub. The measure names, meanings and directions come from
the registry (:mod:`hf_collapse.core.registry`). ``render_measurements_card(repo_id)`` renders the card
of a measurements dataset (a Hub dataset repo of Parquet rows, one file per measured model, revision and
measurement). The templates live once, in the top-level ``model_cards/`` folder, which the package
carries as ``hf_collapse.model_cards`` (read through ``importlib.resources``).
"""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any, Optional

from .._version import __version__
from ..core.errors import UserFileNotFoundError, UserValueError
from ..core.io import atomic_write, fmt
from ..core.registry import ARXIV_ID, CITATION_BIBTEX, MEASURES
from .folder import COLLAPSE_DIR, FIGURE_FILE, STATISTICS_FILE, list_measurements, measurement_subdir, read_measurement

if TYPE_CHECKING:
    from huggingface_hub import DatasetCard, ModelCard


def _template(name: str) -> Path:
    """A card template shipped as ``hf_collapse.model_cards`` (the top-level ``model_cards/`` folder)."""
    from importlib.resources import files

    return Path(str(files("hf_collapse.model_cards") / name))


TEMPLATE_PATH = _template("collapse_model_card.md.j2")
MEASUREMENTS_TEMPLATE_PATH = _template("measurements_dataset_card.md.j2")
METRIC_TYPE_PREFIX = "neural-collapse/"


def _hub_id(name) -> bool:
    """Whether a dataset/model name looks like a Hub id rather than a local file or folder."""
    name = str(name or "")
    return (
        bool(name)
        and not name.startswith(("/", ".", "~"))
        and name.count("/") <= 1
        and not name.lower().endswith((".txt", ".json", ".jsonl", ".csv", ".parquet", ".arrow"))
    )


def plot_per_class(per_class: dict, path: str | os.PathLike, title: str = "") -> Optional[Path]:
    """Two panels from per-class outputs: class-mean norm vs token frequency, and the distribution
    of per-class CDNV row means. Returns the PNG path, or None when the inputs are missing."""
    if not per_class or "count" not in per_class or "mean_norm" not in per_class:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import torch
    from matplotlib.ticker import MaxNLocator, ScalarFormatter

    count = per_class["count"].double()
    norm = per_class["mean_norm"].double()
    fig, axes = plt.subplots(1, 2, figsize=(9.5, 3.8), layout="constrained")
    axes[0].scatter(count.numpy(), norm.numpy(), s=4, alpha=0.5)
    axes[0].set_xscale("log")
    axes[0].set_xlabel("tokens of the class (frequency, log scale)")
    axes[0].set_ylabel("class-mean norm ‖μ_c − μ̄‖\n(feature units; equal norms = collapsed)")
    axes[0].set_title("class-mean norm vs frequency", fontsize=10)
    cdnv = per_class.get("cdnv_row_mean")
    if cdnv is not None:
        cdnv = cdnv.double()
        cdnv = cdnv[torch.isfinite(cdnv) & (cdnv > 0)]
    if cdnv is not None and cdnv.numel():
        axes[1].hist(torch.log10(cdnv).numpy(), bins=min(50, max(5, cdnv.numel() // 5)))
        axes[1].set_xlabel("log10 mean CDNV of a class to the others\n(↓ lower = more collapsed)")
        axes[1].set_ylabel("number of classes")
        axes[1].yaxis.set_major_locator(MaxNLocator(integer=True))  # class counts are whole numbers
        axes[1].set_title("NC1 CDNV per class", fontsize=10)
    else:
        axes[1].set_axis_off()
    for ax in axes:  # plain tick labels: no "+1.284" offset or "1e-5" multiplier above an axis
        for axis in (ax.xaxis, ax.yaxis):
            if type(axis.get_major_formatter()) is ScalarFormatter:
                axis.get_major_formatter().set_useOffset(False)
                axis.get_major_formatter().set_scientific(False)
    if title:
        fig.suptitle(title, fontsize=10)
    path = Path(path)
    try:
        atomic_write(path, lambda tmp: fig.savefig(tmp, format="png", dpi=110))
    finally:
        plt.close(fig)
    return path


def _measurement_entry(folder: Path, name, info: dict, figure: bool) -> dict:
    stats, per_class, metrics, result, record = read_measurement(folder, name)
    sub = measurement_subdir(name)
    fig_rel = None
    model = info.get("model_name") or record.model_name or folder.name
    data = str(info.get("data") or record.data or info.get("dataset") or "data not recorded")
    title = f"{model}{f' ({name})' if name else ''}, measured on {data if len(data) <= 90 else data[:87] + '...'}"
    if figure and plot_per_class(per_class, folder / sub / FIGURE_FILE, title=title):
        fig_rel = f"{sub}/{FIGURE_FILE}"
    elif (folder / sub / FIGURE_FILE).is_file():
        fig_rel = f"{sub}/{FIGURE_FILE}"
    rows = [
        {
            "key": key,
            "value": fmt(value, 6),
            "name": MEASURES[key].name,
            "meaning": MEASURES[key].meaning,
            "direction": MEASURES[key].direction_text,
        }
        for key, value in result.items()
    ]
    data_file = record.data.split(" ", 1)[0][len("file:") :] if (record.data or "").startswith("file:") else None
    return {
        "name": name,
        "title": name or "default",
        "path": sub,
        "rows": rows,
        "values": dict(result),
        "num_tokens": stats.num_tokens,
        "num_classes": stats.num_classes,
        "present": int(stats.present.sum()),
        "dim": stats.dim,
        "k": record.options["k"],
        "dataset": info.get("dataset") or record.dataset,
        "dataset_config": info.get("dataset_config") or record.dataset_config,
        "split": info.get("split") or record.split,
        "dataset_revision": info.get("dataset_revision"),
        "data_files": info.get("data_files") or data_file,
        "data_sha256": record.data_sha256,
        "max_tokens": record.max_tokens,
        "command": record.command,
        "base_model": info.get("base_model"),
        "weights_sha256": record.weights_sha256,
        "figure": fig_rel,
        "settings": record.to_metrics(),
        "hyperparameters": record.hyperparameters,
    }


def _hyperparameters(info: dict, measurements: list) -> Optional[dict]:
    """From ``info`` (``hyperparameters`` or a ``trainer``), else a measurement's record."""
    hp = info.get("hyperparameters")
    trainer = info.get("trainer")
    if hp is None and trainer is not None:
        from transformers.modelcard import extract_hyperparameters_from_trainer

        hp = extract_hyperparameters_from_trainer(trainer)
    if hp is None:  # recorded with a measurement (MeasurementRecord.hyperparameters)
        hp = next((m["hyperparameters"] for m in measurements if m["hyperparameters"]), None)
    return dict(hp) if hp else None


def render_model_card(folder: str | os.PathLike, *, figure: bool = True, **info: Any) -> ModelCard:
    """Build the ``huggingface_hub.ModelCard`` of a measured folder (writes only the figures).

    ``info`` (all optional) overrides what the statistics headers say: ``model_name``, ``repo_id``,
    ``base_model``, ``datasets`` (list of Hub dataset ids) or ``dataset``, ``split``,
    ``dataset_config``, ``license``, ``language``, ``tags``, ``pipeline_tag``, ``command``, ``k``,
    ``description`` (a paragraph), ``hyperparameters`` (dict) or ``trainer`` (a ``Trainer``, whose
    arguments give the hyperparameters and base model).
    """
    from huggingface_hub import EvalResult, ModelCard, ModelCardData

    folder = Path(folder)
    names = list_measurements(folder)
    if not names:
        raise UserFileNotFoundError(f"{str(folder)!r} holds no {COLLAPSE_DIR}/{STATISTICS_FILE}: nothing to describe")
    measurements = [_measurement_entry(folder, name, info, figure) for name in names]
    trainer = info.get("trainer")
    base_model = info.get("base_model") or next((m["base_model"] for m in measurements if m["base_model"]), None)
    if base_model is None and trainer is not None:
        base_model = getattr(getattr(trainer.model, "config", None), "_name_or_path", None) or None
    if base_model and not _hub_id(base_model):
        base_model = None  # a local path is no Hub id: the Hub would reject it in base_model
    model_name = info.get("model_name") or (info.get("repo_id") or "").split("/")[-1] or folder.resolve().name
    datasets = (
        info.get("datasets")
        or ([info["dataset"]] if info.get("dataset") else None)
        or sorted({str(m["dataset"]) for m in measurements if _hub_id(m["dataset"])})
        or None
    )
    task = info.get("pipeline_tag", "text-generation")
    results = []
    for m in measurements:
        dataset_name = m["dataset"] or (os.path.basename(str(m["data_files"])) if m["data_files"] else "unspecified")
        for key, value in m["values"].items():
            if not math.isfinite(value):
                continue  # YAML/the Hub cannot carry inf or nan
            results.append(
                EvalResult(
                    task_type=task,
                    dataset_type=str(m["dataset"] or "text"),
                    dataset_name=str(dataset_name),
                    dataset_split=m["split"],
                    dataset_config=m["dataset_config"],
                    dataset_revision=m["dataset_revision"],
                    metric_type=METRIC_TYPE_PREFIX + key,
                    metric_name=MEASURES[key].name if key in MEASURES else key,
                    metric_value=float(value),
                    metric_config=m["name"],
                )
            )
    tags = ["neural-collapse", "hf_collapse"] + [t for t in (info.get("tags") or []) if t not in ("neural-collapse",)]
    card_data = ModelCardData(
        library_name="transformers",
        tags=tags,
        datasets=datasets,
        base_model=base_model,
        license=info.get("license"),
        language=info.get("language"),
        pipeline_tag=task,
        model_name=model_name,
        eval_results=results or None,
    )
    kwargs = dict(
        model_name=model_name,
        repo_id=info.get("repo_id"),
        description=info.get("description"),
        base_model_name=base_model,
        measurements=measurements,
        hyperparameters=_hyperparameters(info, measurements),
        citation=CITATION_BIBTEX,
        library_version=__version__,
        metric_prefix=METRIC_TYPE_PREFIX,
    )
    return ModelCard.from_template(card_data, template_path=str(TEMPLATE_PATH), **kwargs)


def write_model_card(folder: str | os.PathLike, *, figure: bool = True, **info: Any) -> Path:
    """Render the card (see :func:`render_model_card` for ``info``) into ``folder/README.md``,
    atomically, replacing any previous card; returns its path."""
    card = render_model_card(folder, figure=figure, **info)
    path = Path(folder) / "README.md"
    atomic_write(path, lambda tmp: Path(tmp).write_text(str(card), encoding="utf-8"))
    return path


def card_metrics(card: ModelCard) -> dict:
    """Back from a card: ``{measurement name or None: {measure key: value}}`` from its model-index."""
    out: dict = {}
    for r in card.data.eval_results or []:
        if r.metric_type.startswith(METRIC_TYPE_PREFIX):
            out.setdefault(r.metric_config, {})[r.metric_type[len(METRIC_TYPE_PREFIX) :]] = r.metric_value
    return out


# the columns of a measurements dataset row besides the measures (whose columns are their registry keys)
MEASUREMENT_COLUMNS = {
    "model": "Hub id of the measured model repo (its weights and `collapse/` statistics)",
    "revision": "the branch or tag of that repo holding the measurement (e.g. `main`, `step3000`)",
    "commit": "the commit sha of the measured model repo, if known",
    "weights_sha256": "sha256 of the model's weights (see `hf_collapse.integrations.weights_hash.weights_sha256`)",
    "measurement": "the measurement's name (e.g. a layer); empty for the default measurement",
    "data": "what the features were collected on: `dataset:ID split:SPLIT[ config:C]` or `file:NAME sha256:HEX`",
    "data_sha256": "sha256 of the text file measured on (null for Hub datasets)",
    "nc4_data": "the held-out data of NC4, described the same way",
    "max_tokens": "token budget of the statistics pass",
    "nc4_max_tokens": "token budget of the NC4 pass",
    "block_size": "tokens per block",
    "num_tokens": "tokens measured",
    "num_classes": "classes (the vocabulary size)",
    "num_classes_present": "classes that occur in the measured tokens",
    "dim": "hidden size of the measured features",
    "k": "the CDNV exponent",
    "step": "the training step of the checkpoint, when known",
    "eval_loss": "the validation loss recorded with the model, when known",
    "statistics": "path of the statistics file in the model repo, for recomputing or extending the measures",
    "hf_collapse_version": "the `hf_collapse` version that measured it",
    "date": "when the row was first written (UTC, ISO 8601); pushing the same row again keeps it",
}
MEASUREMENTS_DATA_DIR = "data"


def render_measurements_card(
    repo_id: Optional[str] = None,
    columns=None,
    *,
    title: Optional[str] = None,
    description: Optional[str] = None,
    models=None,
    license: str = "apache-2.0",
    data_files: str = f"{MEASUREMENTS_DATA_DIR}/**/*.parquet",
    tags=None,
) -> DatasetCard:
    """The ``huggingface_hub.DatasetCard`` of a measurements dataset: a Hub dataset repo of Parquet rows,
    one file per measured (model, revision, measurement), read by ``datasets.load_dataset(repo_id,
    split="train")``.

    ``columns``: the row's columns in order, each a key of :data:`MEASUREMENT_COLUMNS` or a measure key of
    the registry (default: all of both); their meanings (and the measures' directions) come from there.
    ``models``: Hub ids of the measured models, linked from the card. The YAML carries a ``configs``
    block whose ``train`` split is ``data_files``, the license and the ``neural-collapse`` tag.
    """
    from huggingface_hub import DatasetCard, DatasetCardData

    columns = list(columns) if columns is not None else [*MEASUREMENT_COLUMNS, *MEASURES]
    unknown = [c for c in columns if c not in MEASUREMENT_COLUMNS and c not in MEASURES]
    if unknown:
        raise UserValueError(
            f"unknown measurements column(s) {unknown}: use {sorted(MEASUREMENT_COLUMNS)} or measure keys {sorted(MEASURES)}"
        )
    rows = [{"key": c, "meaning": MEASUREMENT_COLUMNS[c]} for c in columns if c in MEASUREMENT_COLUMNS]
    measures = [
        {"key": c, "name": MEASURES[c].name, "meaning": MEASURES[c].meaning, "direction": MEASURES[c].direction_text}
        for c in columns
        if c in MEASURES
    ]
    title = title or (repo_id.split("/")[-1] if repo_id else "Neural collapse measurements")
    card_data = DatasetCardData(
        license=license,
        pretty_name=title,
        tags=["neural-collapse", "hf_collapse"]
        + [t for t in (tags or []) if t not in ("neural-collapse", "hf_collapse")],
        configs=[{"config_name": "default", "data_files": [{"split": "train", "path": data_files}]}],
    )
    return DatasetCard.from_template(
        card_data,
        template_path=str(MEASUREMENTS_TEMPLATE_PATH),
        repo_id=repo_id,
        title=title,
        description=description,
        models=list(models or []),
        columns=rows,
        measures=measures,
        data_dir=data_files.split("/")[0],
        citation=CITATION_BIBTEX,
        arxiv_id=ARXIV_ID,
        library_version=__version__,
    )
