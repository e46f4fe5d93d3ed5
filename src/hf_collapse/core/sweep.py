"""The tiled pairwise sweep: every pairwise measure in one pass over the upper triangle, no K x K matrix.

Per tile ``T = 2 - 2 u_i u_j^T = ||u_c - u_c'||^2`` comes from one GEMM of unit centred means; then
``||mu_c - mu_c'||^2 = (r_c - r_c')^2 + r_c r_c' T`` (no cancellation in r_c - r_c') gives the CDNV
terms, ``-log(T) / 2`` the log kernel and ``cos - m = -(T - 2 (1 - m)) / 2`` the interference spread
around its closed-form mean m. Tiles are float32 by default with float64 accumulation (the log kernel
is shifted by an estimate of its mean before squaring); entries below ``1e5 eps`` are recomputed in
float64 as direct differences, since a Gram matrix cannot resolve nearly parallel means. Three tile
buffers are reused (fresh 16 MB allocations page-fault on every tile) and the sums stay on the device
until one host sync at the end.

With ``riesz_s = s`` the Riesz s-kernel ``T^(-s/2) = ||u_c - u_c'||^-s`` rides the same tiles: it is
``exp(-s/2 (log T - lbar))`` times ``exp(-s/2 lbar)``, with lbar the shift of the log kernel (an
estimate of the mean of log T), evaluated in float64 (a fourth, float64 tile buffer) so that the
scaled kernel R stays near 1 and R - 1 (expm1, one pass) is summed and squared; the scale factor is put
back in log space by the caller. With ``riesz_s=None`` the tile loop does exactly what it did before.
"""

from __future__ import annotations

import math
from typing import NamedTuple, Optional

import torch

from .errors import UserValueError


class SweepSums(NamedTuple):
    """Float64 sums over pairs c < c' (``row``: per-class CDNV row sums (K,), a device tensor)."""

    cdnv_sum: float
    row: torch.Tensor
    log_sum: float  # sum of (log kernel - shift)
    log_sq: float  # sum of (log kernel - shift)^2
    shift: float  # an estimate of the mean log kernel; log T is shifted by -2 shift
    cos_sq: float  # sum of (cos - cos_mean)^2
    riesz_sum: Optional[float] = None  # sum of (R - 1), R = T^(-s/2) exp(-s shift)
    riesz_sq: Optional[float] = None  # sum of (R - 1)^2


def log_kernel_shift(u) -> float:
    """Mean log kernel -log(||u_c - u_c'||^2) / 2 over a fixed sample of at most 256 classes (float64,
    dense 256 x 256): any value near the true mean removes the cancellation of the variance."""
    sample = u[: min(u.shape[0], 256)].double()
    t_s = (2 - 2 * sample @ sample.T).clamp(min=torch.finfo(torch.float64).tiny)
    off = ~torch.eye(sample.shape[0], dtype=torch.bool, device=u.device)
    return float((-0.5 * t_s.log())[off].mean())


def pairwise_sweep(u, r, s, k, cos_mean, tile_size, dtype, progress, riesz_s: Optional[float] = None) -> SweepSums:
    """One pass over the upper triangle of the Gram matrix of unit centred means ``u`` (K, d) with
    norms ``r`` (K,) and class variances ``s`` (K,). All accumulators are float64."""
    K = u.shape[0]
    dev = u.device
    shift = log_kernel_shift(u)
    rt, st = r.to(dtype), s.to(dtype)  # (K,): small; u is converted a block at a time (no K x d copy)
    consts = {
        "tiny": torch.finfo(dtype).tiny,
        "close": 1e5 * torch.finfo(dtype).eps,  # below this, 2 - 2 cos from a GEMM has lost most digits
        "power": -(1.0 + k / 2.0),  # ||mu_c - mu_c'||^-(2+k) = (dist^2)^-(1+k/2)
        "two": torch.tensor(2.0, dtype=dtype, device=dev),
        "shift": shift,
        "cos_mean": cos_mean,
        "riesz": riesz_s,
    }
    row = torch.zeros(K, dtype=torch.float64, device=dev)
    # float64 sums over pairs, kept on the device (no host sync per tile): [CDNV, log kernel - shift,
    # (log kernel - shift)^2, (cos - cos_mean)^2] and, with riesz_s, [R - 1, (R - 1)^2]
    acc = torch.zeros(4 if riesz_s is None else 6, dtype=torch.float64, device=dev)
    # Tile buffers, reused: fresh large allocations cost page faults on every tile.
    size = min(tile_size, K) ** 2
    bufs = [torch.empty(size, dtype=dtype, device=dev) for _ in range(3)]
    if riesz_s is not None:
        bufs.append(torch.empty(size, dtype=torch.float64, device=dev))

    starts = list(range(0, K, tile_size))
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=len(starts) * (len(starts) + 1) // 2, desc="pairwise sweep", unit="tile")
    for a, i0 in enumerate(starts):
        i1 = min(i0 + tile_size, K)
        ui = u[i0:i1].to(dtype)  # (n, d) this row block in the tile dtype
        for j0 in starts[a:]:
            j1 = min(j0 + tile_size, K)
            uj = ui if j0 == i0 else u[j0:j1].to(dtype)  # (m, d): O(m d) per O(n m d) GEMM
            acc += _tile(ui, uj, rt, st, u, s, row, bufs, consts, i0, i1, j0, j1)
            if bar is not None:
                bar.update(1)
    if bar is not None:
        bar.close()
    sums = acc.tolist()  # the one host sync
    if not math.isfinite(sums[0]):
        raise UserValueError(
            f"two present classes have means that are numerically indistinguishable in {dtype} "
            f"(distance 0 after rounding), so the CDNV is infinite; use dtype=torch.float64"
        )
    return SweepSums(sums[0], row, sums[1], sums[2], shift, sums[3], *sums[4:])


