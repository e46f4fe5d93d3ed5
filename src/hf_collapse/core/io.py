"""Files and numbers as users see them: atomic writes, one number format, tensor and metadata coercion.

The statistics file's schema lives with the class it describes, in ``core.statistics``.

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

from .errors import UserTypeError


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
    raise UserTypeError(f"{name} must be a torch.Tensor or numpy array, got {type(x).__name__}")


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
