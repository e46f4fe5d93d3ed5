"""The restructure changed no number: measures of fixed inputs equal, bit for bit, what the previous
round's code (commit 919148e) gave on the same inputs (values recorded from that code on 2026-12-03)."""

import math

import torch

from hf_collapse import CollapseArguments, CollapseStatistics, measure_collapse, measure_model

PREVIOUS = {
    "default": {
        "nc1_cdnv": 0.0005441325627884708,
        "nc1_trace_ratio": 0.05165625983150063,
        "nc1_trace_quotient": 0.12189686754897579,
        "nc2_norm_mean": 2.2410026502587383,
        "nc2_equinorm_cov": 0.10106921469075114,
        "nc2_interference_mean": -0.024676273167027835,
        "nc2_interference_std": 0.2839717582202262,
        "nc2_equiangularity_cov": 11.507886798711004,
        "nc2_etf_error": 1.01285460214977,
        "effective_rank": 11.51447541226451,
        "gnc2_log_kernel_mean": -0.33633079137605715,
        "gnc2_uniformity_cov": 0.46969955406978736,
        "nc3_duality_mean": 0.0027613468828731084,
        "unc3_duality_cov": 116.06378783280353,
        "nc3_duality_distance": 1.3920619188849304,
        "nc3_self_duality_error": 1.4129393009099467,
        "nc4_agreement": 0.038,
        "ncc_accuracy": 1.0,
    },
    "options": {
        "nc1_cdnv": 0.006155802218737419,
        "nc1_trace_quotient": 0.12361440443915934,
        "nc2_norm_mean": 2.2346580798665507,
        "nc2_equinorm_cov": 0.10094390628146381,
        "nc2_interference_mean": -0.02579588627888558,
        "nc2_interference_std": 0.2850576451663391,
        "nc2_equiangularity_cov": 11.050507902093837,
        "nc2_etf_error": 1.0042569051171755,
        "effective_rank": 11.476038628162865,
        "gnc2_log_kernel_mean": -0.33659792921069925,
        "gnc2_uniformity_cov": 0.47339885375483287,
        "gnc2_riesz_mean": 0.6228624956533787,
        "gnc2_riesz_cov": 0.28364527916183746,
        "nc3_duality_mean": 0.010281583334774849,
        "unc3_duality_cov": 31.583319578688762,
        "nc3_duality_distance": 1.3862572590657383,
        "nc3_self_duality_error": 1.4097452208658452,
    },
    "classes": {
        "nc1_cdnv": 0.0003765582399167989,
        "nc1_trace_quotient": 0.10818944382885923,
        "nc2_norm_mean": 2.3030341162807857,
        "nc2_equinorm_cov": 0.10326548099040744,
        "nc2_interference_mean": -0.05164704097122299,
        "nc2_interference_std": 0.2795615521100565,
        "nc2_equiangularity_cov": 5.4129248617713515,
        "nc2_etf_error": 0.8663585320476493,
        "effective_rank": 10.89733629085166,
        "gnc2_log_kernel_mean": -0.3506547517427256,
        "gnc2_uniformity_cov": 0.43770732089324493,
    },
    "model": {
        "nc1_cdnv": 0.4258757638607231,
        "nc1_trace_quotient": 1.715216639125527,
        "nc2_norm_mean": 1.0165440822701786,
        "nc2_equinorm_cov": 0.3178571704204916,
        "nc2_interference_mean": 0.002825749082443497,
        "nc2_interference_std": 0.2911065596005133,
        "nc2_equiangularity_cov": 103.01925298646334,
        "nc2_etf_error": 1.2304245319696865,
        "effective_rank": 47.94925507137999,
        "gnc2_log_kernel_mean": -0.3106916129723582,
        "gnc2_uniformity_cov": 0.733263877233934,
        "ncc_accuracy": 0.25925925925925924,
        "lm_head_nc1_cdnv": 0.013431516416262378,
        "lm_head_nc1_trace_quotient": 0.9041190297417535,
        "lm_head_nc2_norm_mean": 2.367345123113077,
        "lm_head_nc2_equinorm_cov": 0.07804431027671871,
        "lm_head_nc2_interference_mean": -0.001540062756211592,
        "lm_head_nc2_interference_std": 0.40526018909285033,
        "lm_head_nc2_equiangularity_cov": 263.1452435677049,
        "lm_head_nc2_etf_error": 1.283197257164759,
        "lm_head_effective_rank": 44.856943115580854,
        "lm_head_gnc2_log_kernel_mean": -0.2849735726881873,
        "lm_head_gnc2_uniformity_cov": 1.0134316776224608,
        "lm_head_nc3_duality_mean": 0.5310207656286521,
        "lm_head_unc3_duality_cov": 0.17689990297473823,
        "lm_head_nc3_duality_distance": 0.96360067156246,
        "lm_head_nc3_self_duality_error": 1.2350837489024262,
        "lm_head_nc4_agreement": 0.5238095238095238,
        "lm_head_ncc_accuracy": 0.48412698412698413,
    },
}


def problem():
    g = torch.Generator().manual_seed(7)
    C, d, n = 40, 12, 3000
    y = torch.randint(0, C, (n,), generator=g)
    mu = torch.randn(C, d, generator=g, dtype=torch.float64) * 3
    h = mu[y] + torch.randn(n, d, generator=g, dtype=torch.float64)
    W = torch.randn(C, d, generator=g, dtype=torch.float64)
    s = CollapseStatistics(C, d, covariance=True)
    s.update(h[:1500], y[:1500])
    s.update(h[1500:], y[1500:])
    return s, W, h[:500], y[:500]


def same(got: dict, want: dict):
    assert set(got) == set(want)
    for k, v in want.items():
        assert got[k] == v or (math.isnan(v) and math.isnan(got[k])), (k, got[k], v)


def test_measures_are_bit_identical_to_the_previous_round():
    s, W, ht, yt = problem()
    same(measure_collapse(s, weights=W, features=ht, labels=yt, dtype=torch.float64), PREVIOUS["default"])
    got = measure_collapse(s, weights=W, k=1.0, min_count=60, global_mean="weighted", riesz_s=1.5, dtype=torch.float64)
    same(got, PREVIOUS["options"])
    same(measure_collapse(s, classes=list(range(0, 40, 2)), tile_size=7), PREVIOUS["classes"])


def test_the_pipeline_is_bit_identical_to_the_previous_round(shared_data):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    path = shared_data / "models" / "stories260K"
    model, tok = AutoModelForCausalLM.from_pretrained(path).eval(), AutoTokenizer.from_pretrained(path)
    text = (shared_data / "tinystories" / "validation-head.txt").read_text()[:20000]
    ids = tok(text, return_tensors="pt").input_ids[0]
    batches = [{"input_ids": b} for b in ids[: len(ids) // 64 * 64].view(-1, 64).split(4)]  # (4, 64) each
    settings = CollapseArguments(collapse_modules=["model.layers.2", "lm_head"], collapse_dtype="float64")
    report = measure_model(model, batches[:-2], batches[-2:], settings, progress=False)
    same(report.metrics(), PREVIOUS["model"])
