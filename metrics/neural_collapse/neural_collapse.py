"""Neural collapse (NC1-NC4) as a Hugging Face ``evaluate`` metric.

A thin wrapper: samples are accumulated into ``hf_collapse.CollapseStatistics`` and measured by
``hf_collapse.measure_collapse``; no formula is implemented here. Two configurations:

- ``"default"``: ``features`` (N, d) and integer ``labels`` (N,) through ``add_batch``/``compute``.
  Each ``add_batch`` call is stored as ONE Arrow row holding an ``Array2D`` (n, d) matrix, read back
  in numpy format (evaluate's per-sample ``Sequence(float)`` rows cost ~20x more).
- ``"statistics"``: precomputed statistics, a ``CollapseStatistics`` or the path of a file written
  by ``CollapseStatistics.save`` (several are merged), so vocabulary-scale results never pass
  tokens x d floats through Arrow.

Keep ``import evaluate`` + ``evaluate.Metric`` (not ``from evaluate import Metric``): evaluate takes
the first ``EvaluationModule`` subclass it finds in this module's namespace as the metric.
"""

import os
import warnings

import datasets
import evaluate
import numpy as np
import torch

from hf_collapse import CollapseStatistics, measure_collapse
from hf_collapse.core.registry import CITATION_BIBTEX, MEASURES

STATISTICS_CONFIG = "statistics"

_CITATION = CITATION_BIBTEX + "\n"

_DESCRIPTION = """\
Neural collapse (NC) measures the geometry of top-layer features grouped by class (for a language
model: by next token) and of the classifier (the LM head): NC1 within-class variability (CDNV),
NC2 equinorm / equiangularity of the centred class means, GNC2 hyperspherical uniformity, NC3 /
UNC3 (uniform) self-duality of class means and classifier rows, NC4 agreement of the linear
classifier with the nearest-class-centre classifier (Wu & Papyan 2024, section 3)."""

_KWARGS_DESCRIPTION = """
Args (configuration "default"):
    features: per-sample feature vectors, an array/tensor of shape (n, d) (or (..., d)) per
        ``add_batch`` call; ``add`` takes one vector (d,). Stored as float32 (float64 if given).
    labels: integer class ids of shape (n,) (or the leading shape of ``features``); -100 is ignored.
Args (configuration "statistics"):
    statistics: a ``hf_collapse.CollapseStatistics`` (or a list of them; ``compute`` only), or the
        path(s) of files written by ``CollapseStatistics.save``; several are merged.
Keyword arguments of ``compute`` (both configurations):
    weights: classifier rows W (C, d), e.g. ``model.get_output_embeddings().weight``; enables NC3.
    bias: optional classifier bias (C,) (needs ``weights``).
    k: CDNV power (paper: 2).
    num_classes: C; default: rows of ``weights``, else the largest label + 1 ("default" only).
    test_features, test_labels: held-out samples (N, d) and (N,) for ``nc4_agreement`` and
        ``ncc_accuracy`` (need ``weights``).
    dtype: "float32" (default, fast) or "float64" (exact) for the pairwise sweep and NC4.
    tile_size: tile edge of the pairwise sweep (memory ~ tile_size^2 floats).
    device: where to measure, e.g. "cuda" (default: CPU).
    min_count: classes with fewer samples are treated as absent (default 1).
    classes: measure only these class ids (a list of ints); all others are treated as absent.
    global_mean: "unweighted" (default, the paper's mean of class means) or "weighted" (by counts).
    riesz_s: s > 0 adds gnc2_riesz_mean and gnc2_riesz_cov (Riesz s-kernel of unit class means).
    ood_features: out-of-distribution features (N, d); their mean gives nc5_ood_orthogonality.
Returns:
    dict of float, the keys of ``hf_collapse.measure_collapse`` that apply (from the registry,
    ``hf_collapse.core.registry``):
{measures}
Examples:
    Two classes in 2-D, means (2, 0) and (0, 3), both with variance 1: CDNV = (1 + 1) / (2 * 13^2).

    >>> import numpy as np
    >>> import evaluate
    >>> nc = evaluate.load("neural_collapse")
    >>> features = np.array([[1.0, 0.0], [3.0, 0.0], [0.0, 2.0], [0.0, 4.0]], dtype=np.float32)
    >>> labels = np.array([0, 0, 1, 1])
    >>> results = nc.compute(features=features, labels=labels, weights=np.eye(2, dtype=np.float32))
    >>> print(round(results["nc1_cdnv"], 6), round(1 / 169, 6))
    0.005917 0.005917
    >>> print(round(results["nc3_duality_mean"], 4))
    0.6934

    Streaming batches, then NC4 on held-out samples:

    >>> rng = np.random.default_rng(0)
    >>> centres = 4.0 * rng.standard_normal((5, 8)).astype(np.float32)
    >>> for _ in range(3):
    ...     y = rng.integers(0, 5, 64)
    ...     nc.add_batch(features=centres[y] + rng.standard_normal((64, 8), dtype=np.float32), labels=y)
    >>> y_test = rng.integers(0, 5, 32)
    >>> results = nc.compute(weights=centres, test_features=centres[y_test], test_labels=y_test)
    >>> print(results["nc4_agreement"], results["ncc_accuracy"])
    1.0 1.0

    Precomputed statistics (e.g. saved by the Trainer) through the "statistics" configuration:

    >>> from hf_collapse import CollapseStatistics
    >>> stats = CollapseStatistics(num_classes=2, dim=2)
    >>> stats.update(features, labels)
    >>> nc_stats = evaluate.load("neural_collapse", "statistics")
    >>> print(round(nc_stats.compute(statistics=stats)["nc1_cdnv"], 6))
    0.005917
""".replace(
    "{measures}",
    "\n".join(
        f"    {m.key}: {m.meaning}" + (f" (needs {', '.join(m.needs)})" if m.needs else "") for m in MEASURES.values()
    ),
)


