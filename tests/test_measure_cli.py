"""``hf-collapse measure``: the measured folder, 1 vs 2 processes, resume, bad input."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from hf_collapse import CollapseStatistics
from hf_collapse.cli import main
from hf_collapse.core.registry import MEASURE_KEYS

sys.path.insert(0, str(Path(__file__).resolve().parent))
from conftest import accelerate_launch, measure_args  # noqa: E402

pytestmark = pytest.mark.slow  # training, processes, the local Hub server or killed processes

SRC = str(Path(__file__).resolve().parents[1] / "src")


def test_measured_folder_and_two_processes_agree(shared_data, tmp_path, capsys):
    one = tmp_path / "one"
    layers = ["--layers", "model.layers.3"]  # layer-wise NC rides along
    assert main(measure_args(shared_data, one, *layers)) == 0
    printed = capsys.readouterr().out
    assert "nc1_cdnv" in printed and "nc4_agreement" in printed
    m1 = json.loads((one / "collapse" / "metrics.json").read_text())
    assert m1["num_tokens"] == 3000 and m1["num_classes"] == 512 and m1["k"] == 2.0
    assert {"nc1_cdnv", "nc3_duality_mean", "nc4_agreement", "ncc_accuracy"} <= set(m1)
    assert "model_layers_3_nc1_cdnv" in m1 and "model_layers_3_ncc_accuracy" in m1
    assert m1["model_layers_3_nc1_cdnv"] != m1["nc1_cdnv"]
    assert m1["data"].startswith("file:train-head.txt sha256:")
    stats, extra = CollapseStatistics.load_with_extras(one / "collapse" / "statistics.safetensors")
    assert stats.num_tokens == 3000 and stats.means.shape == (512, 64)
    assert "per_class.cdnv_row_mean" in extra and extra["per_class.class_ids"].numel() == m1["num_classes_present"]
    assert len(stats.metadata["weights_sha256"]) == 64 and stats.metadata["k"] == "2.0"
    assert (one / "README.md").is_file() and (one / "model.safetensors").is_file()
    assert (one / "tokenizer.json").is_file() and not (one / "collapse" / ".checkpoint").exists()
    # --layers: each layer is also a named measurement of the folder, shown on the card
    from hf_collapse import load_measured

    layer = load_measured(one, name="model_layers_3", load_model=False)
    assert layer.statistics.num_tokens == 3000 and layer.result["nc1_cdnv"] == pytest.approx(
        m1["model_layers_3_nc1_cdnv"]
    )
    assert "`model_layers_3`" in (one / "README.md").read_text()

    # the same command under 2 processes (gloo); 24 blocks in batches of 5 per process leave an uneven
    # last step, so Accelerate pads it with repeated blocks that must not be counted
    two = tmp_path / "two"
    launch = [*accelerate_launch(2), "-m", "hf_collapse.cli", *measure_args(shared_data, two, *layers)]
    env = {**os.environ, "PYTHONPATH": SRC + os.pathsep + os.environ.get("PYTHONPATH", ""), "HF_HUB_OFFLINE": "1"}
    proc = subprocess.run(launch, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    m2 = json.loads((two / "collapse" / "metrics.json").read_text())
    assert m2.keys() == m1.keys()
    for key, v in m1.items():
        if isinstance(v, float):
            assert m2[key] == pytest.approx(v, rel=1e-9, abs=1e-12), key
        elif key != "command":  # the command names its own --output-dir
            assert m2[key] == v, key
    s2 = CollapseStatistics.load(two / "collapse" / "statistics.safetensors")
    assert torch.equal(s2.counts, stats.counts)
    torch.testing.assert_close(s2.means, stats.means, rtol=1e-10, atol=1e-12)


def test_resume_after_interruption(shared_data, tmp_path, monkeypatch):
    out = tmp_path / "m"
    full = tmp_path / "full"
    args = ["--checkpoint-every", "1", "--no-save-model"]
    assert main(measure_args(shared_data, full, *args)) == 0
    # crash in pass 1, right after the checkpoint of batch 2 (of 5)
    import hf_collapse.integrations.passes as collect

    real = collect.write_checkpoint

    def write_then_crash(path, statistics, batches, tokens, fp):
        real(path, statistics, batches, tokens, fp)
        if batches == 2:
            raise KeyboardInterrupt("simulated crash")

    monkeypatch.setattr(collect, "write_checkpoint", write_then_crash)
    with pytest.raises(KeyboardInterrupt):
        main(measure_args(shared_data, out, *args))
    assert json.loads((out / "collapse" / ".checkpoint" / "latest.json").read_text())["batches"] == 2
    assert not (out / "collapse" / "metrics.json").exists()
    monkeypatch.undo()
    found = []
    real_read = collect.read_checkpoint
    monkeypatch.setattr(collect, "read_checkpoint", lambda *a: found.append(real_read(*a)) or found[-1])
    assert main(measure_args(shared_data, out, *args, "--resume")) == 0
    assert found and found[0][1] == 2  # it continued at batch 2, not from scratch
    a = json.loads((full / "collapse" / "metrics.json").read_text())
    b = json.loads((out / "collapse" / "metrics.json").read_text())
    a.pop("command"), b.pop("command")  # each names its own --output-dir (and --resume)
    assert a == b
    assert not (out / "collapse" / ".checkpoint").exists()


def test_bad_input(shared_data, tmp_path, capsys):
    empty = tmp_path / "empty.txt"
    empty.write_text("\n\n")
    model = str(shared_data / "models" / "stories260K")
    assert main(["measure", model, "--train-file", str(empty), "--no-progress"]) == 1
    assert "no labelled token" in capsys.readouterr().err
    assert main(["measure", model, "--no-progress"]) == 1
    assert "--train-file" in capsys.readouterr().err
    ds = tmp_path / "ds"
    ds.mkdir()
    (ds / "data.csv").write_text("story\nOnce upon a time\n")
    assert main(["measure", model, "--dataset", str(ds), "--no-progress"]) == 1
    assert "no column 'text'" in capsys.readouterr().err
    assert main(["measure", model, "--train-file", str(tmp_path / "missing.txt")]) == 1
    assert "no text file" in capsys.readouterr().err


def test_measured_folder_is_reused(shared_data, tmp_path, capsys):
    first = tmp_path / "first"
    assert main(measure_args(shared_data, first)) == 0
    capsys.readouterr()
    again = tmp_path / "again"  # measuring the measured folder itself: the stored statistics answer
    args = measure_args(shared_data, again)
    args[1] = str(first)
    assert main(args) == 0
    out = capsys.readouterr().out
    assert "skipping the collection pass" in out
    a = json.loads((first / "collapse" / "metrics.json").read_text())
    b = json.loads((again / "collapse" / "metrics.json").read_text())
    assert {k: a[k] for k in MEASURE_KEYS if k in a} == {k: b[k] for k in MEASURE_KEYS if k in b}
    # a different budget is a different request: measured again
    args2 = measure_args(shared_data, tmp_path / "other")
    args2[1] = str(first)
    args2[args2.index("--max-tokens") + 1] = "2000"
    assert main(args2) == 0
    assert "skipping" not in capsys.readouterr().out
    assert json.loads((tmp_path / "other" / "collapse" / "metrics.json").read_text())["num_tokens"] == 2000


def test_layerwise_run_hashes_the_weights_once(shared_data, tmp_path, monkeypatch):
    import hf_collapse.integrations.folder as folder
    import hf_collapse.integrations.weights_hash as weights_hash

    calls = []
    real = weights_hash.weights_sha256

    def counting(x):
        calls.append(type(x).__name__)
        return real(x)

    monkeypatch.setattr(weights_hash, "weights_sha256", counting)
    monkeypatch.setattr(folder, "weights_sha256", counting)
    out = tmp_path / "layers"
    assert main(measure_args(shared_data, out, "--layers", "model.layers.1", "model.layers.3", "--no-reuse")) == 0
    assert len(calls) == 1, calls  # the record is built once; every measurement writes its hash
    hashes = {json.loads(p.read_text())["weights_sha256"] for p in out.glob("collapse/**/metrics.json")}
    assert len(hashes) == 1 and len(list(out.glob("collapse/**/metrics.json"))) == 3
