"""Neural-collapse measures NC1-NC4 from ``CollapseStatistics`` (Wu & Papyan 2024, sections 3.4-3.7).

All measures use the K classes present (N_c > 0). With mu_bar the unweighted mean of their means,
M_c = mu_c - mu_bar, r_c = ||M_c||, u_c = M_c / r_c and pairs c < c':

====================== ==============================================================================
key                    definition
====================== ==============================================================================
nc1_cdnv               mean_{c<c'} (sigma_c^2 + sigma_c'^2) / (2 ||mu_c - mu_c'||^(2+k))       (eq. 4)
nc1_trace_ratio        tr(Sigma_W Sigma_B^+) / K  (Papyan et al. 2020; needs covariance=True)
nc2_norm_mean          mean_c log r_c                                                          (eq. 5)
nc2_equinorm_cov       CoV_c log r_c
nc2_interference_mean  mean_{c<c'} cos(M_c, M_c')                                               (eq. 6)
nc2_interference_std   std_{c<c'} cos(M_c, M_c')  (population)
nc2_equiangularity_cov CoV_{c<c'} cos(M_c, M_c')
gnc2_log_kernel_mean   mean_{c<c'} log(1 / ||u_c - u_c'||)                                      (eq. 7)
gnc2_uniformity_cov    CoV_{c<c'} log(1 / ||u_c - u_c'||)
nc3_duality_mean       mean_c cos(w_c, M_c)                                                    (eq. 8)
unc3_duality_cov       CoV_c cos(w_c, M_c)
nc3_duality_distance   mean_c || w_c/||w_c|| - u_c ||                                         (eq. 11)
nc4_agreement          share of test samples with argmax_c <w_c,h>+b_c == argmin_c ||h - mu_c|| (eq. 10)
ncc_accuracy           share of test samples whose nearest class centre is their label
====================== ==============================================================================

CoV = std / |mean| with the population std; it is defined as 0 when the std is 0 (no variation,
e.g. all log-norms equal 0) and +inf when the mean is 0 but the std is not.

How it scales: the pairwise sums never form a C x C matrix. The interference mean comes in closed
form from U = sum_c u_c (sum_{c,c'} cos = ||U||^2). CDNV, the log kernel and the interference spread
come from one sweep over the upper triangle of the Gram matrix of unit centred means in tiles: per
tile ``T = 2 - 2 u_i u_j^T = ||u_c - u_c'||^2`` from one GEMM, then
``||mu_c - mu_c'||^2 = (r_c - r_c')^2 + r_c r_c' T`` and ``cos - m = -(T - 2 (1 - m)) / 2``. Tiles are float32 by default (float64
accumulation, shifted sums for the variance); ``dtype=torch.float64`` gives exact results.

Departures from the paper, on purpose:
- absent classes (N_c = 0) are left out everywhere (the paper's C = 29,233 are the tokens present);
- NC3 skips classes whose classifier row is all zeros (cosine undefined) and logs how many;
- the log kernel caps ||u_c - u_c'||^2 at the smallest positive float, so two classes whose centred
  means point the same way give a large finite value instead of +inf;
- in float32 tiles, pairs of nearly parallel centred means (||u_c - u_c'||^2 < 1e5 eps) are recomputed
  in float64, since a Gram matrix cannot resolve them;
- identical class means (CDNV undefined) raise ValueError, or with ``coincident="exclude"`` the classes
  involved are left out like absent ones (the collection, Trainer and CLI paths do this, and record
  ``num_classes_coincident``); a class mean equal to mu_bar raises ValueError.
"""

from __future__ import annotations

import logging
import math

import torch

from .statistics import CollapseStatistics, _as_tensor

logger = logging.getLogger(__name__)

PAIRWISE_KEYS = ("nc1_cdnv", "nc2_interference_mean", "nc2_interference_std", "nc2_equiangularity_cov",
                 "gnc2_log_kernel_mean", "gnc2_uniformity_cov")
