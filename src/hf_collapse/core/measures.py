"""Neural-collapse measures NC1-NC4 from ``CollapseStatistics`` (Wu & Papyan 2024, sections 3.4-3.7).

All measures use the K classes measured: present (N_c > 0), with at least ``min_count`` samples and
within ``classes`` when given (:mod:`hf_collapse.core.classes`). With mu_G their global mean (default
mu_bar, the unweighted mean of their means; ``global_mean="weighted"`` weights by counts),
M_c = mu_c - mu_G, r_c = ||M_c||, u_c = M_c / r_c and pairs c < c'.

The keys, their equations and directions are listed once, in :mod:`hf_collapse.core.registry`.

CoV = std / |mean| with the population std; it is defined as 0 when the std is 0 (no variation,
e.g. all log-norms equal 0) and +inf when the mean is 0 but the std is not.

How it scales: the pairwise sums never form a C x C matrix. The interference mean comes in closed
form from U = sum_c u_c (sum_{c,c'} cos = ||U||^2); CDNV, the log kernel and the interference spread
come from one tiled sweep (:mod:`hf_collapse.core.sweep`), which also carries the Riesz kernel when
``riesz_s`` is given; the ETF errors, trace quotient and effective rank come from d x d Gram matrices
(:mod:`hf_collapse.core.spectral`); NC4 is :class:`hf_collapse.core.nc4.NC4Counter`.

Departures from the paper, on purpose:
- absent classes (N_c = 0) are left out everywhere (the paper's C = 29,233 are the tokens present);
- NC3 skips classes whose classifier row is all zeros (cosine undefined) and logs how many;
- the log kernel caps ||u_c - u_c'||^2 at the smallest positive float, so two classes whose centred
  means point the same way give a large finite value instead of +inf;
- in float32 tiles, pairs of nearly parallel centred means (||u_c - u_c'||^2 < 1e5 eps) are recomputed
  in float64, since a Gram matrix cannot resolve them;
- identical class means (CDNV undefined) raise ValueError, or with ``coincident="exclude"`` the classes
  involved are left out like absent ones (the collection, Trainer and CLI paths do this, and record
  ``num_classes_coincident``); a class mean equal to mu_G raises ValueError.

Departures from the authors' package (rhubarbwu/neural-collapse), on purpose:
- its default global mean is sample-weighted; ours is the paper's unweighted mu_bar (``global_mean``
  chooses);
- ``riesz_kernel`` fixes s = d - 2 with sign(s); here s > 0 is an option (``riesz_s``) and its CoV
  (not the variance) is reported, as for the log kernel;
- ``orthogonality_deviation`` takes cosines of uncentred means with the uncentred OOD mean; here both
  are centred at mu_G (the NECO geometry of the issue's definition);
- ``covariance_ratio(metric="quotient")`` is computed from traces only (no d x d covariance); its
  ``structure_error`` (the ETF errors) forms a K x K matrix, ours uses d x d Gram matrices;
- with ``min_count``/``classes``, ``nc1_trace_ratio`` is not computed: the d x d second moment sums
  every class's samples.
"""

from __future__ import annotations

import logging
import math
import os
from typing import Any, Optional

import torch

from .classes import check_selection, class_moments
from .classes import global_mean as centre
from .errors import UserTypeError, UserValueError
from .io import as_tensor
from .nc4 import NC4Counter
from .options import MeasureOptions
from .registry import MEASURE_KEYS
from .rows import all_finite
from .spectral import (
    classifier_rows,
    effective_rank,
    gram,
    nc2_etf_error,
    nc3_self_duality_error,
    ood_orthogonality,
    singular_values,
    trace_quotient,
)
from .statistics import CollapseStatistics
from .sweep import pairwise_sweep

logger = logging.getLogger(__name__)


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


def _check_weights(weights, bias, C, d, device):
    W = as_tensor(weights, "weights")
    if not W.is_floating_point():
        raise UserTypeError(f"weights must be a floating-point tensor, got dtype {W.dtype}")
    if W.dim() != 2 or W.shape[1] != d:
        raise UserValueError(f"weights must have shape (num_classes, {d}) = ({C}, {d}), got {tuple(W.shape)}")
    if W.shape[0] != C:
        raise UserValueError(
            f"weights have {W.shape[0]} rows but the statistics have num_classes={C}: "
            f"expected weights of shape ({C}, {d})"
        )
    if not all_finite(W):
        raise UserValueError("weights contain NaN or infinite values")
    b = None
    if bias is not None:
        b = as_tensor(bias, "bias")
        if not b.is_floating_point() or tuple(b.shape) != (C,):
            raise UserValueError(
                f"bias must be a floating-point tensor of shape ({C},), got {tuple(b.shape)} {b.dtype}"
            )
        b = b.to(device, torch.float64)
    return W.detach(), b  # as given: rows are converted a chunk at a time (a float64 copy is the state's size)


