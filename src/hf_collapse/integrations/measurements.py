"""A measurements dataset: one Parquet row per measured (model, revision, measurement) in a Hub dataset repo.

Layout of the dataset repo (what :func:`push_measurements` writes)::

    README.md                                          the card (model_card.render_measurements_card): configs YAML
    data/<model namespace>/<model name>/<revision>/<measurement>.parquet   one row each

``<measurement>`` is the measurement's name, ``_default`` for the default ``collapse/`` one. Every file
is at a path of its own, so two pushes at once never touch the same file and pushing the same
measurement again replaces its row; each push is one atomic commit. ``datasets.load_dataset(repo,
split="train")`` reads the rows with no code of ours; :func:`load_measurements` returns them as a
``datasets.Dataset`` with the explicit :data:`FEATURES` (every column typed, measures ``float64``, null
where a measurement did not compute one), from the Hub (or its cache offline) or a local folder of
those Parquet files.

The columns are :data:`~hf_collapse.integrations.model_card.MEASUREMENT_COLUMNS` then every measure of
the registry (:data:`~hf_collapse.core.registry.MEASURE_KEYS`), each documented in the card.
``eval_loss`` is the first found of ``metrics.json``'s ``eval_loss``, ``run.json``,
``eval_results.json`` / ``all_results.json`` and ``trainer_state.json`` (as ``hf-collapse analyze``
finds it on a run folder).
"""

from __future__ import annotations

import datetime
import io
import json
import logging
import os
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Optional

from ..core.errors import UserFileNotFoundError, UserValueError
from ..core.registry import MEASURE_KEYS
from .folder import STATISTICS_FILE, list_measurements, measurement_subdir, read_measurement
from .model_card import MEASUREMENT_COLUMNS, MEASUREMENTS_DATA_DIR, render_measurements_card
from .model_source import is_valid_repo_id, looks_like_path

logger = logging.getLogger(__name__)

DEFAULT_NAME = "_default"  # file name of the default measurement (measurement names start with a letter/digit)
CARD_TAG = "hf_collapse"
_STRING = (
    "model",
    "revision",
    "commit",
    "weights_sha256",
    "measurement",
    "data",
    "data_sha256",
    "nc4_data",
    "statistics",
    "hf_collapse_version",
    "date",
)
_INT = ("max_tokens", "nc4_max_tokens", "block_size", "num_tokens", "num_classes", "num_classes_present", "dim", "step")
_FLOAT = ("k", "eval_loss")
COLUMNS = (*MEASUREMENT_COLUMNS, *MEASURE_KEYS)


def _arrow_type(column: str):
    import pyarrow as pa

    if column in _STRING:
        return pa.string()
    if column in _INT:
        return pa.int64()
    return pa.float64()


def schema():
    """The ``pyarrow.Schema`` of a row: :data:`COLUMNS`, typed."""
    import pyarrow as pa

    return pa.schema([pa.field(c, _arrow_type(c)) for c in COLUMNS])


def features():
    """The ``datasets.Features`` of a measurements dataset (the same types as :func:`schema`)."""
    from datasets import Features, Value

    names = {"string": "string", "int64": "int64", "double": "float64"}
    return Features({f.name: Value(names[str(f.type)]) for f in schema()})


def _safe(part: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]", "_", part)


def row_path(model_repo: str, revision: Optional[str], measurement: Optional[str]) -> str:
    """Where the row of (model, revision, measurement) lives in the dataset repo."""
    return (
        f"{MEASUREMENTS_DATA_DIR}/{'/'.join(_safe(p) for p in model_repo.split('/'))}/"
        f"{_safe(revision or 'main')}/{measurement or DEFAULT_NAME}.parquet"
    )


def _read_json(path: Path) -> dict:
    try:
        value = json.loads(path.read_text(encoding="utf-8")) if path.is_file() else {}
    except ValueError:
        return {}
    return value if isinstance(value, dict) else {}


def _eval_loss(folder: Path, metrics: Mapping) -> Optional[float]:
    for src in (
        metrics,
        _read_json(folder / "run.json"),
        _read_json(folder / "eval_results.json"),
        _read_json(folder / "all_results.json"),
    ):
        if src.get("eval_loss") is not None:
            return float(src["eval_loss"])
    from .folder import eval_loss

    return eval_loss(folder)


