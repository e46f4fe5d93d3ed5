"""CollapseTrainer / CollapseCallback: NC metrics in evaluate() and the logs, checkpoints, 2 processes."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from transformers import Trainer, TrainerCallback

from hf_collapse import CollapseArguments, CollapseCallback, CollapseStatistics, CollapseTrainer, is_collapse_key

sys.path.insert(0, str(Path(__file__).resolve().parent))
from collapse_train_helpers import blocks, tiny_gpt_neo, training_args  # noqa: E402
from conftest import accelerate_launch, free_port  # noqa: E402

pytestmark = pytest.mark.slow  # training, processes, the local Hub server or killed processes

SRC = str(Path(__file__).resolve().parents[1] / "src")
HELPER = str(Path(__file__).resolve().parent / "collapse_train_helpers.py")


class Recorder(TrainerCallback):
    """Stands in for a report_to integration: records what on_log hands it."""

    def __init__(self):
        self.logs = []

    def on_log(self, args, state, control, logs=None, **kw):
        self.logs.append(dict(logs))


def test_collapse_trainer_logs_and_checkpoints(shared_data, tmp_path):
    train, evals = blocks(shared_data)
    rec = Recorder()
    trainer = CollapseTrainer(
        model=tiny_gpt_neo(),
        args=training_args(tmp_path),
        train_dataset=train,
        eval_dataset=evals,
        callbacks=[rec],
        collapse_args=CollapseArguments(collapse_modules=["lm_head", "transformer.h.1"]),
    )
    trainer.train()
    evals_logged = [h for h in trainer.state.log_history if "eval_loss" in h]
    assert len(evals_logged) == 2
    for h in evals_logged:
        assert h["eval_nc1_cdnv"] > 0 and 0 <= h["eval_nc4_agreement"] <= 1
        assert "eval_transformer_h_1_nc1_cdnv" in h and "eval_transformer_h_1_ncc_accuracy" in h
    assert any("eval_nc1_cdnv" in r for r in rec.logs)  # integrations see them
    metrics = trainer.evaluate()
    assert "eval_nc2_interference_mean" in metrics and "eval_loss" in metrics
    # statistics = what the eval set holds: 7 sequences x 31 labelled positions
    assert trainer.collapse_report.statistics.num_tokens == 7 * 31
    saved = CollapseStatistics.load(tmp_path / "checkpoint-4" / "collapse" / "statistics.safetensors")
    assert saved.num_tokens == 7 * 31 and saved.metadata["global_step"] == "4"
    # the layer-wise measurement is a named measurement of the checkpoint, loadable by name
    from hf_collapse import load_measured

    layer = load_measured(tmp_path / "checkpoint-4", name="transformer_h_1", load_model=False)
    assert layer.statistics.num_tokens == 7 * 31 and layer.statistics.dim == saved.dim
    assert layer.result["nc1_cdnv"] > 0 and layer.measurements == [None, "transformer_h_1"]
    rep = trainer.measure_collapse()
    assert rep.result["nc1_cdnv"] == pytest.approx(metrics["eval_nc1_cdnv"], rel=1e-9)


def test_callback_on_stock_trainer(shared_data, tmp_path):
    train, evals = blocks(shared_data)
    rec = Recorder()
    trainer = Trainer(
        model=tiny_gpt_neo(),
        args=training_args(tmp_path, max_steps=2, save_steps=2),
        train_dataset=train,
        eval_dataset=evals,
    )
    trainer.add_callback(rec)  # an integration registered before ours
    cb = CollapseCallback(CollapseArguments()).attach(trainer)
    trainer.train()
    ev = [h for h in trainer.state.log_history if "eval_loss" in h]
    assert ev and "eval_nc1_cdnv" in ev[0] and "eval_nc4_agreement" in ev[0]
    assert any("eval_nc1_cdnv" in r for r in rec.logs)
    metrics = trainer.evaluate()
    assert "eval_nc1_cdnv" in metrics
    assert cb.collapse_report.statistics.num_tokens == 7 * 31  # the NC4 pass did not feed pass 1
    assert (tmp_path / "checkpoint-2" / "collapse" / "statistics.safetensors").is_file()
    # callback and trainer agree on the same model
    ct = CollapseTrainer(model=trainer.model, args=training_args(tmp_path / "b"), eval_dataset=evals)
    m2 = ct.evaluate()
    for k in ("eval_nc1_cdnv", "eval_nc3_duality_mean", "eval_nc4_agreement"):
        assert m2[k] == pytest.approx(metrics[k], rel=1e-6), k
    cb.remove()
    assert not trainer.model.lm_head._forward_pre_hooks


def _launch(launcher, out, shared_data, mode):
    port = str(free_port())
    if launcher == "torchrun":
        cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", port]
    else:
        cmd = accelerate_launch(2)
    env = {**os.environ, "PYTHONPATH": SRC + os.pathsep + os.environ.get("PYTHONPATH", "")}
    proc = subprocess.run(
        [*cmd, HELPER, str(out), str(shared_data), mode], env=env, capture_output=True, text=True, timeout=300
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    return proc, json.loads((out / "result.json").read_text())


def _one_process_metrics(shared_data, folder, tmp_path):
    """A 1-process evaluation of the weights the 2-process run saved."""
    from transformers import GPTNeoForCausalLM

    model = GPTNeoForCausalLM.from_pretrained(folder)
    _, evals = blocks(shared_data)
    one = CollapseTrainer(
        model=model,
        args=training_args(tmp_path / "one"),
        eval_dataset=evals,
        collapse_args=CollapseArguments(collapse_dtype="float64"),
    )
    m1 = one.evaluate()
    assert one.collapse_report.statistics.num_tokens == 7 * 31
    keys = [k for k in m1 if is_collapse_key(k)]
    assert len(keys) >= 10
    return m1, keys


@pytest.mark.parametrize("launcher", ["torchrun", "accelerate"])
def test_two_processes_match_one(shared_data, tmp_path, launcher):
    """Train under 2 processes with ``use_cpu=True`` (DDP on gloo); its final eval metrics equal a
    1-process evaluation of the same weights and count each of the 7 x 31 eval tokens once. The
    7-sequence eval set in per-device batches of 2 makes Accelerate pad the last step with a repeated
    sequence, which must not be counted."""
    out = tmp_path / "dist"
    _, res = _launch(launcher, out, shared_data, "ddp")
    assert res["world_size"] == 2
    assert res["num_tokens"] == 7 * 31  # each eval token once over both processes
    dist_metrics = res["final"]
    assert any("eval_nc1_cdnv" in h for h in res["log_history"][:-1])  # logged during training too
    m1, keys = _one_process_metrics(shared_data, out / "final", tmp_path)
    for k in keys:
        assert dist_metrics[k] == pytest.approx(m1[k], rel=1e-9, abs=1e-12), k
    # (eval_loss is not compared: the Trainer averages per-batch losses, which include the padding)


def test_process_group_the_trainer_does_not_use(shared_data, tmp_path):
    """``accelerate launch --multi_gpu --num_processes 2`` on CPU without ``use_cpu=True``: the process
    group exists but the Trainer does not shard over it (every process trains a full copy on all the
    data). CollapseTrainer, measure_collapse() and CollapseCallback must give the 1-process numbers
    (before the fix they summed both copies: 403 tokens for a 217-token eval set), with one warning."""
    out = tmp_path / "nodist"
    proc, res = _launch("accelerate", out, shared_data, "nodist")
    assert res["world_size"] == 1
    assert res["num_tokens"] == res["measure_num_tokens"] == res["callback_num_tokens"] == 7 * 31
    for who in ("CollapseTrainer", "CollapseCallback"):
        lines = [x for x in proc.stderr.splitlines() if f"{who}: torch.distributed has a process group of 2" in x]
        assert len(lines) == 2, (who, proc.stderr[-3000:])  # once per process, not once per evaluation
        assert "use_cpu=True" in lines[0]
    m1, keys = _one_process_metrics(shared_data, out / "final", tmp_path)
    for k in keys:
        assert res["final"][k] == pytest.approx(m1[k], rel=1e-9, abs=1e-12), k
        assert res["callback_final"][k] == pytest.approx(m1[k], rel=1e-9, abs=1e-12), k


def test_dedicated_pass_with_budget_and_no_nc4(shared_data, tmp_path):
    train, evals = blocks(shared_data)
    trainer = CollapseTrainer(
        model=tiny_gpt_neo(),
        args=training_args(tmp_path),
        eval_dataset=evals,
        collapse_dataset=train,
        collapse_args=CollapseArguments(collapse_max_tokens=50, collapse_nc4=False),
    )
    m = trainer.evaluate()
    assert trainer.collapse_report.statistics.num_tokens == 50
    assert "eval_nc1_cdnv" in m and "eval_nc4_agreement" not in m and "eval_ncc_accuracy" not in m


def test_callback_passed_in_callbacks_list(shared_data, tmp_path):
    _, evals = blocks(shared_data)
    cb = CollapseCallback(CollapseArguments(collapse_nc4=False, collapse_measures=["nc1_cdnv", "nc2_norm_mean"]))
    trainer = Trainer(model=tiny_gpt_neo(), args=training_args(tmp_path), eval_dataset=evals, callbacks=[cb])
    metrics = trainer.evaluate()  # hooks were installed by on_init_end
    assert "eval_nc1_cdnv" in metrics and "eval_nc4_agreement" not in metrics
    assert "eval_nc2_norm_mean" in metrics and "eval_nc3_duality_mean" not in metrics  # collapse_measures
    assert "eval_nc1_cdnv" in trainer.state.log_history[-1]
    cb.remove()
