"""Every script in examples/ runs, on tiny settings, in a fresh process, and prints what it promises."""

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))
from conftest import free_port  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
EXAMPLES = REPO / "examples"


def run_example(name, *args, cwd, env=None, launcher=()):
    env = dict(env or os.environ)
    env["PYTHONPATH"] = str(REPO / "src") + os.pathsep + env.get("PYTHONPATH", "")
    env.setdefault("HF_HUB_OFFLINE", "1")
    out = subprocess.run(
        [sys.executable, *launcher, str(EXAMPLES / name), *args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert out.returncode == 0, out.stderr[-4000:]
    return out.stdout


def test_every_example_is_tested():
    tested = {"train_with_collapse_trainer.py", "layerwise.py", "evaluate_metric.py", "hub_round_trip.py"}
    assert {p.name for p in EXAMPLES.glob("*.py")} == tested


@pytest.mark.slow  # fresh Python processes
def test_trainer_example_logs_every_family_and_layer(tmp_path):
    out = run_example(
        "train_with_collapse_trainer.py", "--steps", "2", "--output-dir", str(tmp_path / "o"), cwd=tmp_path
    )
    logged = dict(line.split() for line in out.splitlines() if line.startswith("eval_"))  # "key value" lines
    for key in (
        "eval_nc1_cdnv",
        "eval_nc2_equinorm_cov",
        "eval_gnc2_uniformity_cov",
        "eval_nc3_duality_mean",
        "eval_unc3_duality_cov",
        "eval_nc4_agreement",
        "eval_ncc_accuracy",
        "eval_transformer_h_0_nc1_cdnv",
        "eval_transformer_h_0_ncc_accuracy",
    ):
        assert key in logged, key
    assert float(logged["eval_nc1_cdnv"]) > 0 and 0 <= float(logged["eval_nc4_agreement"]) <= 1
    assert "eval_transformer_h_0_nc3_duality_mean" not in logged  # inner layers have no classifier


@pytest.mark.slow  # fresh Python processes
def test_trainer_example_under_torchrun_two_processes(tmp_path):
    """The launch line of docs/trainer.md: torchrun, 2 processes, gloo on CPU (use_cpu=True)."""
    launcher = ("-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", str(free_port()))
    out = run_example(
        "train_with_collapse_trainer.py",
        "--steps",
        "2",
        "--output-dir",
        str(tmp_path / "o"),
        cwd=tmp_path,
        launcher=launcher,
    )
    lines = [line.split() for line in out.splitlines() if line.startswith("eval_")]
    assert len(lines) == len({k for k, _ in lines}) >= 20  # printed once (by process 0), every key
    assert float(dict(lines)["eval_nc1_cdnv"]) > 0


@pytest.mark.slow  # fresh Python processes
def test_layerwise_example_on_the_pretrained_model(tmp_path, shared_data):
    out = run_example("layerwise.py", cwd=tmp_path)
    lines = out.strip().splitlines()
    rows = [line.split() for line in lines[next(i for i, x in enumerate(lines) if x.startswith("module")) + 1 :]]
    assert [r[0] for r in rows] == ["transformer.h.0", "transformer.h.1", "transformer.h.2", "lm_head"]
    assert all(r[1] == "4000" for r in rows)
    # stories260K, a trained Llama: within-class variability falls with depth (measured: 27.6 -> 0.023)
    out = run_example(
        "layerwise.py",
        "--model",
        str(shared_data / "models" / "stories260K"),
        "--text-file",
        str(shared_data / "tinystories" / "validation-head.txt"),
        "--max-tokens",
        "5000",
        cwd=tmp_path,
    )
    rows = [line.split() for line in out.strip().splitlines() if line.startswith(("model.", "lm_head"))]
    assert len(rows) == 6 and rows[-1][0] == "lm_head"
    cdnv = [float(r[2]) for r in rows]
    assert cdnv[-1] < cdnv[0] / 100, cdnv


@pytest.mark.slow  # fresh Python processes
def test_evaluate_example_configurations_agree(tmp_path):
    out = run_example(
        "evaluate_metric.py", "--tokens", "1024", "--statistics-file", str(tmp_path / "s.safetensors"), cwd=tmp_path
    )
    lines = {line.split(":", 1)[0].strip(): line.split(":", 1)[1] for line in out.strip().splitlines()}
    feats = json.loads(lines["features configuration"].replace("'", '"'))
    stats = json.loads(lines["statistics configuration"].replace("'", '"'))
    assert feats.keys() == stats.keys() and "nc3_duality_mean" in feats and feats["nc1_cdnv"] > 0
    for k in feats:
        assert stats[k] == pytest.approx(feats[k], rel=1e-5, abs=1e-6), k
    assert (tmp_path / "s.safetensors").is_file()


@pytest.mark.slow  # fresh Python processes
def test_hub_round_trip_example_local_folder(tmp_path):
    env = {k: v for k, v in os.environ.items() if k != "HF_ENDPOINT"}
    out = run_example("hub_round_trip.py", "--output-dir", str(tmp_path / "m"), cwd=tmp_path, env=env)
    assert "weights=verified" in out and "nc1_cdnv" in out and "pushed" not in out
    assert (tmp_path / "m" / "collapse" / "statistics.safetensors").is_file()


@pytest.mark.slow  # fresh Python processes
def test_hub_round_trip_example_against_a_hub(tmp_path, hub_env):
    out = run_example(
        "hub_round_trip.py",
        "--output-dir",
        str(tmp_path / "m"),
        "--repo-id",
        "tester/tiny-measured",
        cwd=tmp_path,
        env={**hub_env.env, "HF_HUB_OFFLINE": "0"},
    )
    assert "pushed to" in out and "tester/tiny-measured" in out and "weights=verified" in out
    files = hub_env.hub.files("tester/tiny-measured")
    assert {"model.safetensors", "collapse/statistics.safetensors", "collapse/metrics.json", "README.md"} <= set(files)


@pytest.mark.slow  # fresh Python processes
def test_readme_python_snippets_run(tmp_path, shared_data):
    """Every ```python block of the README runs as shown (with ../shared/data resolved) and prints its measures."""
    blocks = re.findall(r"```python\n(.*?)```", (REPO / "README.md").read_text(), flags=re.S)
    expected = ["nc1_cdnv", "eval_unc3_duality_cov", "nc3_duality_mean"]  # measure, Trainer, evaluate
    assert len(blocks) == len(expected)
    env = {**os.environ, "PYTHONPATH": str(REPO / "src"), "HF_HUB_OFFLINE": "1"}
    for code, key in zip(blocks, expected):
        code = code.replace("../shared/data", str(shared_data))
        out = subprocess.run(
            [sys.executable, "-c", code], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600
        )
        assert out.returncode == 0, out.stderr[-3000:]
        assert key in out.stdout, (key, out.stdout[-2000:])


def test_readme_quick_start_and_ci_agree():
    readme = (REPO / "README.md").read_text()
    assert len(readme.splitlines()) <= 150  # a task guide; the reference is the docs site
    demo = "bash scripts/setup.sh && .venv/bin/hf-collapse demo"
    tests = "bash scripts/setup.sh && .venv/bin/python -m pytest"
    assert demo in readme and tests in readme and "source .venv/bin/activate" in readme
    ci = (REPO / ".ci" / "run").read_text()
    assert tests in ci and "mkdocs build --strict" in ci
    for link in re.findall(r"\]\((docs/[^)#]+)", readme):  # every docs page the README links to exists
        assert (REPO / link).is_file(), link


def test_gpu_check_rows_run_on_the_cpu_at_tiny_sizes():
    """scripts/gpu_check.py runs on a lent GPU only (a few device-minutes): its sweep and collection rows
    run here on tiny sizes first, so the one GPU run does not end in a typo."""
    import argparse
    import importlib.util

    import torch

    spec = importlib.util.spec_from_file_location("gpu_check", REPO / "scripts" / "gpu_check.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    args = argparse.Namespace(
        classes=[300],
        dims=[16],
        tile_sizes=[64, 128],
        width=32,
        depth=2,
        vocab=300,
        batches=2,
        batch_size=2,
        seq_len=16,
    )
    cpu = torch.device("cpu")
    rows = mod.sweep_rows(args, cpu, lambda: None) + mod.collection_rows(args, cpu, lambda: None)
    names = [r[0] for r in rows]
    assert sum("pairwise set C=300 d=16" in n for n in names) == 2 and sum("(best)" in n for n in names) == 1
    assert any("statistics on the CPU" in n for n in names) and any("collect_nc4" in n for n in names)
    assert all(len(r) == 3 and all(isinstance(x, str) for x in r) for r in rows)
