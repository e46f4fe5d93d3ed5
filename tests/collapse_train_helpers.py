"""A tiny GPT-Neo trained on TinyStories with the GPT-2 tokenizer (shared by test_trainer.py and its
2-process run: ``python -m accelerate.commands.launch ... tests/collapse_train_helpers.py OUT DATA``)."""

import json
import os
import sys
from pathlib import Path

import torch


def blocks(shared_data: Path, n_train=24, n_eval=7, T=32):
    from datasets import Dataset
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(shared_data / "tokenizers" / "gpt2"))
    text = (shared_data / "tinystories" / "train-head.txt").read_text()[:30000]
    ids = tok(text)["input_ids"]
    need = (n_train + n_eval) * T
    assert len(ids) >= need
    rows = [ids[i * T : (i + 1) * T] for i in range(n_train + n_eval)]
    mk = lambda r: Dataset.from_dict({"input_ids": r, "labels": r})  # noqa: E731
    return mk(rows[:n_train]), mk(rows[n_train:])


def tiny_gpt_neo(seed=0):
    from transformers import GPTNeoConfig, GPTNeoForCausalLM

    torch.manual_seed(seed)
    cfg = GPTNeoConfig(
        vocab_size=50257,
        hidden_size=32,
        num_layers=2,
        num_heads=2,
        attention_types=[[["global", "local"], 1]],
        max_position_embeddings=64,
        intermediate_size=64,
        window_size=16,
    )
    return GPTNeoForCausalLM(cfg)


def training_args(out, **kw):
    from transformers import TrainingArguments

    base = dict(
        output_dir=str(out),
        per_device_train_batch_size=4,
        per_device_eval_batch_size=2,
        max_steps=4,
        learning_rate=3e-3,
        eval_strategy="steps",
        eval_steps=2,
        logging_steps=2,
        save_steps=4,
        save_strategy="steps",
        report_to=[],
        use_cpu=True,
        disable_tqdm=True,
        seed=0,
        dataloader_num_workers=0,
    )
    base.update(kw)
    return TrainingArguments(**base)


def main(out, shared, mode="ddp"):
    """Train 4 steps under however many processes we were launched with, then save the final eval.

    ``mode="ddp"``: ``use_cpu=True``, so the Trainer shards the data over the processes (DDP on gloo).
    ``mode="nodist"``: no ``use_cpu`` (a CPU machine under ``accelerate launch --multi_gpu``): the
    process group exists but the Trainer does not use it, so every process trains a full copy; the
    final evaluation is also repeated by a stock Trainer with ``CollapseCallback`` and by
    ``measure_collapse()`` (a dedicated pass)."""
    from hf_collapse import CollapseArguments, CollapseCallback, CollapseTrainer

    out, shared = Path(out), Path(shared)
    train, evals = blocks(shared)
    cargs = CollapseArguments(collapse_dtype="float64")
    trainer = CollapseTrainer(
        model=tiny_gpt_neo(),
        args=training_args(out, use_cpu=mode == "ddp"),
        train_dataset=train,
        eval_dataset=evals,
        collapse_args=cargs,
    )
    trainer.train()
    final = trainer.evaluate()
    res = {
        "final": final,
        "log_history": trainer.state.log_history,
        "world_size": trainer.args.world_size,
        "num_tokens": trainer.collapse_report.statistics.num_tokens,
    }
    if mode == "nodist":
        res["measure_num_tokens"] = trainer.measure_collapse().statistics.num_tokens
        from transformers import Trainer

        stock = Trainer(model=trainer.model, args=training_args(out / "stock", use_cpu=False), eval_dataset=evals)
        cb = CollapseCallback(cargs).attach(stock)
        res["callback_final"] = stock.evaluate()
        res["callback_num_tokens"] = cb.collapse_report.statistics.num_tokens
        cb.remove()
    if trainer.is_world_process_zero():
        trainer.save_model(str(out / "final"))
        (out / "result.json").write_text(json.dumps(res))
    # free the accelerator before exit: 2-process runs sometimes hung in trainer.end() otherwise
    trainer.accelerator.free_memory()
    import torch.distributed as dist

    if dist.is_initialized():  # the launcher's group, not hf_collapse's: the script closes it
        dist.barrier()
        dist.destroy_process_group()


if __name__ == "__main__":
    sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "src"))
    main(*sys.argv[1:4])
