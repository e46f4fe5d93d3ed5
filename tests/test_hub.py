"""Pre-measured checkpoints: format, weights hash, model card, push/download against a local Hub.

The Hub tests run the real huggingface_hub client (and transformers) against tests/hub_server.py
through the ``hub_env`` fixture (tests/conftest.py).
"""

import hashlib
import json
import logging
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from hf_collapse import CollapseStatistics, MeasurementRecord, MeasureOptions, measure_collapse
from hf_collapse.core.registry import MEASURE_KEYS
from hf_collapse.integrations.folder import list_measurements
from hf_collapse.integrations.hub import find_measurement, load_measured, push_measured, read_measurement
from hf_collapse.integrations.model_card import TEMPLATE_PATH, card_metrics, write_model_card
from hf_collapse.integrations.weights_hash import weights_sha256

REPO = Path(__file__).resolve().parents[1]
SRC = REPO / "src"
# huggingface_hub's LFS upload passes a file object as data=, which its HTTP client deprecates
pytestmark = [pytest.mark.slow, pytest.mark.filterwarnings("ignore:Use 'content=<...>':DeprecationWarning")]


# ---------------------------------------------------------------------------------------- helpers
def measure_into(folder: Path, model, tok, lines, name=None, extra_meta=None):
    """Measure ``model`` on ``lines`` and write a measurement into ``folder`` (the format
    ``hf_collapse.save_measured`` writes: statistics + per_class.* + metrics.json)."""
    stats = CollapseStatistics(model.config.vocab_size, model.config.hidden_size)
    with torch.no_grad():
        for line in lines:
            ids = tok(line, return_tensors="pt").input_ids[:, :96]  # (1, T)
            h = model(ids, output_hidden_states=True).hidden_states[-1]  # (1, T, d)
            stats.update(h[0, :-1], ids[0, 1:])  # next-token labels
    result = measure_collapse(stats, weights=model.get_output_embeddings().weight, per_class=True)
    sub = folder / ("collapse" if name is None else f"collapse/{name}")
    meta = {
        "k": "2.0",
        "dataset": "roneneldan/TinyStories",
        "split": "validation",
        "data_files": "validation-head.txt",
        "weights_sha256": weights_sha256(folder),
        "command": "hf-collapse measure stories260K --max-tokens 2000",
        **(extra_meta or {}),
    }
    stats.save(
        sub / "statistics.safetensors",
        extra_tensors={f"per_class.{k}": v for k, v in result.per_class.items()},
        metadata=meta,
    )
    (sub / "metrics.json").write_text(
        json.dumps(
            {
                **result,
                "num_tokens": stats.num_tokens,
                "num_classes": stats.num_classes,
                "num_classes_present": int(stats.present.sum()),
                "settings": {"k": 2.0},
            }
        )
    )
    return stats, result