def measurement_rows(
    folder: str | os.PathLike,
    *,
    model_repo: str,
    revision: Optional[str] = None,
    commit: Optional[str] = None,
    step: Optional[int] = None,
    date: Optional[str] = None,
) -> list[dict]:
    """The rows of every measurement in a measured folder (the default one first), as dicts of
    :data:`COLUMNS`. ``commit``: of the measured model repo, ``step``: of the checkpoint (default: the
    record's)."""
    folder = Path(folder)
    names = list_measurements(folder)
    if not names:
        raise UserFileNotFoundError(f"{str(folder)!r} holds no collapse/{STATISTICS_FILE}: measure it first")
    date = date or datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")
    rows = []
    for name in names:
        stats, _, metrics, _, record = read_measurement(folder, name)
        row: dict[str, Any] = dict.fromkeys(COLUMNS)
        row.update(
            model=model_repo,
            revision=revision or "main",
            commit=commit or record.commit,
            weights_sha256=record.weights_sha256,
            measurement=name or "",
            data=record.data,
            data_sha256=record.data_sha256,
            nc4_data=record.nc4_data,
            max_tokens=record.max_tokens,
            nc4_max_tokens=record.nc4_max_tokens,
            block_size=record.block_size,
            num_tokens=int(stats.num_tokens),
            num_classes=int(stats.num_classes),
            num_classes_present=int(stats.present.sum()),
            dim=int(stats.dim),
            k=record.options.get("k"),
            step=step if step is not None else record.step,
            eval_loss=_eval_loss(folder, metrics),
            statistics=f"{measurement_subdir(name)}/{STATISTICS_FILE}",
            hf_collapse_version=record.library_version,
            date=date,
        )
        for key in MEASURE_KEYS:
            if metrics.get(key) is not None:
                row[key] = float(metrics[key])
        rows.append(row)
    return rows


