"""Publishing a family: the measurements dataset (push_measurements, load_measurements, load_dataset),
``hf-collapse analyze`` on it, revision discovery for ``sweep``, collections; against tests/hub_server.py."""

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from hf_collapse import CollapseStatistics, MeasurementRecord, measure_collapse
from hf_collapse.core.registry import MEASURE_KEYS
from hf_collapse.integrations.folder import write_measurement
from hf_collapse.integrations.weights_hash import weights_sha256

# huggingface_hub's LFS upload passes a file object as data=, which its HTTP client deprecates
pytestmark = [pytest.mark.slow, pytest.mark.filterwarnings("ignore:Use 'content=<...>':DeprecationWarning")]

LOAD = """
import json, sys
import datasets
ds = datasets.load_dataset(sys.argv[1], split="train")
print(json.dumps({"rows": ds.to_list(), "columns": ds.column_names}))
"""


def make_measured(folder: Path, seed: int, eval_loss: float, layer: bool = False) -> Path:
    """A measured folder (no weights) of synthetic features: 8 classes, dim 5; ``layer``: a second
    measurement ``transformer_h_0``."""
    g = torch.Generator().manual_seed(seed)
    record = MeasurementRecord(
        model_name=f"tiny-{seed}",
        weights_sha256=f"{seed:02d}" * 32,
        data="file:train.txt sha256:" + "ab" * 32,
        max_tokens=300,
        block_size=16,
        options={"k": 2.0},
    )
    for name in [None] + (["transformer_h_0"] if layer else []):
        stats = CollapseStatistics(8, 5)
        means = torch.randn(8, 5, generator=g, dtype=torch.float64) * 3
        y = torch.randint(0, 8, (300,), generator=g)
        h = means[y] + torch.randn(300, 5, generator=g, dtype=torch.float64) * (0.5 + seed / 10)
        stats.update(h, y)
        result = measure_collapse(stats, weights=torch.randn(8, 5, generator=g, dtype=torch.float64))
        write_measurement(folder, stats, result, record, name=name, extra_metrics={"eval_loss": eval_loss})
    return folder


def check_row(row: dict, folder: Path):
    name = row["measurement"] or None
    metrics = json.loads((folder / ("collapse" if name is None else f"collapse/{name}") / "metrics.json").read_text())
    assert row["hf_collapse_version"] == metrics["library_version"]
    for key in set(row) & set(metrics) - {"revision", "commit"}:
        assert row[key] == metrics[key], key
    for key in MEASURE_KEYS:
        assert row[key] == metrics.get(key), key  # null where the measurement has none


