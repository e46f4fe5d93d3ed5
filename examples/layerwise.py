"""Layer-wise neural collapse: measure the input of every transformer block and of the LM head.

The feature of a module is its *input*, so ``transformer.h.0`` measures the embeddings and
``lm_head`` the last hidden state. Offline default: a freshly initialised tiny GPT-2 on byte
tokens; ``--model`` takes any causal LM folder or Hub id with its tokenizer.

    python examples/layerwise.py
    python examples/layerwise.py --model ../shared/data/models/stories260K \
        --text-file ../shared/data/tinystories/validation-head.txt --max-tokens 20000
"""

import argparse
import random

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, GPT2Config, GPT2LMHeadModel

from hf_collapse import CollapseArguments, measure_model


def block_names(model) -> list[str]:
    """Names of the entries of the model's list of transformer blocks (GPT-2 transformer.h.i, Llama model.layers.i)."""
    n = model.config.num_hidden_layers
    for name, module in model.named_modules():
        if isinstance(module, torch.nn.ModuleList) and len(module) == n:
            return [f"{name}.{i}" for i in range(n)]
    raise ValueError("no list of transformer blocks found; pass --layers")


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", help="causal LM folder or Hub id (default: a tiny random GPT-2 on bytes)")
    p.add_argument("--text-file", help="text to measure on (default: generated sentences)")
    p.add_argument("--layers", nargs="*", help="module names (default: every block, then the LM head)")
    p.add_argument("--max-tokens", type=int, default=4000)
    p.add_argument("--block-size", type=int, default=64)
    args = p.parse_args(argv)
    words = "the a cat dog saw ran home big small red sun tree".split()
    rng = random.Random(0)
    if args.text_file:  # enough characters for the budget (a token is a few characters): tokenizing all is slow
        text = open(args.text_file, encoding="utf-8").read()[: 20 * args.max_tokens]
    else:
        text = " ".join(rng.choice(words) for _ in range(3000))
    if args.model:
        model = AutoModelForCausalLM.from_pretrained(args.model)
        ids = AutoTokenizer.from_pretrained(args.model)(text)["input_ids"]
    else:
        torch.manual_seed(0)
        model = GPT2LMHeadModel(
            GPT2Config(
                vocab_size=256, n_embd=32, n_layer=3, n_head=2, n_positions=128, bos_token_id=None, eos_token_id=None
            )
        )
        ids = list(text.encode("utf-8"))
    T = args.block_size
    blocks = torch.tensor(ids[: len(ids) // T * T]).view(-1, T)  # (num_blocks, T)
    loader = [{"input_ids": b} for b in blocks.split(8)]  # batches of (8, T); labels = input_ids
    layers = args.layers or [*block_names(model), "lm_head"]
    report = measure_model(
        model.eval(),
        loader,
        loader,
        settings=CollapseArguments(collapse_modules=layers, collapse_max_tokens=args.max_tokens),
        progress=False,
    )
    print(f"{'module':24s} {'tokens':>7s} {'nc1_cdnv':>10s} {'nc2_equinorm_cov':>17s} {'ncc_accuracy':>13s}")
    for name, res in report.results.items():
        print(
            f"{name:24s} {report.all_statistics[name].num_tokens:7d} {res['nc1_cdnv']:10.4g} "
            f"{res['nc2_equinorm_cov']:17.4g} {res.get('ncc_accuracy', float('nan')):13.4g}"
        )
    return report


if __name__ == "__main__":
    main()
