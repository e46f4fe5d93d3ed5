"""The study: appendix-B configuration, one training run logging NC metrics, train_clm.py on real text, the demo."""

import importlib.util
import json
from pathlib import Path

import pytest
import torch

from hf_collapse import CollapseStatistics, cli
from hf_collapse.study.analysis import read_csv_rows
from hf_collapse.study.demo import run_demo
from hf_collapse.study.train import StudyArguments, gpt_neo_config, prepare_data, run_name, train_one

pytestmark = pytest.mark.slow  # training, processes, the local Hub server or killed processes

REPO = Path(__file__).resolve().parents[1]


def test_gpt_neo_config_follows_appendix_b():
    cfg = gpt_neo_config(64, 3, 512, num_heads=4)
    assert cfg.attention_layers == ["global", "local", "global"]
    assert cfg.window_size == 256 and cfg.activation_function == "gelu_new"
    assert cfg.attention_dropout == cfg.embed_dropout == cfg.resid_dropout == 0.0
    assert cfg.hidden_size == 64 and cfg.num_layers == 3 and cfg.vocab_size == 512
    assert gpt_neo_config(1024, 12, 50257).attention_layers == ["global", "local"] * 6
    assert gpt_neo_config(1024, 12, 50257).num_heads == 16
    with pytest.raises(ValueError, match="divide"):
        gpt_neo_config(30, 1, 512, num_heads=16)
    with pytest.raises(ValueError, match="depth"):
        gpt_neo_config(64, 0, 512)


def test_run_name_scheme():
    assert run_name(1024, 12, 10, 0.0005) == "TinyStories-12x1024_10L"
    assert run_name(768, 2, 1, 0.1, seed=7) == "TinyStories-2x768_1H7"
    # seed replicas: the data-order seed is named when it differs from the init seed
    assert run_name(768, 2, 1, 0.0005, seed=0, data_seed=4) == "TinyStories-2x768_1Ld4"
    assert run_name(768, 2, 1, 0.0005, seed=4, data_seed=4) == "TinyStories-2x768_1L4"
    assert run_name(64, 1, 3, 0.01) == "TinyStories-1x64_3W0.01"


def test_train_one_logs_nc_metrics_and_saves_measured_folder(tmp_path):
    args = StudyArguments(
        width=32,
        depth=2,
        epochs=1,
        num_heads=4,
        builtin_stories=300,
        block_size=32,
        batch_size=16,
        learning_rate=3e-3,
        output_dir=str(tmp_path),
        eval_strategy="steps",
    )
    row = train_one(args, training_overrides={"max_steps": 6, "eval_steps": 3})
    folder = tmp_path / "TinyStories-2x32_1L"
    assert row["path"] == str(folder)
    info = json.loads((folder / "run.json").read_text())
    evals = [e for e in info["log_history"] if "eval_loss" in e]
    assert len(evals) >= 2  # steps 3 and 6 (+ the final evaluate)
    for e in evals:  # NC metrics logged beside eval_loss at each evaluation
        assert {"eval_nc1_cdnv", "eval_nc4_agreement", "eval_nc3_duality_mean"} <= set(e)
        assert e["eval_nc1_cdnv"] > 0
    metrics = json.loads((folder / "collapse" / "metrics.json").read_text())
    assert metrics["eval_loss"] == pytest.approx(row["val_loss"]) and metrics["nc1_cdnv"] == pytest.approx(
        row["nc1_cdnv"]
    )
    stats, extras = CollapseStatistics.load_with_extras(folder / "collapse" / "statistics.safetensors")
    assert stats.dim == 32 and stats.num_classes == 512 and "per_class.cdnv_row_mean" in extras
    assert (folder / "config.json").is_file() and (folder / "tokenizer.json").is_file()


