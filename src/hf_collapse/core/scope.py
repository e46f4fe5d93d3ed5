"""Whether hf_collapse reduces over torch.distributed's process group here (see core.distributed).

Its own module so that ``statistics`` and ``distributed`` can both ask it (and where collective buffers live)
without importing each other.
"""

from __future__ import annotations

import contextlib
import contextvars

import torch

_LOCAL = contextvars.ContextVar("hf_collapse_local_only", default=False)


@contextlib.contextmanager
def local_only():
    """Inside: hf_collapse runs no collective and each process measures only its own data."""
    token = _LOCAL.set(True)
    try:
        yield
    finally:
        _LOCAL.reset(token)


def is_local() -> bool:
    """Inside :func:`local_only`."""
    return _LOCAL.get()


def comm_device(group=None) -> torch.device:
    """Where collective buffers must live: the current CUDA device for NCCL, else the CPU."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized() and dist.get_backend(group) == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")
