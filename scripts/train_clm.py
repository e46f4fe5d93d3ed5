#!/usr/bin/env python
"""Train one GPT-Neo causal LM of the paper's grid (appendix B) and save it measured.

    accelerate launch scripts/train_clm.py --width 768 --depth 2 --epochs 1 --weight_decay 0.0005 --seed 3
    python scripts/train_clm.py --train_file ../shared/data/tinystories/train-head.txt \\
        --validation_file ../shared/data/tinystories/validation-head.txt \\
        --tokenizer ../shared/data/tokenizers/gpt2 --width 64 --depth 2 --output_dir runs

Default data: roneneldan/TinyStories from the Hub with the GPT-Neo tokenizer. NC metrics are logged
at every evaluation (CollapseTrainer; ``--collapse_*`` flags); the model is saved as a measured
folder ``<output_dir>/TinyStories-{L}x{d}_{E}{D}{S}`` (see ``hf_collapse.study.train``). Run several and
then ``hf-collapse analyze <output_dir>``. Without ``--progress`` (tqdm bars) it prints one progress line
a minute to stderr (step, loss, time spent and left), which reads well in a batch job's log file.
"""

import contextlib
import json
import sys

from transformers import HfArgumentParser

from hf_collapse import CollapseArguments
from hf_collapse.study.train import StudyArguments, train_one


def main(argv=None) -> int:
    parser = HfArgumentParser((StudyArguments, CollapseArguments))
    study, collapse = parser.parse_args_into_dataclasses(args=argv)
    with progress_bars(study.progress):  # without --progress: progress lines only, readable in a log file
        row = train_one(study, collapse_args=collapse)
    print(json.dumps(row, indent=2))
    return 0


@contextlib.contextmanager
def progress_bars(enabled: bool):
    """The tqdm bars of datasets and transformers (loading, writing) on or off for the run, restored after."""
    import datasets
    from transformers.utils import logging as hf_logging

    was = datasets.is_progress_bar_enabled(), hf_logging.is_progress_bar_enabled()
    (datasets.enable_progress_bars if enabled else datasets.disable_progress_bars)()
    (hf_logging.enable_progress_bar if enabled else hf_logging.disable_progress_bar)()
    try:
        yield
    finally:
        (datasets.enable_progress_bars if was[0] else datasets.disable_progress_bars)()
        (hf_logging.enable_progress_bar if was[1] else hf_logging.disable_progress_bar)()


if __name__ == "__main__":
    sys.exit(main())
