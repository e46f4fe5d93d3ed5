"""Measures with closed forms through d x d Gram matrices (never a K x K matrix).

Over the K measured classes, with M (K, d) the centred means M_c = mu_c - mu_G (mu_G the chosen global
mean: by default the unweighted mean of the class means, then sum_c M_c = 0), W (K, d) their
classifier rows and E = (I - 11^T / K) / sqrt(K - 1) the simplex-ETF Gram (||E||_F = 1):

- ETF errors (Kothapalli 2023): for S = B A^T / ||B A^T||_F (K x K, never formed),
  ||S - E||_F^2 = ||S||^2 - 2 <S, E> + ||E||^2 = 2 - 2 <S, E>, where
  <B A^T, E> = (tr(B A^T) - <sum_c b_c, sum_c a_c> / K) / sqrt(K - 1) (O(K d)) and
  ||B A^T||_F^2 = <B^T B, A^T A>_F (two d x d Gram matrices). The term <sum b, sum a> / K vanishes
  only when the means are centred at their own average: with ``global_mean="weighted"`` it does not.
  ``nc2_etf_error`` takes A = B = M; ``nc3_self_duality_error`` takes A = M, B = W.
- ``effective_rank`` (RankMe, Garrido et al. 2023): exp of the entropy of p_i = sigma_i / sum_j sigma_j,
  sigma the singular values of M: ``svdvals`` of the K x d matrix when K <= d, else the square roots of
  the eigenvalues of the d x d Gram M^T M.
- ``nc1_trace_quotient`` (Tirer et al. 2023): tr(Sigma_W) / tr(Sigma_B) with tr(Sigma_W) =
  sum_c N_c sigma_c^2 / N (pooled over samples) and tr(Sigma_B) = (1/K) sum_c ||M_c||^2.
- ``nc5_ood_orthogonality`` (Ammar et al. 2024, NECO): mean_c |cos(M_c, mu_ood - mu_G)|.

Precision: the Gram matrices are formed in the measure ``dtype`` (float32 by default, K d^2 flops) and
summed in float64. In float32, the ETF errors carry an absolute error of about sqrt(2 * 1e-7) = 5e-4
near 0 (2 - 2<S, E> cancels), and for K > d the effective rank loses the singular values below about
3e-4 sigma_max; float64 is exact to round-off.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import torch

from .errors import UserTypeError, UserValueError
from .rows import row_slices

GRAM_CHUNK = 8192  # rows per GEMM of a Gram matrix


def gram(A: torch.Tensor, dtype: torch.dtype, chunk: int = GRAM_CHUNK) -> torch.Tensor:
    """A^T A (d, d) in float64, from GEMMs in ``dtype`` over row chunks of ``A`` (K, d) (each chunk is
    converted once; the chunk sums add in float64)."""
    G = torch.zeros(A.shape[1], A.shape[1], dtype=torch.float64, device=A.device)
    for i in range(0, A.shape[0], chunk):
        a = A[i : i + chunk].to(dtype)
        G += (a.T @ a).double()
    return G


def etf_error(trace_ba: float, sum_a: torch.Tensor, sum_b: torch.Tensor, frob_sq: float, K: int) -> float:
    """||S - E||_F for S = B A^T / ||B A^T||_F from tr(B A^T), sum_c a_c, sum_c b_c (d,) and
    ||B A^T||_F^2 (see the module docstring)."""
    if not frob_sq > 0:
        raise UserValueError("the ETF error is undefined: B A^T is the zero matrix")
    inner = (trace_ba - float(sum_a @ sum_b) / K) / math.sqrt(K - 1) / math.sqrt(frob_sq)  # <S, E>
    return math.sqrt(max(2.0 - 2.0 * inner, 0.0))


def nc2_etf_error(r: torch.Tensor, sum_m: torch.Tensor, G: torch.Tensor) -> float:
    """``nc2_etf_error`` from the centred norms r (K,), sum_c M_c (d,) (zero for the unweighted centre, up
    to round-off) and the Gram G = M^T M (d, d), float64: tr(M M^T) = sum_c r_c^2 (no K x d temporary)."""
    return etf_error(float(r @ r), sum_m, sum_m, float(G.pow(2).sum()), r.shape[0])


class ClassifierRows(NamedTuple):
    """What NC3 needs of the classifier rows w_c of the K measured classes, float64: ``norms`` ||w_c||
    (K,), ``dots`` <w_c, u_c> (K,) with the unit centred means, ``gram`` W^T W (d, d) and ``total``
    sum_c w_c (d,)."""

    norms: torch.Tensor
    dots: torch.Tensor
    gram: torch.Tensor
    total: torch.Tensor


def classifier_rows(W: torch.Tensor, idx: torch.Tensor, u: torch.Tensor, dtype: torch.dtype) -> ClassifierRows:
    """:class:`ClassifierRows` of the rows ``idx`` (K,) of the classifier W (C, d) (any dtype and device)
    against unit centred means u (K, d), one chunk of rows at a time: no K x d copy of W. The Gram
    takes the chunks of :func:`gram` (GEMMs in ``dtype``, float64 sums)."""
    K, d = u.shape
    norms = torch.empty(K, dtype=torch.float64, device=u.device)
    dots = torch.empty_like(norms)
    G = torch.zeros(d, d, dtype=torch.float64, device=u.device)
    total = torch.zeros(d, dtype=torch.float64, device=u.device)
    for i in range(0, K, GRAM_CHUNK):
        a = torch.empty(min(GRAM_CHUNK, K - i), d, dtype=dtype, device=u.device)  # this Gram chunk in dtype
        for sl in row_slices(*a.shape):  # float64 rows, a few MiB at a time
            rows = slice(i + sl.start, i + sl.stop)
            w = W.index_select(0, idx[rows]).to(u.device, torch.float64)  # (n, d)
            norms[rows] = w.norm(dim=1)
            dots[rows] = (w * u[rows]).sum(1)
            total += w.sum(0)
            a[sl] = w
        G += (a.T @ a).double()
    return ClassifierRows(norms, dots, G, total)


def nc3_self_duality_error(rows: ClassifierRows, r: torch.Tensor, sum_m: torch.Tensor, G: torch.Tensor) -> float:
    """``nc3_self_duality_error`` from the classifier rows' :class:`ClassifierRows`, the centred norms
    r (K,) (M = r u), sum_c M_c (d,) and G = M^T M. ||W M^T||_F^2 = <W^T W, M^T M>_F needs one more d x d
    Gram. The authors' ``self_duality_error`` normalises the same S = W M^T."""
    frob_sq = float((rows.gram * G).sum())
    trace = float(rows.dots @ r)  # tr(W M^T) = sum_c r_c <w_c, u_c>
    return etf_error(trace, sum_m, rows.total, frob_sq, r.shape[0])


