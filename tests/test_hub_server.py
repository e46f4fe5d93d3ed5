"""The local Hub server (tests/hub_server.py) through the real clients, as user code calls them:
dataset repos, refs (branches, tags, commits to a branch), deletions and atomic commits, Collections,
and ``datasets.load_dataset`` of a Parquet dataset repo.

Every test here starts the server through the ``hub_env`` fixture (tests/conftest.py), which marks it slow.
"""

import io
import json
import subprocess
import sys

import pytest

# huggingface_hub's LFS upload passes a file object as data=, which its HTTP client deprecates
pytestmark = pytest.mark.filterwarnings("ignore:Use 'content=<...>':DeprecationWarning")


def parquet_bytes(table: dict) -> bytes:
    import pyarrow as pa
    import pyarrow.parquet as pq

    buffer = io.BytesIO()
    pq.write_table(pa.table(table), buffer)
    return buffer.getvalue()


@pytest.fixture
def api(hub_env):
    from huggingface_hub import HfApi

    return HfApi(endpoint=hub_env.url, token="hf_local_test_token")


@pytest.mark.slow
def test_dataset_repo_upload_list_download(hub_env, api, tmp_path):
    from huggingface_hub import CommitOperationAdd, hf_hub_download, snapshot_download

    url = api.create_repo("measurements", repo_type="dataset")
    assert url.repo_type == "dataset" and url.repo_id == "tester/measurements"
    api.create_repo("measurements", repo_type="dataset", exist_ok=True)
    api.create_repo("measurements")  # a model of the same name is another repo
    table = parquet_bytes({"model": ["a", "b"], "nc1": [0.5, 0.25]})
    info = api.create_commit(
        "tester/measurements",
        [CommitOperationAdd("data/a/rows.parquet", table), CommitOperationAdd("notes.txt", b"hello\n")],
        commit_message="two files",
        repo_type="dataset",
    )
    api.upload_file(
        path_or_fileobj=b"# card\n", path_in_repo="README.md", repo_id="tester/measurements", repo_type="dataset"
    )
    files = api.list_repo_files("tester/measurements", repo_type="dataset")
    assert files == [".gitattributes", "README.md", "data/a/rows.parquet", "notes.txt"]
    assert api.list_repo_files("tester/measurements") == [".gitattributes"]
    assert hub_env.hub.repo("tester/measurements", "dataset").resolve("main").files["data/a/rows.parquet"].lfs

    path = hf_hub_download("tester/measurements", "data/a/rows.parquet", repo_type="dataset", revision=info.oid)
    assert open(path, "rb").read() == table
    folder = snapshot_download("tester/measurements", repo_type="dataset", cache_dir=tmp_path / "cache")
    assert (tmp_path / "cache").exists() and open(f"{folder}/notes.txt", "rb").read() == b"hello\n"

    ds = api.dataset_info("tester/measurements", files_metadata=True)
    assert (
        ds.id == "tester/measurements"
        and ds.sha == api.list_repo_refs("tester/measurements", repo_type="dataset").branches[0].target_commit
    )
    sizes = {s.rfilename: (s.size, s.lfs is not None) for s in ds.siblings}
    assert sizes["data/a/rows.parquet"] == (len(table), True) and sizes["notes.txt"] == (6, False)
    old = api.dataset_info("tester/measurements", revision=info.oid)
    assert old.sha == info.oid and "README.md" not in {s.rfilename for s in old.siblings}

    paths = api.get_paths_info("tester/measurements", ["data", "notes.txt", "missing"], repo_type="dataset")
    assert [(type(p).__name__, p.path) for p in paths] == [("RepoFolder", "data"), ("RepoFile", "notes.txt")]
    tree = list(api.list_repo_tree("tester/measurements", "data", repo_type="dataset", recursive=True, expand=True))
    assert [p.path for p in tree] == ["data/a", "data/a/rows.parquet"]
    assert tree[1].last_commit.oid == info.oid and tree[1].last_commit.title == "two files"
    commits = api.list_repo_commits("tester/measurements", repo_type="dataset")
    assert [c.title for c in commits] == ["Upload README.md with huggingface_hub", "two files", "initial commit"]

    # ranged reads (HfFileSystem, datasets' streaming): an LFS file through the redirect, a regular file
    from huggingface_hub import HfFileSystem

    fs = HfFileSystem(endpoint=hub_env.url, token="hf_local_test_token")
    with fs.open("datasets/tester/measurements/data/a/rows.parquet", "rb", block_size=4) as f:
        f.seek(len(table) - 4)
        assert f.read() == b"PAR1"
    with fs.open("datasets/tester/measurements/notes.txt", "rb", block_size=2) as f:
        f.seek(1)
        assert f.read(3) == b"ell"
    assert hub_env.hub.state.unhandled == [] and hub_env.hub.state.errors == []


