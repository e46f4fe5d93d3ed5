"""Neural collapse (NC1-NC4) as a Hugging Face ``evaluate`` metric.

A thin wrapper: samples are accumulated into ``hf_collapse.CollapseStatistics`` and measured by
``hf_collapse.measure_collapse``; no formula is implemented here, and the measure options are the fields of
``hf_collapse.MeasureOptions`` (``_compute`` takes them under the same names and defaults and builds one
``MeasureOptions``). Only evaluate's public API is used: the inputs are declared in ``_info`` and converted
in ``add_batch``. Two configurations:

- ``"default"``: ``features`` (n, d) and integer ``labels`` (n,) through ``add_batch``/``compute``.
  Each ``add_batch`` call is stored as ONE Arrow row: the (n, d) matrix and the (n,) labels as ``.npy``
  bytes (``datasets.Value("large_binary")``), so d and the dtype need no declaration and are read back
  without copies (per-sample ``Sequence(float)`` rows cost ~20x more).
- ``"statistics"``: precomputed statistics, a ``CollapseStatistics`` or the path of a file written
  by ``CollapseStatistics.save`` (several are merged), so vocabulary-scale results never pass
  tokens x d floats through Arrow.

Keep ``import evaluate`` + ``evaluate.Metric`` (not ``from evaluate import Metric``): evaluate takes
the first ``EvaluationModule`` subclass it finds in this module's namespace as the metric.
"""

import dataclasses
import io
import os
import warnings

import datasets
import evaluate
import numpy as np
import torch

from hf_collapse import CollapseStatistics, MeasureOptions, measure_collapse
from hf_collapse.core.errors import UserFileNotFoundError, UserTypeError, UserValueError
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
    num_classes: C; default: rows of ``weights``, else the largest label + 1 ("default" only).
    test_features, test_labels: held-out samples (N, d) and (N,) for ``nc4_agreement`` and
        ``ncc_accuracy`` (need ``weights``).
    device: where to measure, e.g. "cuda" (default: CPU).
    ood_features: out-of-distribution features (N, d); their mean gives nc5_ood_orthogonality.
