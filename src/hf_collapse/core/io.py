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
import struct
import sys
import tempfile
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass

import torch

from .errors import UserTypeError, UserValueError


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


# safetensors dtype codes (as in a file header) of the torch dtypes a model or the statistics may hold
SAFETENSORS_DTYPES = {
    torch.float64: "F64",
    torch.float32: "F32",
    torch.float16: "F16",
    torch.bfloat16: "BF16",
    torch.int64: "I64",
    torch.int32: "I32",
    torch.int16: "I16",
    torch.int8: "I8",
    torch.uint8: "U8",
    torch.bool: "BOOL",
}
for _name, _code in (("float8_e4m3fn", "F8_E4M3"), ("float8_e5m2", "F8_E5M2")):
    if hasattr(torch, _name):
        SAFETENSORS_DTYPES[getattr(torch, _name)] = _code


_ORDER = ["I64", "F64", "F32", "I32", "BF16", "F16", "I16", "F8_E4M3", "F8_E5M2", "I8", "U8", "BOOL", "?"]


@dataclass(frozen=True)
class Chunked:
    """A tensor written in pieces: its ``dtype`` and ``shape``, and ``chunks()`` yielding its rows (along the
    first axis) in order, each a tensor of that dtype on any device."""

    dtype: torch.dtype
    shape: tuple[int, ...]
    chunks: Callable[[], Iterable[torch.Tensor]]


def write_safetensors(path: str | os.PathLike, tensors: Mapping[str, torch.Tensor | Chunked], metadata=None) -> None:
    """Write ``tensors`` (name -> tensor or :class:`Chunked`) and string ``metadata`` as a safetensors file,
    streaming: rows go to the file a chunk at a time (``core.rows.row_slices``), so writing holds no copy
    of a tensor and no byte string of the file (``safetensors.torch.save_file`` builds both). The layout
    is the format's: an 8-byte little-endian header length, the JSON header padded with spaces to a
    multiple of 8, then the tensors' little-endian bytes back to back in the header's order. Not atomic
    by itself: call it inside :func:`atomic_write`."""
    from .rows import row_slices

    if sys.byteorder != "little":
        raise UserValueError("write_safetensors writes the tensors' bytes as they are: it needs a little-endian host")
    header: dict = {"__metadata__": {str(k): str(v) for k, v in (metadata or {}).items()}} if metadata else {}
    entries, offset = [], 0
    # safetensors' own order (widest dtype first, then by name), so the bytes equal save_file's
    ordered = sorted(tensors.items(), key=lambda kv: (_ORDER.index(SAFETENSORS_DTYPES.get(kv[1].dtype, "?")), kv[0]))
    for name, t in ordered:
        dtype, shape = t.dtype, tuple(t.shape)
        if dtype not in SAFETENSORS_DTYPES:
            raise UserTypeError(f"tensor {name!r} has dtype {dtype}, which safetensors cannot store")
        nbytes = math.prod(shape) * torch.empty((), dtype=dtype).element_size()
        header[name] = {
            "dtype": SAFETENSORS_DTYPES[dtype],
            "shape": list(shape),
            "data_offsets": [offset, offset + nbytes],
        }
        entries.append((name, t, shape, nbytes))
        offset += nbytes
    head = json.dumps(header, separators=(",", ":")).encode()
    head += b" " * (-len(head) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(head)))
        f.write(head)
        for name, t, shape, nbytes in entries:
            if isinstance(t, torch.Tensor):
                rows = t.reshape(t.shape[0] if t.dim() else 1, math.prod(t.shape[1:]))  # (rows, the rest)
                pieces = (rows[sl] for sl in row_slices(*rows.shape))
            else:
                pieces = t.chunks()
            written = 0
            for piece in pieces:
                raw = piece.detach().to("cpu").contiguous().reshape(-1).view(torch.uint8)
                f.write(memoryview(raw.numpy()))
                written += raw.numel()
            if written != nbytes:
                raise UserValueError(
                    f"tensor {name!r}: its chunks hold {written} bytes, its shape {shape} needs {nbytes}"
                )


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
