"""The measures added for the authors' packages (ETF errors, trace quotient, effective rank, Riesz
kernel, NC5) and the class options (min_count, classes, global_mean), against tests/reference.py."""

import math
import os
import sys

import numpy as np
import pytest
import torch

sys.path.insert(0, os.path.dirname(__file__))
from reference import dense_measures, dense_statistics, simplex_etf  # noqa: E402
from test_measures import etf_stats, ood_features, problem, stats_of  # noqa: E402

from hf_collapse import measure_collapse  # noqa: E402
from hf_collapse.core.nc4 import NC4Counter  # noqa: E402
from hf_collapse.core.spectral import effective_rank, gram, singular_values  # noqa: E402

NEW = (
    "nc1_trace_quotient",
    "nc2_etf_error",
    "effective_rank",
    "gnc2_riesz_mean",
    "gnc2_riesz_cov",
    "nc3_self_duality_error",
    "nc5_ood_orthogonality",
)


def counts_mask(y, C, min_count=1, classes=None):
    counts = np.bincount(y, minlength=C)
    keep = counts >= min_count
    if classes is not None:
        chosen = np.zeros(C, bool)
        chosen[list(classes)] = True
        keep &= chosen
    return keep


@pytest.mark.parametrize("global_mean", ["unweighted", "weighted"])
@pytest.mark.parametrize("options", [{}, {"min_count": 80}, {"classes": [0, 2, 5, 7, 8, 11, 19, 23, 30, 31, 39]}])
@pytest.mark.parametrize("dtype, rtol", [(torch.float64, 1e-6), (torch.float32, 1e-4)])
def test_new_measures_match_dense_reference(global_mean, options, dtype, rtol):
    h, y, W, b, ht, yt = problem(C=40, d=12, N=3000, seed=11)
    ood = ood_features(12)
    res = measure_collapse(
        stats_of(h, y, 40, covariance=True),
        weights=W,
        bias=b,
        features=ht,
        labels=yt,
        dtype=dtype,
        tile_size=9,
        riesz_s=2.5,
        ood_features=ood,
        global_mean=global_mean,
        **options,
    )
    keep = counts_mask(y.numpy(), 40, options.get("min_count", 1), options.get("classes"))
    ref, _ = dense_measures(
        *dense_statistics(h.numpy(), y.numpy(), 40),
        W=W.numpy(),
        b=b.numpy(),
        h_test=ht.numpy(),
        y_test=yt.numpy(),
        h_train=h.numpy(),
        y_train=y.numpy(),
        keep=keep,
        global_mean=global_mean,
        riesz_s=2.5,
        h_ood=ood.numpy(),
    )
    assert res.info["num_classes_present"] == int(keep.sum()) < 41
    if options:  # the d x d second moment covers every class: no nc1_trace_ratio for a subset
        ref.pop("nc1_trace_ratio")
    assert set(res) == set(ref) and set(NEW) <= set(res)
    for key in ref:
        np.testing.assert_allclose(res[key], ref[key], rtol=rtol, atol=1e-12, err_msg=key)


