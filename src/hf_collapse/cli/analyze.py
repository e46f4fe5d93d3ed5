"""``hf-collapse analyze``: tabulate measured runs, fit every measure against validation loss, plot."""

from __future__ import annotations

import sys

from ..study.analysis import analyze, collect_runs, markdown_table, read_csv_rows
from ..study.runs import is_measurements_source, read_measurements_dataset

# ---------------------------------------------------------------------------------------------
# hf-collapse analyze


def run(args) -> int:
    rows = []
    for p in args.runs:
        if str(p).endswith(".csv"):
            rows.extend(read_csv_rows(p))
        elif is_measurements_source(p):
            rows.extend(read_measurements_dataset(p))
        else:
            rows.extend(collect_runs([p]))
    print(
        f"analysing {len(rows)} run{'' if len(rows) == 1 else 's'} ({args.permutations} permutations per measure) ...",
        flush=True,
    )
    result = analyze(rows, args.output_dir, num_permutations=args.permutations, seed=args.seed)
    design = result["design"]
    if not design["seed_replicas"]:  # say it before the numbers: a pooled table is not Table 1
        print(f"note: {design['label']}", file=sys.stderr)
    print(f"design: {design['label']}\n")
    print(markdown_table(result["fits"], ["metric", "r2", "r", "slope", "p_value", "p_holm", "p_bh"]))
    d = result["direction"]
    print(
        f"\nlower validation loss goes with more collapse on {len(d['agree'])} of "
        f"{len(d['agree']) + len(d['disagree'])} directional measures"
    )
    print(
        "p_holm / p_bh: p_value adjusted for the measures tested together (Holm: family-wise error; "
        "Benjamini-Hochberg: false discovery rate)"
    )
    print(f"wrote {result['report']} (+ runs.csv, correlations.csv, {len(result['figures'])} figures)")
    return 0


def add_parser(sub) -> None:
    p = sub.add_parser(
        "analyze",
        help="tabulate measured runs, fit measures against validation loss, plot",
        description="Collect measured runs (folders with collapse/metrics.json, or folders of "
        "them, runs.csv tables, or a measurements dataset: a Hub dataset id or a local folder of its Parquet "
        "files, whose default measurements are the runs and whose eval_loss is the validation loss) into runs.csv, fit every measure against the "
        "validation loss (R^2, permutation test) and write report.md with figures. "
        "Says whether the runs are seed replicas of one configuration (the paper's "
        "Table 1 design) or pooled over sizes / training lengths. Beside each raw p-value: Holm "
        "(family-wise) and Benjamini-Hochberg (false discovery rate) adjusted ones; * marks Holm p < 0.05. "
        "Refuses runs trained on different data or vocabularies, and fewer than 3 runs.",
    )
    p.add_argument(
        "runs",
        nargs="+",
        help="run folders, folders holding run folders, runs.csv files, or measurements datasets (Hub id or folder)",
    )
    p.add_argument("--output-dir", default="collapse_analysis", help="where report.md, CSVs and PNGs go")
    p.add_argument("--permutations", type=int, default=10_000, help="permutations per test (default 10^4)")
    p.add_argument("--seed", type=int, default=0, help="seed of the permutation test")
    p.set_defaults(func=run)