def measure_collapse(
    stats: CollapseStatistics | str | os.PathLike,
    weights: Optional[torch.Tensor] = None,
    bias: Optional[torch.Tensor] = None,
    *,
    options: Optional[MeasureOptions] = None,
    features: Optional[torch.Tensor] = None,
    labels: Optional[torch.Tensor] = None,
    per_class: bool = False,
    batch_size: int = 1024,
    device=None,
    progress: bool = False,
    coincident: str = "raise",
    ood_features: Optional[torch.Tensor] = None,
    **option_values: Any,
) -> CollapseResult:
    """Compute every NC measure from accumulated statistics.

    Args:
        stats: the accumulated ``CollapseStatistics`` (or a path to a saved statistics file).
        weights: classifier rows W (C, d) (e.g. ``model.get_output_embeddings().weight``); enables NC3/NC4.
        bias: optional classifier bias (C,).
        features: held-out samples (N, d) for ``nc4_agreement`` (needs weights) and ``ncc_accuracy``.
        labels: their labels (N,); labels equal to ``stats.ignore_index`` are skipped.
        options: the :class:`~hf_collapse.core.options.MeasureOptions` (k, tile_size, dtype, min_count,
            classes, global_mean, riesz_s; default: the paper's). Its fields may also be given as
            keywords (``measure_collapse(stats, k=1)``), which override ``options``.
        per_class: also return per-class vectors in ``result.per_class``.
        batch_size: test samples per NC4 batch (memory: batch_size x C scores).
        device: where to compute (default: where the statistics are).
        progress: show a tqdm bar over the sweep and the NC4 batches.
        coincident: classes whose mean equals another class's (CDNV infinite; real text has them, e.g.
            two tokens seen once after the same context): ``"raise"`` (default) or ``"exclude"`` (leave
            them out as if absent; counted in ``result.info["num_classes_coincident"]``).
        ood_features: out-of-distribution features (N, d); their mean gives ``nc5_ood_orthogonality``.

    Returns:
        A ``CollapseResult`` (dict of float) with the keys of :mod:`hf_collapse.core.registry` that apply.
    """
    stats = _as_statistics(stats)
    opts = _as_options(options, option_values)
    if coincident not in ("raise", "exclude"):
        raise UserValueError(f"coincident must be 'raise' or 'exclude', got {coincident!r}")
    k, tile_size, dtype, riesz_s, global_mean = opts.k, opts.tile_size, opts.torch_dtype, opts.riesz_s, opts.global_mean
    min_count, classes = check_selection(stats.num_classes, opts.min_count, opts.classes, opts.global_mean)
    dev = torch.device(device) if device is not None else stats.device
    idx, counts, mu, sig, n_same = class_moments(stats, dev, coincident, min_count, classes)
    K = idx.numel()
    mu_g = centre(mu, counts, global_mean)  # (d,)
    # (K, d) centred means; in place unless NC4 on given features needs the means (memory: one K x d)
    nc4 = features is not None or labels is not None
    M = mu - mu_g if nc4 else mu.sub_(mu_g)
    r = M.norm(dim=1)  # (K,)
    if bool((r == 0).any()):
        raise UserValueError(
            f"class(es) {idx[r == 0][:5].tolist()} have a mean equal to the global mean mu_G "
            f"(centred norm 0): their norms, angles and log kernel are undefined"
        )
    out, G, sum_m = _spectral(M, r, counts, sig, dtype)
    if stats.covariance:
        _trace_ratio(stats, M, dev, min_count > 1 or classes is not None, out)
    u = M.div_(r[:, None])  # (K, d) unit centred means (in place: M is not needed any more)
    del M
    geo, U, cdnv_rows = _geometry(u, r, sig, k, tile_size, dtype, progress, riesz_s)
    out.update(geo)
    info = {
        "num_classes": stats.num_classes,
        "num_classes_present": K,
        "num_classes_coincident": n_same,
        "num_tokens": stats.num_tokens,
        "k": k,
        "tile_size": tile_size,
        "dtype": str(dtype)[6:],
        "min_count": min_count,
        "global_mean": global_mean,
        "num_classes_selected": _count(classes),
    }
    W, b, duality = _classifier(weights, bias, stats, idx, u, r, sum_m, G, dtype, dev, out, info)
    if ood_features is not None:
        out["nc5_ood_orthogonality"] = ood_orthogonality(u, as_tensor(ood_features, "ood_features"), mu_g)
    if nc4:
        if features is None or labels is None:
            raise UserValueError("NC4 needs both features and labels of held-out samples")
        counter = NC4Counter(idx, mu, stats.num_classes, W, b, dtype=dtype, ignore_index=stats.ignore_index)
        _count_nc4(counter, stats, features, labels, batch_size, progress)
        out.update(counter.values())
        info["nc4_samples"] = counter.num_samples
    per = None
    if per_class:  # (K,) vectors over the measured classes
        per = {
            "class_ids": idx,
            "count": counts,
            "mean_norm": r,
            "variance": sig,
            "cdnv_row_mean": cdnv_rows / (K - 1),
            "interference_row_mean": (u @ U - 1) / (K - 1),
            **({} if duality is None else {"duality": duality}),
        }
    ordered = {key: float(out[key]) for key in MEASURE_KEYS if key in out}
    return CollapseResult(
        ordered, per_class=None if per is None else {key: v.cpu() for key, v in per.items()}, info=info
    )


