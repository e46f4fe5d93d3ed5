"""``weights_sha256``: one hash of a model's weights, equal for a saved folder and the model in memory.

The statistics header of a measured model records it (key ``weights_sha256``), so a reader can
tell whether statistics belong to the weights beside them. Also exported as
``hf_collapse.integrations.weights_hash.weights_sha256``.
"""

from __future__ import annotations

import hashlib
import json
import mmap
import os
import struct
import zipfile
from collections.abc import Mapping
from pathlib import Path

import torch

from ..core.errors import UserFileNotFoundError, UserTypeError, UserValueError
from ..core.io import SAFETENSORS_DTYPES


def _tensor_digest(dtype: str, shape, data) -> str:
    h = hashlib.sha256(f"{dtype}|{','.join(str(int(s)) for s in shape)}|".encode())
    h.update(data)
    return h.hexdigest()


# a folder's weight files, in the order transformers prefers them
WEIGHT_FILES = ("*.safetensors", "pytorch_model*.bin")


def has_weights(folder: Path) -> bool:
    """Whether ``folder`` holds model weights (``*.safetensors`` or ``pytorch_model*.bin``) at its top level."""
    return any(p.is_file() for pat in WEIGHT_FILES for p in folder.glob(pat))


def _folder_weight_files(folder: Path) -> list[Path]:
    """The weight files of a folder as transformers picks them: ``*.safetensors``, else ``pytorch_model*.bin``."""
    for pat in WEIGHT_FILES:
        files = sorted(p for p in folder.glob(pat) if p.is_file())
        if files:
            return files
    raise UserFileNotFoundError(f"no *.safetensors or pytorch_model*.bin weights in {str(folder)!r}")


def _bin_digests(path: Path) -> list[str]:
    """Per-tensor digests of a ``pytorch_model*.bin`` state dict, loaded with ``weights_only=True`` (tensors
    and plain containers only: no code is unpickled, as in transformers)."""
    try:
        # mmap reads the zip format of torch >= 1.6 lazily; legacy files are read whole
        state = torch.load(path, map_location="cpu", weights_only=True, mmap=zipfile.is_zipfile(path))
    except Exception as e:  # noqa: BLE001 - pickle / zip errors of many kinds
        raise UserValueError(f"{str(path)!r} is not a readable PyTorch state dict ({type(e).__name__}: {e})") from e
    if not isinstance(state, Mapping):
        raise UserValueError(f"{str(path)!r} holds a {type(state).__name__}, expected a state dict")
    return _module_digests(state)


def _file_digests(path: Path) -> list[str]:
    """Per-tensor digests of one safetensors file, read from its header and raw bytes (no torch load)."""
    with open(path, "rb") as f:
        head = f.read(8)
        if len(head) != 8:
            raise UserValueError(f"{str(path)!r} is not a safetensors file (shorter than its 8-byte header length)")
        (n,) = struct.unpack("<Q", head)
        size = os.fstat(f.fileno()).st_size
        if n > size - 8:
            raise UserValueError(f"{str(path)!r} is not a readable safetensors file (header length {n} > file size)")
        try:
            header = json.loads(f.read(n))
        except ValueError as e:
            raise UserValueError(f"{str(path)!r} is not a readable safetensors file (bad header: {e})") from e
        start = 8 + n
        digests = []
        with mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as mm, memoryview(mm) as view:
            for name, info in header.items():
                if name == "__metadata__":
                    continue
                try:
                    a, b = info["data_offsets"]
                    dtype, shape = info["dtype"], info["shape"]
                except (KeyError, TypeError, ValueError) as e:
                    raise UserValueError(f"{str(path)!r}: tensor {name!r} has a malformed header entry") from e
                if not 0 <= a <= b <= size - start:
                    raise UserValueError(f"{str(path)!r}: tensor {name!r} lies outside the file (truncated?)")
                digests.append(_tensor_digest(dtype, shape, view[start + a : start + b]))
    return digests


def _module_digests(tensors: Mapping[str, torch.Tensor]) -> list[str]:
    digests = []
    for name, t in tensors.items():
        if not isinstance(t, torch.Tensor):
            raise UserTypeError(f"weights_sha256: state entry {name!r} is a {type(t).__name__}, expected a tensor")
        if t.dtype not in SAFETENSORS_DTYPES:
            raise UserTypeError(f"weights_sha256: tensor {name!r} has dtype {t.dtype}, which safetensors cannot store")
        t = t.detach().to("cpu").contiguous()
        raw = t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b""
        digests.append(_tensor_digest(SAFETENSORS_DTYPES[t.dtype], t.shape, raw))
    return digests


def weights_sha256(folder_or_model: str | os.PathLike | torch.nn.Module | Mapping[str, torch.Tensor]) -> str:
    """A hash of a model's weights that is the same for a saved folder and the model in memory.

    ``folder_or_model``: a folder holding ``*.safetensors`` weights (top level; shards included; else
    ``pytorch_model*.bin``, read with ``weights_only=True``), a
    ``torch.nn.Module`` (its ``state_dict()``) or a mapping name -> tensor. Each tensor gives
    sha256(dtype | shape | raw little-endian bytes); the result is sha256 of the sorted set of those
    digests. Names are left out on purpose, and equal tensors count once: so the hash does not
    depend on sharding, on tied weights being saved once, or on key renaming at save time. It does
    depend on dtype (a float32 copy of bfloat16 weights hashes differently). Nothing is unpickled.
    """
    if isinstance(folder_or_model, (str, os.PathLike)):
        folder = Path(folder_or_model)
        if not folder.is_dir():
            raise UserFileNotFoundError(f"weights_sha256: no folder at {str(folder)!r}")
        digests = [
            d
            for p in _folder_weight_files(folder)
            for d in (_bin_digests(p) if p.suffix == ".bin" else _file_digests(p))
        ]
    elif isinstance(folder_or_model, torch.nn.Module):
        digests = _module_digests(folder_or_model.state_dict())
    elif isinstance(folder_or_model, Mapping):
        digests = _module_digests(folder_or_model)
    else:
        raise UserTypeError(
            f"weights_sha256 expects a folder path, an nn.Module or a dict of tensors, "
            f"got {type(folder_or_model).__name__}"
        )
    if not digests:
        raise UserValueError("weights_sha256: no tensors to hash")
    return hashlib.sha256("\n".join(sorted(set(digests))).encode()).hexdigest()
