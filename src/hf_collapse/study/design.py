"""The design of a study: seed replicas of one configuration (the paper's Table 1) or a pooled grid.

Wu & Papyan (section 5.1) test each measure against validation loss over 21 replicas of one
architecture that differ only in the data-shuffling seed, so that scale cannot drive the association;
over a grid of sizes and training lengths the association is pooled and confounded by scale. These
helpers tell the two apart from the runs' configuration columns, find grid factors that cannot be
told apart, and lay out a Table 1 beside the paper's own numbers.
"""

from __future__ import annotations

from collections.abc import Sequence

from ..core.io import fmt

# what may differ between runs besides the seeds; num_parameters follows from width and depth
DESIGN_FACTORS = ("width", "depth", "epochs", "weight_decay")
SEED_COLUMNS = ("seed", "data_seed")

# Table 1 of the paper (section 5.1): 21 seed replicas of 2x768, 1 epoch, weight decay 0.0005, 10^4
# permutations. (property, measurement, key, R^2, p), the numbers copied as printed.
PAPER_TABLE1: tuple[tuple[str, str, str, str, str], ...] = (
    ("NC1", "Within-Class Variability Collapse", "nc1_cdnv", "0.192011", "0.0485"),
    ("NC2", "Equinormness", "nc2_equinorm_cov", "0.026174", "0.4870"),
    ("NC2", "Equiangularity", "nc2_equiangularity_cov", "0.218574", "0.0317"),
    ("GNC2", "Hyperspherical Uniformity", "gnc2_uniformity_cov", "0.487935", "0.0002"),
    ("NC3", "Self-Duality", "nc3_duality_mean", "0.322210", "0.0063"),
    ("UNC3", "Uniform Duality", "unc3_duality_cov", "0.000036", "0.9784"),
    ("NC4", "Classifier Agreement", "nc4_agreement", "0.490278", "0.0001"),
)


def confounded_factors(rows: Sequence[dict], factors: Sequence[str] = ("width", "depth", "epochs")) -> list:
    """Pairs ``(f, g)`` of varying factors where f never varies at a fixed value of g.

    Then f's effect cannot be told apart from g's: in the default demo grid (1x32, 2x64, 2x128) each
    width has one depth, so ``("depth", "width")`` is returned (a "depth effect" is also a width effect).
    """
    known = [f for f in factors if all(r.get(f) is not None for r in rows) and len({r[f] for r in rows}) > 1]
    out = []
    for f in known:
        for g in known:
            if f != g and all(len({r[f] for r in rows if r[g] == v}) == 1 for v in {r[g] for r in rows}):
                out.append((f, g))
    return out


def study_design(rows: Sequence[dict]) -> dict:
    """What differs between the runs: ``{"seed_replicas", "varying", "unknown", "seeds", "duplicates", "label"}``.

    ``seed_replicas`` is True when every known factor of ``DESIGN_FACTORS`` is the same in all runs and
    the runs differ only in their seeds (Table 1's design); ``unknown`` lists factors missing from some
    runs (folders without ``run.json``), which cannot be checked.
    """
    varying = [f for f in DESIGN_FACTORS if len({r.get(f) for r in rows if r.get(f) is not None}) > 1]
    unknown = [f for f in DESIGN_FACTORS if any(r.get(f) is None for r in rows) and f not in varying]
    seeds = [tuple(r.get(c) for c in SEED_COLUMNS) for r in rows]
    distinct = len(set(seeds))
    # the same configuration trained with the same seeds twice (e.g. one folder passed twice)
    runs = [tuple(r.get(c) for c in (*DESIGN_FACTORS, *SEED_COLUMNS)) for r in rows]
    duplicates = len(rows) - len(set(runs)) if all(s != (None, None) for s in seeds) else 0
    seed_only = not varying and not unknown
    if seed_only:
        r0 = rows[0]
        label = (
            f"seed replicas: {len(rows)} runs of one configuration ({r0.get('depth')}x{r0.get('width')}, "
            f"{fmt(r0.get('epochs'))} epoch(s), weight decay {fmt(r0.get('weight_decay'))}) differing only in "
            f"their seeds (Table 1's design)"
        )
    elif varying:
        label = (
            f"pooled: the {len(rows)} runs differ in {', '.join(varying)}, not only in their seeds, so the "
            f"association is pooled over those factors and may be confounded by scale (paper section 5.1); "
            f"this is not Table 1's seed-replica design"
        )
    else:
        label = (
            f"unchecked: {', '.join(unknown)} unknown for some runs (no run.json), so whether the runs "
            f"differ only in their seeds cannot be checked"
        )
    return {
        "seed_replicas": seed_only,
        "varying": varying,
        "unknown": unknown,
        "seeds": distinct,
        "duplicates": duplicates,
        "label": label,
    }


def table1(fits: Sequence[dict], seed_replicas: bool) -> str:
    """Table 1 layout (property, measurement, R^2, raw p, Holm-adjusted p in bold when < 0.05) beside the
    paper's values (the paper's p unadjusted, bold when < 0.05, as printed there)."""
    by = {f["metric"]: f for f in fits}
    lines = (
        []
        if seed_replicas
        else [
            "These runs are POOLED over sizes / training lengths, not seed replicas: "
            "their R² and p are not comparable with Table 1's.",
            "",
        ]
    )
    lines += [
        "| property | measurement | key | R² here | r here | p here | p Holm here | paper R² | paper p |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for prop, name, key, r2, p in PAPER_TABLE1:
        f = by.get(key)
        ours = (
            ("not measured", "", "", "")
            if f is None
            else (
                f"{f['r2']:.6f}",
                f"{f['r']:+.3f}",
                f"{f['p_value']:.4f}",
                f"**{f['p_holm']:.4f}**" if f["p_holm"] < 0.05 else f"{f['p_holm']:.4f}",
            )
        )
        paper_p = f"**{p}**" if float(p) < 0.05 else p
        lines.append(f"| {prop} | {name} | `{key}` | " + " | ".join(ours) + f" | {r2} | {paper_p} |")
    return "\n".join(lines)
