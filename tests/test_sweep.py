"""``hf-collapse sweep``: collapse over a Trainer run's checkpoints, duplicates, resuming, analyze."""

import csv
import json
import shutil
import sys
from pathlib import Path

import pytest

from hf_collapse.cli import main
from hf_collapse.integrations.trajectory import run_checkpoints
from hf_collapse.study.analysis import read_csv_rows

sys.path.insert(0, str(Path(__file__).resolve().parent))
from collapse_train_helpers import blocks, tiny_gpt_neo, training_args  # noqa: E402


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory, shared_data):
    """A 6-step Trainer run with checkpoints at steps 2, 4, 6, a byte copy of checkpoint-6 as
    checkpoint-8 and the final weights (= step 6) in the run folder itself."""
    from transformers import Trainer

    out = tmp_path_factory.mktemp("run")
    train, evals = blocks(shared_data)
    trainer = Trainer(
        model=tiny_gpt_neo(),
        args=training_args(out, max_steps=6, save_steps=2),
        train_dataset=train,
        eval_dataset=evals,
    )
    trainer.train()
    trainer.save_model(str(out))
    trainer.save_state()
    shutil.copytree(out / "checkpoint-6", out / "checkpoint-8")
    state = json.loads((out / "checkpoint-8" / "trainer_state.json").read_text())
    state["global_step"] = 8
    (out / "checkpoint-8" / "trainer_state.json").write_text(json.dumps(state))
    return out


def sweep_args(shared_data, run, out, *extra):
    d = shared_data
    return [
        "sweep",
        str(run),
        "--tokenizer",
        str(d / "tokenizers" / "gpt2"),
        "--train-file",
        str(d / "tinystories" / "train-head.txt"),
        "--validation-file",
        str(d / "tinystories" / "validation-head.txt"),
        "--max-tokens",
        "400",
        "--nc4-max-tokens",
        "150",
        "--block-size",
        "32",
        "--batch-size",
        "4",
        "--dtype",
        "float64",
        "--no-progress",
        "--output-dir",
        str(out),
        *extra,
    ]


