"""Sharded models: measure_model under FSDP2 / FSDP1 (2 processes, gloo, CPU) equals 1 unsharded process,
uneven FSDP2 shards finish; the head reader on ZeRO-3-shaped and unreadable heads (no deepspeed needed)."""

import contextlib
import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import free_port

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import sharded_worker  # noqa: E402

from hf_collapse.integrations import hooks as hooks_mod  # noqa: E402
from hf_collapse.integrations.hooks import FeatureHooks, head_num_classes, read_head  # noqa: E402


def _launch(mode, out):
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_addr", "127.0.0.1"]
    cmd += ["--master_port", str(free_port()), str(HERE / "sharded_worker.py"), mode, str(out)]
    env = dict(os.environ, PYTHONPATH=str(HERE.parent / "src"), OMP_NUM_THREADS="1", DS_ACCELERATOR="cpu")
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return [json.loads((out / f"rank{r}.json").read_text()) for r in range(2)]


@pytest.mark.slow
@pytest.mark.parametrize("mode", ["fsdp2", "fsdp2_uneven", "fsdp1", "tp", "zero3", "trainer_zero3"])
def test_sharded_measure_model_equals_one_process(tmp_path, mode):
    if "zero3" in mode and importlib.util.find_spec("deepspeed") is None:
        pytest.skip("deepspeed is not installed (optional; `pip install deepspeed` runs ZeRO-3 on CPU with gloo)")
    ranks = _launch(mode, tmp_path)
    if mode == "trainer_zero3":  # evaluate() of CollapseTrainer: 12 rows, no first training step killed
        ref = sharded_worker.reference_rows()
        for res in ranks:
            assert res["num_tokens"] == sharded_worker.N_BATCHES * (sharded_worker.T - 1)
            for key, want in ref.items():
                assert res["metrics"][key] == pytest.approx(want, rel=1e-5, abs=1e-9), key
        return
    ref = sharded_worker.reference(uneven=mode == "fsdp2_uneven")
    assert {"nc3_duality_mean", "nc3_duality_distance", "nc3_self_duality_error", "unc3_duality_cov"} <= set(ref)
    for res in ranks:
        assert set(res["metrics"]) == set(ref)
        for key, want in ref.items():
            assert res["metrics"][key] == pytest.approx(want, rel=1e-6, abs=1e-12), key
    n_batches = 13 if mode == "fsdp2_uneven" else sharded_worker.N_BATCHES
    for res in ranks:  # tp: reduced over the data-parallel group, each token counted once (not once per TP rank)
        assert res["num_tokens"] == n_batches * sharded_worker.B * (sharded_worker.T - 1)


# ---------------------------------------------------------------- the head reader, one process
def _zero3_linear(C=6, d=4, tied_bias=False):
    """A Linear as DeepSpeed ZeRO-3 leaves it outside forward: weight of shape (0,) with ds_shape/ds_status,
    and a fake GatheredParameters that restores the full data inside its context."""
    lin = torch.nn.Linear(d, C, bias=False)
    full = torch.randn(C, d)
    lin.weight.data = torch.empty(0)
    lin.weight.ds_shape = torch.Size((C, d))
    lin.weight.ds_status = "NOT_AVAILABLE"
    calls = []

    @contextlib.contextmanager
    def gathered(params):
        calls.append(len(params))
        for p in params:
            p.data = full
        try:
            yield
        finally:
            for p in params:
                p.data = torch.empty(0)

    return lin, full, gathered, calls


def test_read_head_zero3(monkeypatch):
    lin, full, gathered, calls = _zero3_linear()
    monkeypatch.setattr(hooks_mod, "_zero3_gathered", gathered)
    w, b = read_head(lin, "lm_head", lin)
    assert b is None and calls == [1]
    torch.testing.assert_close(w, full)
    assert lin.weight.shape == (0,)  # partitioned again after reading
    assert head_num_classes(lin) == 6


def test_num_classes_from_what_sharding_leaves_whole():
    lin, *_ = _zero3_linear(C=9)
    assert hooks_mod._num_classes(torch.nn.Sequential(lin), {"0": lin}, None) == 9  # out_features, not shape[0]