def _to_numpy(x, name):
    """An array-like as a numpy array; torch tensors are detached and moved to the CPU."""
    if isinstance(x, torch.Tensor):
        x = x.detach().cpu()
        if x.is_floating_point() and x.dtype not in (torch.float32, torch.float64):
            x = x.float()  # float16 / bfloat16 have no Arrow type here
        return x.numpy()
    try:
        return np.asarray(x)
    except (TypeError, ValueError) as e:
        raise TypeError(f"{name} must be an array or tensor, got {type(x).__name__}: {e}") from None


def _batch(features, labels):
    """Validate one batch: features (..., d) float and labels (...) int -> (n, d), (n,)."""
    if features is None or labels is None:
        raise ValueError("neural_collapse needs both `features` (n, d) and `labels` (n,)")
    h, y = _to_numpy(features, "features"), _to_numpy(labels, "labels")
    if h.dtype == object or not np.issubdtype(h.dtype, np.number):
        raise TypeError(f"features must be numeric of shape (n, d), got dtype {h.dtype} (ragged rows?)")
    if h.ndim < 2:
        raise ValueError(f"features must have shape (n, d) (or (..., d)), got {h.shape}; use `add` for one vector")
    if not np.issubdtype(y.dtype, np.integer):
        raise TypeError(f"labels must be integers (class ids, -100 to ignore), got dtype {y.dtype}")
    if y.shape != h.shape[:-1]:
        raise ValueError(f"labels shape {y.shape} does not match features shape {h.shape}: expected {h.shape[:-1]}")
    dtype = np.float64 if h.dtype == np.float64 else np.float32
    return np.ascontiguousarray(h.reshape(-1, h.shape[-1]), dtype=dtype), y.reshape(-1).astype(np.int64)


def _is_statistics(x):
    return isinstance(x, CollapseStatistics) or (
        isinstance(x, (list, tuple)) and len(x) > 0 and all(isinstance(s, CollapseStatistics) for s in x)
    )


