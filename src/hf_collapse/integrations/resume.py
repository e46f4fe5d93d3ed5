"""Resumable collection passes: atomic checkpoints of per-rank statistics.

Layout of ``checkpoint_path``::

    latest.json                      {"fingerprint", "batches", "tokens", "world_size", "modules", "folder"}
    step-00000200/rank000-<module>.safetensors   each rank's CollapseStatistics after 200 batches

Each checkpoint goes into a fresh step folder; rank 0 then renames ``latest.json`` over the old one
and removes older step folders, so a crash at any moment leaves the previous checkpoint valid. The
fingerprint (weights, data, settings) must match on resume: statistics of different models or data
are never mixed.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from collections.abc import Mapping
from typing import Optional

import torch

from ..core.distributed import rank_and_world
from ..core.errors import UserValueError
from ..core.io import atomic_write_text
from ..core.statistics import CollapseStatistics


def fingerprint(
    model, dataloader=None, *, extra: Optional[Mapping] = None, weights_sha256: Optional[str] = None
) -> str:
    """A short sha256 over the model's weights, the data (length + first batch) and settings.

    Resuming from a checkpoint with another fingerprint raises, so statistics of different models
    or data are never mixed. ``weights_sha256``: the weights' hash when the caller has it (not hashed again).
    """
    if weights_sha256 is None:
        from .weights_hash import weights_sha256 as hash_weights

        weights_sha256 = hash_weights(model)
    h = hashlib.sha256(weights_sha256.encode())
    if dataloader is not None:
        try:
            h.update(str(len(dataloader)).encode())
        except TypeError:
            pass
        try:
            first = next(iter(dataloader))
            for k in sorted(first):
                v = first[k]
                if isinstance(v, torch.Tensor):
                    h.update(k.encode() + v.detach().cpu().contiguous().numpy().tobytes())
        except StopIteration:
            pass
    h.update(json.dumps(dict(extra or {}), sort_keys=True, default=str).encode())
    return h.hexdigest()[:32]


def _ckpt_file(path, rank, name):
    safe = name.replace("/", "_")
    return os.path.join(path, f"rank{rank:03d}-{safe}.safetensors")


def write_checkpoint(path, statistics, batches, tokens, fp):
    """Each rank writes its files into a fresh step folder; rank 0 then points ``latest.json`` at it
    (atomic rename), and removes older step folders. A crash leaves the previous checkpoint valid."""
    import torch.distributed as dist

    rank, world = rank_and_world()
    step_dir = os.path.join(path, f"step-{batches:08d}")
    os.makedirs(step_dir, exist_ok=True)
    for name, st in statistics.items():
        st.save(_ckpt_file(step_dir, rank, name), metadata={"fingerprint": fp, "batches": str(batches)})
    if world > 1:
        dist.barrier()
    if rank == 0:
        info = {
            "fingerprint": fp,
            "batches": batches,
            "tokens": tokens,
            "world_size": world,
            "modules": list(statistics),
            "folder": os.path.basename(step_dir),
        }
        atomic_write_text(os.path.join(path, "latest.json"), json.dumps(info))
        for d in os.listdir(path):
            if d.startswith("step-") and d != info["folder"]:
                shutil.rmtree(os.path.join(path, d), ignore_errors=True)
    if world > 1:
        dist.barrier()


def read_checkpoint(path, fp, names, num_classes):
    """Return (statistics dict, batches, tokens) of a valid checkpoint, or None when there is none."""
    latest = os.path.join(path, "latest.json")
    if not os.path.isfile(latest):
        return None
    with open(latest) as f:
        info = json.load(f)
    rank, world = rank_and_world()
    if info.get("fingerprint") != fp:
        raise UserValueError(
            f"the checkpoint in {path!r} was written for another model, data or settings "
            f"(fingerprint {info.get('fingerprint')} != {fp}); remove it or use another checkpoint_path"
        )
    if info.get("world_size") != world:
        raise UserValueError(
            f"the checkpoint in {path!r} was written by {info.get('world_size')} processes, "
            f"this run has {world}: resume with the same number of processes"
        )
    step_dir = os.path.join(path, info["folder"])
    stats = {}
    for name in info["modules"]:
        if name not in names:
            raise UserValueError(f"the checkpoint in {path!r} holds module {name!r}, not one of {sorted(names)}")
        st = CollapseStatistics.load(_ckpt_file(step_dir, rank, name))
        if st.num_classes != num_classes:
            raise UserValueError(f"checkpoint statistics have C={st.num_classes}, the model has {num_classes} classes")
        if st.metadata.get("fingerprint") != fp:
            raise UserValueError(f"checkpoint file for {name!r} does not match {path!r}/latest.json")
        st.metadata.pop("fingerprint", None)
        st.metadata.pop("batches", None)
        stats[name] = st
    return stats, int(info["batches"]), int(info["tokens"])
