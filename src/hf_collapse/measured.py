"""The *measured model folder*: a model plus the collapse measurements taken on it.

Layout written by ``save_measured(output_dir, ...)``::

    output_dir/
      config.json, model.safetensors, tokenizer files     (save_pretrained)
      collapse/statistics.safetensors                     float64 counts (C,), means (C, d),
                                                          variances (C,), raw sums, per_class.* tensors
      collapse/metrics.json                               flat {measure keys, num_tokens, num_classes,
                                                          num_classes_present, settings...}
      README.md                                           report (the Hub model card once available)

The statistics header records ``k``, the data description, the token budget, ``weights_sha256``
(sha256 of the model's tensors, see ``weights_sha256``) and the library version, so a published
folder says exactly what was measured on what.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import tempfile
from typing import Mapping, Optional

import torch

from .statistics import CollapseStatistics

STATISTICS_FILE = os.path.join("collapse", "statistics.safetensors")
METRICS_FILE = os.path.join("collapse", "metrics.json")


def weights_sha256(model: torch.nn.Module) -> str:
    """sha256 over the model's state dict: names, dtypes, shapes and raw bytes, sorted by name.

    Tied parameters appear under each name (as in ``state_dict``). Independent of the file format,
    so it identifies the weights whether they were saved as safetensors, bin, or never saved.
    """
    from .collect import unwrap_model

    h = hashlib.sha256()
    for name, t in sorted(unwrap_model(model).state_dict().items()):
        if not isinstance(t, torch.Tensor):
            continue
        t = t.detach().cpu().contiguous()
        h.update(f"{name}|{t.dtype}|{tuple(t.shape)}|".encode())
        h.update(t.view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()


def file_sha256(path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _publishable(path: str) -> None:
    """mkstemp creates files 0600; give published files the usual permissions (0644 minus umask)."""
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(path, 0o644 & ~umask)


def _atomic_write_text(path: str, text: str) -> None:
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".tmp-", dir=os.path.dirname(os.path.abspath(path)))
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
        _publishable(tmp)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise


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
    for k, v in (settings or {}).items():
        if k not in out:
            out[k] = _json_value(v)
    return out


def _simple_report(folder: str, metrics: Mapping, metadata: Mapping) -> str:
    lines = ["---", "tags:", "- neural-collapse", "- hf_collapse", "---", "",
             f"# Neural collapse measurements: {metadata.get('model_name', os.path.basename(os.path.abspath(folder)))}",
             "", "Measured with [hf_collapse](https://github.com/) (Wu & Papyan 2024, *Linguistic Collapse*).", "",
             "| measure | value |", "|---|---|"]
    for k, v in metrics.items():
        lines.append(f"| `{k}` | {v:.6g} |" if isinstance(v, float) else f"| `{k}` | {v} |")
    lines += ["", "## Provenance", ""]
    for k in ("data", "max_tokens", "k", "weights_sha256", "library_version"):
        if k in metadata:
            lines.append(f"- **{k}**: `{metadata[k]}`")
    lines += ["", "Files: `collapse/statistics.safetensors` (float64 class counts, means, variances), "
              "`collapse/metrics.json`.", ""]
    return "\n".join(lines)


def save_measured(output_dir, *, model, tokenizer=None, statistics: CollapseStatistics, result,
                  metrics_extra: Optional[Mapping] = None, metadata: Optional[Mapping] = None,
                  card: bool = True, save_model: bool = True) -> str:
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
    _publishable(os.path.join(output_dir, STATISTICS_FILE))
    metrics = build_metrics(statistics, result, {"k": float(meta["k"]), **dict(metrics_extra or {})})
    _atomic_write_text(os.path.join(output_dir, METRICS_FILE), json.dumps(metrics, indent=2) + "\n")
    if card:
        try:
            from .hub import write_model_card  # issue 5: the Hub model card
        except ImportError:
            write_model_card = None
        if write_model_card is not None:
            write_model_card(output_dir)
        else:
            _atomic_write_text(os.path.join(output_dir, "README.md"),
                               _simple_report(output_dir, metrics, {**meta, "library_version": __version__}))
    return output_dir
