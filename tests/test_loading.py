"""Loading what transformers loads (ModelSpec: device maps with offload, flags), the passes without the KV
cache (packed documents), the checks before any forward (context, vocabulary, tokenizer, offline Hub)
and the memory plan."""

import shutil
import time
from pathlib import Path

import pytest
import torch

from hf_collapse.cli import main
from hf_collapse.integrations.passes import measure_model
from hf_collapse.integrations.settings import CollapseArguments

SETTINGS = CollapseArguments(collapse_dtype="float64")


def _model_dir(shared_data):
    return shared_data / "models" / "stories260K"


def _batches(n=3, length=32, vocab=512):
    g = torch.Generator().manual_seed(0)
    return [{"input_ids": torch.randint(0, vocab, (2, length), generator=g)} for _ in range(n)]


def _assert_close(a, b, tol=1e-6):
    assert set(a) == set(b)
    for k in a:
        assert abs(a[k] - b[k]) <= tol * max(1.0, abs(a[k])), (k, a[k], b[k])


def test_device_map_with_disk_offload_gives_the_plain_numbers(shared_data, tmp_path):
    from transformers import AutoModelForCausalLM

    from hf_collapse.integrations.model_source import ModelSpec

    src = _model_dir(shared_data)
    batches = _batches()
    plain = measure_model(AutoModelForCausalLM.from_pretrained(src).eval(), batches, batches, SETTINGS, progress=False)
    # embeddings and tied head on disk, some layers on disk: every parameter of those is 'meta' outside forward
    device_map = {
        "model.embed_tokens": "disk",
        "model.layers.0": "cpu",
        "model.layers.1": "disk",
        "model.layers.2": "cpu",
        "model.layers.3": "cpu",
        "model.layers.4": "disk",
        "model.norm": "cpu",
        "model.rotary_emb": "cpu",
        "lm_head": "disk",
    }
    import json

    spec = ModelSpec(device_map=json.dumps(device_map), offload_folder=str(tmp_path / "offload"))
    model = spec.load(str(src), "model")
    assert spec.place(model, "cpu") is model and model.get_output_embeddings().weight.device.type == "meta"
    offloaded = measure_model(model.eval(), batches, batches, SETTINGS, progress=False)
    assert "nc3_duality_mean" in offloaded.result  # the offloaded head was read
    _assert_close(dict(plain.result), dict(offloaded.result))


def test_packed_documents_measure_as_separate_documents(shared_data):
    """DataCollatorWithFlattening's layout (one row, position ids restarting per document, the first label
    of each document -100) gives the numbers of the documents as separate rows: the passes run without
    the KV cache, so the documents do not attend to each other."""
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(_model_dir(shared_data)).eval()
    g = torch.Generator().manual_seed(1)
    docs = [torch.randint(3, 512, (24,), generator=g) for _ in range(4)]
    separate = [{"input_ids": torch.stack(docs[i : i + 2])} for i in (0, 2)]
    packed = []
    for i in (0, 2):
        ids = torch.cat(docs[i : i + 2])[None]
        labels = ids.clone()
        labels[0, 24] = -100  # the second document's first token is not predicted from the first document
        pos = torch.cat([torch.arange(24), torch.arange(24)])[None]
        packed.append({"input_ids": ids, "labels": labels, "position_ids": pos})
    a = measure_model(model, separate, separate, SETTINGS, progress=False)
    b = measure_model(model, packed, packed, SETTINGS, progress=False)
    assert a.statistics.num_tokens == b.statistics.num_tokens
    _assert_close(dict(a.result), dict(b.result))


def _gpt2_folder(shared_data, tmp_path, **config):
    """A random GPT-2 with the stories260K tokenizer (512 tokens), saved with it."""
    from transformers import AutoTokenizer, GPT2Config, GPT2LMHeadModel

    torch.manual_seed(0)
    cfg = GPT2Config(
        n_layer=1,
        n_head=2,
        n_embd=16,
        **{"vocab_size": 512, "n_positions": 128, "bos_token_id": 1, "eos_token_id": 2, **config},
    )
    folder = tmp_path / "gpt2"
    GPT2LMHeadModel(cfg).save_pretrained(folder)
    AutoTokenizer.from_pretrained(_model_dir(shared_data)).save_pretrained(folder)
    return folder