def test_measurements_dataset_round_trip(hub_env, tmp_path):
    from huggingface_hub import HfApi

    from hf_collapse import load_measurements, push_measured, push_measurements

    a = make_measured(tmp_path / "a", 1, 3.0, layer=True)
    b = make_measured(tmp_path / "b", 2, 2.5)
    for folder, repo in ((a, "tester/a-measured"), (b, "tester/b-measured")):
        info = push_measured(folder, repo)
        push_measurements(folder, "tester/nc-index", model_repo=repo, commit=info.oid)
    push_measurements(a, "tester/nc-index", model_repo="tester/a-measured")  # again: replaces, adds nothing
    api = HfApi()
    files = api.list_repo_files("tester/nc-index", repo_type="dataset")
    assert sorted(f for f in files if f.endswith(".parquet")) == [
        "data/tester/a-measured/main/_default.parquet",
        "data/tester/a-measured/main/transformer_h_0.parquet",
        "data/tester/b-measured/main/_default.parquet",
    ]
    card = hub_env.hub.file("tester/nc-index", "README.md", repo_type="dataset").decode()
    assert "configs:" in card and "arXiv:2405.17767" in card and "tester/b-measured" in card

    env = {**hub_env.env, "HF_DATASETS_CACHE": str(tmp_path / "datasets"), "HF_DATASETS_OFFLINE": "0"}
    out = subprocess.run(
        [sys.executable, "-c", LOAD, "tester/nc-index"], env=env, capture_output=True, text=True, timeout=300
    )
    assert out.returncode == 0, out.stderr[-3000:]
    loaded = json.loads(out.stdout.strip().splitlines()[-1])
    assert len(loaded["rows"]) == 3 and "nc1_cdnv" in loaded["columns"] and "weights_sha256" in loaded["columns"]
    for row in loaded["rows"]:
        check_row(row, a if row["model"] == "tester/a-measured" else b)

    ds = load_measurements("tester/nc-index")
    assert ds.features["num_tokens"].dtype == "int64" and ds.features["nc1_cdnv"].dtype == "float64"
    assert ds.features["step"].dtype == "int64" and ds.features["model"].dtype == "string"
    assert [(r["model"], r["measurement"]) for r in ds] == [
        ("tester/a-measured", ""),
        ("tester/a-measured", "transformer_h_0"),
        ("tester/b-measured", ""),
    ]
    assert ds[2]["commit"] == api.model_info("tester/b-measured").sha
    for row in ds:
        check_row(row, a if row["model"] == "tester/a-measured" else b)

    # a dataset repo holding something else: one clear error, nothing written
    api.create_repo("tester/other", repo_type="dataset")
    api.upload_file(path_or_fileobj=b"x,y\n1,2\n", path_in_repo="t.csv", repo_id="tester/other", repo_type="dataset")
    before = len(hub_env.hub.state.commits)
    with pytest.raises(ValueError, match="exists but is not a measurements dataset"):
        push_measurements(a, "tester/other", model_repo="tester/a-measured")
    with pytest.raises(ValueError, match="exists but is not a measurements dataset"):
        load_measurements("tester/other")
    assert len(hub_env.hub.state.commits) == before
    with pytest.raises(FileNotFoundError, match="holds no collapse"):
        push_measurements(tmp_path, "tester/nc-index", model_repo="tester/a-measured")
    assert hub_env.hub.state.unhandled == []


def test_cli_push_index_collection_and_analyze(hub_env, tmp_path):
    """push --index --collection for four models; analyze on the index (Hub id and downloaded folder)
    writes the correlations.csv of analyze on the folders."""
    from huggingface_hub import HfApi, snapshot_download

    from hf_collapse.cli import main

    runs = tmp_path / "runs"
    for i, loss in enumerate((3.1, 2.7, 2.9, 2.2), start=1):
        folder = make_measured(runs / f"m{i}", i, loss)
        args = ["push", str(folder), f"tester/m{i}", "--index", "tester/nc-family", "--collection", "tester/NC family"]
        assert main(args) == 0
    coll = list(HfApi().list_collections(owner="tester"))
    assert len(coll) == 1 and coll[0].title == "NC family"
    items = HfApi().get_collection(coll[0].slug).items
    assert [i.item_id for i in items] == ["tester/m1", "tester/nc-family", "tester/m2", "tester/m3", "tester/m4"]
    assert "neural collapse of 300 tokens" in items[0].note

    base = ["--permutations", "200", "--seed", "1"]
    assert main(["analyze", str(runs), "--output-dir", str(tmp_path / "from_folders"), *base]) == 0
    assert main(["analyze", "tester/nc-family", "--output-dir", str(tmp_path / "from_hub"), *base]) == 0
    local = snapshot_download("tester/nc-family", repo_type="dataset", local_dir=tmp_path / "index")
    assert main(["analyze", str(local), "--output-dir", str(tmp_path / "from_local"), *base]) == 0
    want = (tmp_path / "from_folders" / "correlations.csv").read_text()
    assert (tmp_path / "from_hub" / "correlations.csv").read_text() == want
    assert (tmp_path / "from_local" / "correlations.csv").read_text() == want