def singular_values(M: torch.Tensor, G: torch.Tensor) -> torch.Tensor:
    """Singular values of M (K, d), float64: exact ``svdvals`` when K <= d, else sqrt(eig(M^T M))."""
    K, d = M.shape
    if K <= d:
        return torch.linalg.svdvals(M.double())
    return torch.linalg.eigvalsh(G).clamp(min=0).sqrt()


def effective_rank(sigma: torch.Tensor) -> float:
    """exp(-sum_i p_i log p_i), p_i = sigma_i / sum_j sigma_j (0 log 0 = 0). RankMe adds an epsilon to
    p_i; without it the effective rank of r equal nonzero singular values is exactly r."""
    total = float(sigma.sum())
    if not total > 0:
        raise UserValueError("the effective rank is undefined: every centred class mean is zero")
    p = sigma[sigma > 0] / total
    return math.exp(float(-(p * p.log()).sum()))


def trace_quotient(counts: torch.Tensor, variances: torch.Tensor, r: torch.Tensor) -> float:
    """tr(Sigma_W) / tr(Sigma_B) from counts N_c, variances sigma_c^2 and centred norms r_c (K,)."""
    tr_w = float((counts * variances).sum() / counts.sum())
    tr_b = float(r.pow(2).mean())
    return tr_w / tr_b


def ood_orthogonality(u: torch.Tensor, ood_features, mu_g: torch.Tensor) -> float:
    """mean_c |cos(M_c, mu_ood - mu_G)| from unit centred means u (K, d); only the mean of
    ``ood_features`` (..., d) is used. The authors' ``orthogonality_deviation`` compares uncentred
    means with the uncentred OOD mean; here both are centred at mu_G (the NECO geometry)."""
    h = ood_features
    if not isinstance(h, torch.Tensor) or not h.is_floating_point():
        raise UserTypeError(
            f"ood_features must be a floating-point tensor (N, d), got {type(h).__name__}"
            + (f" of dtype {h.dtype}" if isinstance(h, torch.Tensor) else "")
        )
    if h.dim() < 1 or h.shape[-1] != u.shape[1] or h.numel() == 0:
        raise UserValueError(f"ood_features must have shape (N, {u.shape[1]}) with N >= 1, got {tuple(h.shape)}")
    mu_ood = h.reshape(-1, u.shape[1]).to(u.device, torch.float64).mean(0)  # (d,)
    if not bool(torch.isfinite(mu_ood).all()):
        raise UserValueError("ood_features contain NaN or infinite values")
    v = mu_ood - mu_g
    norm = float(v.norm())
    if norm <= 1e-12 * max(float(mu_ood.norm()), float(mu_g.norm())):  # zero up to round-off
        raise UserValueError("the OOD mean equals the global mean mu_G: its direction (and nc5) is undefined")
    return float((u @ (v / norm)).abs().mean())