def _count(classes) -> Optional[int]:
    return None if classes is None else int(classes.numel())


def _as_statistics(stats) -> CollapseStatistics:
    if isinstance(stats, (str, bytes)) or hasattr(stats, "__fspath__"):
        stats = CollapseStatistics.load(stats)
    if not isinstance(stats, CollapseStatistics):
        raise UserTypeError(f"stats must be a CollapseStatistics, got {type(stats).__name__}")
    return stats


def _as_options(options, values: dict) -> MeasureOptions:
    if options is not None and not isinstance(options, MeasureOptions):
        raise UserTypeError(f"options must be a MeasureOptions, got {type(options).__name__}")
    unknown = sorted(set(values) - set(MeasureOptions.names()))
    if unknown:
        raise UserTypeError(
            f"measure_collapse got unknown keyword(s) {unknown}; the options are {list(MeasureOptions.names())}"
        )
    options = options or MeasureOptions()
    return options.replace(**values) if values else options


def _spectral(M, r, counts, sig, dtype):
    """The d x d closed forms from centred means M (K, d): ``nc1_trace_quotient``, ``nc2_etf_error`` and
    ``effective_rank``. Returns ``(measures, G = M^T M (d, d) float64, sum_c M_c (d,))``."""
    G = gram(M, dtype)
    sum_m = M.sum(0)
    out = {
        "nc1_trace_quotient": trace_quotient(counts, sig, r),
        "nc2_etf_error": nc2_etf_error(r, sum_m, G),
        "effective_rank": effective_rank(singular_values(M, G)),
    }
    return out, G, sum_m


def _trace_ratio(stats, M, dev, subset: bool, out: dict) -> None:
    """``nc1_trace_ratio`` = tr(Sigma_W Sigma_B^+) / K with the d x d covariances (``covariance=True``)."""
    if subset:  # the second moment sums every sample: it cannot give Sigma_W of a subset of classes
        logger.warning(
            "nc1_trace_ratio is not computed with min_count/classes: the d x d second moment "
            "covers every class (nc1_trace_quotient needs no covariance)"
        )
        return
    K = M.shape[0]
    sigma_b = M.T @ M / K  # (d, d) between-class covariance
    sigma_w = stats.within_class_covariance().to(dev)  # (d, d)
    out["nc1_trace_ratio"] = float(torch.trace(sigma_w @ torch.linalg.pinv(sigma_b, hermitian=True))) / K


def _classifier(weights, bias, stats, idx, u, r, sum_m, G, dtype, dev, out, info):
    """NC3 measures when ``weights`` are given; returns ``(W (C, d), b (C,), per-class duality)``."""
    if weights is None:
        if bias is not None:
            raise UserValueError("bias was given without weights")
        return None, None, None
    W, b = _check_weights(weights, bias, stats.num_classes, stats.dim, dev)
    rows = classifier_rows(W, idx.to(W.device), u, dtype)
    duality = _duality(rows.norms, rows.dots, out, info)
    out["nc3_self_duality_error"] = nc3_self_duality_error(rows, r, sum_m, G)
    return W, b, duality


def _geometry(u, r, sig, k, tile_size, dtype, progress, riesz_s=None):
    """NC1 CDNV and the NC2/GNC2 measures from unit centred means ``u`` (K, d), their norms ``r`` (K,)
    and the class variances ``sig`` (K,). Returns ``(measures, U = sum_c u_c, CDNV row sums)``."""
    K = u.shape[0]
    n_pairs = K * (K - 1) / 2
    U = u.sum(0)  # (d,)
    cos_mean = (float(U @ U) - K) / 2 / n_pairs  # sum_{c<c'} cos = (||sum_c u_c||^2 - K) / 2
    sums = pairwise_sweep(u, r, sig, k, cos_mean, tile_size, dtype, progress, riesz_s)
    out = {"nc1_cdnv": sums.cdnv_sum / n_pairs}
    logr = r.log()
    m, sd = float(logr.mean()), float(logr.std(unbiased=False))
    out["nc2_norm_mean"], out["nc2_equinorm_cov"] = m, cov(sd, m)
    sd = math.sqrt(max(sums.cos_sq / n_pairs, 0.0))
    out["nc2_interference_mean"], out["nc2_interference_std"] = cos_mean, sd
    out["nc2_equiangularity_cov"] = cov(sd, cos_mean)
    m, sd = _mean_std(sums.log_sum, sums.log_sq, n_pairs, sums.shift)
    out["gnc2_log_kernel_mean"], out["gnc2_uniformity_cov"] = m, cov(sd, m)
    if riesz_s is not None:
        out["gnc2_riesz_mean"], out["gnc2_riesz_cov"] = _riesz(sums, n_pairs, riesz_s)
    return out, U, sums.row