def test_revision_discovery(hub_env, shared_data, capsys):
    from huggingface_hub import HfApi

    from hf_collapse.integrations.trajectory import discover_revisions, is_revision_pattern, revision_step

    api = HfApi()
    api.create_repo("tester/family")
    api.upload_file(path_or_fileobj=b"{}", path_in_repo="config.json", repo_id="tester/family")
    for b in ("step1000", "step20", "step300", "stage1-step5-tokens1B", "other", "later"):
        api.create_branch("tester/family", branch=b)
    api.create_tag("tester/family", tag="v1")
    assert is_revision_pattern(["all"]) and is_revision_pattern(["step*"]) and not is_revision_pattern(["step1"])
    assert revision_step("stage1-step5-tokens1B") == 5 and revision_step("main") is None
    assert discover_revisions("tester/family", ["step*"]) == ["step20", "step300", "step1000"]
    got = discover_revisions("tester/family", ["all"])
    assert got[:4] == ["stage1-step5-tokens1B", "step20", "step300", "step1000"]
    assert sorted(got[4:]) == ["later", "main", "other", "v1"]
    with pytest.raises(ValueError, match=r"matches none of the 8 branches and tags of tester/family"):
        discover_revisions("tester/family", ["ckpt*"])
    with pytest.raises(ValueError, match="cannot list the revisions of 'tester/nope'"):
        discover_revisions("tester/nope", ["all"])
    from hf_collapse.cli import main

    data = ["--train-file", str(shared_data / "tinystories" / "train-head.txt"), "--output-dir", "unused"]
    assert main(["sweep", "tester/family", "--revisions", "ckpt*", *data]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "matches none of the 8 branches and tags" in err[0]
    hub_env.go_offline()
    with pytest.raises(ValueError, match="HF_HUB_OFFLINE is set: name the revisions explicitly"):
        discover_revisions("tester/family", ["all"])


def test_sweep_all_revisions_push_to_branches_and_index(hub_env, shared_data, tmp_path, capsys):
    """sweep --revisions 'step*' of a family of three branches (two with the same weights): each pushed
    to its branch of the measured repo and indexed; a second run pushes nothing; load_measured of a
    revision online and offline."""
    from huggingface_hub import HfApi
    from transformers import AutoModelForCausalLM

    from hf_collapse import load_measured, load_measurements
    from hf_collapse.cli import main

    src = shared_data / "models" / "stories260K"
    other = tmp_path / "perturbed"
    model = AutoModelForCausalLM.from_pretrained(src)
    with torch.no_grad():
        model.get_output_embeddings().weight.mul_(1.5)
    other.mkdir()  # this revision holds only pytorch_model.bin (as older revisions of Hub models do)
    model.config.save_pretrained(other)
    torch.save(model.state_dict(), other / "pytorch_model.bin")
    api = HfApi()
    api.create_repo("tester/family")
    for branch, folder in (("step100", src), ("step200", other)):
        api.create_branch("tester/family", branch=branch)
        api.upload_folder(
            folder_path=str(folder),
            repo_id="tester/family",
            revision=branch,
            allow_patterns=["*.json", "*.safetensors", "*.bin"],
        )
    assert not [f for f in api.list_repo_files("tester/family", revision="step200") if f.endswith(".safetensors")]
    api.create_branch("tester/family", branch="step300", revision="step100")
    d = shared_data
    args = ["sweep", "tester/family", "--revisions", "step*", "--tokenizer", str(src)]
    args += ["--train-file", str(d / "tinystories" / "train-head.txt"), "--max-tokens", "300", "--block-size", "32"]
    args += ["--batch-size", "4", "--dtype", "float64", "--no-progress", "--output-dir", str(tmp_path / "sweep")]
    args += ["--push-to", "tester/family-measured", "--index", "tester/family-index", "--collection", "tester/Family"]
    assert main(args) == 0
    out = capsys.readouterr().out
    assert "3 revisions of tester/family: step100 step200 step300" in out and out.count(": pushed (") == 3
    refs = {b.name for b in api.list_repo_refs("tester/family-measured").branches}
    assert {"step100", "step200", "step300"} <= refs
    rows = load_measurements("tester/family-index")
    assert [(r["model"], r["revision"], r["step"]) for r in rows] == [
        ("tester/family-measured", "step100", 100),
        ("tester/family-measured", "step200", 200),
        ("tester/family-measured", "step300", 300),
    ]
    by_rev = {r["revision"]: r for r in rows}
    assert by_rev["step200"]["weights_sha256"] == weights_sha256(model)  # read from the .bin
    assert by_rev["step300"]["nc1_cdnv"] == by_rev["step100"]["nc1_cdnv"] != by_rev["step200"]["nc1_cdnv"]
    commits = len(hub_env.hub.state.commits)
    assert main(args) == 0  # resumable: measured and pushed before
    assert capsys.readouterr().out.count(": up to date (") == 3
    assert hub_env.hub.state.commits[commits:] == []  # neither the measured repo nor the index (rows keep their date)

    got = load_measured("tester/family-measured", revision="step200", load_tokenizer=False)
    assert (
        got.weights_sha256 == by_rev["step200"]["weights_sha256"]
        and got.metrics["nc1_cdnv"] == by_rev["step200"]["nc1_cdnv"]
    )
    hub_env.go_offline()
    again = load_measured("tester/family-measured", revision="step200", load_tokenizer=False)
    assert again.metrics == got.metrics and again.commit == got.commit
    assert hub_env.hub.state.unhandled == []


def test_sweep_push_interrupted_half_way_resumes(hub_env, shared_data, tmp_path, capsys):
    """sweep --push-to --index over two revisions whose second branch's commit is dropped by the server:
    exit 1 with one line, the first branch and its index row are there, the second is not; the same
    command again pushes only the second (the first is up to date) and indexes it once."""
    from huggingface_hub import HfApi
    from transformers import AutoModelForCausalLM

    from hf_collapse import load_measurements
    from hf_collapse.cli import main

    src = shared_data / "models" / "stories260K"
    other = tmp_path / "perturbed"
    model = AutoModelForCausalLM.from_pretrained(src)
    with torch.no_grad():
        model.get_output_embeddings().weight.mul_(1.5)
    model.save_pretrained(other)
    api = HfApi()
    api.create_repo("tester/fam")
    for branch, folder in (("step1", src), ("step2", other)):
        api.create_branch("tester/fam", branch=branch)
        api.upload_folder(
            folder_path=str(folder), repo_id="tester/fam", revision=branch, allow_patterns=["*.json", "*.safetensors"]
        )
    d = shared_data / "tinystories"
    base = ["sweep", "tester/fam", "--tokenizer", str(src), "--train-file", str(d / "train-head.txt")]
    base += ["--max-tokens", "300", "--block-size", "32", "--batch-size", "4", "--no-progress"]
    base += ["--output-dir", str(tmp_path / "sweep"), "--push-to", "tester/fam-measured", "--index", "tester/fam-index"]
    assert main([*base, "--revisions", "step1"]) == 0  # the first branch, pushed and indexed
    capsys.readouterr()
    state = hub_env.hub.state
    hub_env.hub.fail("commit", times=-1)  # every commit from now on is dropped: the push dies at step2
    assert main([*base, "--revisions", "step*"]) == 1
    err = [line for line in capsys.readouterr().err.splitlines() if line.startswith("hf-collapse")]
    assert len(err) == 1 and err[0].startswith("hf-collapse sweep: could not push to tester/fam-measured: "), err
    assert "run the same command again" in err[0]
    assert [p.split("/commit/")[0] for _, p in state.dropped] == ["/api/models/tester/fam-measured"], state.dropped
    # push_measured creates the branch, then commits: the branch may exist, without the statistics
    if "step2" in {b.name for b in api.list_repo_refs("tester/fam-measured").branches}:
        assert "collapse/statistics.safetensors" not in hub_env.hub.files("tester/fam-measured", revision="step2")
    assert [r["revision"] for r in load_measurements("tester/fam-index")] == ["step1"]
    hub_env.hub.fail("commit", times=0)
    commits = len(state.commits)
    assert main([*base, "--revisions", "step*"]) == 0
    out = capsys.readouterr().out
    assert "tester/fam-measured@step1: up to date" in out and "tester/fam-measured@step2: pushed" in out
    assert [c[1] for c in state.commits[commits:] if c[0] == "tester/fam-measured"] == ["step2"]
    assert [r["revision"] for r in load_measurements("tester/fam-index")] == ["step1", "step2"]
    assert hub_env.hub.state.unhandled == []