@pytest.mark.slow
def test_refs_branches_tags_and_commits_to_a_branch(hub_env, api):
    from huggingface_hub import hf_hub_download
    from huggingface_hub.errors import HfHubHTTPError, RevisionNotFoundError

    repo = api.create_repo("family-160m").repo_id
    first = api.upload_file(path_or_fileobj=b"v0", path_in_repo="w.txt", repo_id=repo).oid
    api.create_branch(repo, branch="step100")
    step100 = api.upload_file(path_or_fileobj=b"v100", path_in_repo="w.txt", repo_id=repo, revision="step100").oid
    api.create_tag(repo, tag="v1.0", revision="step100", tag_message="first release")
    api.create_branch(repo, branch="from-tag", revision="v1.0")
    api.create_branch(repo, branch="from-sha", revision=first)
    api.create_branch(repo, branch="step100", exist_ok=True)
    with pytest.raises(HfHubHTTPError) as e:
        api.create_branch(repo, branch="step100")
    assert e.value.response.status_code == 409
    with pytest.raises(RevisionNotFoundError):
        api.create_branch(repo, branch="nowhere", revision="no-such-revision")

    refs = api.list_repo_refs(repo)
    branches = {b.name: b.target_commit for b in refs.branches}
    main = api.model_info(repo).sha
    assert branches == {"main": main, "step100": step100, "from-tag": step100, "from-sha": first}
    assert [(t.name, t.ref, t.target_commit) for t in refs.tags] == [("v1.0", "refs/tags/v1.0", step100)]
    assert main == first  # the commit to step100 left main alone
    assert api.model_info(repo, revision="step100").sha == step100
    for revision, content in (("step100", b"v100"), ("v1.0", b"v100"), ("main", b"v0"), ("from-sha", b"v0")):
        assert open(hf_hub_download(repo, "w.txt", revision=revision), "rb").read() == content, revision
    assert [c.commit_id for c in api.list_repo_commits(repo, revision="step100")][:2] == [step100, first]
    assert hub_env.hub.state.commits[-1] == (repo, "step100", "Upload w.txt with huggingface_hub")

    api.delete_branch(repo, branch="from-sha")
    api.delete_tag(repo, tag="v1.0")
    refs = api.list_repo_refs(repo)
    assert {b.name for b in refs.branches} == {"main", "step100", "from-tag"} and refs.tags == []
    with pytest.raises(RevisionNotFoundError):  # commits go to a branch, not a tag or a missing branch
        api.upload_file(path_or_fileobj=b"x", path_in_repo="x.txt", repo_id=repo, revision="step200")
    # a dataset repo has refs too
    api.create_repo("family-measurements", repo_type="dataset")
    api.create_branch("tester/family-measurements", branch="step100", repo_type="dataset")
    api.upload_file(
        path_or_fileobj=b"1",
        path_in_repo="a.txt",
        repo_id="tester/family-measurements",
        repo_type="dataset",
        revision="step100",
    )
    assert hub_env.hub.files("tester/family-measurements", "step100", repo_type="dataset") == [
        ".gitattributes",
        "a.txt",
    ]
    assert hub_env.hub.files("tester/family-measurements", repo_type="dataset") == [".gitattributes"]
    assert hub_env.hub.state.unhandled == [] and hub_env.hub.state.errors == []


@pytest.mark.slow
def test_delete_file_and_commits_are_atomic(hub_env, api):
    from huggingface_hub import CommitOperationAdd, CommitOperationDelete
    from huggingface_hub.errors import EntryNotFoundError, HfHubHTTPError

    repo = api.create_repo("rows", repo_type="dataset").repo_id
    base = api.create_commit(
        repo,
        [CommitOperationAdd(f"data/{i}.parquet", parquet_bytes({"x": [i]})) for i in range(3)]
        + [CommitOperationAdd("keep.txt", b"keep")],
        commit_message="rows",
        repo_type="dataset",
    ).oid
    api.delete_file("data/0.parquet", repo, repo_type="dataset")
    assert hub_env.hub.files(repo, repo_type="dataset") == [
        ".gitattributes",
        "data/1.parquet",
        "data/2.parquet",
        "keep.txt",
    ]
    head = api.dataset_info(repo).sha
    state = hub_env.hub.repo(repo, "dataset")
    before = (dict(state.branches), len(state.commits), len(hub_env.hub.state.commits))
    # an add and a deletion of a missing file in one commit: nothing applies
    with pytest.raises(EntryNotFoundError):
        api.create_commit(
            repo,
            [
                CommitOperationAdd("new.parquet", parquet_bytes({"x": [9]})),
                CommitOperationAdd("new.txt", b"new"),
                CommitOperationDelete("data/0.parquet"),
            ],
            commit_message="half",
            repo_type="dataset",
        )
    # a stale parent: nothing applies
    with pytest.raises(HfHubHTTPError) as e:
        api.create_commit(
            repo,
            [CommitOperationAdd("new.txt", b"new")],
            commit_message="stale",
            repo_type="dataset",
            parent_commit=base,
        )
    assert e.value.response.status_code == 412
    assert (dict(state.branches), len(state.commits), len(hub_env.hub.state.commits)) == before
    assert api.dataset_info(repo).sha == head and "new.txt" not in api.list_repo_files(repo, repo_type="dataset")
    api.delete_folder("data", repo, repo_type="dataset")
    assert api.list_repo_files(repo, repo_type="dataset") == [".gitattributes", "keep.txt"]
    assert hub_env.hub.state.unhandled == [] and hub_env.hub.state.errors == []