def test_train_clm_script_on_real_text(tmp_path, shared_data, capfd):
    """train_clm.py on the TinyStories sample with the GPT-2 tokenizer, tiny budget; without --progress
    it prints flushed progress lines (first step, then every minute, last step), no tqdm bars."""
    spec = importlib.util.spec_from_file_location("train_clm", REPO / "scripts" / "train_clm.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    ts = shared_data / "tinystories"
    rc = mod.main(
        [
            "--train_file",
            str(ts / "train-head.txt"),
            "--validation_file",
            str(ts / "validation-head.txt"),
            "--tokenizer",
            str(shared_data / "tokenizers" / "gpt2"),
            "--max_train_stories",
            "60",
            "--max_eval_blocks",
            "8",
            "--width",
            "32",
            "--depth",
            "1",
            "--num_heads",
            "4",
            "--block_size",
            "64",
            "--batch_size",
            "8",
            "--epochs",
            "1",
            "--output_dir",
            str(tmp_path),
            "--measure_max_tokens",
            "3000",
            "--nc4_max_tokens",
            "500",
            "--eval_strategy",
            "no",
        ]
    )
    assert rc == 0
    err = capfd.readouterr().err
    lines = [line for line in err.splitlines() if line.startswith("TinyStories-1x32_1L: step ")]
    assert lines[0].startswith("TinyStories-1x32_1L: step 1/") and "left" in lines[0], err[-2000:]
    total = lines[0].split("/")[1].split()[0]
    assert lines[-1].startswith(f"TinyStories-1x32_1L: step {total}/{total} (epoch 1.00), ")
    assert "it/s]" not in err  # no tqdm bar
    assert f"TinyStories-1x32_1L: evaluated at step {total}: eval_loss " in err  # the final evaluation
    assert "TinyStories-1x32_1L: measuring the trained model" in err
    folder = tmp_path / "TinyStories-1x32_1L"
    metrics = json.loads((folder / "collapse" / "metrics.json").read_text())
    assert metrics["num_classes"] == 50257 and 100 < metrics["num_classes_present"] < 3000
    assert metrics["num_tokens"] == 3000
    assert 5.0 < metrics["eval_loss"] < 11.0  # ln(50257) = 10.8 at chance
    info = json.loads((folder / "run.json").read_text())
    assert any("eval_nc1_cdnv" in e for e in info["log_history"])


def test_prepare_data_rejects_missing_file(tmp_path):
    with pytest.raises(FileNotFoundError):
        prepare_data(StudyArguments(train_file=str(tmp_path / "nope.txt"), tokenizer="unused"))


def test_demo_end_to_end_reduced_budget(tmp_path, capsys):
    out = tmp_path / "demo"
    rc = cli.main(
        [
            "demo",
            "--output-dir",
            str(out),
            "--sizes",
            "1x16,1x32,2x32",
            "--epochs",
            "1,2",
            "--stories",
            "300",
            "--block-size",
            "32",
            "--permutations",
            "200",
        ]
    )
    assert rc == 0
    text = capsys.readouterr().out
    assert "TinyStories-2x32_2H" in text and "directional measures" in text and str(out.resolve()) in text
    report = (out / "report.md").read_text()
    assert "| nc1_cdnv |" in report and "![nc_vs_val_loss](nc_vs_val_loss.png)" in report
    rows = (out / "runs.csv").read_text().strip().splitlines()
    assert len(rows) == 1 + 6
    header = rows[0].split(",")
    assert {"width", "depth", "epochs", "val_loss", "nc1_cdnv", "nc4_agreement"} <= set(header)
    pngs = list(out.glob("*.png"))
    assert len(pngs) >= 2 and all(p.stat().st_size > 5000 for p in pngs)
    assert len(list((out / "runs").iterdir())) == 6


def test_coincident_classes_are_left_out_of_the_measures():
    # real text: two tokens seen only after the same contexts get the same mean (CDNV infinite);
    # collection, Trainer and study measure with coincident="exclude" and count them
    from hf_collapse import measure_collapse

    g = torch.Generator().manual_seed(0)
    stats = CollapseStatistics(10, 4)
    h = torch.randn(30, 4, generator=g)
    y = torch.arange(30) % 8
    stats.update(h, y)
    same = torch.randn(2, 4, generator=g)
    stats.update(same, torch.tensor([8, 8]))  # classes 8 and 9: the same two contexts each
    stats.update(same, torch.tensor([9, 9]))
    with pytest.raises(ValueError, match="identical"):
        measure_collapse(stats)
    res = measure_collapse(stats, coincident="exclude")
    assert res.info["num_classes_coincident"] == 2
    clean = CollapseStatistics(10, 4)
    clean.update(h, y)
    ref = measure_collapse(clean)
    assert res["nc1_cdnv"] == pytest.approx(ref["nc1_cdnv"], rel=1e-5) and 0 < res["nc1_cdnv"] < 100


def test_demo_seeds_table1_design(tmp_path, capsys):
    """--seeds 4 on a tiny size: 4 replicas of one configuration, distinct data seeds, fixed init seed."""
    out = tmp_path / "seeds"
    rc = cli.main(
        [
            "demo",
            "--output-dir",
            str(out),
            "--seeds",
            "4",
            "--sizes",
            "1x16,2x32",
            "--epochs",
            "1,3",
            "--stories",
            "200",
            "--block-size",
            "32",
            "--permutations",
            "500",
            "--seed",
            "3",
        ]
    )
    assert rc == 0
    text = capsys.readouterr().out
    assert "model 1/4: 1x16, 1 epoch, init seed 3, data seed 3" in text and "model 4/4:" in text
    assert "first size (1x16)" in text and "| NC4 | Classifier Agreement |" in text
    rows = read_csv_rows(out / "runs.csv")
    assert len(rows) == 4
    assert {(r["width"], r["depth"], r["epochs"], r["weight_decay"]) for r in rows} == {(16, 1, 1.0, 0.0005)}
    assert sorted(r["data_seed"] for r in rows) == [3, 4, 5, 6] and {r["seed"] for r in rows} == {3}
    assert len({r["val_loss"] for r in rows}) == 4  # the data order alone changes the model
    corr = read_csv_rows(out / "correlations.csv")
    assert {c["metric"] for c in corr} >= {"nc1_cdnv", "nc4_agreement"}
    assert all(c["n"] == 4 and c["num_permutations"] == 24 and 0 < c["p_value"] <= 1 for c in corr)  # exact: 4!
    report = (out / "report.md").read_text()
    assert "Design: seed replicas: 4 runs of one configuration (1x16" in report
    assert "| 0.490278 | **0.0001** |" in report and "![nc_vs_val_loss](nc_vs_val_loss.png)" in report
    assert (out / "nc_vs_val_loss.png").stat().st_size > 5000 and not list(out.glob("scaling_*.png"))
    # --seed-init varies the initialisation too; --quiet prints no per-model lines
    out2 = tmp_path / "init"
    assert (
        cli.main(
            [
                "demo",
                "--output-dir",
                str(out2),
                "--seeds",
                "3",
                "--seed-init",
                "--sizes",
                "1x16",
                "--epochs",
                "1",
                "--stories",
                "200",
                "--block-size",
                "32",
                "--permutations",
                "50",
                "--quiet",
            ]
        )
        == 0
    )
    assert "model 1/3" not in capsys.readouterr().out
    rows = read_csv_rows(out2 / "runs.csv")
    assert [(r["seed"], r["data_seed"]) for r in rows] == [(0, 0), (1, 1), (2, 2)]
    with pytest.raises(ValueError, match="at least 3 replicas"):
        run_demo(tmp_path / "x", "1x16", "1", seeds=2)


def test_demo_with_fewer_than_three_runs_keeps_them(tmp_path, capsys):
    """``--sizes 1x16`` x 2 lengths = 2 runs: the user is told before training; runs.csv and a report
    (fits marked not available) are written instead of failing after training."""
    out = tmp_path / "demo"
    rc = cli.main(
        [
            "demo",
            "--output-dir",
            str(out),
            "--sizes",
            "1x16",
            "--epochs",
            "1,2",
            "--stories",
            "200",
            "--block-size",
            "32",
            "--permutations",
            "50",
        ]
    )
    assert rc == 0
    text = capsys.readouterr().out
    assert text.index("too few for the fits") < text.index("model 1/2")
    assert "fits not available" in text and "needs at least 3 runs, got 2" in text
    report = (out / "report.md").read_text()
    assert "fits not available" in report and "TinyStories-1x16" in report
    assert len((out / "runs.csv").read_text().strip().splitlines()) == 1 + 2
    assert len([p for p in (out / "runs").iterdir() if (p / "collapse" / "metrics.json").is_file()]) == 2


# ---------------------------------------------------------------------------------------------
# the demo's bookkeeping, with training replaced by a fake (seconds, no model)


@pytest.fixture
def fake_training(monkeypatch):
    """prepare_data and train_one replaced: a row per run whose loss falls with size and training, and
    a run folder; the calls are recorded."""
    from types import SimpleNamespace

    from hf_collapse.study import train

    calls = []

    def prepare_data(args):
        calls.append(("data", args.train_file, args.builtin_stories))
        tokens = SimpleNamespace(num_tokens=1000)
        return SimpleNamespace(
            source=f"fake {args.train_file or 'built-in'}", train=tokens, validation=tokens, tokenizer=[0] * 512
        )

    def train_one(args, data, progress_every=None):
        calls.append(("train", args.depth, args.width, args.epochs, args.seed, args.data_seed))
        name = train.run_name(args.width, args.depth, args.epochs, args.weight_decay, args.seed, args.data_seed)
        folder = Path(args.output_dir) / name
        (folder / "collapse").mkdir(parents=True, exist_ok=True)
        (folder / "collapse" / "metrics.json").write_text("{}")
        size = args.depth * args.width
        loss = 5.0 - 0.01 * size - 0.1 * args.epochs + 0.001 * (args.data_seed or 0)
        return {
            "name": name,
            "width": args.width,
            "depth": args.depth,
            "epochs": args.epochs,
            "weight_decay": args.weight_decay,
            "seed": args.seed,
            "data_seed": args.data_seed,
            "num_parameters": 100 * size,
            "val_loss": loss,
            "nc1_cdnv": 10.0**loss,
            "nc4_agreement": 1.0 / loss,
        }

    monkeypatch.setattr(train, "prepare_data", prepare_data)
    monkeypatch.setattr(train, "train_one", train_one)
    return calls


def _demo(out, *extra):
    return cli.main(["demo", "--output-dir", str(out), "--permutations", "20", *extra])


def test_demo_refuses_a_folder_holding_another_design(tmp_path, capsys, fake_training):
    out = tmp_path / "demo"
    assert _demo(out, "--sizes", "1x16,1x32,2x32", "--epochs", "1") == 0
    assert json.loads((out / "demo.json").read_text())["runs"][0] == [1, 16, 1.0, 0, None]
    n = len(fake_training)
    assert _demo(out, "--sizes", "1x16,1x32,2x32", "--epochs", "1") == 0  # the same design: trained again
    assert len(fake_training) == 2 * n
    capsys.readouterr()
    # another corpus, grid or design into the same folder: refused before any data is read or model trained
    for other in (
        ["--sizes", "1x16,1x32,2x32", "--epochs", "1", "--stories", "99"],
        ["--sizes", "1x16,1x32,2x32", "--epochs", "1", "--train-file", str(tmp_path / "t.txt"), "--tokenizer", "x"],
        ["--sizes", "1x16", "--seeds", "3"],
    ):
        assert _demo(out, *other) == 1
        err = capsys.readouterr().err
        assert "holds another demo design (demo.json: " in err and "pass another --output-dir" in err
    assert len(fake_training) == 2 * n
    # a demo folder from before the record: refused too
    (out / "demo.json").unlink()
    assert _demo(out, "--sizes", "1x16,1x32,2x32", "--epochs", "1") == 1
    assert "without a design record" in capsys.readouterr().err


def test_demo_one_size_cannot_tell_whether_loss_falls_with_size(tmp_path, capsys, fake_training):
    assert _demo(tmp_path / "d", "--sizes", "1x16", "--epochs", "1,2,3") == 0
    text = capsys.readouterr().out
    assert "validation loss falls with model size: cannot be told (one size trained); with training: yes" in text
    assert (
        "falls with model size at every training length: **cannot be told" in (tmp_path / "d" / "report.md").read_text()
    )


def test_demo_time_left_only_for_replicas_and_progress_flushed(tmp_path, monkeypatch, fake_training):
    import builtins

    printed = []
    real_print = builtins.print
    monkeypatch.setattr(
        builtins, "print", lambda *a, **k: printed.append((" ".join(map(str, a)), k)) or real_print(*a, **k)
    )
    assert _demo(tmp_path / "grid", "--sizes", "1x16,2x32", "--epochs", "1,3") == 0
    progress = [(t, k) for t, k in printed if t.startswith(("model ", "  TinyStories", "data: "))]
    assert len(progress) == 1 + 2 * 4 and all(k.get("flush") for _, k in progress)  # seen at once through a pipe
    assert not any("s left" in t for t, _ in progress)  # a grid's earlier runs do not predict the later ones
    printed.clear()
    assert _demo(tmp_path / "seeds", "--sizes", "1x16", "--seeds", "3") == 0
    assert [("s left" in t) for t, _ in printed if t.startswith("model ")] == [False, True, True]