def _riesz(sums, n_pairs: float, s: float) -> tuple[float, float]:
    """Mean and CoV over pairs of ||u_c - u_c'||^-s from the sweep's sums of R - 1, where
    R = ||u_c - u_c'||^-s / exp(s shift): the CoV is scale-free; the mean is put back in log space."""
    if not (math.isfinite(sums.riesz_sum) and math.isfinite(sums.riesz_sq)):
        raise UserValueError(
            f"riesz_s={s} overflows float64: the Riesz kernel ||u_c - u_c'||^-s (or its square, for the CoV) "
            f"of the closest pairs of unit centred means exceeds 1.8e308; use a smaller s"
        )
    m, sd = _mean_std(sums.riesz_sum, sums.riesz_sq, n_pairs, 1.0)  # of R
    log_mean = s * sums.shift + math.log(m) if m > 0 else -math.inf
    if log_mean > math.log(torch.finfo(torch.float64).max):
        raise UserValueError(
            f"riesz_s={s} overflows float64: the mean Riesz kernel is exp({log_mean:.1f}); use a smaller s"
        )
    return math.exp(log_mean), cov(sd, m)


def _duality(wn, dots, out: dict, info: dict) -> torch.Tensor:
    """NC3 from the norms ||w_c|| (K,) of the measured classes' classifier rows and their dots <w_c, u_c>
    (K,) with the unit centred means; returns per-class cos(w_c, M_c) (NaN where w_c = 0: those rows are
    skipped and counted)."""
    ok = wn > 0
    if not bool(ok.any()):
        raise UserValueError("every classifier row of the present classes is zero: NC3 is undefined")
    if not bool(ok.all()):
        logger.warning("NC3: %d present classes have an all-zero classifier row and are skipped", int((~ok).sum()))
    duality = torch.full((wn.shape[0],), math.nan, dtype=torch.float64, device=wn.device)
    duality[ok] = dots[ok] / wn[ok]
    dv = duality[ok]
    m, sd = float(dv.mean()), float(dv.std(unbiased=False))
    out["nc3_duality_mean"], out["unc3_duality_cov"] = m, cov(sd, m)
    out["nc3_duality_distance"] = float((2 - 2 * dv).clamp(min=0).sqrt().mean())
    info["nc3_classes"] = int(ok.sum())
    return duality


@torch.no_grad()
def _count_nc4(
    counter: NC4Counter, stats: CollapseStatistics, features, labels, batch_size: int, progress: bool
) -> None:
    """Validate held-out tensors (one check up front: they are in memory anyway) and count them in batches."""
    h_all = as_tensor(features, "features")
    y_all = as_tensor(labels, "labels")
    if not h_all.is_floating_point():
        raise UserTypeError(f"features must be a floating-point tensor, got dtype {h_all.dtype}")
    if h_all.dim() < 2 or h_all.shape[-1] != stats.dim:
        raise UserValueError(f"test features must have shape (N, {stats.dim}), got {tuple(h_all.shape)}")
    if tuple(y_all.shape) != tuple(h_all.shape[:-1]) or y_all.is_floating_point():
        raise UserValueError(
            f"test labels must be integers of shape {tuple(h_all.shape[:-1])}, got {tuple(y_all.shape)} {y_all.dtype}"
        )
    h_all, y_all = h_all.reshape(-1, stats.dim), y_all.reshape(-1)
    keep = y_all != stats.ignore_index
    h_all, y_all = h_all[keep], y_all[keep]
    if y_all.numel() and (int(y_all.min()) < 0 or int(y_all.max()) >= stats.num_classes):
        raise UserValueError(f"test labels must lie in [0, {stats.num_classes}) or equal {stats.ignore_index}")
    if not bool(torch.isfinite(h_all).all()):
        raise UserValueError("test features contain NaN or infinite values")
    starts = range(0, h_all.shape[0], batch_size)
    if progress:
        from tqdm.auto import tqdm

        starts = tqdm(starts, desc="NC4", unit="batch")
    for s0 in starts:
        counter.update(h_all[s0 : s0 + batch_size], y_all[s0 : s0 + batch_size])