def test_sweep_trainer_run(shared_data, run_dir, tmp_path, capsys):
    assert [(c.label, c.step) for c in run_checkpoints(run_dir)] == [
        ("checkpoint-2", 2),
        ("checkpoint-4", 4),
        ("checkpoint-6", 6),
        ("checkpoint-8", 8),
        ("final", 6),
    ]
    out = tmp_path / "sweep"
    assert main(sweep_args(shared_data, run_dir, out)) == 0
    assert "checkpoint-8" in capsys.readouterr().out
    with open(out / "trajectory.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert [r["checkpoint"] for r in rows] == ["checkpoint-2", "checkpoint-4", "checkpoint-6", "checkpoint-8", "final"]
    assert [r["step"] for r in rows] == ["2", "4", "6", "8", "6"]
    by = {r["checkpoint"]: r for r in rows}
    # byte-identical weights: measured once, the rows copy the measures and name the original
    assert by["checkpoint-8"]["duplicate_of"] == "checkpoint-6" and by["final"]["duplicate_of"] == "checkpoint-6"
    assert by["checkpoint-8"]["weights_sha256"] == by["checkpoint-6"]["weights_sha256"] == by["final"]["weights_sha256"]
    assert by["checkpoint-4"]["weights_sha256"] != by["checkpoint-6"]["weights_sha256"]
    for key in ("nc1_cdnv", "nc2_etf_error", "effective_rank", "nc3_self_duality_error", "nc4_agreement"):
        assert by["checkpoint-8"][key] == by["checkpoint-6"][key] != by["checkpoint-2"][key]
    assert not (out / "checkpoints" / "checkpoint-8" / "collapse").exists()
    # eval_loss from each checkpoint's trainer_state.json: the last evaluation logged there
    states = {c: json.loads((run_dir / c / "trainer_state.json").read_text()) for c in ("checkpoint-2", "checkpoint-6")}
    for c, st in states.items():
        assert float(by[c]["eval_loss"]) == [e["eval_loss"] for e in st["log_history"] if "eval_loss" in e][-1]
    assert float(by["checkpoint-2"]["eval_loss"]) != float(by["checkpoint-6"]["eval_loss"])
    # each measured checkpoint's statistics, in the measured-folder format, equal a direct measurement
    m2 = json.loads((out / "checkpoints" / "checkpoint-2" / "collapse" / "metrics.json").read_text())
    assert m2["num_tokens"] == 400 and m2["checkpoint"] == "checkpoint-2" and m2["step"] == 2
    model_dir = tmp_path / "ckpt2"  # hf-collapse measure wants the tokenizer beside the weights
    shutil.copytree(run_dir / "checkpoint-2", model_dir)
    for f in (shared_data / "tokenizers" / "gpt2").iterdir():
        shutil.copy(f, model_dir / f.name)
    direct = tmp_path / "direct"
    measure = sweep_args(shared_data, run_dir, direct)[4:]  # the same data and measure flags
    assert main(["measure", str(model_dir), *measure, "--no-save-model", "--no-reuse"]) == 0
    md = json.loads((direct / "collapse" / "metrics.json").read_text())
    for key in ("nc1_cdnv", "nc2_etf_error", "effective_rank", "nc3_duality_mean", "nc4_agreement"):
        assert float(by["checkpoint-2"][key]) == pytest.approx(md[key], rel=1e-9), key
    png = (out / "trajectory.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 20_000

    # a second run measures nothing new: no statistics file is rewritten
    files = sorted((out / "checkpoints").rglob("*"))
    stamps = {p: p.stat().st_mtime_ns for p in files if p.is_file()}
    assert main(sweep_args(shared_data, run_dir, out)) == 0
    assert {p: p.stat().st_mtime_ns for p in files if p.is_file()} == stamps
    with open(out / "trajectory.csv", newline="") as f:
        assert list(csv.DictReader(f)) == rows

    # other measure settings are another measurement: measured again, with the new keys
    assert main(sweep_args(shared_data, run_dir, out, "--riesz-s", "2", "--min-count", "2")) == 0
    with open(out / "trajectory.csv", newline="") as f:
        again = list(csv.DictReader(f))
    assert all(r["gnc2_riesz_mean"] for r in again) and again[0]["nc1_cdnv"] != rows[0]["nc1_cdnv"]
    assert {p: p.stat().st_mtime_ns for p in files if p.is_file()} != stamps

    # hf-collapse analyze reads the trajectory (duplicates left out, fitted against eval_loss)
    table = read_csv_rows(out / "trajectory.csv")
    assert [r["name"] for r in table] == ["checkpoint-2", "checkpoint-4", "checkpoint-6"]
    assert all(r["val_loss"] == r["eval_loss"] for r in table)
    assert (
        main(["analyze", str(out / "trajectory.csv"), "--output-dir", str(tmp_path / "an"), "--permutations", "50"])
        == 0
    )
    assert "nc2_etf_error" in (tmp_path / "an" / "correlations.csv").read_text()


def test_sweep_errors(tmp_path, shared_data):
    with pytest.raises(FileNotFoundError, match="holds no checkpoint"):
        run_checkpoints(tmp_path)
    with pytest.raises(FileNotFoundError, match="no run folder"):
        run_checkpoints(tmp_path / "nope")
    assert main(["sweep", str(tmp_path), "--output-dir", str(tmp_path / "o")]) == 1  # no data given
    assert main(sweep_args(shared_data, tmp_path, tmp_path / "o", "--min-count", "0")) == 1


@pytest.mark.slow
def test_sweep_hub_revisions(shared_data, run_dir, tmp_path, hub_env):
    """Revisions of a Hub repo, one of them a branch holding the same weights as another."""
    from huggingface_hub import HfApi

    api = HfApi()
    api.create_repo("tester/ckpts")
    for branch, ck in (("step2", "checkpoint-2"), ("step4", "checkpoint-4")):
        api.create_branch("tester/ckpts", branch=branch)
        api.upload_folder(
            folder_path=str(run_dir / ck),
            repo_id="tester/ckpts",
            revision=branch,
            allow_patterns=["*.json", "*.safetensors"],
        )
    api.create_branch("tester/ckpts", branch="step4-again", revision="step4")
    out = tmp_path / "hub_sweep"
    args = sweep_args(shared_data, "tester/ckpts", out, "--revisions", "step2", "step4", "step4-again")
    assert main(args) == 0
    with open(out / "trajectory.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert [(r["checkpoint"], r["revision"], r["step"]) for r in rows] == [
        ("step2", "step2", "2"),
        ("step4", "step4", "4"),
        ("step4-again", "step4-again", ""),
    ]
    assert rows[2]["duplicate_of"] == "step4" and rows[2]["nc1_cdnv"] == rows[1]["nc1_cdnv"] != rows[0]["nc1_cdnv"]
    assert rows[1]["eval_loss"] != "" and (out / "checkpoints" / "step2" / "collapse" / "metrics.json").is_file()
    # the statistics of revision step2 record the hash of the local checkpoint it was uploaded from
    from hf_collapse import CollapseStatistics
    from hf_collapse.integrations.weights_hash import weights_sha256

    stats = CollapseStatistics.load(out / "checkpoints" / "step2" / "collapse" / "statistics.safetensors")
    assert stats.metadata["weights_sha256"] == rows[0]["weights_sha256"] == weights_sha256(run_dir / "checkpoint-2")