def tree_digest(folder: Path) -> dict:
    return {
        p.relative_to(folder).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


@pytest.fixture(scope="module")
def tiny(shared_data):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    src = shared_data / "models" / "stories260K"
    model = AutoModelForCausalLM.from_pretrained(src).eval()
    tok = AutoTokenizer.from_pretrained(src)
    lines = [x for x in (shared_data / "tinystories" / "validation-head.txt").read_text().splitlines() if x][:25]
    return model, tok, lines


@pytest.fixture(scope="module")
def measured_base(tiny, tmp_path_factory):
    """A measured model folder (stories260K, 25 lines of TinyStories), with card; copy before changing."""
    model, tok, lines = tiny
    folder = tmp_path_factory.mktemp("measured") / "stories260K-measured"
    model.save_pretrained(folder)
    tok.save_pretrained(folder)
    stats, result = measure_into(folder, model, tok, lines)
    write_model_card(folder, base_model="karpathy/tinyllamas", hyperparameters={"learning_rate": 5e-4})
    return folder


@pytest.fixture
def measured(measured_base, tmp_path):
    folder = tmp_path / measured_base.name
    shutil.copytree(measured_base, folder)
    return folder


# ---------------------------------------------------------------------------------------- format
def test_weights_hash_same_for_model_folder_and_shards(tiny, tmp_path):
    model = tiny[0]
    h = weights_sha256(model)
    model.save_pretrained(tmp_path / "one")
    model.save_pretrained(tmp_path / "sharded", max_shard_size="200KB")
    assert len(list((tmp_path / "sharded").glob("*.safetensors"))) > 1
    assert weights_sha256(tmp_path / "one") == h == weights_sha256(tmp_path / "sharded")
    assert weights_sha256(dict(model.state_dict())) == h
    changed = {k: v.clone() for k, v in model.state_dict().items()}
    first = next(iter(changed))
    changed[first].view(-1)[0] += 1e-3
    assert weights_sha256(changed) != h
    from safetensors.torch import save_file

    odd = {
        "a": torch.randn(3, 5).bfloat16(),
        "b": torch.tensor(True),
        "c": torch.zeros(0, 4),
        "d": torch.arange(7),
        "e": torch.tensor(2.5, dtype=torch.float16),
    }
    (tmp_path / "odd").mkdir()
    save_file(odd, tmp_path / "odd" / "model.safetensors")
    assert weights_sha256(tmp_path / "odd") == weights_sha256(odd)
    (tmp_path / "odd" / "model.safetensors").write_bytes(b"\x00" * 4)
    with pytest.raises(ValueError, match="model.safetensors.*not a safetensors file"):
        weights_sha256(tmp_path / "odd")
    with pytest.raises(FileNotFoundError, match="no \\*.safetensors or pytorch_model\\*.bin weights"):
        weights_sha256(tmp_path)
    # a folder holding only pytorch_model*.bin (sharded too): the same hash, read with weights_only=True
    # (transformers 5 saves safetensors only, but loads pytorch_model*.bin: older revisions hold them)
    state = model.state_dict()
    names = list(state)
    (tmp_path / "bin").mkdir()
    (tmp_path / "bin-sharded").mkdir()
    torch.save(state, tmp_path / "bin" / "pytorch_model.bin")
    for i, part in enumerate((names[::2], names[1::2]), 1):
        torch.save({k: state[k] for k in part}, tmp_path / "bin-sharded" / f"pytorch_model-0000{i}-of-00002.bin")
    assert weights_sha256(tmp_path / "bin") == h == weights_sha256(tmp_path / "bin-sharded")
    legacy = tmp_path / "bin-legacy"  # torch's pre-1.6 (non-zip) format
    legacy.mkdir()
    torch.save(state, legacy / "pytorch_model.bin", _use_new_zipfile_serialization=False)
    assert weights_sha256(legacy) == h
    (tmp_path / "bin" / "pytorch_model.bin").write_bytes(b"not a pickle")
    with pytest.raises(ValueError, match="pytorch_model.bin.*not a readable PyTorch state dict"):
        weights_sha256(tmp_path / "bin")
    import pickle

    from test_bad_input import Pwned

    marker = tmp_path / "unpickled.txt"
    torch.save({"w": Pwned(marker)}, tmp_path / "bin" / "pytorch_model.bin")  # code in the pickle
    with pytest.raises(ValueError, match="not a readable PyTorch state dict"):
        weights_sha256(tmp_path / "bin")
    assert not marker.exists(), "weights_sha256 unpickled code"
    (tmp_path / "bin" / "pytorch_model.bin").write_bytes(pickle.dumps(Pwned(marker), protocol=2))
    with pytest.raises(ValueError, match="not a readable PyTorch state dict"):
        weights_sha256(tmp_path / "bin")
    assert not marker.exists(), "weights_sha256 unpickled code"
    with pytest.raises(TypeError, match="expects a folder path"):
        weights_sha256(3)


def test_template_lives_once_in_the_package():
    assert TEMPLATE_PATH.is_file()
    assert TEMPLATE_PATH.parent == REPO / "model_cards"  # shipped as hf_collapse.model_cards
    copies = [p for p in REPO.rglob(TEMPLATE_PATH.name) if ".venv" not in p.parts and "build" not in p.parts]
    assert copies == [TEMPLATE_PATH]


def test_model_card_yaml_and_body(measured):
    from huggingface_hub import ModelCard

    card = ModelCard.load(measured / "README.md")
    assert card.data.library_name == "transformers"
    assert "neural-collapse" in card.data.tags
    assert card.data.base_model == "karpathy/tinyllamas"
    assert card.data.datasets == ["roneneldan/TinyStories"]
    metrics = read_measurement(measured)[2]
    parsed = card_metrics(card)[None]
    assert set(parsed) == {k for k in metrics if k in MEASURE_KEYS}
    assert all(parsed[k] == pytest.approx(metrics[k], rel=1e-12) for k in parsed)
    assert {r.dataset_split for r in card.data.eval_results} == {"validation"}
    assert (measured / "collapse" / "collapse.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "](collapse/collapse.png)" in card.text
    assert "learning_rate: 0.0005" in card.text and "arxiv.org/abs/2405.17767" in card.text
    for line in ("| NC1 CDNV (`nc1_cdnv`)", "| lower |", "| higher |"):
        assert line in card.text


def test_several_measurements_side_by_side(measured, tiny):
    model, tok, lines = tiny
    stats2, result2 = measure_into(measured, model, tok, lines[:8], name="epoch-1", extra_meta={"split": "train"})
    assert list_measurements(measured) == [None, "epoch-1"]
    write_model_card(measured)
    from huggingface_hub import ModelCard

    parsed = card_metrics(ModelCard.load(measured / "README.md"))
    assert set(parsed) == {None, "epoch-1"}
    assert parsed["epoch-1"]["nc1_cdnv"] == pytest.approx(result2["nc1_cdnv"], rel=1e-12)
    m = load_measured(measured, name="epoch-1", load_model=False)
    assert m.statistics.num_tokens == stats2.num_tokens and m.name == "epoch-1"
    assert torch.equal(m.per_class["count"], result2.per_class["count"])
    with pytest.raises(FileNotFoundError, match=r"measurements in this folder: default, 'epoch-1'"):
        load_measured(measured, name="nope", load_model=False)
    with pytest.raises(ValueError, match="measurement name"):
        load_measured(measured, name="../x", load_model=False)


def test_load_local_folder(measured, tiny):
    m = load_measured(measured)
    assert type(m.model).__name__ == "LlamaForCausalLM" and m.tokenizer is not None
    assert m.weights_sha256 == weights_sha256(tiny[0])
    for k, v in tiny[0].state_dict().items():
        assert torch.equal(m.model.state_dict()[k], v), k
    assert m.result["nc1_cdnv"] == m.metrics["nc1_cdnv"] and "nc1_cdnv" in repr(m)
    assert "weights=verified" in repr(m)


# ---------------------------------------------------------------------------------------- errors
def test_clear_errors_for_bad_files(measured, tiny):
    stats_file = measured / "collapse" / "statistics.safetensors"
    metrics_file = measured / "collapse" / "metrics.json"
    good_stats, good_metrics = stats_file.read_bytes(), metrics_file.read_bytes()

    stats_file.write_bytes(good_stats[: len(good_stats) // 2])  # truncated
    with pytest.raises(ValueError, match="statistics.safetensors"):
        load_measured(measured, load_model=False)

    from safetensors.torch import save_file

    save_file({"counts": torch.zeros(3)}, stats_file, metadata={"schema": "someone.else"})
    with pytest.raises(ValueError, match="not an hf_collapse statistics file"):
        load_measured(measured, load_model=False)
    stats_file.write_bytes(good_stats)

    metrics_file.write_text("{not json")
    with pytest.raises(ValueError, match="metrics.json.*not valid JSON"):
        load_measured(measured, load_model=False)
    metrics_file.write_text(json.dumps({**json.loads(good_metrics), "num_tokens": 7}))
    with pytest.raises(ValueError, match="different measurements"):
        load_measured(measured, load_model=False)
    metrics_file.unlink()
    with pytest.raises(FileNotFoundError, match="metrics.json"):
        load_measured(measured, load_model=False)
    metrics_file.write_bytes(good_metrics)

    # weights that are not the ones measured: re-save a perturbed model over the folder
    model = tiny[0]
    state = {k: v.clone() for k, v in model.state_dict().items()}
    state["model.norm.weight"] += 0.5
    model2 = type(model)(model.config)
    model2.load_state_dict(state)
    model2.save_pretrained(measured)
    with pytest.raises(ValueError, match=r"statistics.safetensors.*do not belong to this model"):
        load_measured(measured)
    assert load_measured(measured, check_weights=False).weights_sha256 is None

    with pytest.raises(FileNotFoundError, match="no measured model folder"):
        load_measured(str(measured / "missing"))


# ---------------------------------------------------------------------------------------- local Hub
def test_push_download_offline_round_trip(hub_env, measured):
    from huggingface_hub import HfApi, ModelCard

    for junk in ("checkpoint-5/optimizer.pt", ".cache/huggingface/x.lock", "collapse/__pycache__/x.pyc"):
        (measured / junk).parent.mkdir(parents=True, exist_ok=True)
        (measured / junk).write_bytes(b"junk")
    before = tree_digest(measured)
    info = push_measured(measured, "tester/stories260K-measured", private=True)
    assert not any(
        ("junk" in f or "checkpoint" in f or "cache" in f) for f in hub_env.hub.files("tester/stories260K-measured")
    )
    assert tree_digest(measured) == before  # pushing only reads the folder
    commits = [c for c in hub_env.hub.state.commits if c[0] == "tester/stories260K-measured"]
    assert len(commits) == 2 and commits[0][2] == "initial commit"  # create_repo + ONE commit
    assert "neural-collapse statistics" in commits[1][2] and "default:" in commits[1][2]
    assert info.oid == HfApi().model_info("tester/stories260K-measured").sha
    assert hub_env.hub.state.repos["tester/stories260K-measured"].private
    assert "collapse/statistics.safetensors" in hub_env.hub.files("tester/stories260K-measured")
    card_text = hub_env.hub.file("tester/stories260K-measured", "README.md").decode()
    assert 'load_measured("tester/stories260K-measured")' in card_text  # placeholder filled on upload
    assert 'load_measured("REPO_ID")' in (measured / "README.md").read_text()  # local card untouched
    assert hub_env.hub.state.unhandled == []

    local = load_measured(measured)
    online = load_measured("tester/stories260K-measured")
    assert online.path.startswith(str(hub_env.home)) and online.commit == info.oid
    card = ModelCard.load("tester/stories260K-measured")
    assert card_metrics(card)[None]["nc1_cdnv"] == pytest.approx(local.result["nc1_cdnv"], rel=1e-12)

    with pytest.raises(FileNotFoundError, match="neither a local folder nor a Hub repo"):
        load_measured("tester/does-not-exist")

    hub_env.go_offline()
    offline = load_measured("tester/stories260K-measured")
    for m in (online, offline):
        assert m.weights_sha256 == local.weights_sha256
        assert dict(m.result) == dict(local.result) and m.metrics == local.metrics
        for key in ("counts", "means", "variances", "sums"):
            assert torch.equal(getattr(m.statistics, key), getattr(local.statistics, key)), key
        assert m.statistics.metadata == local.statistics.metadata
        assert all(torch.equal(m.per_class[k], local.per_class[k]) for k in local.per_class)
        assert all(torch.equal(a, b) for a, b in zip(m.model.state_dict().values(), local.model.state_dict().values()))


def test_offline_refs_main_trap(hub_env, measured, caplog):
    """refs/main moves to a newer commit of which only README.md is cached: loading offline must
    still find the older complete snapshot."""
    from huggingface_hub import HfApi, hf_hub_download, snapshot_download

    repo = "tester/trap"
    first = push_measured(measured, repo)
    load_measured(repo)  # complete snapshot of the first commit in the cache
    second = HfApi().upload_file(
        path_or_fileobj=b"---\nlicense: mit\n---\n# new card\n",
        path_in_repo="README.md",
        repo_id=repo,
        commit_message="card only",
    )
    hf_hub_download(repo, "README.md")  # moves refs/main to the second commit, with only README.md
    hub_env.go_offline()
    from huggingface_hub.errors import IncompleteSnapshotError

    try:  # the trap itself (huggingface_hub 2.4): the plain offline snapshot lacks the model files
        plain = Path(snapshot_download(repo))
    except IncompleteSnapshotError:  # clients that know the tree of that commit refuse it instead
        plain = None
    if plain is not None:
        assert plain.name == second.oid and not (plain / "model.safetensors").exists()
    with caplog.at_level(logging.WARNING, logger="hf_collapse.integrations.hub"):
        m = load_measured(repo)
    assert m.commit == first.oid and m.model is not None
    assert "newest complete cached snapshot" in caplog.text
    with pytest.raises(FileNotFoundError, match="lacks collapse/statistics.safetensors or the model files"):
        load_measured(repo, revision=second.oid)  # an explicit commit is never swapped for another


def test_push_to_branch(hub_env, measured):
    push_measured(measured, "tester/branched")
    (measured / "collapse" / "metrics.json").write_text(
        json.dumps({**json.loads((measured / "collapse" / "metrics.json").read_text()), "nc1_cdnv": 123.0})
    )
    info = push_measured(measured, "tester/branched", revision="v2", commit_message="v2 metrics")
    assert hub_env.hub.state.commits[-1] == ("tester/branched", "v2", "v2 metrics")
    assert load_measured("tester/branched", revision="v2", load_model=False).result["nc1_cdnv"] == 123.0
    assert load_measured("tester/branched", load_model=False).result["nc1_cdnv"] != 123.0
    assert load_measured("tester/branched", revision=info.oid, load_model=False).commit == info.oid


def test_online_repo_without_statistics_is_an_error_not_a_fallback(hub_env, measured):
    from huggingface_hub import HfApi

    push_measured(measured, "tester/dropped")
    load_measured("tester/dropped", load_model=False)  # a complete snapshot is now cached
    HfApi().delete_folder("collapse", repo_id="tester/dropped", commit_message="drop statistics")
    with pytest.raises(
        FileNotFoundError, match=r"tester/dropped \(revision main, commit [0-9a-f]{40}\) holds no collapse/"
    ):
        load_measured("tester/dropped", load_model=False)


def test_find_measurement_for_skipping_the_pass(hub_env, measured, tiny):
    model, tok, lines = tiny
    measure_into(measured, model, tok, lines[:6], name="short", extra_meta={"max_tokens": "500"})
    push_measured(measured, "tester/findme")
    h = weights_sha256(model)
    # folders written in the first release's header format (measure_into: dataset/split keys) are matched
    # by their record, whose data descriptor is built from those keys
    data = "dataset:roneneldan/TinyStories split:validation"
    want = MeasurementRecord(weights_sha256=h, data=data, max_tokens=500)
    m = find_measurement("tester/findme", want)
    assert m is not None and m.name == "short" and m.model is None and m.record.max_tokens == 500
    assert not any(Path(m.path).glob("*.safetensors"))  # only collapse/ and JSON were fetched
    assert find_measurement("tester/findme", want.replace(max_tokens=None)).name is None
    assert find_measurement("tester/findme", want.replace(options=MeasureOptions(k=3))) is None
    assert find_measurement("tester/findme", want.replace(weights_sha256="0" * 64)) is None
    assert find_measurement("tester/findme", want.replace(data="dataset:other split:validation")) is None
    assert find_measurement("tester/nothing-here", want) is None
    assert find_measurement(measured, want).name == "short"


def test_find_measurement_reports_a_truncated_stored_file(measured, tiny, caplog):
    """A stored measurement whose statistics file is cut short is reported where it is found (a warning
    naming the file), not skipped without a word: measure then measures again."""
    model, tok, lines = tiny
    measure_into(measured, model, tok, lines[:6], name="short", extra_meta={"max_tokens": "500"})
    want = MeasurementRecord(
        weights_sha256=weights_sha256(model), data="dataset:roneneldan/TinyStories split:validation", max_tokens=500
    )
    assert find_measurement(measured, want).name == "short"
    stats_file = measured / "collapse" / "short" / "statistics.safetensors"
    stats_file.write_bytes(stats_file.read_bytes()[:100])
    with caplog.at_level(logging.WARNING, logger="hf_collapse.integrations.hub"):
        assert find_measurement(measured, want) is None
    assert "stored measurement short" in caplog.text and "unreadable" in caplog.text
    assert "statistics.safetensors" in caplog.text


def test_card_hyperparameters_from_statistics_header(measured, tiny):
    model, tok, lines = tiny
    shutil.rmtree(measured / "collapse")
    measure_into(measured, model, tok, lines[:4], extra_meta={"hyperparameters": json.dumps({"num_epochs": 3})})
    text = write_model_card(measured).read_text()
    assert "## Training hyperparameters" in text and "- num_epochs: 3" in text
    assert "base_model" not in text.split("---")[1]  # none known: no base_model key


def test_bad_folder_is_rejected_before_any_upload(hub_env, measured):
    (measured / "collapse" / "metrics.json").write_text("[]")
    before = tree_digest(measured)
    with pytest.raises(ValueError, match="metrics.json"):
        push_measured(measured, "tester/bad")
    assert tree_digest(measured) == before
    assert "tester/bad" not in hub_env.hub.state.repos and hub_env.hub.state.requests == []
    shutil.rmtree(measured / "collapse")
    with pytest.raises(FileNotFoundError, match="measure it first"):
        push_measured(measured, "tester/bad")


def test_push_to_unreachable_hub_changes_nothing(hub_env, measured, capsys):
    from hf_collapse.cli import main

    before = tree_digest(measured)
    hub_env.hub.stop()
    assert main(["push", str(measured), "tester/unreachable"]) == 1
    assert "could not push" in capsys.readouterr().err
    assert tree_digest(measured) == before


def test_cli_push_then_load_in_fresh_processes(hub_env, measured):
    from hf_collapse.cli import main

    assert main(["push", str(measured), "tester/cli", "--private", "--commit-message", "measured v1"]) == 0
    assert hub_env.hub.state.commits[-1] == ("tester/cli", "main", "measured v1")
    code = "from hf_collapse import load_measured; m = load_measured('tester/cli'); print(m.statistics.num_tokens, m.result['nc1_cdnv'])"
    env = {**hub_env.env, "PYTHONPATH": str(SRC)}
    online = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    assert online.returncode == 0, online.stderr[-2000:]
    hub_env.go_offline()
    offline = subprocess.run(
        [sys.executable, "-c", code],
        env=hub_env.env | {"PYTHONPATH": str(SRC)},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert offline.returncode == 0, offline.stderr[-2000:]
    local = read_measurement(measured)[0]
    assert online.stdout.split()[0] == str(local.num_tokens) and offline.stdout == online.stdout


def test_trainer_push_to_hub_carries_card_and_statistics(hub_env, tiny, tmp_path):
    from transformers import TrainingArguments, default_data_collator

    from hf_collapse import CollapseArguments, CollapseTrainer

    model, tok, lines = tiny
    model = type(model)(model.config)
    model.load_state_dict(tiny[0].state_dict())
    ids = [tok(x, return_tensors="pt").input_ids[0, :32] for x in lines[:12]]
    data = [{"input_ids": i, "labels": i} for i in ids if len(i) == 32]

    out = tmp_path / "run"
    args = TrainingArguments(
        output_dir=str(out),
        max_steps=2,
        per_device_train_batch_size=2,
        report_to=[],
        save_strategy="no",
        push_to_hub=True,
        hub_model_id="tester/trained",
        use_cpu=True,
        learning_rate=1e-3,
        logging_steps=1,
        disable_tqdm=True,
    )
    trainer = CollapseTrainer(
        model=model,
        args=args,
        train_dataset=data,
        eval_dataset=data[:6],
        processing_class=tok,
        data_collator=default_data_collator,
        collapse_args=CollapseArguments(collapse_per_class=True),
    )
    trainer.train()
    metrics = trainer.evaluate()
    assert "eval_nc1_cdnv" in metrics
    trainer.push_to_hub(commit_message="end of training")
    hub = hub_env.hub
    assert hub.state.commits[-1] == ("tester/trained", "main", "end of training")
    files = hub.files("tester/trained")
    for f in (
        "model.safetensors",
        "config.json",
        "collapse/statistics.safetensors",
        "collapse/metrics.json",
        "collapse/collapse.png",
        "README.md",
    ):
        assert f in files, f
    card = hub.file("tester/trained", "README.md").decode()
    assert "neural-collapse/nc1_cdnv" in card and "learning_rate: 0.001" in card
    m = load_measured("tester/trained")  # statistics belong to the pushed (trained) weights
    assert m.weights_sha256 == weights_sha256(trainer.model)
    assert m.metrics["nc1_cdnv"] == pytest.approx(metrics["eval_nc1_cdnv"], rel=1e-12)
    assert hub.state.unhandled == []


def test_non_finite_measures_round_trip_through_metrics_json(tmp_path):
    # CoV is +inf when a mean is 0 but its spread is not; metrics.json (strict JSON) stores it as "inf"
    import math

    from hf_collapse import CollapseResult
    from hf_collapse.integrations.folder import build_metrics, read_metrics

    s = CollapseStatistics(3, 2)
    s.update(torch.randn(6, 2), torch.tensor([0, 1, 2, 0, 1, 2]))
    res = CollapseResult({"nc1_cdnv": 0.5, "nc2_equinorm_cov": math.inf})
    path = tmp_path / "metrics.json"
    path.write_text(json.dumps(build_metrics(s, res)))
    assert json.loads(path.read_text())["nc2_equinorm_cov"] == "inf"
    back = read_metrics(path)
    assert back["nc2_equinorm_cov"] == math.inf and back["nc1_cdnv"] == 0.5
    path.write_text(json.dumps({"nc1_cdnv": "large"}))
    with pytest.raises(ValueError, match="expected a number"):
        read_metrics(path)


def test_model_card_table_and_citation_come_from_the_registry(measured):
    """Every measured key appears in the card's table with the registry's name, meaning and direction, and the
    citation is the paper's (arXiv:2405.17767)."""
    from huggingface_hub import ModelCard

    from hf_collapse.core.registry import ARXIV_ID, CITATION_BIBTEX, MEASURES

    text = ModelCard.load(measured / "README.md").text
    metrics = json.loads((measured / "collapse" / "metrics.json").read_text())
    keys = [k for k in MEASURES if k in metrics]
    assert len(keys) >= 8
    for key in keys:
        m = MEASURES[key]
        assert f"| {m.name} (`{key}`) |" in text and f"| {m.meaning} | {m.direction_text} |" in text, key
    assert CITATION_BIBTEX in text and f"arxiv.org/abs/{ARXIV_ID}" in text and "2405.13634" not in text