@pytest.mark.slow
def test_collections(hub_env, api):
    from huggingface_hub.errors import HfHubHTTPError

    api.create_repo("pythia-160m-measured")
    api.create_repo("pythia-measurements", repo_type="dataset")
    collection = api.create_collection("Pythia, measured", namespace="tester", description="NC over training")
    again = api.create_collection("Pythia, measured", namespace="tester", exists_ok=True)
    assert again.slug == collection.slug and collection.slug.startswith("tester/pythia-measured-")
    with pytest.raises(HfHubHTTPError) as e:
        api.create_collection("Pythia, measured", namespace="tester")
    assert e.value.response.status_code == 409
    api.add_collection_item(collection.slug, "tester/pythia-160m-measured", "model", note="160M, 8 checkpoints")
    api.add_collection_item(collection.slug, "tester/pythia-measurements", "dataset", note="every row")
    same = api.add_collection_item(collection.slug, "tester/pythia-160m-measured", "model", exists_ok=True)
    assert len(same.items) == 2
    with pytest.raises(HfHubHTTPError) as e:
        api.add_collection_item(collection.slug, "tester/pythia-160m-measured", "model")
    assert e.value.response.status_code == 409
    with pytest.raises(HfHubHTTPError) as e:
        api.add_collection_item(collection.slug, "tester/no-such-model", "model")
    assert e.value.response.status_code == 404

    got = api.get_collection(collection.slug)
    # the Hub answers the owner as an object; huggingface_hub keeps it as it comes
    assert (got.title, got.owner["name"], got.description) == ("Pythia, measured", "tester", "NC over training")
    assert [(i.item_id, i.item_type, i.note, i.position) for i in got.items] == [
        ("tester/pythia-160m-measured", "model", "160M, 8 checkpoints", 0),
        ("tester/pythia-measurements", "dataset", "every row", 1),
    ]
    assert got.url == f"{hub_env.url}/collections/{collection.slug}"
    api.create_collection("Other", namespace="tester")
    assert {c.title for c in api.list_collections(owner="tester")} == {"Pythia, measured", "Other"}
    assert [c.slug for c in api.list_collections(item="datasets/tester/pythia-measurements")] == [collection.slug]
    assert [c.slug for c in api.list_collections(item="models/tester/pythia-160m-measured")] == [collection.slug]
    assert list(api.list_collections(owner="someone-else")) == []

    api.delete_collection_item(collection.slug, got.items[0].item_object_id)
    assert [i.item_id for i in api.get_collection(collection.slug).items] == ["tester/pythia-measurements"]
    api.delete_collection(collection.slug)
    with pytest.raises(HfHubHTTPError) as e:
        api.get_collection(collection.slug)
    assert e.value.response.status_code == 404
    assert hub_env.hub.state.unhandled == [] and hub_env.hub.state.errors == []


LOAD = """
import json, sys
import datasets
ds = datasets.load_dataset(sys.argv[1], split="train")
print(json.dumps({"rows": ds.to_list(), "columns": ds.column_names}))
"""


