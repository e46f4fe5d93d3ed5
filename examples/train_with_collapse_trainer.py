"""A plain GPT-2 training script with ``CollapseTrainer`` swapped in for ``Trainer``.

Every evaluation then logs the neural-collapse measures (eval_nc1_cdnv, eval_nc4_agreement, ...)
beside eval_loss. Runs offline on CPU in seconds: bytes are the tokens (vocabulary 256) so no
tokenizer has to be downloaded; use ``AutoTokenizer.from_pretrained("gpt2")`` in real work.

    python examples/train_with_collapse_trainer.py --steps 4
    torchrun --nproc_per_node 2 examples/train_with_collapse_trainer.py --steps 4   # 2 processes (gloo on CPU)
"""

import argparse
import random

import torch
from datasets import Dataset
from transformers import GPT2Config, GPT2LMHeadModel, TrainingArguments

from hf_collapse import CollapseArguments, CollapseTrainer, is_collapse_key  # was: from transformers import Trainer


def byte_blocks(text: str, block: int) -> Dataset:
    ids = list(text.encode("utf-8"))  # (n,) one class per byte value
    rows = [ids[i : i + block] for i in range(0, len(ids) - block + 1, block)]
    return Dataset.from_dict({"input_ids": rows, "labels": rows})  # the model shifts labels itself


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--train-file", help="plain text to train on (default: generated sentences)")
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--output-dir", default="collapse_trainer_out")
    args = p.parse_args(argv)
    rng = random.Random(0)
    words = "the a cat dog saw ran home big small red sun tree".split()
    text = (
        open(args.train_file, encoding="utf-8").read()
        if args.train_file
        else " ".join(rng.choice(words) for _ in range(6000))
    )
    train, evals = byte_blocks(text[:-4000], 32), byte_blocks(text[-4000:], 32)
    model = GPT2LMHeadModel(
        GPT2Config(vocab_size=256, n_embd=32, n_layer=2, n_head=2, n_positions=64, bos_token_id=None, eos_token_id=None)
    )
    training_args = TrainingArguments(
        output_dir=args.output_dir,
        max_steps=args.steps,
        per_device_train_batch_size=8,
        learning_rate=3e-3,
        eval_strategy="steps",
        eval_steps=max(1, args.steps // 2),
        logging_steps=max(1, args.steps // 2),
        save_strategy="no",
        report_to=[],
        use_cpu=True,
        disable_tqdm=True,
    )
    trainer = CollapseTrainer(
        model=model,
        args=training_args,
        train_dataset=train,
        eval_dataset=evals,
        collapse_args=CollapseArguments(collapse_modules=["lm_head", "transformer.h.0"]),
    )
    trainer.train()
    logged = next(h for h in reversed(trainer.state.log_history) if "eval_loss" in h)
    if trainer.is_world_process_zero():  # every process holds the same numbers
        for key in sorted(k for k in logged if is_collapse_key(k)):  # every measure, layer-wise too
            print(f"{key:45s} {logged[key]:.6g}")
    trainer.accelerator.free_memory()
    if torch.distributed.is_initialized():  # under torchrun: without this, gloo sometimes aborts at exit
        torch.distributed.barrier()
        torch.distributed.destroy_process_group()
    return logged


if __name__ == "__main__":
    main()