def rows_to_parquet(rows: Sequence[Mapping]) -> bytes:
    """Parquet bytes of ``rows`` with the typed :func:`schema`."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    table = pa.Table.from_pylist([{c: r.get(c) for c in COLUMNS} for r in rows], schema=schema())
    buffer = io.BytesIO()
    pq.write_table(table, buffer)
    return buffer.getvalue()


def _not_a_measurements_dataset(repo: str, why: str) -> ValueError:
    return ValueError(
        f"dataset repo {repo!r} exists but is not a measurements dataset ({why}): expected a new or empty "
        f"dataset repo, or one written by hf_collapse.push_measurements (card tagged {CARD_TAG!r}, rows under "
        f"{MEASUREMENTS_DATA_DIR}/)"
    )


def _card_is_ours(text: Optional[str]) -> bool:
    if not text:
        return False
    from huggingface_hub import DatasetCard

    try:
        tags = DatasetCard(text).data.to_dict().get("tags") or []
    except Exception:  # noqa: BLE001  (any unparsable card is simply not ours)
        return False
    return CARD_TAG in tags


def check_measurements_repo(api, repo: str, files: Sequence[str], card_text: Optional[str]) -> None:
    """ValueError when a dataset repo holding ``files`` is not (empty or) a measurements dataset."""
    others = [f for f in files if f not in (".gitattributes",)]
    if not others:
        return
    if "README.md" not in files:
        raise _not_a_measurements_dataset(repo, "it has files but no README.md")
    if not _card_is_ours(card_text):
        raise _not_a_measurements_dataset(repo, f"its README.md is not tagged {CARD_TAG!r}")


def push_measurements(
    folder: str | os.PathLike,
    dataset_repo: str,
    *,
    model_repo: str,
    revision: Optional[str] = None,
    commit: Optional[str] = None,
    step: Optional[int] = None,
    token: Optional[str] = None,
    private: bool = False,
):
    """Write one Parquet row per measurement of the measured ``folder`` to the measurements dataset
    ``dataset_repo`` (created if missing), with the card as README.md, in ONE commit; returns its
    ``CommitInfo``. ``model_repo``/``revision``/``commit`` say where the measured model lives on the Hub
    (as :func:`~hf_collapse.integrations.hub.push_measured` pushed it); ``step`` overrides the recorded
    training step (a sweep's checkpoint whose weights repeat another's). Pushing the same (model,
    revision, measurement) again replaces its row. A dataset repo that holds something else: ValueError."""
    from huggingface_hub import CommitOperationAdd, HfApi
    from huggingface_hub.errors import EntryNotFoundError

    for what, repo in (("dataset", dataset_repo), ("model", model_repo)):
        if not isinstance(repo, str) or not is_valid_repo_id(repo):
            raise UserValueError(
                f"{repo!r} is not a valid Hub {what} repo id: expected 'namespace/name' of letters, digits, "
                "'-', '_' and '.'"
            )
    rows = measurement_rows(
        folder, model_repo=model_repo, revision=revision, commit=commit, step=step
    )  # before any traffic
    api = HfApi(token=token)
    api.create_repo(dataset_repo, repo_type="dataset", private=private, exist_ok=True)
    files = api.list_repo_files(dataset_repo, repo_type="dataset")
    card_text = None
    if "README.md" in files:
        try:
            path = api.hf_hub_download(dataset_repo, "README.md", repo_type="dataset")
            card_text = Path(path).read_text(encoding="utf-8")
        except EntryNotFoundError:
            card_text = None
    check_measurements_repo(api, dataset_repo, files, card_text)
    models = {model_repo}
    prefix = MEASUREMENTS_DATA_DIR + "/"
    for f in files:
        parts = f[len(prefix) :].split("/") if f.startswith(prefix) else []
        if len(parts) >= 4:  # namespace/name/revision/measurement.parquet
            models.add("/".join(parts[:-2]))
    card = render_measurements_card(dataset_repo, models=sorted(models))
    operations = [CommitOperationAdd("README.md", str(card).encode("utf-8"))]
    for row in rows:
        path = row_path(model_repo, revision, row["measurement"] or None)
        if path in files:  # the same row again keeps its date: its bytes are equal, the Hub skips the file
            old = _stored_row(api, dataset_repo, path)
            if old is not None and all(old.get(k) == v for k, v in row.items() if k != "date"):
                row["date"] = old.get("date") or row["date"]
        operations.append(
            CommitOperationAdd(row_path(model_repo, revision, row["measurement"] or None), rows_to_parquet([row]))
        )
    info = api.create_commit(
        dataset_repo,
        operations=operations,
        commit_message=f"Measurements of {model_repo}@{revision or 'main'} ({len(rows)} rows)",
        repo_type="dataset",
    )
    logger.info("pushed %d rows of %s to %s (%s)", len(rows), folder, dataset_repo, info.commit_url)
    return info


def _stored_row(api, dataset_repo: str, path: str) -> Optional[dict]:
    """The one row of a stored Parquet file of the dataset (None when it cannot be read)."""
    import pyarrow.parquet as pq

    try:
        rows = pq.read_table(api.hf_hub_download(dataset_repo, path, repo_type="dataset")).to_pylist()
    except Exception as e:  # noqa: BLE001 - unreadable or gone: the new row replaces it
        logger.info("could not read %s of %s (%s): writing the row anew", path, dataset_repo, e)
        return None
    return rows[0] if len(rows) == 1 else None


def _parquet_files(root: Path) -> list[Path]:
    return sorted(p for p in root.rglob("*.parquet") if not any(part.startswith(".") for part in p.parts))


def read_measurement_table(path_or_repo: str | os.PathLike, *, token: Optional[str] = None, revision=None):
    """The rows of a measurements dataset as a ``pyarrow.Table`` with :func:`schema` (columns a file
    lacks are null), sorted by model, step, revision and measurement. ``path_or_repo``: a local folder
    of the Parquet files (or a single one), else a Hub dataset id (downloaded; offline from the cache)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    local = Path(path_or_repo)
    if local.exists():
        files = [local] if local.is_file() else _parquet_files(local)
        source = str(local)
        if not files:
            raise UserFileNotFoundError(f"{source!r} holds no Parquet files: expected a measurements dataset folder")
    else:
        repo = str(path_or_repo)
        if looks_like_path(repo) or not is_valid_repo_id(repo):
            raise UserFileNotFoundError(f"no run folder at {repo!r} (and it is not a Hub dataset id either)")
        from huggingface_hub import snapshot_download

        root = Path(
            snapshot_download(
                repo,
                repo_type="dataset",
                revision=revision,
                token=token,
                allow_patterns=["README.md", f"{MEASUREMENTS_DATA_DIR}/**"],
            )
        )
        card = root / "README.md"
        if not _card_is_ours(card.read_text(encoding="utf-8") if card.is_file() else None):
            raise _not_a_measurements_dataset(repo, f"its README.md is missing or not tagged {CARD_TAG!r}")
        files = _parquet_files(root / MEASUREMENTS_DATA_DIR)
        source = repo
    want = schema()
    tables = []
    for f in files:
        try:
            t = pq.read_table(f)
        except (pa.ArrowInvalid, OSError) as e:
            raise UserValueError(f"{str(f)!r} is not a readable Parquet file: {e}") from e
        if "model" not in t.column_names or not any(k in t.column_names for k in MEASURE_KEYS):
            raise UserValueError(f"{str(f)!r} in {source!r} is not a measurements row (no model and measure columns)")
        cols = [
            t.column(c).cast(want.field(c).type) if c in t.column_names else pa.nulls(t.num_rows, want.field(c).type)
            for c in want.names
        ]
        tables.append(pa.Table.from_arrays(cols, schema=want))
    table = pa.concat_tables(tables) if tables else want.empty_table()
    rows = table.to_pylist()
    rows.sort(
        key=lambda r: (
            r["model"] or "",
            r["step"] if r["step"] is not None else -1,
            r["revision"] or "",
            r["measurement"] or "",
        )
    )
    return pa.Table.from_pylist(rows, schema=want)


