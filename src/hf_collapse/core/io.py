"""Files and numbers as users see them: atomic writes, the statistics file schema, one number format.

Atomic writes: the content goes to a temporary file in the destination folder (same filesystem),
which then replaces the destination with ``os.replace``; on any error the temporary file is removed
and the old destination, if any, is untouched. Every file hf_collapse writes appears whole or not at all.
"""

from __future__ import annotations

import json
import math
import os
import tempfile
from collections.abc import Callable

import torch

SCHEMA = "hf_collapse.statistics"
SCHEMA_VERSION = 1
# tensors and header entries of a statistics file that belong to the state, not to extras / user metadata
STATE_TENSORS = frozenset(
    {
        "counts",
        "sums",
        "sq_sums",
        "shift",
        "means",
        "variances",
        "second_moment",
        "frozen_means",
        "pass2_counts",
        "pass2_sq_sums",
    }
)
HEADER_KEYS = frozenset(
    {
        "schema",
        "schema_version",
        "num_classes",
        "dim",
        "num_tokens",
        "dtype",
        "covariance",
        "has_shift",
        "ignore_index",
        "library_version",
    }
)


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def atomic_write(path: str | os.PathLike, write: Callable[[str], None]) -> None:
    """Call ``write(tmp_path)`` to fill a temporary file, then move it to ``path``.

    The file gets the usual permissions of a new file (0644 minus the umask), not mkstemp's 0600,
    since measured folders are published.
    """
    path = os.path.abspath(os.fspath(path))
    directory = os.path.dirname(path)
    os.makedirs(directory, exist_ok=True)
    suffix = os.path.splitext(path)[1]  # some writers (savefig, safetensors) look at the extension
    fd, tmp = tempfile.mkstemp(prefix=".tmp-", suffix=suffix, dir=directory)
    os.close(fd)
    try:
        write(tmp)
        os.chmod(tmp, 0o644 & ~_umask())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    """Write ``data`` to ``path`` atomically (see :func:`atomic_write`)."""

    def write(tmp):
        with open(tmp, "wb") as f:
            f.write(data)

    atomic_write(path, write)


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    """Write ``text`` as UTF-8 to ``path`` atomically."""
    atomic_write_bytes(path, text.encode("utf-8"))


def fmt(value, digits: int = 5) -> str:
    """A number for tables and cards: ``digits`` significant digits, ``inf``/``nan`` spelled out,
    ``""`` for a missing value, anything else as ``str``."""
    if value is None or value == "":
        return ""
    if isinstance(value, float):
        return repr(value) if not math.isfinite(value) else f"{value:.{digits}g}"
    return str(value)


def read_statistics_file(path: str | os.PathLike) -> tuple[dict, dict[str, torch.Tensor]]:
    """Open a statistics safetensors file and check its header: ``(metadata, tensors)``.

    Raises FileNotFoundError for a missing file and ValueError naming the file and the problem for an
    unreadable, foreign, too new or malformed one. Never unpickles.
    """
    from safetensors import safe_open

    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"no statistics file at {path!r}")
    try:
        with safe_open(path, framework="pt") as f:
            meta = f.metadata() or {}
            tensors = {k: f.get_tensor(k) for k in f.keys()}
    except Exception as e:  # safetensors raises its own error types for corrupt files
        raise ValueError(f"{path!r} is not a readable safetensors file: {e}") from e
    if meta.get("schema") != SCHEMA:
        raise ValueError(
            f"{path!r} is not an hf_collapse statistics file (schema {meta.get('schema')!r}, expected {SCHEMA!r})"
        )
    try:
        version = int(meta.get("schema_version", ""))
        int(meta["num_classes"]), int(meta["dim"])
    except (KeyError, ValueError) as e:
        raise ValueError(f"{path!r} has a malformed statistics header: {e}") from e
    if version > SCHEMA_VERSION:
        raise ValueError(
            f"{path!r} uses statistics schema version {version}, newer than this hf_collapse "
            f"supports ({SCHEMA_VERSION}); upgrade hf_collapse"
        )
    C, d = int(meta["num_classes"]), int(meta["dim"])
    expected = {"counts": (C,), "sums": (C, d), "sq_sums": (C,), "shift": (d,), "means": (C, d), "variances": (C,)}
    if meta.get("covariance") == "1":
        expected["second_moment"] = (d, d)
    for name, shape in expected.items():
        if name not in tensors:
            raise ValueError(f"{path!r} lacks the tensor {name!r}")
        t = tensors[name]
        if tuple(t.shape) != shape or t.dtype != torch.float64:
            raise ValueError(
                f"{path!r}: tensor {name!r} has shape {tuple(t.shape)} dtype {t.dtype}, expected {shape} float64"
            )
    return meta, tensors


def as_tensor(x, name: str) -> torch.Tensor:
    """``x`` as a tensor (a tensor as is, numpy without a copy, lists converted); TypeError naming ``name`` otherwise."""
    if isinstance(x, torch.Tensor):
        return x
    try:
        import numpy as np

        if isinstance(x, np.ndarray):
            return torch.from_numpy(x)
    except ImportError:  # pragma: no cover - numpy ships with torch
        pass
    if isinstance(x, (list, tuple)):
        return torch.as_tensor(x)
    raise TypeError(f"{name} must be a torch.Tensor or numpy array, got {type(x).__name__}")


def metadata_json(obj) -> str:
    """Encode a metadata value (dict/list) for the safetensors header, which holds strings only."""
    return json.dumps(obj, sort_keys=True)


def write_csv_rows(rows, path: str | os.PathLike, columns) -> None:
    """``rows`` (dicts) as a CSV table with these ``columns`` (None as an empty cell), written atomically."""
    import csv
    import io

    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=list(columns), extrasaction="ignore")
    w.writeheader()
    for r in rows:
        w.writerow({k: ("" if r.get(k) is None else r.get(k)) for k in columns})
    atomic_write_text(path, buf.getvalue())