def test_global_mean_weighted_differs_and_is_the_sample_mean():
    h, y, W, _, _, _ = problem(C=15, seed=12)
    s = stats_of(h, y, 15)
    un = measure_collapse(s, weights=W, dtype=torch.float64, ood_features=ood_features(12))
    wt = measure_collapse(s, weights=W, dtype=torch.float64, ood_features=ood_features(12), global_mean="weighted")
    assert un["nc1_cdnv"] == pytest.approx(wt["nc1_cdnv"], rel=1e-12)  # distances do not see the centre
    assert abs(un["nc2_etf_error"] - wt["nc2_etf_error"]) > 1e-3  # the <sum M, sum M>/K term is not zero
    # the weighted centre is the mean of every sample: centring the features there changes nothing
    shifted = measure_collapse(
        stats_of(h - h.mean(0), y, 15),
        weights=W,
        dtype=torch.float64,
        ood_features=ood_features(12) - h.mean(0),
        global_mean="weighted",
    )
    for key in wt:
        assert shifted[key] == pytest.approx(wt[key], rel=1e-8, abs=1e-12), key
    # equal counts: the two centres coincide
    yb = torch.arange(15).repeat(40)
    hb = torch.randn(600, 12, dtype=torch.float64, generator=torch.Generator().manual_seed(3)) + 3 * yb[:, None] % 5
    a = measure_collapse(stats_of(hb, yb, 15), dtype=torch.float64)
    c = measure_collapse(stats_of(hb, yb, 15), dtype=torch.float64, global_mean="weighted")
    for key in a:
        assert a[key] == pytest.approx(c[key], rel=1e-9, abs=1e-12), key


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_min_count_and_classes_equal_filtered_statistics(dtype):
    h, y, W, b, ht, yt = problem(C=30, seed=13, absent=(4,))
    counts = np.bincount(y.numpy(), minlength=30)
    n = int(np.median(counts[counts > 0]))
    kw = dict(
        weights=W,
        bias=b,
        features=ht,
        labels=yt,
        dtype=dtype,
        riesz_s=1.0,
        ood_features=ood_features(12),
        per_class=True,
    )
    for opts, keep in (
        ({"min_count": n}, counts >= n),
        ({"classes": [1, 3, 4, 8, 9, 20, 29]}, np.isin(np.arange(30), [1, 3, 4, 8, 9, 20, 29])),
    ):
        res = measure_collapse(stats_of(h, y, 30), **opts, **kw)
        sel = torch.from_numpy(keep)[y]
        ref = measure_collapse(stats_of(h[sel], y[sel], 30), **kw)
        assert set(res) == set(ref)
        for key in ref:
            assert res[key] == pytest.approx(ref[key], rel=1e-10, abs=1e-14), (opts, key)
        assert torch.equal(res.per_class["class_ids"], ref.per_class["class_ids"])
        # the collection path's NC4 counter chooses among the same classes
        counter = NC4Counter.from_statistics(stats_of(h, y, 30), W, b, dtype=dtype, **opts)
        counter.update(ht, yt)
        assert counter.values()["ncc_accuracy"] == pytest.approx(ref["ncc_accuracy"], abs=1e-12)


def test_simplex_etf_and_self_duality_closed_forms():
    C, d = 10, 16
    s, mu, h, y = etf_stats(C, d)
    for dtype, tol in ((torch.float64, 1e-6), (torch.float32, 2e-3)):  # float32: sqrt(2 eps) floor
        res = measure_collapse(s, weights=mu * 5.0, dtype=dtype, riesz_s=1000.0, ood_features=torch.ones(3, d))
        assert res["nc2_etf_error"] == pytest.approx(0.0, abs=tol)
        assert res["nc3_self_duality_error"] == pytest.approx(0.0, abs=tol)  # W = 5 x the centred means
        assert res["effective_rank"] == pytest.approx(C - 1, rel=1e-6)  # C - 1 equal singular values
        assert res["nc1_trace_quotient"] == 0.0  # no within-class variance
        # every pair at ||u - u'||^2 = 2 + 2/(C-1): Riesz mean (2 + 2/(C-1))^(-s/2) (1e-174: no overflow), CoV 0
        assert res["gnc2_riesz_mean"] == pytest.approx(
            (2 + 2 / (C - 1)) ** -500, rel=1e-3 if dtype == torch.float32 else 1e-9
        )
        assert res["gnc2_riesz_cov"] == pytest.approx(0.0, abs=1e-2 if dtype == torch.float32 else 1e-9)
    # random (non-ETF) means: W equal to the centred means gives the self-duality error of M with itself
    h2, y2, _, _, _, _ = problem(C=12, seed=14, absent=())
    s2 = stats_of(h2, y2, 12)
    M = s2.means - s2.global_mean
    res = measure_collapse(s2, weights=3.0 * M, dtype=torch.float64)
    assert res["nc2_etf_error"] > 0.1
    assert res["nc3_self_duality_error"] == pytest.approx(res["nc2_etf_error"], rel=1e-10)
    # an OOD mean orthogonal to every centred mean: nc5 = 0; along one of them: its |cos| with the others
    z = torch.zeros(C, 1, dtype=torch.float64)
    s3 = stats_of(torch.cat([mu, z], 1)[y], y, C)
    ood = torch.zeros(4, d + 1, dtype=torch.float64)
    ood[:, d] = 7.0
    assert measure_collapse(s3, dtype=torch.float64, ood_features=ood)["nc5_ood_orthogonality"] == pytest.approx(
        0.0, abs=1e-12
    )


