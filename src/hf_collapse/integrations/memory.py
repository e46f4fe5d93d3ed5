"""The memory plan of a measurement: the bytes its statistics will take, known before the first forward.

Per measured module of C classes and feature width d (float64 = 8 bytes):

- pass 1 state: sums C x d, counts C, squared sums C (and the pass's second counts/sums: 2 C), the shift
  d, and the d x d second moment when the covariance is on;
- NC4 pass: the class means C x d in the measures' dtype (float32 by default: 4 bytes; float64: 8), plus
  one block of scores (``core.nc4.SCORE_BYTES``);
- the measures' working set, one module at a time: one C x d float64 array (the class means, centred and
  normalised in place) plus buffers that do not grow with C: the sweep's three tile x tile tiles (a fourth,
  float64, with ``riesz_s``), one Gram chunk (``GRAM_CHUNK`` x d in the dtype) and up to four row chunks
  (``core.rows.CHUNK_BYTES``). Every other K x d quantity is read a chunk at a time.

At C = 128,256 and d = 4,096 the sums alone are 4.2 GB (3.9 GiB) per module; the plan adds them up
for every module (``--layers``) and compares the peak with what the statistics' device has free.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Optional

import torch

from ..core.errors import UserValueError
from ..core.nc4 import SCORE_BYTES
from ..core.options import MeasureOptions
from ..core.rows import CHUNK_BYTES
from ..core.spectral import GRAM_CHUNK

F64 = 8


@dataclass(frozen=True)
class ModulePlan:
    """Bytes of one measured module's statistics (``state``), NC4 means and measures' working set."""

    name: str
    num_classes: int
    dim: int
    state: int
    nc4_means: int
    working_set: int


@dataclass(frozen=True)
class MemoryPlan:
    """The bytes a measurement's statistics take on ``device``, per module and at the peak."""

    modules: tuple[ModulePlan, ...]
    device: str

    @property
    def state(self) -> int:
        return sum(m.state for m in self.modules)

    @property
    def peak(self) -> int:
        """All modules' state and NC4 means, plus the largest module's measures' working set."""
        return (
            self.state + sum(m.nc4_means for m in self.modules) + max((m.working_set for m in self.modules), default=0)
        )

    def lines(self) -> list[str]:
        out = [
            f"memory plan on {self.device}: statistics {gib(self.state)}, peak {gib(self.peak)} "
            f"(state + NC4 means and scores + measures' working set)"
        ]
        for m in self.modules:
            out.append(
                f"  {m.name}: C={m.num_classes:,} d={m.dim:,}: state {gib(m.state)}, NC4 {gib(m.nc4_means)}, "
                f"measures {gib(m.working_set)}"
            )
        return out

    def check(self, available: Optional[int], ways_out: str = "") -> None:
        """ValueError naming both numbers and the ways out when the peak exceeds ``available`` bytes."""
        if available is None or self.peak <= available:
            return
        raise UserValueError(
            f"the statistics need about {gib(self.peak)} on {self.device} but {gib(available)} is available"
            + (f": {ways_out}" if ways_out else "")
        )


def gib(n: int) -> str:
    """Bytes as GiB with two decimals."""
    return f"{n / 2**30:.2f} GiB"


def module_plan(
    name: str,
    num_classes: int,
    dim: int,
    *,
    covariance: bool = False,
    options: Optional[MeasureOptions] = None,
    nc4: bool = True,
) -> ModulePlan:
    """The plan of one measured module: statistics state (C x d sums, per-class counts and square sums, the
    shift, the d x d covariance when on), the NC4 pass's class means and scores, and the measures' working
    set (one C x d float64 array plus fixed buffers; see the module docstring)."""
    options = options or MeasureOptions()
    C, d = int(num_classes), int(dim)
    size = torch.tensor([], dtype=options.torch_dtype).element_size()
    state = F64 * (C * d + 4 * C + d + (d * d if covariance else 0))
    nc4 = size * C * d + SCORE_BYTES if nc4 else 0
    tile = min(options.tile_size, C) ** 2
    buffers = 3 * size * tile + (F64 * tile if options.riesz_s is not None else 0)
    working = F64 * C * d + buffers + size * min(GRAM_CHUNK, C) * d + 4 * CHUNK_BYTES
    return ModulePlan(name, C, d, state, nc4, working)


def feature_dim(module: torch.nn.Module, model=None) -> Optional[int]:
    """Width of a module's input (the measured feature): ``in_features``, a weight's second axis, else
    the model's ``hidden_size``."""
    d = getattr(module, "in_features", None)
    if isinstance(d, int):
        return d
    w = getattr(module, "weight", None)
    if isinstance(w, torch.Tensor) and w.dim() == 2:
        return int(w.shape[1])
    cfg = getattr(model, "config", None)
    for attr in ("hidden_size", "n_embd", "d_model"):
        if isinstance(getattr(cfg, attr, None), int):
            return int(getattr(cfg, attr))
    return None


def plan_for(
    model,
    modules: Mapping[str, torch.nn.Module],
    num_classes: int,
    device,
    *,
    covariance: bool = False,
    options: Optional[MeasureOptions] = None,
    nc4: bool = True,
) -> MemoryPlan:
    """The plan of measuring ``modules`` (name -> module) of ``model`` with ``num_classes`` classes (and an
    NC4 pass unless ``nc4`` is False)."""
    plans = []
    for name, mod in modules.items():
        d = feature_dim(mod, model)
        if d is not None:
            plans.append(module_plan(name, num_classes, d, covariance=covariance, options=options, nc4=nc4))
    return MemoryPlan(tuple(plans), str(device))


def available_bytes(device) -> Optional[int]:
    """Free bytes on ``device``: ``torch.cuda.mem_get_info`` on a GPU, MemAvailable of /proc/meminfo (else
    the free pages of ``os.sysconf``) on the CPU; None when unknown."""
    device = torch.device(device)
    if device.type == "cuda":
        try:
            return int(torch.cuda.mem_get_info(device)[0])
        except (RuntimeError, AssertionError):
            return None
    if device.type != "cpu":
        return None
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    try:
        return int(os.sysconf("SC_AVPHYS_PAGES")) * int(os.sysconf("SC_PAGE_SIZE"))
    except (ValueError, OSError, AttributeError):
        return None


def statistics_device(model, module: torch.nn.Module) -> torch.device:
    """Where a module's statistics live: the device its features are computed on (accelerate's execution
    device under a device map or offload, else its first real parameter's, else the model's)."""
    hook = getattr(module, "_hf_hook", None)
    device = getattr(hook, "execution_device", None)
    if device is not None:
        return torch.device(f"cuda:{device}" if isinstance(device, int) else device)
    for owner in (module, model):
        for p in owner.parameters():
            if p.device.type != "meta":
                return p.device
    return torch.device("cpu")
