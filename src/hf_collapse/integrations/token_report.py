"""``hf-collapse tokens``: token-level interpretability from a measured folder (paper appendix Q).

Reads the per-class outputs saved beside the statistics (``collapse/statistics.safetensors``,
tensors ``per_class.<key>`` over the K classes present) and lists, with decoded token text,

- the tokens with the smallest / largest centred mean norm ``r_c = ||mu_c - mu_bar||`` (eq. 5;
  Table 4: homonyms sit near the global centre),
- the smallest / largest CDNV row mean ``(1/(K-1)) sum_{c' != c} CDNV(c, c')`` (eq. 4),
- the smallest / largest interference row mean ``(1/(K-1)) sum_{c' != c} cos(M_c, M_c')`` (eq. 6;
  Table 5: first names have low variability and interference),

and looks up tokens a user names against the average token (the mean of each quantity over the
present classes). A named word is looked up as every single-token form found: ``word`` and
``" word"`` (byte-level BPE tokenizers give the space-prefixed form a different id).
``--min-count`` drops rare classes, whose means are noisy, from the rankings.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from pathlib import Path

import torch

from ..core.errors import UserValueError
from ..core.io import fmt
from ..core.statistics import CollapseStatistics

RANKED = ("mean_norm", "cdnv_row_mean", "interference_row_mean")
COLUMNS = ("count", "mean_norm", "variance", "cdnv_row_mean", "interference_row_mean", "duality")


def load_per_class(folder: str | os.PathLike) -> dict[str, torch.Tensor]:
    """The ``per_class.<key>`` tensors of a measured folder (or of a statistics file), by key."""
    path = Path(folder)
    if path.is_dir():
        path = path / "collapse" / "statistics.safetensors"
    _, extras = CollapseStatistics.load_with_extras(path)
    per = {k[len("per_class.") :]: v for k, v in extras.items() if k.startswith("per_class.")}
    missing = [k for k in ("class_ids", *RANKED) if k not in per]
    if missing:
        raise UserValueError(
            f"{path} has no per-class outputs {missing}: measure with per_class=True "
            f"(hf-collapse measure / the study save them)"
        )
    return per


def _decode(tokenizer, i: int) -> str:
    if tokenizer is None:
        return ""
    return tokenizer.decode([i])


def _row(per, j: int, tokenizer) -> dict:
    cid = int(per["class_ids"][j])
    out = {"token_id": cid, "text": _decode(tokenizer, cid)}
    for k in COLUMNS:
        if k in per:
            v = per[k][j].item()
            out[k] = int(v) if k == "count" else float(v)
    return out


def token_report(folder, tokenizer=None, *, top: int = 10, lookup: Sequence[str] = (), min_count: int = 1) -> dict:
    """``{"average", "rankings": {key: {"smallest", "largest"}}, "lookup", "num_classes"}`` for a measured folder."""
    per = load_per_class(folder)
    ids = per["class_ids"].long()
    count = per["count"].double() if "count" in per else torch.ones(len(ids), dtype=torch.float64)
    average = {k: float(torch.nanmean(per[k].double())) for k in COLUMNS if k in per}
    keep = (count >= min_count).nonzero().squeeze(1)
    if keep.numel() == 0:
        raise UserValueError(f"no class has at least {min_count} tokens")
    rankings = {}
    for key in RANKED:
        vals = per[key].double()[keep]
        order = torch.argsort(vals)
        n = min(top, len(order))
        rankings[key] = {
            "smallest": [_row(per, int(keep[j]), tokenizer) for j in order[:n]],
            "largest": [_row(per, int(keep[j]), tokenizer) for j in order.flip(0)[:n]],
        }
    position = {int(c): j for j, c in enumerate(ids.tolist())}
    found = []
    for word in lookup:
        forms = [word, " " + word] if tokenizer is not None and not word.startswith(" ") else [word]
        hits = []
        for form in forms:
            tid = None
            if tokenizer is not None:
                enc = tokenizer(form, add_special_tokens=False)["input_ids"]
                tid = enc[0] if len(enc) == 1 else None
            elif form.isdigit():
                tid = int(form)
            if tid is None:
                continue
            if tid in position:
                hits.append({"query": form, **_row(per, position[tid], tokenizer)})
            else:
                hits.append({"query": form, "token_id": tid, "text": _decode(tokenizer, tid), "absent": True})
        found.append({"word": word, "matches": hits})
    return {"num_classes": len(ids), "average": average, "rankings": rankings, "lookup": found, "min_count": min_count}


def format_report(rep: dict) -> str:
    """The token report as aligned text: each ranking, then the looked-up tokens against the average."""
    cols = [c for c in COLUMNS if c in rep["average"]]
    head = f"{'id':>7}  {'token':<16}" + "".join(f"{c:>22}" for c in cols)

    def line(r):
        if r.get("absent"):
            return f"{r['token_id']:>7}  {json.dumps(r['text']):<16}  (no occurrence in the measured data)"
        return f"{r['token_id']:>7}  {json.dumps(r['text']):<16}" + "".join(f"{fmt(r.get(c, '')):>22}" for c in cols)

    out = [f"{rep['num_classes']} classes present; rankings over classes with >= {rep['min_count']} tokens", ""]
    for key, parts in rep["rankings"].items():
        for side in ("smallest", "largest"):
            out += [f"## {side} {key}", head, *[line(r) for r in parts[side]], ""]
    avg = f"{'(avg)':>7}  {'(average token)':<16}" + "".join(f"{fmt(rep['average'][c]):>22}" for c in cols)
    if rep["lookup"]:
        out += ["## lookup vs the average token", head]
        for item in rep["lookup"]:
            if not item["matches"]:
                out.append(f"{'-':>7}  {json.dumps(item['word']):<16}  (not a single token)")
            out += [line(r) for r in item["matches"]]
        out.append(avg)
    else:
        out += ["## average token", head, avg]
    return "\n".join(out)
