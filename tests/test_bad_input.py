"""Bad input through every public entry point: the Python API (statistics, measures, collection,
measure_model, load_measured, push_measured, analyze, the Trainer arguments), the evaluate module and
every CLI command. Each case asserts the exception type and a message naming what was wrong; CLI
cases assert exit code 1 and one stderr line (``hf-collapse CMD: error: ...``), never a traceback.
"""

import json
import math
import pickle
import struct
from pathlib import Path

import numpy as np
import pytest
import torch

from hf_collapse import CollapseArguments, CollapseStatistics, measure_collapse
from hf_collapse.cli import main

REPO = Path(__file__).resolve().parents[1]


# ------------------------------------------------------------------------------------------ fixtures
def _stats(C=6, d=4, n=60, seed=0):
    g = torch.Generator().manual_seed(seed)
    s = CollapseStatistics(C, d)
    y = torch.arange(n) % C
    s.update(3 * torch.randn(C, d, generator=g)[y] + torch.randn(n, d, generator=g), y)
    return s


def _tiny_model(vocab=32, d=8):
    from transformers import GPTNeoConfig, GPTNeoForCausalLM

    torch.manual_seed(0)
    cfg = GPTNeoConfig(
        vocab_size=vocab,
        hidden_size=d,
        num_layers=1,
        num_heads=2,
        attention_types=[[["global"], 1]],
        max_position_embeddings=32,
        intermediate_size=16,
    )
    return GPTNeoForCausalLM(cfg).eval()


class Pwned:  # a pickle that would leave a file behind if anything unpickled it
    def __init__(self, path):
        self.path = path

    def __reduce__(self):
        return (Path.write_text, (Path(self.path), "unpickled!"))


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """A measured folder of a tiny GPT-Neo, and variants broken in one way each."""
    from hf_collapse.integrations.hub import save_measured
    from hf_collapse.integrations.passes import measure_model

    root = tmp_path_factory.mktemp("bad_input")
    model = _tiny_model()
    ids = torch.randint(0, 32, (6, 12), generator=torch.Generator().manual_seed(1))
    report = measure_model(
        model,
        [{"input_ids": ids[:3]}, {"input_ids": ids[3:]}],
        settings=CollapseArguments(collapse_per_class=True),
        progress=False,
    )
    good = root / "good"
    save_measured(good, report, model=model, card=False)
    return {"root": root, "model": model, "ids": ids, "good": good, "report": report}


def _copy(world, name):
    import shutil

    dst = world["root"] / name
    if not dst.exists():
        shutil.copytree(world["good"], dst)
    return dst


def _metrics_path(folder):
    return folder / "collapse" / "metrics.json"


# ------------------------------------------------------------------------------------------ python cases
def c_num_classes_zero(w):
    CollapseStatistics(0, 4)


def c_dim_string(w):
    CollapseStatistics(4, "8")


def c_int_features(w):
    CollapseStatistics(4, 2).update(torch.ones(3, 2, dtype=torch.long), torch.tensor([0, 1, 2]))


def c_float_labels(w):
    CollapseStatistics(4, 2).update(torch.ones(3, 2), torch.tensor([0.0, 1.0, 2.0]))


def c_features_as_list(w):
    CollapseStatistics(4, 2).update("features", torch.tensor([0]))


def c_wrong_feature_dim(w):
    CollapseStatistics(4, 2).update(torch.ones(3, 5), torch.tensor([0, 1, 2]))


def c_labels_features_mismatch(w):
    CollapseStatistics(4, 2).update(torch.ones(3, 2), torch.tensor([0, 1]))


def c_label_out_of_range(w):
    CollapseStatistics(4, 2).update(torch.ones(3, 2), torch.tensor([0, 1, 4]))


def c_negative_label(w):
    CollapseStatistics(4, 2).update(torch.ones(3, 2), torch.tensor([0, -3, 1]))


def c_nan_features(w):
    CollapseStatistics(4, 2).update(torch.tensor([[0.0, math.nan], [1.0, 1.0]]), torch.tensor([0, 1]))


def c_inf_features(w):
    CollapseStatistics(4, 2).update(torch.tensor([[0.0, math.inf], [1.0, 1.0]]), torch.tensor([0, 1]))


def c_merge_other_classes(w):
    _stats(C=6).merge(_stats(C=5))


