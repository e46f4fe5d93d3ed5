"""The README's figure: layer-wise collapse of the pre-trained stories260K on TinyStories text.

Measures the input of every block and of the LM head with ``examples/layerwise.py`` and plots the
within-class variability (CDNV, log scale) and the nearest-class-mean accuracy per layer.

    python scripts/readme_figure.py                        # -> docs/img/layerwise_stories260K.png
    python scripts/readme_figure.py --data-dir ../shared/data --max-tokens 20000
"""

import argparse
import importlib.util
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

REPO = Path(__file__).resolve().parents[1]


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data-dir", default=str(REPO.parent / "shared" / "data"))
    p.add_argument("--max-tokens", type=int, default=20000)
    p.add_argument("--output", default=str(REPO / "docs" / "img" / "layerwise_stories260K.png"))
    args = p.parse_args(argv)
    spec = importlib.util.spec_from_file_location("layerwise", REPO / "examples" / "layerwise.py")
    layerwise = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(layerwise)
    data = Path(args.data_dir)
    report = layerwise.main(
        [
            "--model",
            str(data / "models" / "stories260K"),
            "--text-file",
            str(data / "tinystories" / "validation-head.txt"),
            "--max-tokens",
            str(args.max_tokens),
        ]
    )
    names = list(report.results)
    labels = ["embeddings" if i == 0 else f"after block {i}" for i in range(len(names) - 1)] + ["last (LM head input)"]
    cdnv = [report.results[n]["nc1_cdnv"] for n in names]
    ncc = [report.results[n]["ncc_accuracy"] for n in names]
    fig, ax = plt.subplots(figsize=(7.5, 3.6), dpi=110)
    x = range(len(names))
    ax.semilogy(x, cdnv, "o-", color="tab:blue", label="NC1: CDNV (left, log scale; lower = more collapsed)")
    ax.set_ylabel("CDNV (nc1_cdnv)", color="tab:blue")
    ax.set_xticks(list(x), labels, rotation=20, ha="right", fontsize=8)
    ax2 = ax.twinx()
    ax2.plot(x, ncc, "s--", color="tab:orange", label="nearest-class-mean accuracy (right; higher = more collapsed)")
    ax2.set_ylabel("NCC accuracy (ncc_accuracy)", color="tab:orange")
    ax2.set_ylim(0, max(ncc) * 1.25)
    lines = ax.get_legend_handles_labels()[0] + ax2.get_legend_handles_labels()[0]
    ax.legend(lines, [ln.get_label() for ln in lines], fontsize=7.5, loc="upper center")
    tokens = report.all_statistics[names[-1]].num_tokens
    ax.set_title(f"Collapse grows with depth: pre-trained stories260K, {tokens:,} TinyStories tokens", fontsize=10)
    fig.tight_layout()
    Path(args.output).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(args.output)
    print(f"wrote {args.output}")


if __name__ == "__main__":
    main()
