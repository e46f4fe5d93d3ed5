"""The measure registry: every NC measure key, defined once.

``MEASURES`` maps each public key (as in ``metrics.json``, ``CollapseResult`` and the Trainer's
``eval_<key>`` logs) to a :class:`Measure`. The model card, the analysis (collapse directions), the
evaluate module's documentation and the docs' measures page are rendered from it; a measure key string
appears only here and where :mod:`hf_collapse.core.measures` computes it.

Notation (paper section 3): over the K classes measured (present, and within the ``min_count`` /
``classes`` options), mu_c class means, mu_G their global mean (by default mu_bar, their unweighted
mean; ``global_mean="weighted"`` weights by counts), M_c = mu_c - mu_G, u_c = M_c / ||M_c||, w_c
classifier rows, pairs c < c', and CoV = population std / |mean|. Options that switch a measure on
(``riesz_s``, ``ood_features``) are listed under ``needs`` as ``option``.
"""

from __future__ import annotations

from dataclasses import dataclass

CITATION_TEXT = (
    'Wu & Papyan, "Linguistic Collapse: Neural Collapse in (Large) Language Models", NeurIPS 2024, arXiv:2405.17767'
)
ARXIV_ID = "2405.17767"
CITATION_BIBTEX = f"""@inproceedings{{wu2024linguistic,
  title     = {{Linguistic Collapse: Neural Collapse in (Large) Language Models}},
  author    = {{Wu, Robert and Papyan, Vardan}},
  booktitle = {{Advances in Neural Information Processing Systems}},
  year      = {{2024}},
  url       = {{https://arxiv.org/abs/{ARXIV_ID}}}
}}"""

DIRECTIONS = ("lower", "higher", "target", "none")
NEEDS = ("weights", "test_data", "covariance", "option")


@dataclass(frozen=True)
class Measure:
    """One measure: how it is named, defined and read.

    ``direction`` says which way is "more collapsed": ``lower``, ``higher``, ``target`` (towards a
    value given in ``meaning``, scored as lower by the analysis) or ``none`` (a scale).
    ``needs`` lists what the measure requires beyond class statistics: classifier ``weights``,
    held-out ``test_data``, the d x d ``covariance``, or an ``option`` of ``measure_collapse``.
    """

    key: str
    name: str
    equation: str
    source: str
    meaning: str
    direction: str
    needs: tuple[str, ...] = ()

    @property
    def sign(self) -> int:
        """+1 when a larger value is more collapsed, -1 when a smaller one is, 0 for no direction."""
        return {"higher": 1, "lower": -1, "target": -1, "none": 0}[self.direction]

    @property
    def unit(self) -> str:
        """What kind of (dimensionless) number the measure is, for axis labels: ``CoV``, ``cosine``, ..."""
        return _UNITS.get(self.key, "")

    @property
    def direction_text(self) -> str:
        return {"target": "towards -1/(K-1)", "none": "none (a scale)"}.get(self.direction, self.direction)