def c_merge_not_statistics(w):
    _stats().merge({"counts": 1})


def c_load_missing(w):
    CollapseStatistics.load(w["root"] / "nope.safetensors")


def c_load_truncated(w):
    src = (w["good"] / "collapse" / "statistics.safetensors").read_bytes()
    p = w["root"] / "truncated.safetensors"
    p.write_bytes(src[: len(src) // 2])
    CollapseStatistics.load(p)


def c_load_foreign_safetensors(w):
    from safetensors.torch import save_file

    p = w["root"] / "foreign.safetensors"
    save_file({"weight": torch.zeros(3, 3)}, p)
    CollapseStatistics.load(p)


def c_load_pickle(w):
    marker = w["root"] / "unpickled.txt"
    p = w["root"] / "pickled.safetensors"
    p.write_bytes(pickle.dumps(Pwned(marker)))
    try:
        CollapseStatistics.load(p)
    finally:
        assert not marker.exists(), "the file was unpickled"


def c_load_malformed_header(w):
    p = w["root"] / "header.safetensors"
    head = b"{not json"
    p.write_bytes(struct.pack("<Q", len(head)) + head)
    CollapseStatistics.load(p)


def c_measure_empty(w):
    measure_collapse(CollapseStatistics(4, 2))


def c_measure_one_class(w):
    s = CollapseStatistics(4, 2)
    s.update(torch.randn(5, 2), torch.zeros(5, dtype=torch.long))
    measure_collapse(s)


def c_measure_coincident(w):
    s = CollapseStatistics(4, 2)
    h = torch.tensor([[1.0, 2.0], [3.0, 1.0]])
    s.update(h, torch.tensor([0, 0]))
    s.update(h, torch.tensor([1, 1]))
    s.update(torch.tensor([[5.0, 5.0], [6.0, 4.0]]), torch.tensor([2, 2]))
    measure_collapse(s)


def c_measure_weights_shape(w):
    measure_collapse(_stats(), weights=torch.zeros(5, 4))


def c_measure_weights_nan(w):
    W = torch.zeros(6, 4)
    W[0, 0] = math.nan
    measure_collapse(_stats(), weights=W)


def c_measure_weights_int(w):
    measure_collapse(_stats(), weights=torch.zeros(6, 4, dtype=torch.long))


def c_measure_bias_shape(w):
    measure_collapse(_stats(), weights=torch.randn(6, 4), bias=torch.zeros(5))


def c_measure_not_statistics(w):
    measure_collapse(np.zeros((6, 4)))


def c_measure_model_path(w):
    from hf_collapse.integrations.passes import measure_model

    measure_model("./models/my-model", [{"input_ids": w["ids"]}])


def c_collect_tuple_batches(w):
    from hf_collapse.integrations.passes import collect_statistics

    collect_statistics(w["model"], [(w["ids"],)], progress=False)


def c_collect_bad_task(w):
    from hf_collapse.integrations.passes import collect_statistics

    collect_statistics(
        w["model"], [{"input_ids": w["ids"]}], settings=CollapseArguments(collapse_task="summarization"), progress=False
    )


def c_collect_bad_module(w):
    from hf_collapse.integrations.passes import collect_statistics

    collect_statistics(
        w["model"],
        [{"input_ids": w["ids"]}],
        settings=CollapseArguments(collapse_modules="transformer.h.9"),
        progress=False,
    )


def c_collect_zero_budget(w):
    from hf_collapse.integrations.passes import collect_statistics

    collect_statistics(
        w["model"], [{"input_ids": w["ids"]}], settings=CollapseArguments(collapse_max_tokens=0), progress=False
    )


def c_collect_empty_data(w):
    from hf_collapse.integrations.passes import collect_statistics

    collect_statistics(w["model"], [], progress=False)


def c_collect_all_ignored(w):
    from hf_collapse.integrations.passes import collect_statistics

    ids = w["ids"]
    collect_statistics(w["model"], [{"input_ids": ids, "labels": torch.full_like(ids, -100)}], progress=False)


def c_collect_zero_batches(w):
    from hf_collapse.integrations.passes import collect_statistics

    collect_statistics(w["model"], [{"input_ids": w["ids"]}], max_batches=0, progress=False)


def c_collect_checkpoint_every_alone(w):
    from hf_collapse.integrations.passes import collect_statistics

    collect_statistics(w["model"], [{"input_ids": w["ids"]}], checkpoint_every=2, progress=False)


def c_load_measured_typo_path(w):
    from hf_collapse.integrations.hub import load_measured

    load_measured(str(w["root"] / "goood"), load_model=False)


def c_load_measured_relative_typo(w):
    from hf_collapse.integrations.hub import load_measured

    load_measured("./runs/typo-folder", load_model=False)


def c_load_measured_no_collapse(w):
    from hf_collapse.integrations.hub import load_measured

    (w["root"] / "plain").mkdir(exist_ok=True)
    load_measured(w["root"] / "plain", load_model=False)


def c_load_measured_bad_json(w):
    from hf_collapse.integrations.hub import load_measured

    f = _copy(w, "badjson")
    _metrics_path(f).write_text('{"nc1_cdnv": 1.0,')
    load_measured(f, load_model=False)


def c_load_measured_json_list(w):
    from hf_collapse.integrations.hub import load_measured

    f = _copy(w, "jsonlist")
    _metrics_path(f).write_text("[1, 2]")
    load_measured(f, load_model=False)


def c_load_measured_string_measure(w):
    from hf_collapse.integrations.hub import load_measured

    f = _copy(w, "strmeasure")
    m = json.loads(_metrics_path(f).read_text())
    m["nc1_cdnv"] = "small"
    _metrics_path(f).write_text(json.dumps(m))
    load_measured(f, load_model=False)


def c_load_measured_inconsistent(w):
    from hf_collapse.integrations.hub import load_measured

    f = _copy(w, "inconsistent")
    m = json.loads(_metrics_path(f).read_text())
    m["num_tokens"] += 1
    _metrics_path(f).write_text(json.dumps(m))
    load_measured(f, load_model=False)


def c_load_measured_other_weights(w):
    from hf_collapse.integrations.hub import load_measured

    f = _copy(w, "otherweights")
    other = _tiny_model()
    with torch.no_grad():
        other.lm_head.weight.add_(1.0)
    other.save_pretrained(f)
    load_measured(f)


def c_load_measured_bad_name(w):
    from hf_collapse.integrations.hub import load_measured

    load_measured(w["good"], name="../escape", load_model=False)


def c_push_bad_repo_id(w):
    from hf_collapse.integrations.hub import push_measured

    push_measured(w["good"], "not a repo id!")


def c_push_missing_folder(w):
    from hf_collapse.integrations.hub import push_measured

    push_measured(w["root"] / "gone", "user/repo")


def c_save_measured_not_statistics(w):
    from hf_collapse.integrations.hub import save_measured

    save_measured(w["root"] / "s", {"counts": 1}, model=w["model"], card=False)


def c_analyze_no_runs(w):
    from hf_collapse.study.analysis import analyze

    analyze([], w["root"] / "a")


def c_analyze_two_runs(w):
    from hf_collapse.study.analysis import analyze

    analyze(
        [{"name": "a", "val_loss": 1.0, "nc1_cdnv": 1.0}, {"name": "b", "val_loss": 2.0, "nc1_cdnv": 2.0}],
        w["root"] / "a2",
    )


def c_collect_runs_missing(w):
    from hf_collapse.study.analysis import collect_runs

    collect_runs([w["root"] / "no-runs-here"])


def c_trainer_args_dtype(w):
    from hf_collapse import CollapseArguments

    CollapseArguments(collapse_dtype="half")


def c_trainer_args_task(w):
    from hf_collapse import CollapseArguments

    CollapseArguments(collapse_task="translation")


def c_trainer_args_measures(w):
    from hf_collapse import CollapseArguments

    CollapseArguments(collapse_measures=["nc9_magic"])


def c_trainer_collapse_args_dict(w, tmp_path):
    from transformers import TrainingArguments

    from hf_collapse import CollapseTrainer

    args = TrainingArguments(output_dir=str(tmp_path), use_cpu=True, report_to=[])
    CollapseTrainer(model=w["model"], args=args, collapse_args={"collapse_k": 2})


def _metric(tmp_path):
    import evaluate

    return evaluate.load(str(REPO / "metrics" / "neural_collapse"), cache_dir=str(tmp_path / "arrow"))


def c_metric_shape_mismatch(w, tmp_path):
    _metric(tmp_path).compute(features=np.zeros((6, 4), np.float32), labels=np.zeros(5, np.int64))


def c_metric_float_labels(w, tmp_path):
    _metric(tmp_path).compute(features=np.zeros((3, 4), np.float32), labels=np.zeros(3, np.float32))


def c_metric_all_ignored(w, tmp_path):
    _metric(tmp_path).compute(features=np.ones((3, 4), np.float32), labels=np.full(3, -100))


def c_metric_nan(w, tmp_path):
    h = np.random.default_rng(0).standard_normal((6, 4)).astype(np.float32)
    h[0, 0] = np.nan
    _metric(tmp_path).compute(features=h, labels=np.array([0, 1, 2, 0, 1, 2]))


CASES = [
    (c_num_classes_zero, ValueError, "num_classes must be a positive int"),
    (c_dim_string, ValueError, "dim must be a positive int"),
    (c_int_features, TypeError, "features must be a floating-point tensor"),
    (c_float_labels, TypeError, "labels must be an integer tensor"),
    (c_features_as_list, TypeError, "features must be a torch.Tensor or numpy array"),
    (c_wrong_feature_dim, ValueError, "dim|dimension"),
    (c_labels_features_mismatch, ValueError, "labels|shape"),
    (c_label_out_of_range, ValueError, r"\[0, 4\)|range|num_classes"),
    (c_negative_label, ValueError, r"\[0, 4\)|range|-100"),
    (c_nan_features, ValueError, "NaN or infinite"),
    (c_inf_features, ValueError, "NaN or infinite"),
    (c_merge_other_classes, ValueError, r"cannot merge statistics of shape \(C=5, d=4\)"),
    (c_merge_not_statistics, TypeError, "can only merge CollapseStatistics"),
    (c_load_missing, FileNotFoundError, "no statistics file at"),
    (c_load_truncated, ValueError, "truncated.safetensors"),
    (c_load_foreign_safetensors, ValueError, "foreign.safetensors"),
    (c_load_pickle, ValueError, "pickled.safetensors"),
    (c_load_malformed_header, ValueError, "header.safetensors"),
    (c_measure_empty, ValueError, "at least 2 classes with samples, got 0"),
    (c_measure_one_class, ValueError, "class"),
    (c_measure_coincident, ValueError, "identical"),
    (c_measure_weights_shape, ValueError, "weights have 5 rows"),
    (c_measure_weights_nan, ValueError, "weights contain NaN"),
    (c_measure_weights_int, TypeError, "weights must be a floating-point tensor"),
    (c_measure_bias_shape, ValueError, "bias must be a floating-point tensor of shape"),
    (c_measure_not_statistics, TypeError, "CollapseStatistics"),
    (c_measure_model_path, TypeError, "load it first"),
    (c_collect_tuple_batches, TypeError, "batches must be dicts"),
    (c_collect_bad_task, ValueError, "task must be .*summarization"),
    (c_collect_bad_module, ValueError, "no submodule 'transformer.h.9'"),
    (c_collect_zero_budget, ValueError, "max_tokens must be a positive int"),
    (c_collect_empty_data, ValueError, "no labelled token"),
    (c_collect_all_ignored, ValueError, "no labelled token"),
    (c_collect_zero_batches, ValueError, "max_batches must be a positive int"),
    (c_collect_checkpoint_every_alone, ValueError, "checkpoint_every needs checkpoint_path"),
    (c_load_measured_typo_path, FileNotFoundError, "not a valid Hub repo id"),
    (c_load_measured_relative_typo, FileNotFoundError, "no measured model folder at './runs/typo-folder'"),
    (c_load_measured_no_collapse, FileNotFoundError, "no collapse statistics at"),
    (c_load_measured_bad_json, ValueError, "is not valid JSON"),
    (c_load_measured_json_list, ValueError, "holds a JSON list"),
    (c_load_measured_string_measure, ValueError, "measure 'nc1_cdnv' is 'small'"),
    (c_load_measured_inconsistent, ValueError, "come from different measurements"),
    (c_load_measured_other_weights, ValueError, "do not belong to this model"),
    (c_load_measured_bad_name, ValueError, "measurement name '../escape' is invalid"),
    (c_push_bad_repo_id, ValueError, "not a valid Hub repo id"),
    (c_push_missing_folder, FileNotFoundError, "no measured model folder at"),
    (c_save_measured_not_statistics, TypeError, "report must be a CollapseReport"),
    (c_analyze_no_runs, ValueError, "no runs to analyse"),
    (c_analyze_two_runs, ValueError, "needs at least 3 runs, got 2"),
    (c_collect_runs_missing, FileNotFoundError, "no run folder at"),
    (c_trainer_args_dtype, ValueError, "dtype must be one of"),
    (c_trainer_args_task, ValueError, "collapse_task must be"),
    (c_trainer_args_measures, ValueError, "unknown collapse_measures"),
    (c_trainer_collapse_args_dict, TypeError, "collapse_args must be CollapseArguments"),
    (c_metric_shape_mismatch, ValueError, "labels shape"),
    (c_metric_float_labels, TypeError, "labels must be integers"),
    (c_metric_all_ignored, ValueError, "every label is -100"),
    (c_metric_nan, ValueError, "NaN or infinite"),
]


@pytest.mark.parametrize("case,exc,match", CASES, ids=[c[0].__name__[2:] for c in CASES])
def test_python_api_bad_input(world, tmp_path, case, exc, match):
    import inspect

    kwargs = {"tmp_path": tmp_path} if "tmp_path" in inspect.signature(case).parameters else {}
    with pytest.raises(exc, match=match) as info:
        case(world, **kwargs)
    message = str(info.value)
    assert message.strip() and "\n" not in message.strip(), f"expected a one-line message, got {message!r}"
    from hf_collapse.core.errors import is_user_error

    # the CLI would show it as one line: hf_collapse raised it on purpose
    assert is_user_error(info.value), f"{type(info.value).__name__} raised outside hf_collapse's checks"


# ------------------------------------------------------------------------------------------ CLI cases
def _cli_cases(w):
    d = REPO.parent / "shared" / "data"
    good, root = str(w["good"]), w["root"]
    bad_csv = root / "bad.csv"
    bad_csv.write_text("name,val_loss,nc1_cdnv\na,1.0,0.5\n")
    text_loss = root / "text_loss.csv"
    text_loss.write_text("name,val_loss,nc1_cdnv\na,low,0.5\nb,2.0,0.4\nc,3.0,0.3\n")
    ragged = root / "ragged.csv"
    ragged.write_text("name,val_loss,nc1_cdnv\na,1.0,0.5,9\nb,2.0,0.4\nc,3.0,0.3\n")
    binary = root / "binary.csv"
    binary.write_bytes(b"\x00\x01name\xff\xfe\n")
    empty_txt = root / "empty.txt"
    empty_txt.write_text("\n\n")
    noper = _copy(w, "no-per-class")
    s = CollapseStatistics.load(noper / "collapse" / "statistics.safetensors")
    s.save(noper / "collapse" / "statistics.safetensors")  # without the per_class.* tensors
    model = str(d / "models" / "stories260K") if d.is_dir() else good
    return [
        (["measure", str(root / "no-such-model"), "--train-file", "x.txt"], "no model folder at", "not a valid Hub"),
        (["measure", "./models/typo", "--train-file", "x.txt"], "no model folder at './models/typo'", ""),
        (["measure", str(root), "--train-file", "x.txt"], "holds no config.json", ""),
        (["measure", good], "--train-file", ""),
        (["measure", good, "--train-file", "a.txt", "--dataset", "x"], "either --train-file or --dataset", ""),
        (["measure", good, "--train-file", "a.txt", "--max-tokens", "0"], "--max-tokens must be positive", ""),
        (["measure", model, "--train-file", str(root / "missing.txt"), "--no-progress"], "no text file", ""),
        (["measure", model, "--train-file", str(empty_txt), "--no-progress"], "no labelled token", ""),
        (
            ["measure", model, "--train-file", str(empty_txt), "--block-size", "1", "--no-progress"],
            "--block-size must be at least 2",
            "",
        ),
        (
            ["measure", model, "--train-file", str(d / "tinystories" / "train-head.txt"), "--layers", "model.layer.1"],
            "has no submodule 'model.layer.1'; did you mean 'model.layers.1'",
            "",
        ),
        (
            ["measure", model, "--train-file", str(d / "tinystories"), "--no-progress"],
            "is a directory; expected a text file",
            "--train-file",
        ),
        (["measure", model, "--train-file", str(empty_txt), "--output-dir", good], "already holds a measurement", ""),
        (["push", str(root / "gone"), "user/repo"], "no measured model folder at", ""),
        (["push", good, "bad id!"], "not a valid Hub repo id", ""),
        (["push", str(root / "plain2")], None, None),  # argparse: missing REPO_ID (exit 2, checked below)
        (["tokens", str(root / "gone")], "no measured folder at", ""),
        (["tokens", str(noper)], "no per-class outputs", ""),
        (["tokens", good, "--tokenizer", "./tokenizers/gtp2"], "no tokenizer folder at './tokenizers/gtp2'", ""),
        (["analyze", str(root / "gone")], "no run folder at", ""),
        (["analyze", str(bad_csv)], "needs at least 3 runs, got 1", ""),
        (["analyze", str(text_loss)], "run 'a': val_loss is 'low', expected a number", ""),
        (["analyze", str(ragged)], "a row does not match the header", "ragged.csv"),
        (["analyze", str(binary)], "is not a UTF-8 CSV table", "binary.csv"),
        (["analyze", str(root / "missing.csv")], "no runs table at", "missing.csv"),
        (["install-metric", "--modules-cache", str(bad_csv / "sub")], "cannot write evaluate's modules cache", ""),
        (["demo", "--sizes", "0x32"], "must have positive depth and width", ""),
        (["demo", "--sizes", "big"], "LxD (L layers x width d)", ""),
        (["demo", "--epochs", "one"], "--epochs takes numbers", ""),
    ]


def test_cli_bad_input_is_one_line(world, capsys):
    """Every command: exit code 1 and exactly one stderr line naming the problem."""
    checked = 0
    for argv, match, also in _cli_cases(world):
        if match is None:
            with pytest.raises(SystemExit) as e:
                main(argv)
            assert e.value.code == 2
            capsys.readouterr()
            continue
        code = main(argv)
        err = capsys.readouterr().err.strip().splitlines()
        assert code == 1, (argv, err)
        assert len(err) == 1, (argv, err)
        assert err[0].startswith(f"hf-collapse {argv[0]}: error: ") and match in err[0], (argv, err)
        assert also in err[0] and "Traceback" not in err[0]
        checked += 1
    assert checked >= 24


def test_debug_shows_the_traceback_of_a_user_error(world, capsys):
    from hf_collapse.core.errors import UserError

    for argv in (
        ["--debug", "measure", "./models/typo", "--train-file", "x"],
        ["measure", "./models/typo", "--train-file", "x", "--debug"],
    ):
        with pytest.raises(FileNotFoundError, match="no model folder at './models/typo'") as info:
            main(argv)
        assert isinstance(info.value, UserError)


def test_a_bug_keeps_its_traceback(monkeypatch, tmp_path):
    """A TypeError that hf_collapse did not raise on purpose (here: an expression failing inside the
    command) is not turned into a 'user error' line."""
    import hf_collapse.cli.tokens as tokens

    def broken(folder, tok, **kw):
        return None + 1  # a slip, not a check

    (tmp_path / "collapse").mkdir()
    monkeypatch.setattr(tokens, "token_report", broken)
    with pytest.raises(TypeError, match="NoneType"):
        main(["tokens", str(tmp_path)])
    from hf_collapse.core.errors import is_user_error

    try:
        int("x")
    except ValueError as e:  # raised inside Python, not by hf_collapse
        assert not is_user_error(e)


def test_unknown_hub_id_offline_is_one_line(world, capsys, monkeypatch):
    """A well-formed Hub id that cannot be loaded (offline here) is one line naming it, for measure and
    tokens --tokenizer; load_measured says the same in a FileNotFoundError."""
    from huggingface_hub import constants

    from hf_collapse.integrations.hub import load_measured

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    text = world["root"] / "one.txt"
    text.write_text("Once upon a time there was a cat.\n")
    for argv, what in (
        (["measure", "nobody/no-such-model", "--train-file", str(text), "--no-progress"], "tokenizer"),
        (["tokens", str(world["good"]), "--tokenizer", "nobody/no-such-tokenizer"], "tokenizer"),
    ):
        code = main(argv)
        err = capsys.readouterr().err.strip().splitlines()
        assert code == 1 and len(err) == 1, (argv, err)
        assert f"loading the {what} 'nobody/no-such-" in err[0] and "from the Hub failed" in err[0], err
    with pytest.raises(FileNotFoundError, match="no local folder 'nobody/no-such-repo'"):
        load_measured("nobody/no-such-repo", load_model=False)
