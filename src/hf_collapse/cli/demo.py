"""``hf-collapse demo``: train, measure and analyse a small grid of causal LMs, offline (see
:mod:`hf_collapse.study.demo`)."""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

from ..study import demo as _demo
from ..study.analysis import table1
from ..study.demo import DEFAULT_EPOCHS, DEFAULT_SIZES, _summary, answer, run_demo

DEMO_DESCRIPTION = (_demo.__doc__ or "").split("\n\n")[1]


def run(args) -> int:
    if not args.verbose:
        from transformers.utils import logging as hf_logging

        hf_logging.set_verbosity_error()
        hf_logging.disable_progress_bar()
        logging.getLogger("hf_collapse").setLevel(logging.WARNING)
    result = run_demo(
        args.output_dir,
        args.sizes,
        args.epochs,
        stories=args.stories,
        train_file=args.train_file,
        validation_file=args.validation_file,
        dataset_name=args.dataset_name,
        tokenizer=args.tokenizer,
        max_train_stories=args.max_train_stories,
        block_size=args.block_size,
        batch_size=args.batch_size,
        learning_rate=args.learning_rate,
        weight_decay=args.weight_decay,
        seed=args.seed,
        permutations=args.permutations,
        measure_max_tokens=args.measure_max_tokens,
        max_eval_blocks=args.max_eval_blocks,
        progress=args.verbose,
        seeds=args.seeds,
        seed_init=args.seed_init,
        quiet=args.quiet,
    )
    d = result["direction"]
    print()
    if args.seeds is None:
        print(_summary(result))
        print()
        print(
            f"validation loss falls with model size: {answer(d['loss_falls_with_size'], 'size')}; "
            f"with training: {answer(d['loss_falls_with_epochs'], 'training length')}"
        )
    elif result["fits"]:
        print(table1(result["fits"], result["design"]["seed_replicas"]))
        print()
    if "fits_not_available" in d:
        print(d["fits_not_available"])
    else:
        n_dir = len(d["agree"]) + len(d["disagree"])
        holds = "expected direction holds" if d["holds"] else "expected direction does NOT hold on most measures"
        print(
            f"lower validation loss goes with more collapse on {len(d['agree'])} of {n_dir} directional "
            f"measures ({holds}); against: {', '.join(d['disagree']) or 'none'}"
        )
    print(
        f"wrote {result['report']}, runs.csv and {len(result['figures'])} figures in "
        f"{Path(args.output_dir).resolve()} ({result['seconds']:.0f} s)"
    )
    return 0


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "demo",
        help="train, measure and analyse a small grid of causal LMs (offline, minutes)",
        description=DEMO_DESCRIPTION,
    )
    p.add_argument(
        "--output-dir",
        default="hf_collapse_demo",
        help="folder for report.md, runs.csv, figures, runs/ and demo.json (the design: a folder holding "
        "another design is refused)",
    )
    p.add_argument(
        "--sizes",
        default=DEFAULT_SIZES,
        help="model sizes as LxD (L layers x width d), comma separated; runs are named as the paper's, "
        "TinyStories-LxD_<epochs><decay> (decay L = 0.0005, H = 0.1)",
    )
    p.add_argument("--epochs", default=DEFAULT_EPOCHS, help="training lengths in epochs, comma separated")
    p.add_argument("--stories", type=int, default=3000, help="built-in stories to generate (training)")
    p.add_argument("--train-file", help="real text instead: TinyStories-format file (<|endoftext|> between stories)")
    p.add_argument("--validation-file", help="validation text for --train-file (default: last 10%% of it)")
    p.add_argument("--dataset-name", help="real text from a Hub dataset instead (e.g. roneneldan/TinyStories)")
    p.add_argument("--tokenizer", default="EleutherAI/gpt-neo-125M", help="tokenizer for real text (name or folder)")
    p.add_argument("--max-train-stories", type=int, help="use only the first N real stories")
    p.add_argument("--max-eval-blocks", type=int, help="cap on validation sequences")
    p.add_argument("--measure-max-tokens", type=int, help="token budget of each statistics pass")
    p.add_argument("--block-size", type=int, default=64, help="tokens per training sequence")
    p.add_argument("--batch-size", type=int, default=32, help="training sequences per batch")
    p.add_argument("--learning-rate", type=float, default=3e-3, help="AdamW learning rate")
    p.add_argument(
        "--weight-decay",
        type=float,
        default=None,
        help="AdamW weight decay (default: 0.1 for the grid, Table 1's 0.0005 with --seeds)",
    )
    p.add_argument("--seed", type=int, default=0, help="seed of initialisation, data order and permutation tests")
    p.add_argument(
        "--seeds",
        type=int,
        metavar="N",
        help="Table 1 design: N >= 3 replicas of the first of --sizes at the first --epochs value, "
        "differing only in the data-order seed (--seed .. --seed+N-1)",
    )
    p.add_argument(
        "--seed-init",
        action="store_true",
        help="with --seeds: vary the initialisation seed as well (the paper fixes it)",
    )
    p.add_argument(
        "--permutations", type=int, default=10_000, help="permutations per test (exact test when n! is fewer)"
    )
    p.add_argument("--quiet", action="store_true", help="no per-model progress lines")
    p.add_argument("--verbose", action="store_true", help="progress bars and library logs")
    p.set_defaults(func=run)