The measure options (the fields of ``hf_collapse.MeasureOptions``, same names and defaults):
{options}
Returns:
    dict of float, the keys of ``hf_collapse.measure_collapse`` that apply (from the registry,
    ``hf_collapse.core.registry``):
{measures}
Examples:
    The bare name needs ``hf-collapse install-metric`` once per cache (``hf_collapse.load_metric()``
    needs nothing). Two classes in 2-D, means (2, 0) and (0, 3), both with variance 1:
    CDNV = (1 + 1) / (2 * 13^2).

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
""".format(
    options="\n".join(
        f"    {f.name} (default {f.default!r}): {f.metadata['help']}" for f in dataclasses.fields(MeasureOptions)
    ),
    measures="\n".join(
        f"    {m.key}: {m.meaning}" + (f" (needs {', '.join(m.needs)})" if m.needs else "") for m in MEASURES.values()
    ),
)


def _to_numpy(x, name):
    """An array-like as a numpy array; torch tensors are detached and moved to the CPU."""
    if isinstance(x, torch.Tensor):
        x = x.detach().cpu()
        if x.is_floating_point() and x.dtype not in (torch.float32, torch.float64):
            x = x.float()  # bfloat16 has no numpy dtype
        return x.numpy()
    try:
        return np.asarray(x)
    except (TypeError, ValueError) as e:
        raise UserTypeError(f"{name} must be an array or tensor, got {type(x).__name__}: {e}") from None


def _batch(features, labels):
    """Validate one batch: features (..., d) float and labels (...) int -> (n, d), (n,)."""
    if features is None or labels is None:
        raise UserValueError("neural_collapse needs both `features` (n, d) and `labels` (n,)")
    h, y = _to_numpy(features, "features"), _to_numpy(labels, "labels")
    if h.dtype == object or not np.issubdtype(h.dtype, np.number):
        raise UserTypeError(f"features must be numeric of shape (n, d), got dtype {h.dtype} (ragged rows?)")
    if h.ndim < 2:
        raise UserValueError(f"features must have shape (n, d) (or (..., d)), got {h.shape}; use `add` for one vector")
    if not np.issubdtype(y.dtype, np.integer):
        raise UserTypeError(f"labels must be integers (class ids, -100 to ignore), got dtype {y.dtype}")
    if y.shape != h.shape[:-1]:
        raise UserValueError(f"labels shape {y.shape} does not match features shape {h.shape}: expected {h.shape[:-1]}")
    dtype = np.float64 if h.dtype == np.float64 else np.float32
    return np.ascontiguousarray(h.reshape(-1, h.shape[-1]), dtype=dtype), y.reshape(-1).astype(np.int64)


def _to_npy(a):
    """An array as ``.npy`` bytes (numpy's public format: a header with dtype and shape, then the data)."""
    buf = io.BytesIO()
    np.lib.format.write_array_header_1_0(buf, np.lib.format.header_data_from_array_1_0(a))
    return buf.getvalue() + a.tobytes()


def _from_npy(data):
    """The array stored by ``_to_npy``, a read-only view of ``data`` (no copy)."""
    buf = io.BytesIO(data)
    np.lib.format.read_magic(buf)
    shape, _, dtype = np.lib.format.read_array_header_1_0(buf)
    return np.frombuffer(data, dtype=dtype, offset=buf.tell()).reshape(shape)


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
            # one row per add_batch call: the (n, d) features and (n,) labels as .npy bytes (see add_batch)
            features = datasets.Features(
                {"features": datasets.Value("large_binary"), "labels": datasets.Value("large_binary")}
            )
        else:
            raise UserValueError(f"unknown configuration {self.config_name!r}: use 'default' or {STATISTICS_CONFIG!r}")
        return evaluate.MetricInfo(
            description=_DESCRIPTION,
            citation=_CITATION,
            inputs_description=_KWARGS_DESCRIPTION,
            features=features,
            codebase_urls=["https://pypi.org/project/hf-collapse/"],
            reference_urls=["https://arxiv.org/abs/2405.17767"],
            license="Apache-2.0",
        )

    # ------------------------------------------------------------------ input
    def add_batch(self, *, features=None, labels=None, statistics=None):
        """One batch: ``features`` (n, d) and ``labels`` (n,) (or ``statistics=`` path(s))."""
        if self.config_name == STATISTICS_CONFIG:
            if features is not None or labels is not None:
                raise UserValueError("the 'statistics' configuration takes `statistics=`, not features/labels")
            if statistics is None:
                raise UserValueError("add_batch needs `statistics=`: path(s) of saved CollapseStatistics files")
            paths = [statistics] if isinstance(statistics, (str, os.PathLike)) else list(statistics)
            if any(isinstance(s, CollapseStatistics) for s in paths):
                raise UserTypeError(
                    "CollapseStatistics objects cannot be stored in evaluate's Arrow cache: pass them to "
                    "compute(statistics=...) or add the path of a file written by stats.save(path)"
                )
            for p in paths:
                if not os.path.isfile(os.fspath(p)):
                    raise UserFileNotFoundError(f"no statistics file at {os.fspath(p)!r}")
            return super().add_batch(statistics=[os.path.abspath(os.fspath(p)) for p in paths])
        if statistics is not None:
            raise UserValueError("`statistics=` needs the 'statistics' configuration: evaluate.load(..., 'statistics')")
        h, y = _batch(features, labels)
        d = getattr(self, "_dim", None)  # set by the first batch since load() or the last compute()
        if d is not None and h.shape[1] != d:
            raise UserValueError(f"features have dimension {h.shape[1]} but earlier batches had d={d}")
        super().add_batch(features=[_to_npy(h)], labels=[_to_npy(y)])
        self._dim = h.shape[1]

    def add(self, *, features=None, labels=None, statistics=None):
        """One sample: ``features`` (d,) and an int ``labels`` (or ``statistics=`` one path)."""
        if self.config_name == STATISTICS_CONFIG:
            if statistics is None:
                raise UserValueError("add needs `statistics=`: the path of a saved CollapseStatistics file")
            return self.add_batch(statistics=[statistics])
        if features is None or labels is None:
            raise UserValueError("add needs `features` (d,) and `labels` (an int)")
        return self.add_batch(features=_to_numpy(features, "features")[None], labels=np.asarray([labels]))

    def compute(self, **kwargs):
        """Measure all that was added plus this call's inputs; None off process 0."""
        statistics = kwargs.get("statistics")
        if self.config_name == STATISTICS_CONFIG and _is_statistics(statistics):
            # in-memory statistics skip the Arrow cache (they hold C x d floats)
            if len(self) or self.num_process > 1:
                raise UserValueError(
                    "pass CollapseStatistics objects to compute() only in a single process with "
                    "nothing added; in multi-process mode add saved files by path"
                )
            kwargs["statistics"] = list(statistics) if isinstance(statistics, (list, tuple)) else [statistics]
            return self._compute(**kwargs)
        if self.config_name == STATISTICS_CONFIG and isinstance(statistics, (str, os.PathLike)):
            kwargs["statistics"] = [statistics]
        try:
            return super().compute(**kwargs)
        finally:
            self._dim = None  # the next batch starts a new measurement

    # ------------------------------------------------------------------ measure
    def _compute(
        self,
        features=None,
        labels=None,
        statistics=None,
        weights=None,
        bias=None,
        num_classes=None,
        test_features=None,
        test_labels=None,
        device=None,
        ood_features=None,
        # the fields of hf_collapse.MeasureOptions, same order and defaults (tested)
        k=2.0,
        tile_size=1024,
        dtype="float32",
        min_count=1,
        classes=None,
        global_mean="unweighted",
        riesz_s=None,
    ):
        arguments = dict(locals())
        options = MeasureOptions(**{name: arguments[name] for name in MeasureOptions.names()})
        if self.config_name == STATISTICS_CONFIG:
            if num_classes is not None:
                raise UserValueError("num_classes comes from the statistics file in the 'statistics' configuration")
            # CollapseStatistics objects (compute) or paths (through the Arrow cache); several are merged
            stats_list = [s if isinstance(s, CollapseStatistics) else CollapseStatistics.load(s) for s in statistics]
            stats = stats_list[0] if len(stats_list) == 1 else stats_list[0].clone()
            for other in stats_list[1:]:
                stats.merge(other)  # sums add: merging shards equals accumulating their samples together
        else:
            rows = [(_from_npy(h), _from_npy(y)) for h, y in zip(features, labels)]  # one per add_batch
            dims = {h.shape[1] for h, _ in rows}
            if len(dims) > 1:  # batches of several processes
                raise UserValueError(f"features of different dimensions were added: d in {sorted(dims)}")
            if num_classes is None:
                if weights is not None:
                    num_classes = len(weights)  # rows of W (C, d)
                else:
                    num_classes = int(max((y.max() for _, y in rows if y.size), default=-1)) + 1
                    if num_classes < 1:
                        raise UserValueError("no labelled sample: every label is -100 (ignored)")
            stats = CollapseStatistics(int(num_classes), dims.pop())
            with warnings.catch_warnings():  # the rows are read-only views of Arrow's bytes; the core only reads
                warnings.filterwarnings("ignore", message="The given NumPy array is not writable")
                for h, y in rows:
                    stats.update(torch.from_numpy(h), torch.from_numpy(y))
        if (test_features is not None or test_labels is not None) and weights is None:
            raise UserValueError(
                "test_features/test_labels measure nc4_agreement, which needs the classifier: pass "
                "weights= (C, d), e.g. model.get_output_embeddings().weight"
            )
        # tensors and numpy arrays go to the core as they are; it validates shapes and dtypes
        if ood_features is not None and not isinstance(ood_features, torch.Tensor):
            ood_features = torch.from_numpy(np.asarray(_to_numpy(ood_features, "ood_features"), dtype=np.float64))
        result = measure_collapse(
            stats,
            weights,
            bias,
            options=options,
            features=test_features,
            labels=test_labels,
            device=device,
            ood_features=ood_features,
        )
        return dict(result)
