"""measure_model on a sharded tiny GPT-2 (gloo, CPU). Run by tests/test_sharded.py:

    torchrun --nproc_per_node 2 tests/sharded_worker.py MODE OUT

MODE: ``fsdp2`` (``fully_shard`` per block + root), ``fsdp2_uneven`` (7 batches on rank 0, 6 on rank 1),
``fsdp1`` (``FullyShardedDataParallel(use_orig_params=True)``, one unit per block + root), ``tp`` (the head
column-parallel over 2 ranks that both see all the data, reduced over the size-1 data-parallel group), ``zero3``
(DeepSpeed ZeRO-3 engine, ``DS_ACCELERATOR=cpu``; needs the optional deepspeed), ``trainer_zero3``
(``CollapseTrainer`` with ``TrainingArguments(deepspeed=ZeRO-3)``, ``evaluate()``). Every rank writes
``OUT/rank{r}.json`` with the report's metrics; :func:`reference` gives the 1-process unsharded numbers.
"""

import json
import os
import sys

import torch

N_BATCHES, B, T = 12, 2, 16


def tiny_gpt2(seed=0):
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(seed)
    cfg = GPT2Config(vocab_size=64, n_embd=32, n_layer=2, n_head=2, n_positions=32, bos_token_id=0, eos_token_id=0)
    return GPT2LMHeadModel(cfg).eval()


def batches(n=N_BATCHES, seed=1):
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, 64, (n, B, T), generator=g)
    return [{"input_ids": x, "labels": x.clone()} for x in ids]


def settings():
    from hf_collapse import CollapseArguments

    return CollapseArguments(collapse_dtype="float64")


def shard(data, rank, world, uneven=False):
    """Rank r's batches: an even split of ``data``, or 7 / 6 of 13 when ``uneven``."""
    if uneven:
        return data[:7] if rank == 0 else data[7:]
    return data[rank::world]


def reference(uneven=False):
    """The 1-process unsharded metrics of the data every mode measures in total."""
    from hf_collapse.integrations.passes import measure_model

    data = batches(13 if uneven else N_BATCHES)
    return measure_model(tiny_gpt2(), data, data, settings(), progress=False).metrics()


def eval_rows():
    """The evaluation set of the Trainer modes: the first sequence of each batch (12 rows of T tokens)."""
    return [b["input_ids"][0].tolist() for b in batches()]


def reference_rows():
    from hf_collapse.integrations.passes import measure_model

    data = [{"input_ids": torch.tensor(r)[None], "labels": torch.tensor(r)[None]} for r in eval_rows()]
    return measure_model(tiny_gpt2(), data, data, settings(), progress=False).metrics()


def trainer_zero3(out):
    from datasets import Dataset
    from transformers import TrainingArguments

    from hf_collapse import CollapseTrainer

    rows = eval_rows()
    ds = Dataset.from_dict({"input_ids": rows, "labels": rows})
    config = {
        "train_micro_batch_size_per_gpu": "auto",
        "train_batch_size": "auto",
        "gradient_accumulation_steps": "auto",
        "zero_optimization": {"stage": 3},
        "zero_allow_untested_optimizer": True,
    }
    args = TrainingArguments(
        output_dir=os.path.join(out, "trainer"),
        use_cpu=True,
        report_to=[],
        deepspeed=config,
        per_device_eval_batch_size=3,
        disable_tqdm=True,
        save_strategy="no",
    )
    trainer = CollapseTrainer(model=tiny_gpt2(), args=args, eval_dataset=ds, collapse_args=settings())
    metrics = trainer.evaluate()
    assert trainer.model.lm_head.weight.shape == (0,)  # ZeRO-3 partitioned outside forward
    keys = {k[len("eval_") :]: v for k, v in metrics.items() if k.startswith("eval_")}
    return {"metrics": keys, "num_tokens": trainer.collapse_report.statistics.num_tokens}


def main(mode, out):
    import torch.distributed as dist

    dist.init_process_group("gloo")
    rank, world = dist.get_rank(), dist.get_world_size()
    try:
        from transformers.models.gpt2.modeling_gpt2 import GPT2Block

        from hf_collapse.integrations.passes import measure_model

        model = tiny_gpt2()
        if mode.startswith("fsdp2"):
            from torch.distributed.device_mesh import init_device_mesh
            from torch.distributed.fsdp import fully_shard

            mesh = init_device_mesh("cpu", (world,))
            for block in model.transformer.h:
                fully_shard(block, mesh=mesh)
            fully_shard(model, mesh=mesh)
        elif mode == "fsdp1":
            from torch.distributed.fsdp import FullyShardedDataParallel as FSDP
            from torch.distributed.fsdp.wrap import ModuleWrapPolicy

            model = FSDP(
                model,
                auto_wrap_policy=ModuleWrapPolicy({GPT2Block}),
                use_orig_params=True,
                device_id=torch.device("cpu"),  # without it: "FSDP needs a non-CPU accelerator device"
            )
        elif mode == "tp":  # tensor parallel head (DTensor), data parallel degree 1: both ranks see all data
            from torch.distributed.device_mesh import init_device_mesh
            from torch.distributed.tensor import Replicate
            from torch.distributed.tensor.parallel import ColwiseParallel, parallelize_module

            mesh = init_device_mesh("cpu", (1, world), mesh_dim_names=("dp", "tp"))
            parallelize_module(model, mesh["tp"], {"lm_head": ColwiseParallel(output_layouts=Replicate())})
            data = batches()
            report = measure_model(model, data, data, settings(), progress=False, group=mesh["dp"].get_group())
        elif mode == "zero3":  # DeepSpeed ZeRO-3 (optional: deepspeed installs and runs on CPU with gloo)
            import deepspeed

            config = {
                "train_micro_batch_size_per_gpu": B,
                "zero_optimization": {"stage": 3},
                "optimizer": {"type": "SGD", "params": {"lr": 0.0}},
                "zero_allow_untested_optimizer": True,
            }
            model, *_ = deepspeed.initialize(model=model, model_parameters=model.parameters(), config=config)
            assert model.module.lm_head.weight.shape == (0,)  # partitioned outside forward
            data = shard(batches(N_BATCHES), rank, world, False)
            report = measure_model(model, data, data, settings(), progress=False)
        elif mode == "trainer_zero3":  # CollapseTrainer with TrainingArguments(deepspeed=ZeRO-3), evaluate()
            res = trainer_zero3(out)
            with open(os.path.join(out, f"rank{rank}.json"), "w") as f:
                json.dump(res, f)
            return
        else:
            raise SystemExit(f"unknown mode {mode}")
        if mode not in ("tp", "zero3"):
            uneven = mode == "fsdp2_uneven"
            mine = shard(batches(13 if uneven else N_BATCHES), rank, world, uneven)
            report = measure_model(model, mine, mine, settings(), progress=False)
        res = {"metrics": report.metrics(), "num_tokens": report.statistics.num_tokens}
        with open(os.path.join(out, f"rank{rank}.json"), "w") as f:
            json.dump(res, f)
    finally:
        dist.barrier()
        dist.destroy_process_group()


if __name__ == "__main__":
    sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "src"))
    main(*sys.argv[1:3])