_ALL = (
    Measure(
        "nc1_cdnv",
        "NC1 CDNV",
        r"mean_{c<c'} (σ_c² + σ_c'²) / (2 ‖μ_c − μ_c'‖^{2+k}), k = 2",
        "paper eq. 4",
        "within-class variance relative to the distance between class means",
        "lower",
    ),
    Measure(
        "nc1_trace_ratio",
        "NC1 tr(Σ_W Σ_B⁺)/K",
        "tr(Σ_W Σ_B⁺) / K",
        "Papyan et al. 2020",
        "within- over between-class covariance",
        "lower",
        ("covariance",),
    ),
    Measure(
        "nc1_trace_quotient",
        "NC1 tr(Σ_W)/tr(Σ_B)",
        "tr(Σ_W) / tr(Σ_B), tr(Σ_W) = Σ_c N_c σ_c² / N, tr(Σ_B) = mean_c ‖M_c‖²",
        "Tirer et al. 2023; covariance_ratio(metric='quotient') in rhubarbwu/neural-collapse",
        "within- over between-class variance, from traces (no d x d covariance)",
        "lower",
    ),
    Measure(
        "nc2_norm_mean",
        "NC2 mean log-norm",
        "mean_c log ‖M_c‖",
        "paper eq. 5",
        "mean log-norm of the centred class means (a scale)",
        "none",
    ),
    Measure(
        "nc2_equinorm_cov",
        "NC2 equinorm CoV",
        "CoV_c log ‖M_c‖",
        "paper eq. 5",
        "variation of the class-mean log-norms",
        "lower",
    ),
    Measure(
        "nc2_interference_mean",
        "NC2 interference",
        "mean_{c<c'} cos(M_c, M_c')",
        "paper eq. 6",
        "mean cosine between centred class means",
        "target",
    ),
    Measure(
        "nc2_interference_std",
        "NC2 interference std",
        "std_{c<c'} cos(M_c, M_c')",
        "paper eq. 6",
        "spread of those cosines",
        "lower",
    ),
    Measure(
        "nc2_equiangularity_cov",
        "NC2 equiangularity CoV",
        "CoV_{c<c'} cos(M_c, M_c')",
        "paper eq. 6",
        "variation of those cosines",
        "lower",
    ),
    Measure(
        "nc2_etf_error",
        "NC2 simplex-ETF error",
        "‖M Mᵀ/‖M Mᵀ‖_F − (I − 11ᵀ/K)/√(K−1)‖_F",
        "Kothapalli 2023; simplex_etf_error in rhubarbwu/neural-collapse",
        "distance of the normalised Gram matrix of centred class means from the simplex ETF's",
        "lower",
    ),
    Measure(
        "effective_rank",
        "Effective rank of M",
        "exp(−Σ_i p_i log p_i), p_i = σ_i(M) / Σ_j σ_j(M)",
        "Garrido et al. 2023 (RankMe)",
        "effective number of directions the centred class means span (a simplex ETF: min(K−1, d))",
        "higher",
    ),
    Measure(
        "gnc2_log_kernel_mean",
        "GNC2 log kernel",
        "mean_{c<c'} log(1 / ‖u_c − u_c'‖)",
        "paper eq. 7",
        "mean log inverse distance of unit class means",
        "lower",
    ),
    Measure(
        "gnc2_uniformity_cov",
        "GNC2 uniformity CoV",
        "CoV_{c<c'} log(1 / ‖u_c − u_c'‖)",
        "paper eq. 7",
        "variation of that kernel: hyperspherical uniformity",
        "lower",
    ),
    Measure(
        "gnc2_riesz_mean",
        "GNC2 Riesz kernel",
        "mean_{c<c'} ‖u_c − u_c'‖^(−s), s = riesz_s",
        "Liu et al. 2023; riesz_kernel in rhubarbwu/neural-collapse",
        "mean Riesz s-energy of unit class means (only with riesz_s)",
        "lower",
        ("option",),
    ),
    Measure(
        "gnc2_riesz_cov",
        "GNC2 Riesz CoV",
        "CoV_{c<c'} ‖u_c − u_c'‖^(−s)",
        "Liu et al. 2023",
        "variation of the Riesz kernel: hyperspherical uniformity (only with riesz_s)",
        "lower",
        ("option",),
    ),
    Measure(
        "nc3_duality_mean",
        "NC3 duality",
        "mean_c cos(w_c, M_c)",
        "paper eq. 8",
        "mean cosine between classifier rows and centred class means",
        "higher",
        ("weights",),
    ),
    Measure(
        "unc3_duality_cov",
        "UNC3 duality CoV",
        "CoV_c cos(w_c, M_c)",
        "paper eq. 8 (CoV)",
        "variation of those cosines: uniform duality",
        "lower",
        ("weights",),
    ),
    Measure(
        "nc3_duality_distance",
        "NC3 duality distance",
        "mean_c ‖w_c/‖w_c‖ − u_c‖",
        "paper eq. 11",
        "mean distance of unit classifiers to unit class means",
        "lower",
        ("weights",),
    ),
    Measure(
        "nc3_self_duality_error",
        "NC3 self-duality error",
        "‖W Mᵀ/‖W Mᵀ‖_F − (I − 11ᵀ/K)/√(K−1)‖_F",
        "Kothapalli 2023; self_duality_error in rhubarbwu/neural-collapse",
        "distance of the normalised classifier-mean cross Gram from the simplex ETF's",
        "lower",
        ("weights",),
    ),
    Measure(
        "nc4_agreement",
        "NC4 agreement",
        "share of held-out h with argmax_c ⟨w_c, h⟩ + b_c = argmin_c ‖h − μ_c‖",
        "paper eqs. 9-10",
        "share of held-out tokens where the classifier and the nearest class mean agree",
        "higher",
        ("weights", "test_data"),
    ),
    Measure(
        "ncc_accuracy",
        "NCC accuracy",
        "share of held-out h with argmin_c ‖h − μ_c‖ = label",
        "NCC rule of eq. 9 (computed as eq. 12)",
        "accuracy of the nearest-class-mean classifier on held-out tokens",
        "higher",
        ("test_data",),
    ),
    Measure(
        "nc5_ood_orthogonality",
        "NC5 OOD orthogonality",
        "mean_c |cos(M_c, μ_ood − μ_G)|",
        "Ammar et al. 2024 (NECO); orthogonality_deviation in rhubarbwu/neural-collapse",
        "alignment of centred class means with the out-of-distribution mean (only with ood_features)",
        "lower",
        ("option",),
    ),
)