MEASURE_KEYS = ("nc1_cdnv", "nc1_trace_ratio", "nc2_norm_mean", "nc2_equinorm_cov", "nc2_interference_mean",
                "nc2_interference_std", "nc2_equiangularity_cov", "gnc2_log_kernel_mean", "gnc2_uniformity_cov",
                "nc3_duality_mean", "unc3_duality_cov", "nc3_duality_distance", "nc4_agreement", "ncc_accuracy")


class CollapseResult(dict):
    """The measures as a ``dict`` of key -> float, plus

    - ``per_class``: ``None`` or a dict of tensors over the K present classes: ``class_ids``,
      ``count``, ``mean_norm`` (r_c), ``variance`` (sigma_c^2), ``cdnv_row_mean``,
      ``interference_row_mean`` and, with weights, ``duality`` (NaN where w_c = 0);
    - ``info``: how it was measured (classes present, tokens, k, tile size, dtype, NC4 samples).
    """

    def __init__(self, values, per_class=None, info=None):
        super().__init__(values)
        self.per_class = per_class
        self.info = dict(info or {})

    def table(self) -> str:
        """The measures as an aligned two-column text table."""
        width = max(len(k) for k in self) if self else 0
        return "\n".join(f"{k:<{width}}  {v:.6g}" for k, v in self.items())


def cov(std: float, mean: float) -> float:
    """Coefficient of variation std/|mean| (0 when std == 0, +inf when only the mean is 0)."""
    if std == 0:
        return 0.0
    if mean == 0:
        return math.inf
    return std / abs(mean)


def _mean_std(total: float, total_sq: float, n: float, shift: float = 0.0) -> tuple[float, float]:
    """Mean and population std from sums of (x - shift) and (x - shift)^2 over n values."""
    m = total / n
    var = max(total_sq / n - m * m, 0.0)
    return m + shift, math.sqrt(var)


def _pairwise_sweep(u, r, s, k, cos_mean, tile_size, dtype, progress):
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


def _coincident(mu, rtol: float = 1e-10) -> list[int]:
    """Positions (rows of ``mu``) of classes whose mean equals another class's mean up to float64
    round-off (max abs difference <= rtol * max |mu|; classes fed identical features end up ~1e-15
    apart, not bit-equal, because of the shifted sums). O(K d + K log K): sort a random projection
    and compare only runs of near-equal projections."""
    g = torch.Generator().manual_seed(0)
    v = torch.randn(mu.shape[1], generator=g, dtype=torch.float64).to(mu.device)
    atol = rtol * float(torch.linalg.vector_norm(mu, float("inf"))) + 1e-300  # max |mu|, no temporary
    proj = mu @ v  # (K,)
    order = proj.argsort()
    sp = proj[order]
    near = ((sp[1:] - sp[:-1]).abs() <= atol * float(v.abs().sum())).tolist()
    found, run = set(), [int(order[0])]
    for i, close in enumerate(near + [False]):
        if close:
            run.append(int(order[i + 1]))
            continue
        for x in range(len(run)):  # runs are tiny in practice (2 for a duplicated mean)
            for y in range(x + 1, len(run) if len(run) <= 64 else min(x + 2, len(run))):  # long: neighbours
                if float((mu[run[x]] - mu[run[y]]).abs().max()) <= atol:
                    found.update((run[x], run[y]))
        if i + 1 < len(order):
            run = [int(order[i + 1])]
    return sorted(found)


def _check_weights(weights, bias, C, d, device):
    W = _as_tensor(weights, "weights")
    if not W.is_floating_point():
        raise TypeError(f"weights must be a floating-point tensor, got dtype {W.dtype}")
    if W.dim() != 2 or W.shape[1] != d:
        raise ValueError(f"weights must have shape (num_classes, {d}) = ({C}, {d}), got {tuple(W.shape)}")
    if W.shape[0] != C:
        raise ValueError(
            f"weights have {W.shape[0]} rows but the statistics have num_classes={C}: "
            f"expected weights of shape ({C}, {d})"
        )
    if not bool(torch.isfinite(W).all()):
        raise ValueError("weights contain NaN or infinite values")
    b = None
    if bias is not None:
        b = _as_tensor(bias, "bias")
        if not b.is_floating_point() or tuple(b.shape) != (C,):
            raise ValueError(f"bias must be a floating-point tensor of shape ({C},), got {tuple(b.shape)} {b.dtype}")
        b = b.to(device, torch.float64)
    return W.detach().to(device, torch.float64), b


