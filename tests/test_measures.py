import math
import os
import sys

import numpy as np
import pytest
import torch

sys.path.insert(0, os.path.dirname(__file__))
from reference import dense_measures, dense_statistics, simplex_etf  # noqa: E402

from hf_collapse import CollapseStatistics, measure_collapse  # noqa: E402
from hf_collapse.core.registry import MEASURE_KEYS  # noqa: E402


def problem(C=40, d=12, N=3000, seed=0, absent=(3, 17), bias=True):
    g = torch.Generator().manual_seed(seed)
    y = torch.randint(0, C, (N,), generator=g)
    for c in absent:
        y[y == c] = (c + 1) % C
    y[:5] = 7  # an imbalanced class
    centres = torch.randn(C, d, generator=g, dtype=torch.float64) * 2
    h = centres[y] + torch.randn(N, d, generator=g, dtype=torch.float64) * 0.7
    W = centres + 0.5 * torch.randn(C, d, generator=g, dtype=torch.float64)
    b = 0.1 * torch.randn(C, generator=g, dtype=torch.float64) if bias else None
    yt = torch.randint(0, C, (800,), generator=g)
    ht = centres[yt] + torch.randn(800, d, generator=g, dtype=torch.float64) * 0.9
    yt[::11] = -100
    return h, y, W, b, ht, yt


def ood_features(d, n=50, seed=9):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, d, generator=g, dtype=torch.float64) + 1.5


def stats_of(h, y, C, covariance=False):
    s = CollapseStatistics(C, h.shape[1], covariance=covariance)
    s.update(h, y)
    return s


@pytest.mark.parametrize("dtype, rtol", [(torch.float64, 1e-6), (torch.float32, 1e-4)])
@pytest.mark.parametrize("tile", [7, 64])
def test_every_measure_matches_dense_reference(dtype, rtol, tile):
    h, y, W, b, ht, yt = problem()
    s = stats_of(h, y, 40, covariance=True)
    ood = ood_features(h.shape[1])
    res = measure_collapse(
        s,
        weights=W,
        bias=b,
        k=2.0,
        features=ht,
        labels=yt,
        per_class=True,
        tile_size=tile,
        dtype=dtype,
        riesz_s=3.0,
        ood_features=ood,
    )
    counts, means, variances = dense_statistics(h.numpy(), y.numpy(), 40)
    ref, per = dense_measures(
        counts,
        means,
        variances,
        W=W.numpy(),
        b=b.numpy(),
        k=2.0,
        h_test=ht.numpy(),
        y_test=yt.numpy(),
        h_train=h.numpy(),
        y_train=y.numpy(),
        riesz_s=3.0,
        h_ood=ood.numpy(),
    )
    assert set(res) == set(ref) == set(MEASURE_KEYS)
    for key in ref:
        np.testing.assert_allclose(res[key], ref[key], rtol=rtol, atol=1e-12, err_msg=key)
    assert all(type(v) is float for v in res.values())
    for key, vec in per.items():
        np.testing.assert_allclose(res.per_class[key].numpy(), vec, rtol=rtol, err_msg=key)
    present = np.nonzero(counts)[0]
    np.testing.assert_array_equal(res.per_class["class_ids"].numpy(), present)
    assert res.info["num_classes_present"] == 38 and res.info["nc4_samples"] == int((yt != -100).sum())


@pytest.mark.parametrize("k", [0.0, 1.0, 3.5])
def test_cdnv_power(k):
    h, y, W, b, ht, yt = problem(C=15, seed=2)
    s = stats_of(h, y, 15)
    res = measure_collapse(s, k=k, dtype=torch.float64, tile_size=4)
    ref, _ = dense_measures(*dense_statistics(h.numpy(), y.numpy(), 15), k=k)
    np.testing.assert_allclose(res["nc1_cdnv"], ref["nc1_cdnv"], rtol=1e-10)