@pytest.mark.slow
def test_load_dataset_reads_parquet_rows_from_a_dataset_repo(hub_env, api, tmp_path):
    """Two Parquet files in one commit with the measurements card, whose ``configs`` block names them;
    ``datasets.load_dataset`` in a fresh process (``datasets`` reads ``HF_ENDPOINT`` at import) gets
    their rows, and only theirs."""
    from huggingface_hub import CommitOperationAdd

    from hf_collapse.integrations.model_card import render_measurements_card

    repo = api.create_repo("nc-rows", repo_type="dataset").repo_id
    card = str(render_measurements_card(repo, ["model", "nc1_cdnv"]))  # its configs block: data/**/*.parquet
    api.create_commit(
        repo,
        [
            CommitOperationAdd("README.md", card.encode()),
            CommitOperationAdd("data/m1/main.parquet", parquet_bytes({"model": ["m1"], "nc1": [0.5]})),
            CommitOperationAdd("data/m2/step100.parquet", parquet_bytes({"model": ["m2"], "nc1": [0.25]})),
            CommitOperationAdd("other/ignored.parquet", parquet_bytes({"model": ["no"], "nc1": [9.0]})),
        ],
        commit_message="rows",
        repo_type="dataset",
    )
    env = {**hub_env.env, "HF_DATASETS_CACHE": str(tmp_path / "datasets"), "HF_DATASETS_OFFLINE": "0"}
    out = subprocess.run(
        [sys.executable, "-c", LOAD, repo], env=env, capture_output=True, text=True, timeout=300, cwd=tmp_path
    )
    assert out.returncode == 0, out.stderr[-3000:]
    result = json.loads(out.stdout.strip().splitlines()[-1])
    assert result["columns"] == ["model", "nc1"]
    assert sorted(map(tuple, (r.values() for r in result["rows"]))) == [("m1", 0.5), ("m2", 0.25)]
    assert hub_env.hub.state.unhandled == [] and hub_env.hub.state.errors == []


def test_measurements_card_renders_parses_and_cites():
    """The dataset card template (model_cards/measurements_dataset_card.md.j2): valid YAML with a
    ``configs`` block, license and tag, the columns' meanings from the registry, the citation."""
    import yaml
    from huggingface_hub import DatasetCard

    from hf_collapse.core.registry import MEASURES
    from hf_collapse.integrations.model_card import (
        MEASUREMENT_COLUMNS,
        MEASUREMENTS_TEMPLATE_PATH,
        render_measurements_card,
    )

    assert MEASUREMENTS_TEMPLATE_PATH.parent.name == "model_cards" and MEASUREMENTS_TEMPLATE_PATH.is_file()
    card = render_measurements_card("tester/pythia-nc", models=["EleutherAI/pythia-160m"], description="Pythia.")
    text = str(card)
    meta = yaml.safe_load(text.split("---")[1])
    assert meta["configs"] == [
        {"config_name": "default", "data_files": [{"split": "train", "path": "data/**/*.parquet"}]}
    ]
    assert meta["license"] == "apache-2.0" and "neural-collapse" in meta["tags"]
    parsed = DatasetCard(text)
    assert parsed.data.configs == meta["configs"] and parsed.data.license == "apache-2.0"
    assert "arXiv:2405.17767" in parsed.text and "https://arxiv.org/abs/2405.17767" in parsed.text
    assert "Linguistic Collapse" in parsed.text and 'load_dataset("tester/pythia-nc", split="train")' in text
    assert "[EleutherAI/pythia-160m](https://huggingface.co/EleutherAI/pythia-160m)" in text
    for key, measure in MEASURES.items():
        assert f"| `{key}` | {measure.name} | {measure.meaning} | {measure.direction_text} |" in text, key
    for key, meaning in MEASUREMENT_COLUMNS.items():
        assert f"| `{key}` | {meaning} |" in text, key

    few = str(render_measurements_card(columns=["model", "revision", "nc1_cdnv"], data_files="rows/*.parquet"))
    assert "`nc2_etf_error`" not in few and "`dataset_config`" not in few and "| `nc1_cdnv` |" in few
    assert yaml.safe_load(few.split("---")[1])["configs"][0]["data_files"][0]["path"] == "rows/*.parquet"
    assert "arXiv:2405.17767" in few
    with pytest.raises(ValueError, match="unknown measurements column"):
        render_measurements_card(columns=["model", "nc9"])


def test_an_error_answer_leaves_no_request_body_on_a_keep_alive_connection(hub_env):
    """A POST answered with an error before its body was read (paths-info of a missing repo) does not
    leave the body on the connection, where it would be parsed as the next request."""
    import http.client
    from urllib.parse import urlsplit

    url = urlsplit(hub_env.url)
    conn = http.client.HTTPConnection(url.hostname, url.port, timeout=30)
    body = "paths=collapse%2Fstatistics.safetensors&expand=true"
    headers = {"Content-Type": "application/x-www-form-urlencoded", "Authorization": "Bearer hf_local_test_token"}
    conn.request("POST", "/api/models/tester/missing/paths-info/main", body=body, headers=headers)
    first = conn.getresponse()
    first.read()
    assert first.status == 404
    conn.request("GET", "/api/whoami-v2", headers=headers)  # the same connection
    second = conn.getresponse()
    assert second.status == 200 and json.loads(second.read())["name"] == "tester"
    conn.close()
    assert hub_env.hub.state.unhandled == [] and hub_env.hub.state.errors == []