def measure_collapse(
    stats: CollapseStatistics,
    weights=None,
    bias=None,
    k: float = 2.0,
    features=None,
    labels=None,
    *,
    per_class: bool = False,
    tile_size: int = 1024,
    dtype: torch.dtype = torch.float32,
    batch_size: int = 1024,
    device=None,
    progress: bool = False,
    coincident: str = "raise",
) -> CollapseResult:
    """Compute every NC measure from accumulated statistics.

    Args:
        stats: the accumulated ``CollapseStatistics`` (or a path to a saved statistics file).
        weights: classifier rows W (C, d) (e.g. ``model.get_output_embeddings().weight``); enables NC3/NC4.
        bias: optional classifier bias (C,).
        k: CDNV power (paper: 2).
        features, labels: held-out samples (N, d) and (N,) for ``nc4_agreement`` (needs weights) and
            ``ncc_accuracy``; labels equal to ``stats.ignore_index`` are skipped.
        per_class: also return per-class vectors in ``result.per_class``.
        tile_size: tile edge of the pairwise sweep.
        dtype: float32 (default, fast) or float64 (exact) for tiles and NC4 matmuls.
        batch_size: test samples per NC4 batch (memory: batch_size x C scores).
        device: where to compute (default: where the statistics are).
        progress: show a tqdm bar over the sweep and the NC4 batches.
        coincident: what to do with classes whose mean equals another class's exactly (CDNV
            infinite; real text produces them, e.g. two tokens seen once after the same context):
            ``"raise"`` (default) or ``"exclude"`` (leave every member of such a group out of all
            measures, as if absent; counted in ``result.info["num_classes_coincident"]``).

    Returns:
        A ``CollapseResult`` (dict of float) with the keys of the module docstring that apply.
    """
    if isinstance(stats, (str, bytes)) or hasattr(stats, "__fspath__"):
        stats = CollapseStatistics.load(stats)
    if not isinstance(stats, CollapseStatistics):
        raise TypeError(f"stats must be a CollapseStatistics, got {type(stats).__name__}")
    if coincident not in ("raise", "exclude"):
        raise ValueError(f"coincident must be 'raise' or 'exclude', got {coincident!r}")
    if dtype not in (torch.float32, torch.float64):
        raise ValueError(f"dtype must be torch.float32 or torch.float64, got {dtype}")
    if not isinstance(tile_size, int) or tile_size < 1:
        raise ValueError(f"tile_size must be a positive int, got {tile_size!r}")
    k = float(k)
    if not math.isfinite(k) or k < 0:
        raise ValueError(f"k must be a finite number >= 0, got {k}")
    dev = torch.device(device) if device is not None else stats.device

    C, d = stats.num_classes, stats.dim
    idx = stats.present.nonzero().squeeze(1).to(dev)  # (K,) class ids present
    K = idx.numel()
    if K < 2:
        raise ValueError(f"neural collapse needs at least 2 classes with samples, got {K}")
    counts, mu, sig = (t.to(dev) for t in stats.moments(idx.to(stats.device)))  # (K,), (K, d), (K,) float64
    same = _coincident(mu)
    if same:
        ids = idx[same].tolist()
        if coincident == "raise":
            raise ValueError(
                f"classes {ids[:6]} have means identical to another class's, so their CDNV is infinite; "
                f"pass coincident='exclude' to leave them out (or remove duplicate classes)"
            )
        logger.warning("leaving out %d classes whose means coincide with another class's (up to round-off): %s",
                       len(ids), ids[:10])
        keep = torch.ones(K, dtype=torch.bool, device=dev)
        keep[same] = False
        idx, counts, mu, sig = idx[keep], counts[keep], mu[keep], sig[keep]
        K = idx.numel()
        if K < 2:
            raise ValueError(f"neural collapse needs at least 2 classes with distinct means, got {K}")
    mu_bar = mu.mean(0)  # (d,)
    M = mu - mu_bar  # (K, d) centred means
    r = M.norm(dim=1)  # (K,)
    if bool((r == 0).any()):
        bad = idx[r == 0][:5].tolist()
        raise ValueError(
            f"class(es) {bad} have a mean equal to the global mean mu_bar (centred norm 0): "
            f"their norms, angles and log kernel are undefined"
        )
    sigma_b = M.T @ M / K if stats.covariance else None  # (d, d) between-class covariance
    u = M.div_(r[:, None])  # (K, d) unit centred means (in place: M is not needed any more)
    del M
    out: dict[str, float] = {}
    n_pairs = K * (K - 1) / 2

    # ---- NC2 interference mean in closed form: sum_{c<c'} cos = (||sum_c u_c||^2 - K) / 2
    U = u.sum(0)  # (d,)
    cos_mean = (float(U @ U) - K) / 2 / n_pairs

    # ---- NC1: CDNV; the log kernel and the interference spread ride the same sweep
    cdnv_sum, cdnv_rows, log_sum, log_sq, shift, cos_sq = _pairwise_sweep(u, r, sig, k, cos_mean, tile_size,
                                                                           dtype, progress)
    out["nc1_cdnv"] = cdnv_sum / n_pairs
    if stats.covariance:
        sigma_w = stats.within_class_covariance().to(dev)  # (d, d)
        out["nc1_trace_ratio"] = float(torch.trace(sigma_w @ torch.linalg.pinv(sigma_b, hermitian=True))) / K

    # ---- NC2: equinorm (log norms), equiangularity (interference), hyperspherical uniformity
    logr = r.log()
    m, sd = float(logr.mean()), float(logr.std(unbiased=False))
    out["nc2_norm_mean"], out["nc2_equinorm_cov"] = m, cov(sd, m)
    sd = math.sqrt(max(cos_sq / n_pairs, 0.0))
    out["nc2_interference_mean"], out["nc2_interference_std"] = cos_mean, sd
    out["nc2_equiangularity_cov"] = cov(sd, cos_mean)
    m, sd = _mean_std(log_sum, log_sq, n_pairs, shift)
    out["gnc2_log_kernel_mean"], out["gnc2_uniformity_cov"] = m, cov(sd, m)

    info = {"num_classes": C, "num_classes_present": K, "num_classes_coincident": len(same),
            "num_tokens": stats.num_tokens, "k": k,
            "tile_size": tile_size, "dtype": str(dtype).replace("torch.", "")}
    duality = None
    W = b = None
    if weights is not None:
        W, b = _check_weights(weights, bias, C, d, dev)
        w = W[idx]  # (K, d)
        wn = w.norm(dim=1)
        ok = wn > 0
        if not bool(ok.any()):
            raise ValueError("every classifier row of the present classes is zero: NC3 is undefined")
        if not bool(ok.all()):
            logger.warning("NC3: %d present classes have an all-zero classifier row and are skipped", int((~ok).sum()))
        duality = torch.full((K,), math.nan, dtype=torch.float64, device=dev)
        duality[ok] = (w[ok] * u[ok]).sum(1) / wn[ok]
        dv = duality[ok]
        m, sd = float(dv.mean()), float(dv.std(unbiased=False))
        out["nc3_duality_mean"], out["unc3_duality_cov"] = m, cov(sd, m)
        out["nc3_duality_distance"] = float((2 - 2 * dv).clamp(min=0).sqrt().mean())
        info["nc3_classes"] = int(ok.sum())
    elif bias is not None:
        raise ValueError("bias was given without weights")

    if features is not None or labels is not None:
        if features is None or labels is None:
            raise ValueError("NC4 needs both features and labels of held-out samples")
        agree, correct, n = _nc4(stats, features, labels, idx, mu, mu_bar, W, b, dtype, batch_size, dev, progress)
        if n == 0:
            raise ValueError("the NC4 test data hold no labelled sample (all labels are ignore_index)")
        if W is not None:
            out["nc4_agreement"] = agree / n
        out["ncc_accuracy"] = correct / n
        info["nc4_samples"] = n

    per = None
    if per_class:
        per = {"class_ids": idx.cpu(), "count": counts.cpu(), "mean_norm": r.cpu(), "variance": sig.cpu(),
               "cdnv_row_mean": (cdnv_rows / (K - 1)).cpu(),
               "interference_row_mean": ((u @ U - 1) / (K - 1)).cpu()}
        if duality is not None:
            per["duality"] = duality.cpu()
    ordered = {key: float(out[key]) for key in MEASURE_KEYS if key in out}
    return CollapseResult(ordered, per_class=per, info=info)