MEASURES: dict[str, Measure] = {m.key: m for m in _ALL}

_UNITS = {
    "nc1_cdnv": "variance ratio",
    "nc1_trace_ratio": "variance ratio",
    "nc2_norm_mean": "log norm",
    "nc2_equinorm_cov": "CoV",
    "nc2_interference_mean": "cosine",
    "nc2_interference_std": "cosine",
    "nc2_equiangularity_cov": "CoV",
    "gnc2_log_kernel_mean": "log 1/distance",
    "gnc2_uniformity_cov": "CoV",
    "nc3_duality_mean": "cosine",
    "unc3_duality_cov": "CoV",
    "nc3_duality_distance": "distance",
    "nc4_agreement": "share of tokens",
    "ncc_accuracy": "share of tokens",
}

MEASURE_KEYS: tuple[str, ...] = tuple(MEASURES)
# what one-line summaries show first: variability, norms, uniformity, duality, agreement
HEADLINE_KEYS: tuple[str, ...] = (
    "nc1_cdnv",
    "nc2_equinorm_cov",
    "gnc2_uniformity_cov",
    "nc3_duality_mean",
    "nc4_agreement",
)


def is_collapse_key(key: str) -> bool:
    """Whether a logged metric key is a collapse measure: a registry key, possibly behind a prefix
    (``eval_``) and a layer (``eval_transformer_h_1_``). The filter for Trainer logs, e.g.
    ``{k: v for k, v in logs.items() if is_collapse_key(k)}``.

    Examples:
        >>> [k for k in ("eval_loss", "eval_nc1_cdnv", "eval_effective_rank", "eval_h_1_ncc_accuracy") if is_collapse_key(k)]
        ['eval_nc1_cdnv', 'eval_effective_rank', 'eval_h_1_ncc_accuracy']
    """
    return any(key == k or key.endswith("_" + k) for k in MEASURE_KEYS)


def markdown_table(keys=None) -> str:
    """The measures as a Markdown table (key, definition, source, more collapsed when)."""
    rows = ["| key | definition | source | more collapsed when | needs |", "|---|---|---|---|---|"]
    for key in keys or MEASURE_KEYS:
        m = MEASURES[key]
        eq = m.equation.replace("|", "\\|")
        rows.append(f"| `{m.key}` | {eq} | {m.source} | {m.direction_text} | {', '.join(m.needs) or '-'} |")
    return "\n".join(rows)
