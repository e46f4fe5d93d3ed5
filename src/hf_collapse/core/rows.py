"""Row chunks: how the measures read K x d matrices without making a second K x d temporary.

At vocabulary scale one K x d float64 matrix is the size of the statistics themselves (4.2 GB at
K = 128,256, d = 4,096), so every row-wise product (squared norms, dots, a converted copy) is taken
over slices of at most ``CHUNK_BYTES`` and written into a (K,) result. The per-row arithmetic is the
same as on the whole matrix (each row's reduction runs over its own d contiguous values), so chunking
changes no result.
"""

from __future__ import annotations

from collections.abc import Iterator

import torch

CHUNK_BYTES = 16 * 2**20  # one float64 chunk: 16 MiB (512 rows at d = 4,096)


def row_slices(num_rows: int, dim: int) -> Iterator[slice]:
    """Consecutive row slices of a (num_rows, dim) float64 matrix, each at most ``CHUNK_BYTES``."""
    step = max(1, CHUNK_BYTES // (8 * max(dim, 1)))
    for start in range(0, num_rows, step):
        yield slice(start, min(start + step, num_rows))


def row_sq_norms(A: torch.Tensor) -> torch.Tensor:
    """||a_k||^2 (K,) of the rows of A (K, d), chunk by chunk."""
    out = torch.empty(A.shape[0], dtype=A.dtype, device=A.device)
    for sl in row_slices(*A.shape):
        out[sl] = A[sl].pow(2).sum(1)
    return out


def all_finite(A: torch.Tensor) -> bool:
    """Whether every entry of A (K, d) is finite, without a K x d boolean temporary."""
    return all(bool(torch.isfinite(A[sl]).all()) for sl in row_slices(*A.shape))
