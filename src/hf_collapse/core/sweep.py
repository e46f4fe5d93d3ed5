"""The tiled pairwise sweep: every pairwise measure in one pass over the upper triangle, no K x K matrix.

Per tile ``T = 2 - 2 u_i u_j^T = ||u_c - u_c'||^2`` comes from one GEMM of unit centred means; then
``||mu_c - mu_c'||^2 = (r_c - r_c')^2 + r_c r_c' T`` (no cancellation in r_c - r_c') gives the CDNV
terms, ``-log(T) / 2`` the log kernel and ``cos - m = -(T - 2 (1 - m)) / 2`` the interference spread
around its closed-form mean m. Tiles are float32 by default with float64 accumulation (the log kernel
is shifted by an estimate of its mean before squaring); entries below ``1e5 eps`` are recomputed in
float64 as direct differences, since a Gram matrix cannot resolve nearly parallel means. Three tile
buffers are reused (fresh 16 MB allocations page-fault on every tile) and the sums stay on the device
until one host sync at the end.
"""

from __future__ import annotations

import math

import torch


def pairwise_sweep(u, r, s, k, cos_mean, tile_size, dtype, progress):
    """One pass over the upper triangle of the Gram matrix of unit centred means ``u`` (K, d).

    Returns the CDNV sum over pairs, its per-class row sums (K,), the shifted sum / sum of squares
    of the log kernel over pairs with the shift used, and the sum over pairs of (cos - cos_mean)^2.
    All accumulators are float64.
    """
    K = u.shape[0]
    dev = u.device
    # Shift for the log-kernel variance: its mean over a fixed sample of classes (float64, dense,
    # at most 256 x 256) -- any value near the true mean removes the cancellation.
    sample = u[: min(K, 256)].double()
    t_s = (2 - 2 * sample @ sample.T).clamp(min=torch.finfo(torch.float64).tiny)
    off = ~torch.eye(sample.shape[0], dtype=torch.bool, device=dev)
    shift = float((-0.5 * t_s.log())[off].mean())

    ut, rt, st = u.to(dtype), r.to(dtype), s.to(dtype)
    tiny = torch.finfo(dtype).tiny
    close = 1e5 * torch.finfo(dtype).eps  # below this, 2 - 2 cos from a GEMM has lost most digits
    power = -(1.0 + k / 2.0)  # ||mu_c - mu_c'||^-(2+k) = (dist^2)^-(1+k/2)
    two = torch.tensor(2.0, dtype=dtype, device=dev)
    row = torch.zeros(K, dtype=torch.float64, device=dev)
    # float64 sums over pairs, kept on the device (no host sync per tile):
    # [CDNV, log kernel - shift, (log kernel - shift)^2, (cos - cos_mean)^2]
    acc = torch.zeros(4, dtype=torch.float64, device=dev)
    # Three tile buffers, reused: fresh large allocations cost page faults on every tile.
    size = min(tile_size, K) ** 2
    buf_t, buf_d, buf_r = (torch.empty(size, dtype=dtype, device=dev) for _ in range(3))

    starts = list(range(0, K, tile_size))
    n_tiles = len(starts) * (len(starts) + 1) // 2
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=n_tiles, desc="pairwise sweep", unit="tile")
    for a, i0 in enumerate(starts):
        i1 = min(i0 + tile_size, K)
        ui, ri = ut[i0:i1], rt[i0:i1]
        for j0 in starts[a:]:
            j1 = min(j0 + tile_size, K)
            n, m = i1 - i0, j1 - j0
            diag = i0 == j0
            uj, rj = ut[j0:j1], rt[j0:j1]
            T = torch.addmm(two, ui, uj.T, alpha=-2.0, out=buf_t[: n * m].view(n, m))  # ||u_c - u_c'||^2
            _refine_close_pairs(T, u, i0, j0, close, diag)
            T.clamp_min_(tiny)
            # ||mu_c - mu_c'||^2 = (r_c - r_c')^2 + r_c r_c' ||u_c - u_c'||^2  (no cancellation in (r_c - r_c'))
            D = torch.sub(ri[:, None], rj[None, :], out=buf_d[: n * m].view(n, m)).square_()
            D.addcmul_(T, torch.outer(ri, rj, out=buf_r[: n * m].view(n, m)))
            P = D.pow_(power)  # (n, m) ||mu_c - mu_c'||^-(2+k)
            # interference spread around its exact mean m: (cos - m) = -(T - 2 (1 - m)) / 2
            E = torch.sub(T, 2.0 * (1.0 - cos_mean), out=buf_r[: n * m].view(n, m))
            L = T.log_().add_(2.0 * shift)  # (n, m) -2 (log kernel - shift)
            if diag:
                P.fill_diagonal_(0.0)
                L.fill_diagonal_(0.0)
                E.fill_diagonal_(0.0)
            # CDNV_cc' = (s_c + s_c') P_cc' / 2: row sums from one matrix-vector product and one sum
            r_part = 0.5 * ((P @ st[j0:j1]).double() + s[i0:i1] * P.sum(1).double())  # (n,)
            row[i0:i1] += r_part
            if not diag:
                row[j0:j1] += 0.5 * ((st[i0:i1] @ P).double() + s[j0:j1] * P.sum(0).double())
            # per-row float32 sums, added up in float64; a diagonal tile holds every pair twice
            tile = torch.stack([r_part.sum(), -0.5 * L.sum(1).double().sum(), 0.25 * L.square_().sum(1).double().sum(),
                                0.25 * E.square_().sum(1).double().sum()])
            acc += tile * (0.5 if diag else 1.0)
            if bar is not None:
                bar.update(1)
    if bar is not None:
        bar.close()
    cdnv_sum, log_sum, log_sq, cos_sq = acc.tolist()  # the one host sync
    if not math.isfinite(cdnv_sum):
        raise ValueError(
            f"two present classes have means that are numerically indistinguishable in {dtype} "
            f"(distance 0 after rounding), so the CDNV is infinite; use dtype=torch.float64"
        )
    return cdnv_sum, row, log_sum, log_sq, shift, cos_sq


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