def _measure_cli(shared_data, model, *extra):
    text = shared_data / "tinystories" / "train-head.txt"
    return main(["measure", str(model), "--train-file", str(text), "--max-tokens", "500", "--no-progress", *extra])


def test_block_size_longer_than_the_context_is_one_line(shared_data, tmp_path, capsys):
    folder = _gpt2_folder(shared_data, tmp_path, n_positions=128)
    capsys.readouterr()
    assert _measure_cli(shared_data, folder, "--block-size", "256") == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "256" in err[0] and "128" in err[0], err


def test_token_ids_past_the_vocabulary_are_one_line(shared_data, tmp_path, capsys):
    folder = _gpt2_folder(shared_data, tmp_path, vocab_size=300)  # the tokenizer has 512 tokens
    capsys.readouterr()
    assert _measure_cli(shared_data, folder, "--block-size", "64") == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "300" in err[0] and "--tokenizer" in err[0], err


def test_sweep_without_tokenizer_files_says_pass_tokenizer(shared_data, tmp_path, capsys):
    run = tmp_path / "run"
    (run / "checkpoint-1").mkdir(parents=True)
    for name in ("config.json", "model.safetensors"):
        shutil.copy(_model_dir(shared_data) / name, run / "checkpoint-1" / name)
    out = tmp_path / "sweep-out"
    text = shared_data / "tinystories" / "train-head.txt"
    args = ["sweep", str(run), "--train-file", str(text), "--max-tokens", "300", "--block-size", "64", "--no-progress"]
    assert main([*args, "--output-dir", str(out)]) == 1
    assert "--tokenizer" in capsys.readouterr().err
    assert not out.exists()
    # a tokenizer larger than the model's vocabulary: one line, and no empty output folder either
    big = _gpt2_folder(shared_data, tmp_path, vocab_size=300)
    capsys.readouterr()
    for name in ("config.json", "model.safetensors"):
        shutil.copy(big / name, run / "checkpoint-1" / name)
    assert main([*args, "--tokenizer", str(_model_dir(shared_data)), "--output-dir", str(out)]) == 1
    err = capsys.readouterr().err
    assert "300" in err and "Traceback" not in err
    assert not out.exists()


def test_unreachable_hub_fails_fast_with_the_offline_hint(monkeypatch):
    from conftest import free_port
    from huggingface_hub import constants

    from hf_collapse.integrations.model_source import ModelSpec

    monkeypatch.setattr(constants, "ENDPOINT", f"http://127.0.0.1:{free_port()}")  # nothing listens there
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    start = time.monotonic()
    with pytest.raises(FileNotFoundError, match="HF_HUB_OFFLINE=1") as info:
        ModelSpec().load("someone/some-model", "tokenizer")
    assert "someone/some-model" in str(info.value)
    assert time.monotonic() - start < 15


def test_model_spec_flags_and_keywords(capsys):
    from hf_collapse.integrations.model_source import ModelSpec

    with pytest.raises(SystemExit):
        main(["measure", "--help"])
    help_text = capsys.readouterr().out
    for flag in ("--revision", "--device-map", "--offload-folder", "--trust-remote-code", "--attn-implementation"):
        assert flag in help_text
    assert "--token" in help_text and "--model-kwargs" in help_text
    spec = ModelSpec(revision="v1", device_map='{"": "cpu"}', model_kwargs='{"low_cpu_mem_usage": true}')
    assert spec.model_keywords() == {"revision": "v1", "device_map": {"": "cpu"}, "low_cpu_mem_usage": True}
    with pytest.raises(ValueError, match="JSON object"):
        ModelSpec(model_kwargs="[1]").check()


def test_revision_and_commit_are_recorded(shared_data, tmp_path):
    """A measured folder records the revision asked for and the commit transformers resolved."""
    from hf_collapse.integrations.model_source import resolved_commit

    class Config:
        _commit_hash = "abc123"

    class Model(torch.nn.Module):
        config = Config()

    assert resolved_commit(Model()) == "abc123" and resolved_commit(torch.nn.Linear(1, 1)) is None