@torch.no_grad()
def _nc4(stats, features, labels, idx, mu, mu_bar, W, b, dtype, batch_size, dev, progress):
    """Counts of (linear == NCC) and (NCC == label) over held-out samples, in batches.

    NCC uses ||h - mu_c||^2 = ||h||^2 + ||mu_c||^2 - 2 h.mu_c (paper eq. 12) with everything
    centred by mu_bar first (argmin unchanged, less cancellation); ||h||^2 is constant per row.
    """
    h_all = _as_tensor(features, "features")
    y_all = _as_tensor(labels, "labels")
    if not h_all.is_floating_point():
        raise TypeError(f"features must be a floating-point tensor, got dtype {h_all.dtype}")
    if h_all.dim() < 2 or h_all.shape[-1] != stats.dim:
        raise ValueError(f"test features must have shape (N, {stats.dim}), got {tuple(h_all.shape)}")
    if tuple(y_all.shape) != tuple(h_all.shape[:-1]) or y_all.is_floating_point():
        raise ValueError(
            f"test labels must be integers of shape {tuple(h_all.shape[:-1])}, got {tuple(y_all.shape)} {y_all.dtype}"
        )
    h_all, y_all = h_all.reshape(-1, stats.dim), y_all.reshape(-1)
    keep = y_all != stats.ignore_index
    h_all, y_all = h_all[keep], y_all[keep]
    if y_all.numel() and (int(y_all.min()) < 0 or int(y_all.max()) >= stats.num_classes):
        raise ValueError(f"test labels must lie in [0, {stats.num_classes}) or equal {stats.ignore_index}")
    Mc = (mu - mu_bar).to(dtype)  # (K, d)
    half_sq = 0.5 * Mc.pow(2).sum(1)  # (K,)
    Wt = W.to(dtype) if W is not None else None
    bt = b.to(dtype) if b is not None else None
    agree = correct = n = 0
    starts = range(0, h_all.shape[0], batch_size)
    if progress:
        from tqdm.auto import tqdm

        starts = tqdm(starts, desc="NC4", unit="batch")
    for s0 in starts:
        h = h_all[s0:s0 + batch_size].to(dev, torch.float64)
        if not bool(torch.isfinite(h).all()):
            raise ValueError("test features contain NaN or infinite values")
        y = y_all[s0:s0 + batch_size].to(dev)
        hc = (h - mu_bar).to(dtype)  # (B, d)
        ncc = idx[torch.addmm(half_sq, hc, Mc.T, alpha=-1.0).argmin(1)]  # (B,) argmin ||h - mu_c||
        if Wt is not None:
            logits = h.to(dtype) @ Wt.T  # (B, C)
            if bt is not None:
                logits += bt
            agree += int((logits.argmax(1) == ncc).sum())
        correct += int((ncc == y).sum())
        n += y.numel()
    return agree, correct, n
