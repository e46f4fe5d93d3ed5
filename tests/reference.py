"""Plain dense float64 implementations of every measure, straight from the formulas (small C only)."""

import math

import numpy as np


def _cov(x):
    sd, m = x.std(), x.mean()
    return 0.0 if sd == 0 else (math.inf if m == 0 else sd / abs(m))


def dense_statistics(h, y, C):
    """Two-pass exact counts, means and biased variances from raw features."""
    h = np.asarray(h, dtype=np.float64)
    y = np.asarray(y)
    keep = y != -100
    h, y = h[keep], y[keep]
    counts = np.bincount(y, minlength=C).astype(np.float64)
    means = np.zeros((C, h.shape[1]))
    variances = np.zeros(C)
    for c in range(C):
        if counts[c]:
            hc = h[y == c]
            means[c] = hc.mean(0)
            variances[c] = ((hc - means[c]) ** 2).sum(1).mean()
    return counts, means, variances


def dense_measures(
    counts,
    means,
    variances,
    W=None,
    b=None,
    k=2.0,
    h_test=None,
    y_test=None,
    h_train=None,
    y_train=None,
    keep=None,
    global_mean="unweighted",
    riesz_s=None,
    h_ood=None,
):
    """Every measure over the classes with counts > 0 (and ``keep[c]`` when given), centred at the
    unweighted or count-weighted mean of their means."""
    measured = counts > 0 if keep is None else (counts > 0) & np.asarray(keep, bool)
    present = np.nonzero(measured)[0]
    K = len(present)
    mu = means[present]
    s = variances[present]
    n = counts[present]
    mu_bar = mu.mean(0) if global_mean == "unweighted" else (n[:, None] * mu).sum(0) / n.sum()
    M = mu - mu_bar
    r = np.linalg.norm(M, axis=1)
    iu = np.triu_indices(K, 1)
    out = {}
    dist = np.linalg.norm(mu[:, None, :] - mu[None, :, :], axis=2)  # (K, K)
    with np.errstate(divide="ignore"):
        cdnv = (s[:, None] + s[None, :]) / (2 * dist ** (2 + k))
    out["nc1_cdnv"] = cdnv[iu].mean()
    if h_train is not None:
        h_train = np.asarray(h_train, np.float64)
        y_train = np.asarray(y_train)
        sel = measured[y_train]
        dev = h_train[sel] - means[y_train[sel]]
        sigma_w = dev.T @ dev / sel.sum()  # pooled over the measured classes' samples
        sigma_b = M.T @ M / K
        out["nc1_trace_ratio"] = np.trace(sigma_w @ np.linalg.pinv(sigma_b)) / K
        out["nc1_trace_quotient"] = np.trace(sigma_w) / np.trace(sigma_b)
    else:
        out["nc1_trace_quotient"] = (n * s).sum() / n.sum() / (r**2).mean()
    out["nc2_etf_error"] = _etf_error(M, M)
    sv = np.linalg.svd(M, compute_uv=False)
    p = sv[sv > 1e-12 * sv.max()] / sv.sum()
    out["effective_rank"] = np.exp(-(p * np.log(p)).sum())
    logr = np.log(r)
    out["nc2_norm_mean"] = logr.mean()
    out["nc2_equinorm_cov"] = _cov(logr)
    u = M / r[:, None]
    cos = u @ u.T
    out["nc2_interference_mean"] = cos[iu].mean()
    out["nc2_interference_std"] = cos[iu].std()
    out["nc2_equiangularity_cov"] = _cov(cos[iu])
    udist = np.linalg.norm(u[:, None, :] - u[None, :, :], axis=2)
    logk = np.log(1.0 / udist[iu])
    out["gnc2_log_kernel_mean"] = logk.mean()
    out["gnc2_uniformity_cov"] = _cov(logk)
    if riesz_s is not None:
        riesz = udist[iu] ** (-riesz_s)
        out["gnc2_riesz_mean"] = riesz.mean()
        out["gnc2_riesz_cov"] = _cov(riesz)
    if h_ood is not None:
        v = np.asarray(h_ood, np.float64).mean(0) - mu_bar
        out["nc5_ood_orthogonality"] = np.abs(M @ v / (r * np.linalg.norm(v))).mean()
    per = {
        "mean_norm": r,
        "variance": s,
        "count": counts[present],
        "cdnv_row_mean": np.array([np.delete(cdnv[c], c).mean() for c in range(K)]),
        "interference_row_mean": np.array([np.delete(cos[c], c).mean() for c in range(K)]),
    }
    if W is not None:
        W = np.asarray(W, np.float64)
        w = W[present]
        dual = (w * M).sum(1) / (np.linalg.norm(w, axis=1) * r)
        out["nc3_duality_mean"] = dual.mean()
        out["unc3_duality_cov"] = _cov(dual)
        wu = w / np.linalg.norm(w, axis=1, keepdims=True)
        out["nc3_duality_distance"] = np.linalg.norm(wu - u, axis=1).mean()
        out["nc3_self_duality_error"] = _etf_error(M, w)
        per["duality"] = dual
    if h_test is not None:
        h_test = np.asarray(h_test, np.float64)
        y_test = np.asarray(y_test)
        if W is not None:
            W = np.asarray(W, np.float64)
        keep = y_test != -100
        h_test, y_test = h_test[keep], y_test[keep]
        d2 = ((h_test[:, None, :] - mu[None, :, :]) ** 2).sum(2)  # (N, K)
        ncc = present[d2.argmin(1)]
        if W is not None:
            logits = h_test @ W.T + (0 if b is None else np.asarray(b, np.float64))
            out["nc4_agreement"] = (logits.argmax(1) == ncc).mean()
        out["ncc_accuracy"] = (ncc == y_test).mean()
    return {k_: float(v) for k_, v in out.items()}, per


def _etf_error(A, B):
    """|| B A^T / ||B A^T||_F - (I - 11^T/K) / sqrt(K - 1) ||_F with the K x K matrices formed."""
    K = A.shape[0]
    S = B @ A.T
    S = S / np.linalg.norm(S)
    E = (np.eye(K) - np.ones((K, K)) / K) / np.sqrt(K - 1)
    return np.linalg.norm(S - E)


def simplex_etf(C, d, scale=1.0, seed=0):
    """C unit-norm (times scale) vectors in R^d (d >= C) with pairwise cosine -1/(C-1), summing to 0."""
    rng = np.random.default_rng(seed)
    Q, _ = np.linalg.qr(rng.standard_normal((d, C)))  # (d, C) orthonormal columns
    E = np.sqrt(C / (C - 1)) * (np.eye(C) - np.ones((C, C)) / C)  # (C, C)
    return scale * (Q @ E).T  # (C, d)