def test_memory_plan_counts_the_state_and_refuses_what_does_not_fit(shared_data, tmp_path, capsys, monkeypatch):
    from hf_collapse.integrations import memory

    plan = memory.module_plan("lm_head", 128_256, 4096)
    assert plan.state == 8 * (128_256 * 4096 + 4 * 128_256 + 4096)
    assert abs(plan.state / 2**30 - 3.92) < 0.01
    assert memory.module_plan("x", 10, 4, covariance=True).state - memory.module_plan("x", 10, 4).state == 8 * 16
    assert memory.available_bytes("cpu") > 0
    assert memory.module_plan("x", 10, 4, nc4=False).nc4_means == 0  # no validation data: no NC4 pass
    # the measures' working set: one C x d float64 array plus buffers that do not grow with C
    big, bigger = memory.module_plan("x", 128_256, 4096), memory.module_plan("x", 256_000, 4096)
    assert bigger.working_set - big.working_set == 8 * (256_000 - 128_256) * 4096
    monkeypatch.setattr(memory, "available_bytes", lambda device: 1000)
    folder = Path(_model_dir(shared_data))
    assert _measure_cli(shared_data, folder, "--block-size", "64") == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--layers" in err[0] and "available" in err[0], err


def _metrics(folder):
    import json

    from hf_collapse.core.registry import MEASURE_KEYS

    data = json.loads((Path(folder) / "collapse" / "metrics.json").read_text())
    return {k: v for k, v in data.items() if k in MEASURE_KEYS}


def test_measure_cli_with_device_map_and_disk_offload_gives_the_plain_numbers(shared_data, tmp_path):
    """``hf-collapse measure --device-map JSON --offload-folder F`` (embeddings, head and two layers on
    disk) writes the plain run's numbers to 1e-6, NC3 included."""
    import json

    src = _model_dir(shared_data)
    common = ("--block-size", "64", "--dtype", "float64", "--no-save-model")
    assert _measure_cli(shared_data, src, *common, "--output-dir", str(tmp_path / "plain")) == 0
    device_map = {"model.embed_tokens": "disk", "model.layers.1": "disk", "model.layers.4": "disk", "lm_head": "disk"}
    device_map.update({f"model.layers.{i}": "cpu" for i in (0, 2, 3)})
    device_map.update({"model.norm": "cpu", "model.rotary_emb": "cpu"})
    offload = ("--device-map", json.dumps(device_map), "--offload-folder", str(tmp_path / "offload"))
    assert _measure_cli(shared_data, src, *common, *offload, "--output-dir", str(tmp_path / "offloaded")) == 0
    plain, offloaded = _metrics(tmp_path / "plain"), _metrics(tmp_path / "offloaded")
    assert "nc3_duality_mean" in offloaded
    _assert_close(plain, offloaded)


def test_statistics_device_flag(shared_data, tmp_path, capsys):
    """``--statistics-device cpu`` keeps the statistics in host memory with the same numbers; a name that
    is no torch device is one line."""
    src = _model_dir(shared_data)
    common = ("--block-size", "64", "--no-save-model")
    assert _measure_cli(shared_data, src, *common, "--output-dir", str(tmp_path / "a")) == 0
    assert (
        _measure_cli(shared_data, src, *common, "--statistics-device", "cpu", "--output-dir", str(tmp_path / "b")) == 0
    )
    assert _metrics(tmp_path / "a") == _metrics(tmp_path / "b")
    capsys.readouterr()
    assert (
        _measure_cli(shared_data, src, *common, "--statistics-device", "gpu0", "--output-dir", str(tmp_path / "c")) == 1
    )
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "gpu0" in err[0] and "torch device" in err[0], err


def test_statistics_sink_keeps_the_statistics_on_the_given_device():
    from hf_collapse.integrations.hooks import StatisticsSink

    follow, fixed = StatisticsSink(5), StatisticsSink(5, device="cpu")
    h, y = torch.randn(4, 3), torch.tensor([0, 1, 2, 3])
    follow.update("m", None, h, y, None)
    fixed.update("m", None, h, y, None)
    assert follow.statistics["m"]._follow_input and not fixed.statistics["m"]._follow_input
    assert fixed.statistics["m"].device == torch.device("cpu")
