#!/usr/bin/env python
"""Train one GPT-Neo causal LM of the paper's grid (appendix B) and save it measured.

    accelerate launch scripts/train_clm.py --width 768 --depth 2 --epochs 1 --weight_decay 0.0005 --seed 3
    python scripts/train_clm.py --train_file ../shared/data/tinystories/train-head.txt \\
        --validation_file ../shared/data/tinystories/validation-head.txt \\
        --tokenizer ../shared/data/tokenizers/gpt2 --width 64 --depth 2 --output_dir runs

Default data: roneneldan/TinyStories from the Hub with the GPT-Neo tokenizer. NC metrics are logged
at every evaluation (CollapseTrainer; ``--collapse_*`` flags); the model is saved as a measured
folder ``<output_dir>/TinyStories-{L}x{d}_{E}{D}{S}`` (see ``hf_collapse.study.train``). Run several and
then ``hf-collapse analyze <output_dir>``.
"""

import json
import sys

from transformers import HfArgumentParser

from hf_collapse import CollapseArguments
from hf_collapse.study.train import StudyArguments, train_one


def main(argv=None) -> int:
    parser = HfArgumentParser((StudyArguments, CollapseArguments))
    study, collapse = parser.parse_args_into_dataclasses(args=argv)
    row = train_one(study, collapse_args=collapse)
    print(json.dumps(row, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