def test_effective_rank_of_orthonormal_directions():
    d = 20
    q, _ = torch.linalg.qr(torch.randn(d, d, dtype=torch.float64, generator=torch.Generator().manual_seed(0)))
    for K in (1, 7, 20):  # K <= d: svdvals of the K x d matrix
        M = q[:K] * 3.0
        assert effective_rank(singular_values(M, gram(M, torch.float64))) == pytest.approx(K, rel=1e-12)
    M = torch.cat([q, -q, 2 * q[:5]])  # K = 45 > d: the Gram path; singular values sqrt(2) (15 of them), sqrt(6)
    sv = singular_values(M, gram(M, torch.float64))
    ref = np.linalg.svd(M.numpy(), compute_uv=False)
    np.testing.assert_allclose(np.sort(sv.numpy()), np.sort(ref), rtol=1e-10)
    p = ref / ref.sum()
    assert effective_rank(sv) == pytest.approx(math.exp(-(p * np.log(p)).sum()), rel=1e-10)
    # orthonormal (uncentred) class means: centring leaves K - 1 equal singular values
    C = 8
    yy = torch.arange(C).repeat(2)
    res = measure_collapse(stats_of(q[:C][yy], yy, C), dtype=torch.float64)
    assert res["effective_rank"] == pytest.approx(C - 1, rel=1e-10)


def test_riesz_overflow_and_option_errors():
    h, y, W, _, _, _ = problem(C=20, seed=15)
    s = stats_of(h, y, 20)
    assert "gnc2_riesz_mean" not in measure_collapse(s) and "nc5_ood_orthogonality" not in measure_collapse(s)
    big = measure_collapse(s, dtype=torch.float64, riesz_s=200.0)  # large but representable
    ref, _ = dense_measures(*dense_statistics(h.numpy(), y.numpy(), 20), riesz_s=200.0)
    assert big["gnc2_riesz_mean"] == pytest.approx(ref["gnc2_riesz_mean"], rel=1e-6)
    assert big["gnc2_riesz_cov"] == pytest.approx(ref["gnc2_riesz_cov"], rel=1e-6)
    for dtype in (torch.float32, torch.float64):
        with pytest.raises(ValueError, match="riesz_s=5000.0 overflows float64"):
            measure_collapse(s, dtype=dtype, riesz_s=5000.0)
    for bad in (0.0, -1.0, math.inf, math.nan):
        with pytest.raises(ValueError, match="riesz_s must be a finite number > 0"):
            measure_collapse(s, riesz_s=bad)
    with pytest.raises(TypeError, match="riesz_s must be a number"):
        measure_collapse(s, riesz_s="2")
    with pytest.raises(ValueError, match="min_count must be an int >= 1"):
        measure_collapse(s, min_count=0)
    with pytest.raises(ValueError, match="at least 2 classes with samples, got 0 \\(min_count=100000"):
        measure_collapse(s, min_count=100_000)
    with pytest.raises(ValueError, match=r"classes \[20\] lie outside \[0, 20\)"):
        measure_collapse(s, classes=[1, 20])
    with pytest.raises(TypeError, match="integer class ids"):
        measure_collapse(s, classes=[1.0, 2.0])
    with pytest.raises(ValueError, match="at least 2 classes"):
        measure_collapse(s, classes=[3])
    with pytest.raises(ValueError, match="global_mean must be"):
        measure_collapse(s, global_mean="median")
    with pytest.raises(ValueError, match=r"ood_features must have shape \(N, 12\)"):
        measure_collapse(s, ood_features=torch.randn(5, 3))
    with pytest.raises(TypeError, match="ood_features must be a floating-point"):
        measure_collapse(s, ood_features=torch.ones(5, 12, dtype=torch.long))
    with pytest.raises(ValueError, match="OOD mean equals the global mean"):
        measure_collapse(s, ood_features=s.global_mean[None].repeat(3, 1))


def test_simplex_etf_helper_is_an_etf():  # the fixture the closed forms rely on
    E = simplex_etf(6, 9)
    G = E @ E.T
    np.testing.assert_allclose(G, np.eye(6) * 6 / 5 - 1 / 5, atol=1e-12)  # unit norms, cosines -1/(C-1)