def _tile(ui, uj, rt, st, u, s, row, bufs, c, i0, i1, j0, j1) -> torch.Tensor:
    """The sums of one tile (rows i0:i1 of unit means ``ui``, columns j0:j1 ``uj``, both in the tile
    dtype; a diagonal tile counts each pair once); adds the CDNV row sums into ``row``. Returns the
    tile's float64 sums (4 or, with Riesz, 6)."""
    n, m = i1 - i0, j1 - j0
    diag = i0 == j0
    ri, rj = rt[i0:i1], rt[j0:j1]
    buf_t, buf_d, buf_r = (b[: n * m].view(n, m) for b in bufs[:3])
    T = torch.addmm(c["two"], ui, uj.T, alpha=-2.0, out=buf_t)  # ||u_c - u_c'||^2
    _refine_close_pairs(T, u, i0, j0, c["close"], diag)
    T.clamp_min_(c["tiny"])
    # ||mu_c - mu_c'||^2 = (r_c - r_c')^2 + r_c r_c' ||u_c - u_c'||^2  (no cancellation in (r_c - r_c'))
    D = torch.sub(ri[:, None], rj[None, :], out=buf_d).square_()
    D.addcmul_(T, torch.outer(ri, rj, out=buf_r))
    P = D.pow_(c["power"])  # (n, m) ||mu_c - mu_c'||^-(2+k)
    # interference spread around its exact mean m: (cos - m) = -(T - 2 (1 - m)) / 2
    E = torch.sub(T, 2.0 * (1.0 - c["cos_mean"]), out=buf_r)
    L = T.log_().add_(2.0 * c["shift"])  # (n, m) -2 (log kernel - shift) = log T - lbar
    if diag:
        P.fill_diagonal_(0.0)
        L.fill_diagonal_(0.0)
        E.fill_diagonal_(0.0)
    # CDNV_cc' = (s_c + s_c') P_cc' / 2: row sums from one matrix-vector product and one sum
    r_part = 0.5 * ((P @ st[j0:j1]).double() + s[i0:i1] * P.sum(1).double())  # (n,)
    row[i0:i1] += r_part
    if not diag:
        row[j0:j1] += 0.5 * ((st[i0:i1] @ P).double() + s[j0:j1] * P.sum(0).double())
    extra = []
    if c["riesz"] is not None:  # R - 1 = expm1(-s/2 (log T - lbar)) in float64; 0 on the diagonal
        R = torch.mul(L, -0.5 * c["riesz"], out=bufs[3][: n * m].view(n, m)).expm1_().view(-1)  # (n m,)
        extra = [R.sum(), torch.dot(R, R)]
    # per-row float32 sums, added up in float64; a diagonal tile holds every pair twice
    tile = torch.stack(
        [
            r_part.sum(),
            -0.5 * L.sum(1).double().sum(),
            0.25 * L.square_().sum(1).double().sum(),
            0.25 * E.square_().sum(1).double().sum(),
            *extra,
        ]
    )
    return tile * (0.5 if diag else 1.0)


def _refine_close_pairs(T, u, i0, j0, close, diag):
    """Recompute in float64, as a direct sum of squared differences, the entries of the tile
    ``T = ||u_c - u_c'||^2`` that are below ``close``: from a Gram matrix, 2 - 2 cos carries an absolute
    error of a few float eps, which swamps the distance of nearly parallel centred means (and
    through it their CDNV). Such pairs are rare, so this costs one comparison pass per tile."""
    idx = (T < close).nonzero()  # (F, 2) local indices
    if diag:
        idx = idx[idx[:, 0] != idx[:, 1]]
    if idx.numel():
        a, b = idx[:, 0], idx[:, 1]
        T[a, b] = (u[i0 + a] - u[j0 + b]).pow(2).sum(1).to(T.dtype)