def load_measurements(path_or_repo: str | os.PathLike, *, token: Optional[str] = None, revision=None):
    """A measurements dataset as a ``datasets.Dataset`` with explicit :func:`features` (see the module
    docstring): from a Hub dataset id (or its cache offline) or a local folder of its Parquet files."""
    from datasets import Dataset

    table = read_measurement_table(path_or_repo, token=token, revision=revision)
    return Dataset.from_dict(table.to_pydict(), features=features())


def collection_note(folder: str | os.PathLike) -> str:
    """What a measured folder measured, in a line for a collection item's note."""
    names = list_measurements(folder)
    if not names:
        return "neural-collapse measurements"
    stats, _, _, _, record = read_measurement(folder, names[0])
    what = f"neural collapse of {stats.num_tokens} tokens" + (f" of {record.data}" if record.data else "")
    more = f", {len(names)} measurements" if len(names) > 1 else ""
    return (what + more + (f", step {record.step}" if record.step is not None else ""))[:500]


def add_to_collection(
    collection: str,
    model_repo: Optional[str],
    dataset_repo: Optional[str] = None,
    *,
    folder: Optional[str | os.PathLike] = None,
    note: Optional[str] = None,
    token: Optional[str] = None,
) -> str:
    """Create the Hub collection ``"NAMESPACE/TITLE"`` if missing and add the measured model repo and the
    measurements dataset to it (each once; ``note`` defaults to what ``folder`` measured). Returns the
    collection's URL."""
    from huggingface_hub import HfApi

    namespace, _, title = (collection or "").partition("/")
    if not namespace or not title.strip():
        raise UserValueError(
            f"collection {collection!r} is invalid: expected 'NAMESPACE/TITLE', e.g. 'me/Pythia, measured'"
        )
    api = HfApi(token=token)
    found = api.create_collection(title, namespace=namespace, exists_ok=True)
    if note is None and folder is not None:
        note = collection_note(folder)
    if model_repo:
        api.add_collection_item(found.slug, model_repo, "model", note=note, exists_ok=True)
    if dataset_repo:
        api.add_collection_item(
            found.slug, dataset_repo, "dataset", note="one row per measurement (hf_collapse)", exists_ok=True
        )
    return found.url


__all__ = [
    "COLUMNS",
    "add_to_collection",
    "features",
    "load_measurements",
    "measurement_rows",
    "push_measurements",
    "read_measurement_table",
    "row_path",
    "schema",
]