def test_collapse_arguments_embed_the_measure_options():
    from transformers import HfArgumentParser

    from hf_collapse import CollapseArguments, MeasureOptions

    (c,) = HfArgumentParser(CollapseArguments).parse_args_into_dataclasses(
        ["--collapse_min_count", "3", "--collapse_classes", "5", "2", "9", "--collapse_global_mean", "weighted"]
        + ["--collapse_riesz_s", "1.5"]
    )
    assert c.options == MeasureOptions(min_count=3, classes=[2, 5, 9], global_mean="weighted", riesz_s=1.5)
    rec = c.options.to_record()
    assert rec["min_count"] == 3 and rec["global_mean"] == "weighted" and rec["riesz_s"] == 1.5
    assert rec["classes"].startswith("3 ids sha256:")
    assert CollapseArguments.from_options(c.options).options == c.options
    for bad, err in (
        ({"collapse_min_count": 0}, "min_count"),
        ({"collapse_global_mean": "mode"}, "global_mean"),
        ({"collapse_riesz_s": -1.0}, "riesz_s"),
        ({"collapse_classes": [-1]}, "outside"),
        ({"collapse_dtype": "float16"}, "dtype"),
    ):
        with pytest.raises(ValueError, match=err):
            CollapseArguments(**bad)


def test_evaluate_module_passes_the_options():
    import importlib.util
    from pathlib import Path

    path = Path(__file__).resolve().parents[1] / "metrics" / "neural_collapse" / "neural_collapse.py"
    spec = importlib.util.spec_from_file_location("nc_module_for_options", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    h, y, W, _, _, _ = problem(C=12, seed=16, absent=())
    s = stats_of(h, y, 12)
    ood = ood_features(12).numpy()  # numpy is accepted
    opts = dict(min_count=40, classes=list(range(10)), global_mean="weighted", riesz_s=2.0)
    got = mod.NeuralCollapse(config_name="statistics")._compute(
        statistics=[s], weights=W, dtype="float64", ood_features=ood, **opts
    )
    want = measure_collapse(s, weights=W, dtype=torch.float64, ood_features=torch.from_numpy(ood), **opts)
    assert got == dict(want) and "nc5_ood_orthogonality" in got and "gnc2_riesz_cov" in got


def test_measure_cli_flags_reach_metrics_json(shared_data, tmp_path, capsys):
    import json

    from hf_collapse.cli import main

    d = shared_data
    base = [
        "measure",
        str(d / "models" / "stories260K"),
        "--train-file",
        str(d / "tinystories" / "train-head.txt"),
        "--validation-file",
        str(d / "tinystories" / "validation-head.txt"),
        "--max-tokens",
        "2000",
        "--block-size",
        "128",
        "--batch-size",
        "4",
        "--dtype",
        "float64",
        "--no-progress",
        "--no-save-model",
    ]
    assert main([*base, "--output-dir", str(tmp_path / "a")]) == 0
    flags = [
        "--min-count",
        "3",
        "--classes",
        *map(str, range(0, 512, 2)),
        "--global-mean",
        "weighted",
        "--riesz-s",
        "2",
    ]
    assert main([*base, "--output-dir", str(tmp_path / "b"), *flags]) == 0
    capsys.readouterr()
    a = json.loads((tmp_path / "a" / "collapse" / "metrics.json").read_text())
    b = json.loads((tmp_path / "b" / "collapse" / "metrics.json").read_text())
    assert {"nc1_trace_quotient", "nc2_etf_error", "effective_rank", "nc3_self_duality_error"} <= set(a)
    assert "gnc2_riesz_mean" not in a and a["min_count"] == 1 and a["global_mean"] == "unweighted"
    assert b["min_count"] == 3 and b["global_mean"] == "weighted" and b["riesz_s"] == 2.0
    assert b["classes"].startswith("256 ids sha256:") and "gnc2_riesz_cov" in b
    # the same statistics (the options only change the measures), fewer classes measured
    assert b["num_tokens"] == a["num_tokens"] and b["num_classes_present"] == a["num_classes_present"]
    assert 2 <= b["num_classes_measured"] < a["num_classes_present"] / 2
    from hf_collapse import CollapseStatistics

    stats = CollapseStatistics.load(tmp_path / "b" / "collapse" / "statistics.safetensors")
    ref = measure_collapse(
        stats,
        dtype=torch.float64,
        min_count=3,
        classes=list(range(0, 512, 2)),
        global_mean="weighted",
        riesz_s=2.0,
        coincident="exclude",
    )
    for key in ("nc1_cdnv", "nc2_etf_error", "gnc2_riesz_mean", "nc1_trace_quotient"):
        assert b[key] == pytest.approx(ref[key], rel=1e-12), key
    assert main([*base, "--output-dir", str(tmp_path / "c"), "--min-count", "0"]) == 1
