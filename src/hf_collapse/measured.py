"""The *measured model folder*: a model plus the collapse measurements taken on it.

Layout written by ``save_measured(output_dir, ...)``::

    output_dir/
      config.json, model.safetensors, tokenizer files     (save_pretrained)
      collapse/statistics.safetensors                     float64 counts (C,), means (C, d),
                                                          variances (C,), raw sums, per_class.* tensors
      collapse/metrics.json                               flat {measure keys, num_tokens, num_classes,
                                                          num_classes_present, settings...}
      README.md                                           the Hub model card (``hf_collapse.hub.write_model_card``)

The statistics header records ``k``, the data description, the token budget, ``weights_sha256``
(``hf_collapse.weights_hash.weights_sha256`` of the model's tensors) and the library version, so a published
folder says exactly what was measured on what.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
from typing import Mapping, Optional

import torch

from .atomic import atomic_write_text
from .statistics import CollapseStatistics
from .weights_hash import weights_sha256

STATISTICS_FILE = os.path.join("collapse", "statistics.safetensors")
METRICS_FILE = os.path.join("collapse", "metrics.json")


def file_sha256(path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _json_value(v):
    if isinstance(v, float) and not math.isfinite(v):
        return str(v)  # JSON has no inf/nan
    if isinstance(v, (str, int, float, bool)) or v is None:
        return v
    return str(v)


def build_metrics(statistics: CollapseStatistics, result, settings: Optional[Mapping] = None) -> dict:
    """The flat ``metrics.json`` object: measure values, counts, then the settings used."""
    out = {k: _json_value(float(v)) for k, v in result.items()}
    out.update(num_tokens=statistics.num_tokens, num_classes=statistics.num_classes,
               num_classes_present=int(statistics.present.sum()), dim=statistics.dim)
    info = getattr(result, "info", None) or {}
    if "num_classes_coincident" in info:  # left out of the measures (identical means)
        out["num_classes_coincident"] = int(info["num_classes_coincident"])
    for k, v in (settings or {}).items():
        if k not in out:
            out[k] = _json_value(v)
    return out


def save_measured(output_dir, *, model, tokenizer=None, statistics: CollapseStatistics, result,
                  metrics_extra: Optional[Mapping] = None, metadata: Optional[Mapping] = None,
                  card: bool = True, save_model: bool = True, card_info: Optional[Mapping] = None) -> str:
    """Write the measured model folder (layout in the module docstring); returns its path.

    ``metadata`` should describe the data (``data``: dataset id/split or file sha256s, ``max_tokens``)
    and ``k``; ``weights_sha256`` and ``library_version`` are added here. ``metrics_extra`` adds
    settings to ``metrics.json``. Under several processes call it on the main process only.
    """
    from . import __version__

    if not isinstance(statistics, CollapseStatistics):
        raise TypeError(f"statistics must be a CollapseStatistics, got {type(statistics).__name__}")
    output_dir = os.fspath(output_dir)
    os.makedirs(output_dir, exist_ok=True)
    if save_model:
        model.save_pretrained(output_dir)
        if tokenizer is not None:
            tokenizer.save_pretrained(output_dir)
    meta = {str(k): (v if isinstance(v, str) else json.dumps(v, sort_keys=True, default=str))
            for k, v in (metadata or {}).items()}
    meta.setdefault("k", str(float(result.info.get("k", 2.0))) if hasattr(result, "info") else "2.0")
    meta["weights_sha256"] = weights_sha256(model)
    meta["measured_with"] = f"hf_collapse {__version__}"
    extra = {}
    if getattr(result, "per_class", None):
        extra = {f"per_class.{k}": v.detach().cpu().to(torch.float64 if v.is_floating_point() else torch.int64)
                 for k, v in result.per_class.items()}
    statistics.save(os.path.join(output_dir, STATISTICS_FILE), extra_tensors=extra, metadata=meta)
    metrics = build_metrics(statistics, result, {"k": float(meta["k"]), **dict(metrics_extra or {})})
    atomic_write_text(os.path.join(output_dir, METRICS_FILE), json.dumps(metrics, indent=2) + "\n")
    if card:
        from .hub import write_model_card

        write_model_card(output_dir, **dict(card_info or {}))
    return output_dir