def test_read_head_unreadable_is_a_clear_error():
    lin = torch.nn.Linear(4, 6, bias=False)
    lin.weight.data = torch.empty(24)  # a flat shard with no FSDP unit to gather it
    with pytest.raises(ValueError, match="not \\(C, d\\).*FSDP-wrapped model"):
        read_head(lin, "lm_head", lin)
    meta = torch.nn.Linear(4, 6, device="meta")
    with pytest.raises(ValueError, match="meta device"):
        read_head(meta, "lm_head", meta)


def test_hooks_skip_activation_checkpoint_recompute():
    """A forward re-run inside backward (checkpoint recompute) is not counted a second time (both the
    per-forward batch reset and the in-backward check of the hooks exclude it)."""
    from torch.utils.checkpoint import checkpoint

    from hf_collapse.integrations.hooks import StatisticsSink

    class Net(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.body = torch.nn.Linear(4, 4)
            self.lm_head = torch.nn.Linear(4, 5)

        def forward(self, input_ids=None, labels=None):
            h = torch.nn.functional.one_hot(input_ids, 4).float().requires_grad_()
            h = checkpoint(lambda x: self.lm_head(self.body(x)), h, use_reentrant=False)
            return h

    net = Net().eval()
    hk = FeatureHooks(net, "lm_head", num_classes=5)
    hk.sink = StatisticsSink(5)
    ids = torch.tensor([[0, 1, 2, 3]])
    with hk:
        out = net(input_ids=ids, labels=ids)
        out.sum().backward()  # recomputes the checkpointed region, hooks included
    assert hk.sink.statistics["lm_head"].num_tokens == 3


# ---------------------------------------------------------------- the Trainer path
def _eval_dataset():
    from datasets import Dataset

    rows = [b["input_ids"][0].tolist() for b in sharded_worker.batches()]
    return Dataset.from_dict({"input_ids": rows, "labels": rows})


@pytest.mark.slow
def test_trainer_gradient_checkpointing_counts_each_token_once(tmp_path):
    """Activation checkpointing: training recomputes forwards in backward, evaluation (no_grad) does not;
    the NC statistics of an evaluation after checkpointed training steps count each token once."""
    import dataclasses

    from transformers import TrainingArguments

    from hf_collapse import CollapseArguments, CollapseTrainer

    ds = _eval_dataset()
    fields = {f.name for f in dataclasses.fields(TrainingArguments)}  # renamed in later transformers 5 releases
    ckpt_field = "activation_checkpointing" if "activation_checkpointing" in fields else "gradient_checkpointing"
    out = {}
    for ckpt in (False, True):
        model = sharded_worker.tiny_gpt2()
        args = TrainingArguments(
            output_dir=str(tmp_path / str(ckpt)),
            use_cpu=True,
            report_to=[],
            max_steps=2,
            per_device_train_batch_size=4,
            per_device_eval_batch_size=4,
            **{ckpt_field: ckpt},
            disable_tqdm=True,
            save_strategy="no",
            seed=0,
        )
        t = CollapseTrainer(
            model=model, args=args, train_dataset=ds, eval_dataset=ds, collapse_args=CollapseArguments()
        )
        t.train()
        on = getattr(model, "is_activation_checkpointing", None)
        assert (model.is_gradient_checkpointing if on is None else on) == ckpt
        out[ckpt] = (t.evaluate(), t.collapse_report.statistics.num_tokens)
    assert out[True][1] == out[False][1] == len(ds) * (sharded_worker.T - 1)
    for key, want in out[False][0].items():
        if key.startswith("eval_nc") and "runtime" not in key:
            assert out[True][0][key] == pytest.approx(want, rel=1e-5), key


def test_trainer_warns_when_fsdp_is_dropped(caplog):
    """TrainingArguments(fsdp=...) without an FSDP plugin (a CPU machine under torchrun): one warning."""
    from types import SimpleNamespace

    from hf_collapse.integrations.trainer import _warn_fsdp_dropped

    with caplog.at_level("WARNING", logger="hf_collapse.integrations.trainer"):
        _warn_fsdp_dropped(SimpleNamespace(args=SimpleNamespace(fsdp=["full_shard"]), is_fsdp_enabled=False))
        _warn_fsdp_dropped(SimpleNamespace(args=SimpleNamespace(fsdp=["full_shard"]), is_fsdp_enabled=True))
        _warn_fsdp_dropped(SimpleNamespace(args=SimpleNamespace(fsdp=[]), is_fsdp_enabled=False))
    msgs = [r.getMessage() for r in caplog.records]
    assert len(msgs) == 1 and "not in effect" in msgs[0]