def etf_stats(C, d, scale=3.0, noise=0.0, n_per=4, seed=0):
    mu = torch.from_numpy(simplex_etf(C, d, scale=scale, seed=seed))  # (C, d)
    y = torch.arange(C).repeat(n_per)
    h = mu[y] + noise * torch.randn(len(y), d, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    return stats_of(h, y, C), mu, h, y


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_simplex_etf_closed_form(dtype):
    C, d = 10, 16
    s, mu, h, y = etf_stats(C, d)
    res = measure_collapse(s, weights=mu * 5.0, features=h, labels=y, dtype=dtype, tile_size=3)
    tol = 1e-9 if dtype == torch.float64 else 1e-5
    assert res["nc1_cdnv"] == 0.0  # zero within-class noise
    assert res["nc2_interference_mean"] == pytest.approx(-1 / (C - 1), abs=tol)
    assert res["nc2_interference_std"] == pytest.approx(0.0, abs=1e-6)
    assert res["nc2_equinorm_cov"] == pytest.approx(0.0, abs=1e-12)  # equal norms
    assert res["nc2_norm_mean"] == pytest.approx(math.log(3.0), abs=1e-12)
    # ||u_c - u_c'||^2 = 2 + 2/(C-1) for every pair
    assert res["gnc2_log_kernel_mean"] == pytest.approx(-0.5 * math.log(2 + 2 / (C - 1)), abs=tol)
    assert res["gnc2_uniformity_cov"] == pytest.approx(0.0, abs=1e-4)
    assert res["nc3_duality_mean"] == pytest.approx(1.0, abs=1e-12)
    assert res["unc3_duality_cov"] == pytest.approx(0.0, abs=1e-7)
    assert res["nc3_duality_distance"] == pytest.approx(0.0, abs=1e-6)
    assert res["nc4_agreement"] == 1.0 and res["ncc_accuracy"] == 1.0


def test_perfect_collapse_orthogonal_means():
    # orthogonal (not centred) means: after centring, cos = -1/(C-1) again; CDNV exact from the variance
    C, d = 6, 8
    mu = torch.eye(C, d, dtype=torch.float64) * 2.0
    y = torch.arange(C).repeat(3)
    s = stats_of(mu[y], y, C)
    res = measure_collapse(s, dtype=torch.float64)
    assert res["nc1_cdnv"] == 0.0
    assert res["nc2_interference_mean"] == pytest.approx(-1 / (C - 1), abs=1e-12)
    assert res["nc2_equinorm_cov"] == pytest.approx(0.0, abs=1e-12)
    # add noise of known variance: sigma_c^2 = 2 * 0.1^2 * ... computed exactly by the dense reference
    noise = torch.zeros(len(y), d, dtype=torch.float64)
    noise[:C, 0] = 0.1
    noise[C : 2 * C, 0] = -0.1
    s2 = stats_of(mu[y] + noise, y, C)
    sig = 2 * 0.01 / 3  # per class: two samples at +-0.1, one at 0
    dist = 2.0 * math.sqrt(2)  # ||mu_c - mu_c'|| for scaled orthonormal means
    expected = sig / dist**4  # (sig + sig) / (2 dist^(2+2))
    assert measure_collapse(s2, dtype=torch.float64)["nc1_cdnv"] == pytest.approx(expected, rel=1e-12)


def rotation(d, seed=0):
    q, _ = torch.linalg.qr(torch.randn(d, d, dtype=torch.float64, generator=torch.Generator().manual_seed(seed)))
    return q


def test_rotation_and_scaling_invariance():
    h, y, W, _, ht, yt = problem(C=20, seed=4)
    base = measure_collapse(stats_of(h, y, 20, covariance=True), weights=W, features=ht, labels=yt, dtype=torch.float64)
    Q = rotation(h.shape[1])
    rot = measure_collapse(
        stats_of(h @ Q, y, 20, covariance=True), weights=W @ Q, features=ht @ Q, labels=yt, dtype=torch.float64
    )
    for key in base:
        assert rot[key] == pytest.approx(base[key], rel=1e-8, abs=1e-12), key
    a = 7.5
    scaled = measure_collapse(
        stats_of(h * a, y, 20, covariance=True), weights=W * 3.0, features=ht * a, labels=yt, dtype=torch.float64
    )
    scale_free = [k_ for k_ in base if k_ not in ("nc1_cdnv", "nc2_norm_mean", "nc2_equinorm_cov")]
    for key in scale_free:
        assert scaled[key] == pytest.approx(base[key], rel=1e-8, abs=1e-12), key
    # the scale-dependent ones move exactly as their formulas say
    assert scaled["nc1_cdnv"] == pytest.approx(base["nc1_cdnv"] * a**-2, rel=1e-8)  # k = 2: a^2 / a^4
    assert scaled["nc2_norm_mean"] == pytest.approx(base["nc2_norm_mean"] + math.log(a), rel=1e-10)


def test_batch_split_invariance_of_measures():
    h, y, W, _, _, _ = problem(C=25, seed=5)
    whole = measure_collapse(stats_of(h, y, 25), weights=W, dtype=torch.float64)
    parts = [stats_of(h[i::3], y[i::3], 25) for i in range(3)]
    merged = parts[0].merge(parts[1]).merge(parts[2])
    split = measure_collapse(merged, weights=W, dtype=torch.float64)
    for key in whole:
        assert split[key] == pytest.approx(whole[key], rel=1e-9), key


def test_edge_cases_and_errors():
    s = CollapseStatistics(5, 3)
    with pytest.raises(ValueError, match="at least 2 classes"):
        measure_collapse(s)
    s.update(torch.randn(4, 3), torch.tensor([1, 1, 1, 1]))
    with pytest.raises(ValueError, match="at least 2 classes with samples, got 1"):
        measure_collapse(s)
    # classes with a single sample are fine: variance 0
    s.update(torch.tensor([[5.0, 0, 0]]), torch.tensor([3]))
    res = measure_collapse(s, per_class=True)
    assert res.per_class["variance"][1].item() == 0.0 and math.isfinite(res["nc1_cdnv"])
    # identical means -> clear error, not inf
    t = CollapseStatistics(3, 2)
    t.update(torch.tensor([[1.0, 0], [1.0, 0], [0.0, 4.0]]), torch.tensor([0, 1, 2]))
    for dt in (torch.float32, torch.float64):
        with pytest.raises(ValueError, match="identical"):
            measure_collapse(t, dtype=dt)
    # a class mean equal to the global mean
    z = CollapseStatistics(3, 2)
    z.update(torch.tensor([[1.0, 0], [0.0, 0], [-1.0, 0]]), torch.tensor([0, 1, 2]))
    with pytest.raises(ValueError, match=r"class\(es\) \[1\]"):
        measure_collapse(z)


def test_classifier_checks_and_zero_rows():
    h, y, W, b, ht, yt = problem(C=10, seed=6, absent=())
    s = stats_of(h, y, 10)
    with pytest.raises(ValueError, match=r"expected weights of shape \(10, 12\)"):
        measure_collapse(s, weights=W[:9])
    with pytest.raises(ValueError, match="shape"):
        measure_collapse(s, weights=W[:, :5])
    with pytest.raises(ValueError, match="bias must be"):
        measure_collapse(s, weights=W, bias=b[:3])
    with pytest.raises(ValueError, match="without weights"):
        measure_collapse(s, bias=b)
    with pytest.raises(ValueError, match="both features and labels"):
        measure_collapse(s, weights=W, features=ht)
    with pytest.raises(ValueError, match=r"test labels must lie in \[0, 10\)"):
        measure_collapse(s, weights=W, features=ht, labels=torch.full((800,), 10))
    with pytest.raises(ValueError, match="no labelled sample"):
        measure_collapse(s, weights=W, features=ht, labels=torch.full((800,), -100))
    with pytest.raises(ValueError, match="k must be"):
        measure_collapse(s, k=-1)
    with pytest.raises(ValueError, match="dtype"):
        measure_collapse(s, dtype=torch.float16)
    W0 = W.clone()
    W0[2] = 0
    res = measure_collapse(s, weights=W0, per_class=True, dtype=torch.float64)
    assert math.isnan(res.per_class["duality"][2].item())
    assert res.info["nc3_classes"] == 9
    ref_cos = torch.nn.functional.cosine_similarity(
        W[[0, 1, 3, 4, 5, 6, 7, 8, 9]], (s.means - s.global_mean)[[0, 1, 3, 4, 5, 6, 7, 8, 9]]
    )
    assert res["nc3_duality_mean"] == pytest.approx(ref_cos.mean().item(), rel=1e-10)
    with pytest.raises(ValueError, match="every classifier row"):
        measure_collapse(s, weights=torch.zeros_like(W))
    # bias changes agreement only through the linear classifier
    big_bias = torch.zeros(10, dtype=torch.float64)
    big_bias[4] = 1e6
    res_b = measure_collapse(s, weights=W, bias=big_bias, features=ht, labels=yt)
    ref, _ = dense_measures(
        *dense_statistics(h.numpy(), y.numpy(), 10),
        W=W.numpy(),
        b=big_bias.numpy(),
        h_test=ht.numpy(),
        y_test=yt.numpy(),
    )
    assert res_b["nc4_agreement"] == pytest.approx(ref["nc4_agreement"])


def test_load_path_and_table(tmp_path):
    h, y, W, _, _, _ = problem(C=8, seed=7, absent=())
    s = stats_of(h, y, 8)
    s.save(tmp_path / "s.safetensors")
    a = measure_collapse(s, dtype=torch.float64)
    b = measure_collapse(str(tmp_path / "s.safetensors"), dtype=torch.float64)
    assert a == b
    assert "nc1_cdnv" in a.table()


def test_nearly_parallel_means_are_resolved_in_float32():
    # two means 1e-3 apart at norm ~100: a float32 Gram matrix alone gets their distance wrong by
    # orders of magnitude; the close pairs are recomputed in float64
    base = torch.tensor([[100.0, 0, 0], [100.0, 1e-3, 0], [0, 0, 100.0]], dtype=torch.float64)
    y = torch.arange(3).repeat(2)
    noise = torch.zeros(6, 3, dtype=torch.float64)
    noise[:3, 2] = 1e-4
    noise[3:, 2] = -1e-4
    h = base[y] + noise
    ref, _ = dense_measures(*dense_statistics(h.numpy(), y.numpy(), 3))
    for dtype, tile in ((torch.float32, 2), (torch.float32, 8), (torch.float64, 2)):
        res = measure_collapse(stats_of(h, y, 3), dtype=dtype, tile_size=tile)
        for key in ("nc1_cdnv", "gnc2_log_kernel_mean", "gnc2_uniformity_cov", "nc2_interference_std"):
            assert res[key] == pytest.approx(ref[key], rel=1e-4), (dtype, tile, key)


def test_coincident_means_excluded_on_request():
    # classes 1 and 4 see exactly the same features (identical contexts): CDNV undefined for that pair
    h, y, W, _, ht, yt = problem(C=12, seed=8, absent=())
    y = y.clone()
    h = h.clone()
    h[y == 4] = 0.0
    h[y == 1] = 0.0
    h[y == 4] += torch.tensor([5.0] + [0.0] * 11, dtype=torch.float64)
    h[y == 1] += torch.tensor([5.0] + [0.0] * 11, dtype=torch.float64)
    s = stats_of(h, y, 12)
    with pytest.raises(ValueError, match=r"classes \[1, 4\] have means identical"):
        measure_collapse(s, weights=W)
    with pytest.raises(ValueError, match="coincident must be"):
        measure_collapse(s, coincident="drop")
    res = measure_collapse(
        s, weights=W, features=ht, labels=yt, per_class=True, dtype=torch.float64, coincident="exclude"
    )
    assert res.info["num_classes_coincident"] == 2 and res.info["num_classes_present"] == 10
    assert 1 not in res.per_class["class_ids"].tolist() and 4 not in res.per_class["class_ids"].tolist()
    # the same as measuring statistics in which those two classes never occurred
    keep = (y != 1) & (y != 4)
    ref = measure_collapse(stats_of(h[keep], y[keep], 12), weights=W, features=ht, labels=yt, dtype=torch.float64)
    for key in ref:
        assert res[key] == pytest.approx(ref[key], rel=1e-10), key


def test_row_chunks_change_no_result(monkeypatch):
    """Rows read a few at a time (norms, classifier rows, NC4 scores) give the unchunked results exactly."""
    import hf_collapse.core.nc4 as nc4
    import hf_collapse.core.rows as rows

    h, y, W, b, ht, yt = problem()
    s = stats_of(h, y, 40)
    kw = dict(weights=W.float(), bias=b, features=ht, labels=yt, per_class=True, tile_size=16)
    whole = measure_collapse(s, **kw)
    monkeypatch.setattr(rows, "CHUNK_BYTES", 3 * 8 * h.shape[1])  # 3 rows
    monkeypatch.setattr(nc4, "SCORE_BYTES", 4 * 40 * 7)  # 7 tokens' scores
    chunked = measure_collapse(s, **kw)
    assert set(chunked) == set(whole)
    for key in whole:
        assert chunked[key] == pytest.approx(whole[key], rel=1e-12, abs=1e-15), key
    assert chunked.info["nc4_samples"] == whole.info["nc4_samples"]
    for key, vec in whole.per_class.items():
        torch.testing.assert_close(chunked.per_class[key], vec, rtol=1e-12, atol=1e-15, equal_nan=True)


def test_measures_hold_one_class_by_feature_array():
    """The measures' working set is one K x d float64 array (the centred means) beyond the statistics:
    no allocation while measuring reaches K x d x 8 bytes but the class means (float32 weights are read
    a chunk at a time, not copied to float64)."""
    from torch.profiler import ProfilerActivity, profile

    C, d = 16384, 256  # one C x d float64 array: 32 MiB, twice a row chunk (16 MiB)
    g = torch.Generator().manual_seed(0)
    s = CollapseStatistics(C, d)
    y = torch.arange(C).repeat(2)
    s.update(torch.randn(2 * C, d, generator=g), y)
    W = torch.randn(C, d, generator=g)
    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        measure_collapse(s, weights=W, tile_size=1024)  # tile buffers: 4 MiB each
    big = [e.name for e in prof.events() if e.cpu_memory_usage >= C * d * 8 * 0.9]
    assert big == ["aten::index_select"], big  # the class means, worked on in place


def test_nc4_counter_takes_an_empty_batch():
    """A rank that ran out of data feeds an empty batch (dummy forwards of uneven shards): nothing counted."""
    from hf_collapse.core.nc4 import NC4Counter

    g = torch.Generator().manual_seed(0)
    counter = NC4Counter(torch.arange(3), torch.randn(3, 4, generator=g, dtype=torch.float64), 3, torch.randn(3, 4))
    counter.update(torch.randn(0, 4), torch.zeros(0, dtype=torch.long))
    assert counter.num_samples == 0
    counter.update(torch.randn(0, 4), torch.zeros(0, dtype=torch.long), logits=torch.randn(0, 3))
    counter.update(torch.randn(5, 4, generator=g), torch.tensor([0, 1, 2, 0, 1]))
    assert counter.num_samples == 5