class NeuralCollapse(evaluate.Metric):
    """Neural collapse measures NC1-NC4 of features grouped by class (see ``_KWARGS_DESCRIPTION``)."""

    def _info(self):
        if self.config_name == STATISTICS_CONFIG:
            features = datasets.Features({"statistics": datasets.Value("string")})  # one file path per row
        elif self.config_name == "default":
            # (n, d) per add_batch call; d and the dtype are fixed by the first batch
            features = datasets.Features(
                {
                    "features": datasets.Array2D(shape=(None, None), dtype="float32"),
                    "labels": datasets.Sequence(datasets.Value("int64")),
                }
            )
        else:
            raise ValueError(f"unknown configuration {self.config_name!r}: use 'default' or {STATISTICS_CONFIG!r}")
        info = evaluate.MetricInfo(
            description=_DESCRIPTION,
            citation=_CITATION,
            inputs_description=_KWARGS_DESCRIPTION,
            features=features,
            codebase_urls=["https://pypi.org/project/hf-collapse/"],
            reference_urls=["https://arxiv.org/abs/2405.17767"],
            license="Apache-2.0",
        )
        # numpy format: one (n, d) array per row. MetricInfo only accepts it for Value features, so
        # it is set after construction (evaluate reads it when compute() formats the data).
        info.format = "numpy" if self.config_name == "default" else None
        return info

    # ------------------------------------------------------------------ input
    def _infer_feature_from_batch(self, batch):
        if self.config_name == STATISTICS_CONFIG:
            return self.features
        h = batch["features"][0]  # (n, d) of the first batch fixes d and the dtype
        return datasets.Features(
            {
                "features": datasets.Array2D(shape=(None, h.shape[1]), dtype=h.dtype.name),
                "labels": datasets.Sequence(datasets.Value("int64")),
            }
        )

    def add_batch(self, *, features=None, labels=None, **kwargs):
        """One batch: ``features`` (n, d) and ``labels`` (n,) (or ``statistics=`` path(s))."""
        if self.config_name == STATISTICS_CONFIG:
            stats = kwargs.pop("statistics", None)
            if features is not None or labels is not None:
                raise ValueError("the 'statistics' configuration takes `statistics=`, not features/labels")
            if stats is None:
                raise ValueError("add_batch needs `statistics=`: path(s) of saved CollapseStatistics files")
            paths = [stats] if isinstance(stats, (str, os.PathLike)) else list(stats)
            if any(isinstance(s, CollapseStatistics) for s in paths):
                raise TypeError(
                    "CollapseStatistics objects cannot be stored in evaluate's Arrow cache: pass them to "
                    "compute(statistics=...) or add the path of a file written by stats.save(path)"
                )
            for p in paths:
                if not os.path.isfile(os.fspath(p)):
                    raise FileNotFoundError(f"no statistics file at {os.fspath(p)!r}")
            return super().add_batch(statistics=[os.path.abspath(os.fspath(p)) for p in paths], **kwargs)
        h, y = _batch(features, labels)
        if self.selected_feature_format is not None:
            d = self.selected_feature_format["features"].shape[1]
            if h.shape[1] != d:
                raise ValueError(f"features have dimension {h.shape[1]} but earlier batches had d={d}")
            h = h.astype(self.selected_feature_format["features"].dtype, copy=False)
        # one Arrow row per batch: the fast path (see the module docstring)
        return super().add_batch(features=[h], labels=[y], **kwargs)

    def add(self, *, features=None, labels=None, **kwargs):
        """One sample: ``features`` (d,) and an int ``labels`` (or ``statistics=`` one path)."""
        if self.config_name == STATISTICS_CONFIG:
            if kwargs.get("statistics") is None:
                raise ValueError("add needs `statistics=`: the path of a saved CollapseStatistics file")
            return self.add_batch(statistics=[kwargs.pop("statistics")], **kwargs)
        if features is None or labels is None:
            raise ValueError("add needs `features` (d,) and `labels` (an int)")
        return self.add_batch(features=_to_numpy(features, "features")[None], labels=np.asarray([labels]), **kwargs)

    def compute(self, **kwargs):
        """Measure all that was added plus this call's inputs; None off process 0."""
        if self.config_name == STATISTICS_CONFIG and _is_statistics(kwargs.get("statistics")):
            # in-memory statistics skip the Arrow cache (they hold C x d floats)
            if len(self) or self.num_process > 1:
                raise ValueError(
                    "pass CollapseStatistics objects to compute() only in a single process with "
                    "nothing added; in multi-process mode add saved files by path"
                )
            stats = kwargs.pop("statistics")
            return self._measure(list(stats) if isinstance(stats, (list, tuple)) else [stats], **kwargs)
        if self.config_name == STATISTICS_CONFIG and isinstance(kwargs.get("statistics"), (str, os.PathLike)):
            kwargs["statistics"] = [kwargs["statistics"]]
        return super().compute(**kwargs)

    # ------------------------------------------------------------------ measure
    def _compute(
        self,
        features=None,
        labels=None,
        statistics=None,
        num_classes=None,
        weights=None,
        bias=None,
        k=2.0,
        test_features=None,
        test_labels=None,
        dtype="float32",
        tile_size=1024,
        device=None,
        min_count=1,
        classes=None,
        global_mean="unweighted",
        riesz_s=None,
        ood_features=None,
    ):
        kwargs = dict(
            weights=weights,
            bias=bias,
            k=k,
            test_features=test_features,
            test_labels=test_labels,
            dtype=dtype,
            tile_size=tile_size,
            device=device,
            min_count=min_count,
            classes=classes,
            global_mean=global_mean,
            riesz_s=riesz_s,
            ood_features=ood_features,
        )
        if self.config_name == STATISTICS_CONFIG:
            if num_classes is not None:
                raise ValueError("num_classes comes from the statistics file in the 'statistics' configuration")
            return self._measure([CollapseStatistics.load(p) for p in statistics], **kwargs)
        # features: (rows, n, d) when every batch had the same n, else an object array of (n_i, d)
        rows = [(np.asarray(h), np.asarray(y)) for h, y in zip(features, labels)]
        d = rows[0][0].shape[1]
        if num_classes is None:
            if kwargs.get("weights") is not None:
                num_classes = len(kwargs["weights"])  # rows of W (C, d)
            else:
                num_classes = int(max((y.max() for _, y in rows if y.size), default=-1)) + 1
                if num_classes < 1:
                    raise ValueError("no labelled sample: every label is -100 (ignored)")
        stats = CollapseStatistics(int(num_classes), d)
        with warnings.catch_warnings():  # Arrow's arrays are read-only; the core only reads them
            warnings.filterwarnings("ignore", message="The given NumPy array is not writable")
            for h, y in rows:
                stats.update(torch.from_numpy(h), torch.from_numpy(y))
        return self._measure([stats], **kwargs)

    def _measure(
        self,
        stats_list,
        weights=None,
        bias=None,
        k=2.0,
        test_features=None,
        test_labels=None,
        dtype="float32",
        tile_size=1024,
        device=None,
        min_count=1,
        classes=None,
        global_mean="unweighted",
        riesz_s=None,
        ood_features=None,
    ):
        stats = stats_list[0] if len(stats_list) == 1 else stats_list[0].clone()
        for other in stats_list[1:]:
            stats.merge(other)  # sums add: merging shards equals accumulating their samples together
        if (test_features is not None or test_labels is not None) and weights is None:
            raise ValueError(
                "test_features/test_labels measure nc4_agreement, which needs the classifier: pass "
                "weights= (C, d), e.g. model.get_output_embeddings().weight"
            )
        if dtype not in ("float32", "float64", torch.float32, torch.float64):
            raise ValueError(f"dtype must be 'float32' or 'float64', got {dtype!r}")
        dtype = getattr(torch, dtype) if isinstance(dtype, str) else dtype
        # tensors and numpy arrays go to the core as they are; it validates shapes and dtypes
        if ood_features is not None and not isinstance(ood_features, torch.Tensor):
            ood_features = torch.from_numpy(np.asarray(_to_numpy(ood_features, "ood_features"), dtype=np.float64))
        result = measure_collapse(
            stats,
            weights=weights,
            bias=bias,
            k=k,
            features=test_features,
            labels=test_labels,
            dtype=dtype,
            tile_size=tile_size,
            device=device,
            min_count=min_count,
            classes=classes,
            global_mean=global_mean,
            riesz_s=riesz_s,
            ood_features=ood_features,
        )
        return dict(result)
