"""A small Hub-compatible HTTP server on 127.0.0.1, for testing against the real ``huggingface_hub`` client.

It implements the part of the Hugging Face Hub API that ``huggingface_hub`` (2.x) and ``datasets`` use,
for model and dataset repos (``repo_type="dataset"``: the same routes under ``/api/datasets/...`` and
``/datasets/...``; a model and a dataset may share a name):
- ``create_repo``; ``repo_info``/``model_info``/``dataset_info`` (``/api/{models,datasets}/ID[/revision/REV]``,
  ``?blobs=1`` adds sizes and LFS info); ``list_repo_tree``/``list_repo_files`` (``tree/REV[/PATH]``,
  ``?recursive``, ``?expand`` adds ``lastCommit``); ``get_paths_info`` (``paths-info/REV``, form-encoded);
  ``list_repo_commits`` (``commits/REV``, newest first);
- refs: ``list_repo_refs`` (branches and tags with their target commits), ``create_branch`` (from a
  branch, tag or commit: ``revision=``), ``delete_branch``, ``create_tag``, ``delete_tag``; a revision is
  a branch, a tag, a commit sha, or ``refs/heads/B`` / ``refs/tags/T``;
- ``create_commit``/``upload_file``/``upload_folder``/``delete_file``/``delete_folder`` on any branch
  (``revision="step100"``): preupload, NDJSON commit with regular and LFS files and deletions, the git-LFS
  batch API with basic PUT upload + verify. A commit applies whole or not at all: it is checked completely
  (branch, ``parentCommit``, every LFS object uploaded, every deleted path present) before the repo changes;
- ``validate-yaml``; ``hf_hub_download``/``snapshot_download`` (HEAD/GET ``resolve`` with
  ``X-Repo-Commit``/``ETag``/``Content-Length``; LFS files answer with a 302 to a blob URL and
  ``X-Linked-Etag``/``X-Linked-Size``, as the Hub does; ``Range`` requests are answered with 206);
- ``datasets.load_dataset(repo_id)`` of a dataset repo of Parquet/CSV/JSON files (README download,
  ``dataset_info``, tree listing, paths-info, resolve); the dataset viewer's Parquet export
  (``refs/convert/parquet``) does not exist here, so ``datasets`` reads the repo's own files;
- Collections: ``create_collection`` (409 with the existing slug for a title already used in the
  namespace, so ``exists_ok=True`` works), ``get_collection``, ``list_collections`` (``owner``, ``item``),
  ``add_collection_item`` (the repo must exist; 409 when already in), ``delete_collection_item``,
  ``delete_collection``.
Everything is kept in memory.

Pointing the client at it (the recipe ``hub_env`` in ``tests/conftest.py`` applies):
- a fresh process: ``HF_ENDPOINT=http://127.0.0.1:PORT HF_HUB_DISABLE_XET=1 HF_HOME=... HF_TOKEN=...``
  before ``huggingface_hub`` (and ``datasets``, which reads ``HF_ENDPOINT`` at import) is imported;
- in-process, after import: set ``huggingface_hub.constants.ENDPOINT``, ``.HUGGINGFACE_CO_URL_TEMPLATE``,
  ``.HF_HUB_DISABLE_XET``, ``.HF_HUB_CACHE``, ``.HF_HUB_OFFLINE``, the module-level default client
  ``huggingface_hub.hf_api.api.endpoint`` and reset ``transformers.utils.hub._hf_api`` (a cached HfApi).
  ``datasets.config.HF_ENDPOINT`` is read at import: run ``load_dataset`` in a subprocess with the env.
``HF_HUB_DISABLE_XET=1`` is needed because ``hf_xet`` is installed: the client would otherwise upload
through the Xet storage protocol, which this server does not speak.

Fault injection (for tests of failures mid-way): ``hub.fail("lfs_put", times=-1)`` makes the server
drop the connection, without an answer, on that many matching requests (-1: until ``hub.fail(kind, 0)``),
as if it went away during the upload. Kinds: ``lfs_put`` (an LFS blob upload), ``commit`` (the
commit call), ``preupload``.

Not implemented: pull requests, Spaces and buckets, multipart LFS, Xet, auth checks (any token is
accepted and recorded), pagination (one page), updating collections or their items, deleting repos.
"""

from __future__ import annotations

import base64
import hashlib
import json
import re
import threading
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, unquote, urlsplit

LFS_SUFFIXES = (
    ".safetensors",
    ".bin",
    ".pt",
    ".pth",
    ".ckpt",
    ".h5",
    ".msgpack",
    ".model",
    ".png",
    ".npz",
    ".parquet",
    ".arrow",
)
LFS_MIN_SIZE = 10 * 1024 * 1024
USER = "tester"
REPO_TYPES = ("model", "dataset")


def git_blob_sha1(data: bytes) -> str:
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


def repo_key(repo_type: str, repo_id: str) -> str:
    """Key of a repo in ``HubState.repos``: the id for models (as before), ``datasets/<id>`` for datasets."""
    return repo_id if repo_type == "model" else f"{repo_type}s/{repo_id}"


def iso(timestamp: float) -> str:
    return datetime.fromtimestamp(timestamp, timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"


@dataclass
class Entry:
    data: bytes
    lfs: bool

    @property
    def sha256(self) -> str:
        return hashlib.sha256(self.data).hexdigest()

    @property
    def oid(self) -> str:  # what preupload/ETag report: sha256 for LFS, the git blob id otherwise
        return self.sha256 if self.lfs else git_blob_sha1(self.data)


@dataclass
class Commit:
    sha: str
    parent: str | None
    message: str
    files: dict  # path -> Entry
    date: float = field(default_factory=time.time)


@dataclass
class Repo:
    repo_id: str
    private: bool
    repo_type: str = "model"
    branches: dict = field(default_factory=dict)  # name -> commit sha
    tags: dict = field(default_factory=dict)  # name -> commit sha
    commits: dict = field(default_factory=dict)  # sha -> Commit

    def resolve(self, revision: str) -> Commit | None:
        """A branch, a tag, ``refs/heads/B``, ``refs/tags/T`` or a commit sha."""
        if revision.startswith("refs/heads/"):
            sha = self.branches.get(revision[len("refs/heads/") :])
        elif revision.startswith("refs/tags/"):
            sha = self.tags.get(revision[len("refs/tags/") :])
        else:
            sha = self.branches.get(revision, self.tags.get(revision, revision))
        return self.commits.get(sha) if sha is not None else None


class HubState:
    """All repos, collections, LFS blobs and a log of requests and commits (for assertions in tests)."""

    def __init__(self):
        self.repos: dict[str, Repo] = {}  # repo_key(type, id) -> Repo
        self.collections: dict[str, dict] = {}  # slug -> the collection's JSON (as the Hub answers it)
        self.lfs: dict[str, bytes] = {}
        self.lock = threading.Lock()
        self.requests: list[tuple[str, str]] = []
        self.unhandled: list[tuple[str, str]] = []
        self.errors: list[tuple[str, str, str]] = []  # (method, path, exception) of requests that raised
        self.commits: list[tuple[str, str, str]] = []  # (repo key, branch, message)
        self.tokens: set[str] = set()
        self.faults: dict[str, int] = {}  # kind -> requests left to drop (-1: all)
        self.dropped: list[tuple[str, str]] = []  # (kind, path) of dropped requests
        self._counter = 0

    def take_fault(self, kind: str) -> bool:
        left = self.faults.get(kind, 0)
        if left == 0:
            return False
        if left > 0:
            self.faults[kind] = left - 1
        return True

    def new_id(self, *seed) -> str:
        self._counter += 1
        return hashlib.sha1(f"{seed}|{self._counter}".encode()).hexdigest()

    def new_commit(self, repo: Repo, branch: str, message: str, files: dict) -> Commit:
        parent = repo.branches.get(branch)
        commit = Commit(
            self.new_id(repo_key(repo.repo_type, repo.repo_id), branch, parent, message, sorted(files)),
            parent,
            message,
            files,
        )
        repo.commits[commit.sha] = commit
        repo.branches[branch] = commit.sha
        self.commits.append((repo_key(repo.repo_type, repo.repo_id), branch, message))
        return commit


class HubHandler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    timeout = 30  # socket timeout per connection: a stuck client cannot hold a thread forever
    state: HubState  # set on the per-server subclass
    base_url: str  # the Hub's URL
    cdn_url: str  # where LFS blobs are served and uploaded: another origin, like the Hub's CDN/S3

    def log_message(self, format, *args):  # keep pytest output clean
        pass

    # ------------------------------------------------------------------ plumbing
    def _body(self) -> bytes:
        """The request body, read once (a second call returns the same bytes)."""
        if getattr(self, "_body_bytes", None) is None:
            self._body_bytes = self._read_body()
        return self._body_bytes

    def _read_body(self) -> bytes:
        if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
            out = bytearray()
            while True:
                size = int(self.rfile.readline().split(b";")[0].strip() or b"0", 16)
                if size == 0:
                    while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                        pass
                    return bytes(out)
                out += self.rfile.read(size)
                self.rfile.readline()
        return self.rfile.read(int(self.headers.get("Content-Length") or 0))

    def _send(self, status: int, body: bytes = b"", headers: dict | None = None, content_type="application/json"):
        self.send_response(status)
        headers = dict(headers or {})
        headers.setdefault("Content-Type", content_type)
        headers.setdefault("Content-Length", str(len(body)))
        for k, v in headers.items():
            self.send_header(k, v)
        self.end_headers()
        if self.command != "HEAD" and body:
            self.wfile.write(body)

    def _send_data(self, data: bytes, headers: dict) -> None:
        """A file's bytes, or the part a ``Range: bytes=a-b`` header asks for (206)."""
        headers = {**headers, "Accept-Ranges": "bytes"}
        match = re.fullmatch(r"bytes=(\d*)-(\d*)", self.headers.get("Range", "").strip())
        if match is None or not (match[1] or match[2]):
            self._send(200, data, headers, content_type="application/octet-stream")
            return
        if match[1]:
            start, end = int(match[1]), min(int(match[2]) if match[2] else len(data) - 1, len(data) - 1)
        else:  # a suffix: the last N bytes
            start, end = max(0, len(data) - int(match[2])), len(data) - 1
        if start >= len(data) or start > end:
            self._send(416, b"", {**headers, "Content-Range": f"bytes */{len(data)}"})
            return
        headers["Content-Range"] = f"bytes {start}-{end}/{len(data)}"
        self._send(206, data[start : end + 1], headers, content_type="application/octet-stream")

    def _json(self, status: int, obj, headers: dict | None = None, content_type="application/json"):
        self._send(status, json.dumps(obj).encode(), headers, content_type)

    def _error(self, status: int, code: str | None, message: str):
        headers = {"X-Error-Message": message}
        if code:
            headers["X-Error-Code"] = code
        self._json(status, {"error": message}, headers)

    def _repo(self, repo_type: str, repo_id: str) -> Repo | None:
        repo = self.state.repos.get(repo_key(repo_type, repo_id))
        if repo is None:
            self._error(404, "RepoNotFound", f"Repository {repo_id} not found")
        return repo

    def _commit(self, repo: Repo, revision: str) -> Commit | None:
        commit = repo.resolve(revision)
        if commit is None:
            self._error(404, "RevisionNotFound", f"Invalid rev id: {revision}")
        return commit

    def _drop_if_faulty(self, kind: str) -> bool:
        """Server gone mid-request: close the connection without an answer (fault injection)."""
        import socket

        if not self.state.take_fault(kind):
            return False
        self.state.dropped.append((kind, self.path))
        self.close_connection = True
        try:
            self.connection.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        return True

    def _route(self, method: str):
        url = urlsplit(self.path)
        query = {k: v[-1] for k, v in parse_qs(url.query).items()}
        raw = [p for p in url.path.split("/") if p]
        parts = [unquote(p) for p in raw]
        auth = self.headers.get("Authorization", "")
        self._body_bytes = None
        try:
            with self.state.lock:
                self.state.requests.append((method, self.path))
                if auth.startswith("Bearer "):
                    self.state.tokens.add(auth[len("Bearer ") :])
                try:
                    handled = self._dispatch(method, parts, query)
                except Exception as e:  # a bug here or a malformed request: answer, and record it for the tests
                    self.state.errors.append((method, self.path, repr(e)))
                    self._error(500, None, f"server error: {e!r}")
                    return
            if not handled:
                self.state.unhandled.append((method, self.path))
                self._error(404, None, f"unhandled route {method} {self.path}")
        finally:
            # a keep-alive connection reads the next request where this one's body ended: a route that
            # answered without reading the body (an error, a missing repo) must not leave it unread
            if self._body_bytes is None and not self.close_connection:
                self._body()

    do_GET = lambda self: self._route("GET")  # noqa: E731
    do_HEAD = lambda self: self._route("HEAD")  # noqa: E731
    do_POST = lambda self: self._route("POST")  # noqa: E731
    do_PUT = lambda self: self._route("PUT")  # noqa: E731
    do_DELETE = lambda self: self._route("DELETE")  # noqa: E731

    # ------------------------------------------------------------------ routes
    def _dispatch(self, method: str, p: list[str], q: dict) -> bool:
        if method == "POST" and p == ["api", "repos", "create"]:
            return self._create_repo()
        if method == "GET" and p[:2] == ["api", "whoami-v2"]:
            self._json(200, {"type": "user", "name": USER, "orgs": [], "auth": {"accessToken": {"role": "write"}}})
            return True
        if method == "GET" and p == ["api", "agent-harnesses"]:  # fetched once a day by the client
            self._json(200, {"standardEnvVars": [], "harnesses": {}})
            return True
        if method == "POST" and p == ["api", "validate-yaml"]:
            return self._validate_yaml()
        if p[:2] == ["api", "collections"]:
            return self._collections(method, p[2:], q)
        if p[:1] == ["api"] and len(p) >= 4 and p[1] in ("models", "datasets"):
            return self._api_repo(method, p[1][:-1], p[2] + "/" + p[3], p[4:], q)
        if p[:1] == ["_lfs"] and len(p) == 2:
            return self._lfs_blob(method, p[1])
        repo_type = "dataset" if p[:1] == ["datasets"] else "model"
        if repo_type != "model":
            p = p[1:]
        if method == "POST" and len(p) == 6 and p[1].endswith(".git") and p[2:5] == ["info", "lfs", "objects"]:
            if p[5] == "batch":
                return self._lfs_batch(repo_type, p[0] + "/" + p[1][: -len(".git")])
            if p[5] == "verify":
                return self._lfs_verify()
        if method in ("GET", "HEAD") and len(p) >= 5 and p[2] == "resolve":
            return self._resolve(repo_type, p[0] + "/" + p[1], p[3], "/".join(p[4:]))
        return False

    def _create_repo(self) -> bool:
        payload = json.loads(self._body() or b"{}")
        repo_type = payload.get("type") or "model"
        if repo_type not in REPO_TYPES:
            self._error(400, None, f"this test server hosts model and dataset repos, not {repo_type!r}")
            return True
        repo_id = f"{payload.get('organization') or USER}/{payload['name']}"
        url = f"{self.base_url}/{repo_key(repo_type, repo_id)}"
        key = repo_key(repo_type, repo_id)
        if key in self.state.repos:
            self._json(409, {"error": f"You already created this {repo_type} repo", "url": url})
            return True
        private = payload.get("visibility") == "private" or bool(payload.get("private"))
        repo = Repo(repo_id, private, repo_type)
        self.state.repos[key] = repo
        gitattributes = "".join(f"*{s} filter=lfs diff=lfs merge=lfs -text\n" for s in LFS_SUFFIXES)
        self.state.new_commit(repo, "main", "initial commit", {".gitattributes": Entry(gitattributes.encode(), False)})
        self._json(200, {"url": url, "name": repo_id, "id": repo_id})
        return True

    def _validate_yaml(self) -> bool:
        import yaml  # a dependency of huggingface_hub

        content = json.loads(self._body()).get("content", "")
        if content.startswith("---"):
            block = content.split("---", 2)[1] if content.count("---") >= 2 else None
            try:
                meta = yaml.safe_load(block) if block is not None else None
                if block is None or not isinstance(meta, (dict, type(None))):
                    raise ValueError("metadata is not a mapping")
            except Exception as e:  # the Hub answers 400 with the reason in text
                self._send(400, f"Invalid metadata in README.md: {e}".encode(), content_type="text/plain")
                return True
        self._json(200, {"errors": [], "warnings": []})
        return True

    def _api_repo(self, method: str, repo_type: str, repo_id: str, rest: list[str], q: dict) -> bool:
        repo = self._repo(repo_type, repo_id)
        if repo is None:
            return True
        if method == "GET" and (rest == [] or (len(rest) == 2 and rest[0] == "revision")):
            commit = self._commit(repo, rest[1] if rest else "main")
            if commit is not None:
                self._json(200, self._repo_info(repo, commit, q.get("blobs", "").lower() in ("1", "true")))
            return True
        if method == "GET" and rest == ["refs"]:
            ref = lambda kind, name, sha: {"name": name, "ref": f"refs/{kind}/{name}", "targetCommit": sha}  # noqa: E731
            branches = [ref("heads", b, s) for b, s in repo.branches.items()]
            self._json(
                200, {"branches": branches, "tags": [ref("tags", t, s) for t, s in repo.tags.items()], "converts": []}
            )
            return True
        if method == "GET" and len(rest) >= 2 and rest[0] == "tree":
            flag = lambda key: q.get(key, "").lower() in ("1", "true")  # noqa: E731
            return self._tree(repo, rest[1], "/".join(rest[2:]), flag("recursive"), flag("expand"))
        if method == "POST" and len(rest) == 2 and rest[0] == "paths-info":
            return self._paths_info(repo, rest[1])
        if method == "GET" and len(rest) == 2 and rest[0] == "commits":
            return self._list_commits(repo, rest[1])
        if method in ("POST", "DELETE") and len(rest) >= 2 and rest[0] in ("branch", "tag"):
            return self._ref(method, repo, rest[0], "/".join(rest[1:]))
        if method == "POST" and len(rest) == 2 and rest[0] == "preupload":
            return self._preupload(repo, rest[1])
        if method == "POST" and len(rest) == 2 and rest[0] == "commit":
            return self._create_commit(repo, rest[1], q)
        return False

    def _repo_info(self, repo: Repo, commit: Commit, blobs: bool) -> dict:
        siblings = []
        for path, entry in sorted(commit.files.items()):
            sibling = {"rfilename": path}
            if blobs:
                sibling.update({"size": len(entry.data), "blobId": git_blob_sha1(entry.data)})
                if entry.lfs:
                    sibling["lfs"] = {"sha256": entry.sha256, "size": len(entry.data), "pointerSize": 134}
            siblings.append(sibling)
        info = {
            "id": repo.repo_id,
            "author": repo.repo_id.split("/")[0],
            "sha": commit.sha,
            "private": repo.private,
            "disabled": False,
            "gated": False,
            "tags": [],
            "downloads": 0,
            "likes": 0,
            "lastModified": iso(commit.date),
            "createdAt": iso(repo.commits[self._root(repo, commit)].date),
            "siblings": siblings,
        }
        card = self._card_data(commit)
        if card is not None:
            info["cardData"] = card
        if repo.repo_type == "model":
            info.update({"modelId": repo.repo_id, "library_name": None})
        return info

    @staticmethod
    def _root(repo: Repo, commit: Commit) -> str:
        while commit.parent is not None:
            commit = repo.commits[commit.parent]
        return commit.sha

    @staticmethod
    def _card_data(commit: Commit) -> dict | None:
        """The README's YAML front matter, as the Hub's ``cardData``."""
        import yaml

        entry = commit.files.get("README.md")
        text = entry.data.decode("utf-8", "replace") if entry is not None else ""
        if not text.startswith("---") or text.count("---") < 2:
            return None
        try:
            meta = yaml.safe_load(text.split("---", 2)[1])
        except yaml.YAMLError:
            return None
        return meta if isinstance(meta, dict) else None

    def _file_item(self, path: str, entry: Entry) -> dict:
        item = {"type": "file", "oid": git_blob_sha1(entry.data), "size": len(entry.data), "path": path}
        if entry.lfs:
            item["lfs"] = {"oid": entry.sha256, "size": len(entry.data), "pointerSize": 134}
        return item

    @staticmethod
    def _dir_item(path: str) -> dict:
        return {"type": "directory", "oid": hashlib.sha1(path.encode()).hexdigest(), "path": path}

    def _last_commit(self, repo: Repo, commit: Commit, path: str, folder: bool) -> dict:
        """The newest commit up to ``commit`` that changed ``path`` (a file, or anything under a folder)."""

        def view(c: Commit | None) -> dict:
            if c is None:
                return {}
            if folder:
                return {k: v.data for k, v in c.files.items() if k.startswith(path + "/")}
            return {path: c.files[path].data} if path in c.files else {}

        while commit.parent is not None and view(commit) == view(repo.commits[commit.parent]):
            commit = repo.commits[commit.parent]
        return {"id": commit.sha, "title": commit.message.split("\n")[0], "date": iso(commit.date)}

    def _tree(self, repo: Repo, revision: str, prefix: str, recursive: bool, expand: bool = False) -> bool:
        commit = self._commit(repo, revision)
        if commit is None:
            return True
        prefix = prefix.strip("/")
        base = prefix + "/" if prefix else ""
        files, folders = [], set()
        for path, entry in sorted(commit.files.items()):
            if not path.startswith(base):
                continue
            rel = path[len(base) :]
            if "/" in rel:
                segments = rel.split("/")
                for i in range(1, len(segments) if recursive else 2):
                    folders.add(base + "/".join(segments[:i]))
                if not recursive:
                    continue
            files.append(self._file_item(path, entry))
        dirs = [self._dir_item(d) for d in sorted(folders)]
        if prefix and not files and not dirs:
            self._error(404, "EntryNotFound", f"{prefix} does not exist on {revision}")
            return True
        if expand:
            for item in dirs + files:
                item["lastCommit"] = self._last_commit(repo, commit, item["path"], item["type"] == "directory")
        self._json(200, dirs + files)
        return True

    def _paths_info(self, repo: Repo, revision: str) -> bool:
        body = self._body()
        if self.headers.get("Content-Type", "").startswith("application/json"):
            payload = json.loads(body or b"{}")
            paths, expand = payload.get("paths") or [], bool(payload.get("expand"))
        else:  # what the client sends: form-encoded, paths repeated
            form = parse_qs(body.decode())
            paths, expand = form.get("paths", []), form.get("expand", ["False"])[-1].lower() in ("1", "true")
        commit = self._commit(repo, revision)
        if commit is None:
            return True
        out = []
        for path in dict.fromkeys(p.strip("/") for p in paths):  # a path that does not exist is left out
            if path in commit.files:
                item = self._file_item(path, commit.files[path])
            elif path == "" or any(k.startswith(path + "/") for k in commit.files):
                item = self._dir_item(path)
            else:
                continue
            if expand:
                item["lastCommit"] = self._last_commit(repo, commit, path, item["type"] == "directory")
            out.append(item)
        self._json(200, out)
        return True

    def _list_commits(self, repo: Repo, revision: str) -> bool:
        commit = self._commit(repo, revision)
        out = []
        while commit is not None:
            title, _, body = commit.message.partition("\n")
            out.append(
                {
                    "id": commit.sha,
                    "title": title,
                    "message": body.strip(),
                    "authors": [{"user": USER}],
                    "date": iso(commit.date),
                }
            )
            commit = repo.commits.get(commit.parent) if commit.parent else None
        if out:
            self._json(200, out)
        return True

    def _ref(self, method: str, repo: Repo, kind: str, name: str) -> bool:
        """``POST/DELETE branch/NAME`` (``startingPoint``: the revision it starts from, default main),
        ``POST tag/REVISION`` (``{"tag": NAME}``) and ``DELETE tag/NAME``."""
        refs = repo.branches if kind == "branch" else repo.tags
        if method == "DELETE":
            if name not in refs:
                self._error(404, "RevisionNotFound", f"Invalid rev id: {name}")
            elif kind == "branch" and name == "main":
                self._error(403, None, "You cannot delete the default branch")
            else:
                del refs[name]
                self._json(200, {})
            return True
        payload = json.loads(self._body() or b"{}")
        if kind == "branch":
            start = repo.resolve(payload.get("startingPoint") or "main")
        else:
            start, name = repo.resolve(name), payload.get("tag") or ""
        if not name or (kind == "tag" and "/" in name):
            self._error(400, None, f"invalid {kind} name {name!r}")
        elif name in repo.branches or name in repo.tags:
            self._error(409, None, f"Reference {name} already exists")  # the Hub: one namespace for both
        elif start is None:
            self._error(404, "RevisionNotFound", f"Invalid rev id: {payload.get('startingPoint') or name}")
        else:
            refs[name] = start.sha
            self._json(200, {})
        return True

    def _preupload(self, repo: Repo, revision: str) -> bool:
        if self._drop_if_faulty("preupload"):
            return True
        payload = json.loads(self._body())
        commit = self._commit(repo, revision)
        if commit is None:
            return True
        out = []
        for f in payload["files"]:
            sample = base64.b64decode(f["sample"])
            lfs = f["path"].endswith(LFS_SUFFIXES) or f["size"] >= LFS_MIN_SIZE or b"\0" in sample
            existing = commit.files.get(f["path"])
            oid = existing.oid if existing is not None and existing.lfs == lfs else None
            out.append(
                {"path": f["path"], "uploadMode": "lfs" if lfs else "regular", "shouldIgnore": False, "oid": oid}
            )
        self._json(200, {"files": out, "commitOid": commit.sha})
        return True

    def _create_commit(self, repo: Repo, revision: str, q: dict) -> bool:
        """All checks first, on a copy of the files; the branch moves only when every operation applied."""
        if self._drop_if_faulty("commit"):
            return True
        if q.get("create_pr"):
            self._error(400, None, "pull requests are not supported by this test server")
            return True
        lines = [json.loads(line) for line in self._body().splitlines() if line.strip()]
        if revision.startswith("refs/heads/"):
            revision = revision[len("refs/heads/") :]
        if revision not in repo.branches:
            self._error(404, "RevisionNotFound", f"Invalid rev id: {revision} (commits go to a branch)")
            return True
        header = next((x["value"] for x in lines if x["key"] == "header"), {})
        head = repo.resolve(revision)
        if header.get("parentCommit") not in (None, head.sha):
            self._error(412, None, "A commit has happened since. Please refresh and try again.")
            return True
        files = dict(head.files)
        for item in lines:
            key, value = item["key"], item["value"]
            if key == "file":
                files[value["path"]] = Entry(base64.b64decode(value["content"]), False)
            elif key == "lfsFile":
                data = self.state.lfs.get(value["oid"])
                if data is None:
                    self._error(400, None, f"LFS object {value['oid']} for {value['path']} was never uploaded")
                    return True
                files[value["path"]] = Entry(data, True)
            elif key == "deletedFile":
                if files.pop(value["path"], None) is None:
                    self._error(404, "EntryNotFound", "A file with this name doesn't exist")
                    return True
            elif key == "deletedFolder":
                folder = value["path"].rstrip("/") + "/"
                files = {k: v for k, v in files.items() if not k.startswith(folder)}
            elif key != "header":
                self._error(400, None, f"unsupported commit operation {key!r}")
                return True
        message = header.get("summary") or "Update"
        if header.get("description"):
            message += "\n\n" + header["description"]
        commit = self.state.new_commit(repo, revision, message, files)
        self._json(
            200,
            {
                "success": True,
                "commitOid": commit.sha,
                "pullRequestUrl": None,
                "commitUrl": f"{self.base_url}/{repo_key(repo.repo_type, repo.repo_id)}/commit/{commit.sha}",
            },
        )
        return True

    # ------------------------------------------------------------------ collections
    def _collection_slug(self, parts: list[str]) -> str | None:
        slug = "/".join(parts[:2])
        if slug not in self.state.collections:
            self._error(404, None, f"Collection {slug} not found")
            return None
        return slug

    def _collections(self, method: str, rest: list[str], q: dict) -> bool:
        cols = self.state.collections
        if method == "GET" and rest == []:
            out = [
                c
                for c in cols.values()
                if (not q.get("owner") or c["owner"]["name"] == q["owner"])
                and (
                    not q.get("item")
                    or any(repo_key(i["type"], i["id"]) == q["item"].removeprefix("models/") for i in c["items"])
                )
            ]
            if q.get("sort") == "lastModified":
                out.sort(key=lambda c: c["lastUpdated"], reverse=True)
            out = [{k: v for k, v in c.items() if k != "position"} for c in out]  # the listing has no position
            self._json(200, out[: int(q["limit"])] if q.get("limit") else out)
            return True
        if method == "POST" and rest == []:
            payload = json.loads(self._body() or b"{}")
            title, namespace = (payload.get("title") or "").strip(), payload.get("namespace") or USER
            if not title:
                self._error(400, None, "A collection needs a title")
                return True
            existing = next((c for c in cols.values() if c["owner"]["name"] == namespace and c["title"] == title), None)
            if existing is not None:
                self._json(409, {"error": "You already have a collection with this title", "slug": existing["slug"]})
                return True
            words = re.sub(r"[^a-z0-9]+", "-", title.lower()).strip("-") or "collection"
            slug = f"{namespace}/{words}-{self.state.new_id(namespace, title)[:24]}"
            cols[slug] = {
                "slug": slug,
                "title": title,
                "description": payload.get("description"),
                # as on the Hub, an object (huggingface_hub's Collection.owner keeps it as it comes)
                "owner": {
                    "_id": self.state.new_id(namespace)[:24],
                    "name": namespace,
                    "fullname": namespace,
                    "type": "user" if namespace == USER else "org",
                    "avatarUrl": "",
                },
                "items": [],
                "lastUpdated": iso(time.time()),
                "position": len([c for c in cols.values() if c["owner"]["name"] == namespace]),
                "private": bool(payload.get("private")),
                "theme": "blue",
                "upvotes": 0,
                "isUpvotedByUser": False,
            }
            self._json(200, cols[slug])
            return True
        if len(rest) < 2:
            return False
        slug = self._collection_slug(rest)
        if slug is None:
            return True
        collection, rest = cols[slug], rest[2:]
        if method == "GET" and rest == []:
            self._json(200, collection)
        elif method == "DELETE" and rest == []:
            del cols[slug]
            self._json(200, {})
        elif method == "POST" and rest == ["items"]:
            payload = json.loads(self._body() or b"{}")
            item_id, item_type = payload["item"]["id"], payload["item"]["type"]
            if item_type in REPO_TYPES:
                item_id = item_id.removeprefix(f"{item_type}s/")
                if repo_key(item_type, item_id) not in self.state.repos:
                    self._error(404, "RepoNotFound", f"Repository {item_id} not found")
                    return True
            elif item_type not in ("paper", "collection"):
                self._error(400, None, f"this test server does not collect {item_type!r} items")
                return True
            if any(i["id"] == item_id and i["type"] == item_type for i in collection["items"]):
                self._error(409, None, "Item already in the collection")
                return True
            item = {
                "_id": self.state.new_id(slug, item_id)[:24],
                "id": item_id,
                "type": item_type,
                "position": len(collection["items"]),
            }
            if payload.get("note"):
                item["note"] = {"text": payload["note"], "html": payload["note"]}
            collection["items"].append(item)
            collection["lastUpdated"] = iso(time.time())
            self._json(200, collection)
        elif method == "DELETE" and len(rest) == 2 and rest[0] == "items":
            before = len(collection["items"])
            collection["items"] = [i for i in collection["items"] if i["_id"] != rest[1]]
            if len(collection["items"]) == before:
                self._error(404, None, f"Item {rest[1]} not in the collection")
            else:
                for position, i in enumerate(collection["items"]):
                    i["position"] = position
                self._json(200, {})
        else:
            return False
        return True

    # ------------------------------------------------------------------ LFS and downloads
    def _lfs_batch(self, repo_type: str, repo_id: str) -> bool:
        payload = json.loads(self._body())
        if self._repo(repo_type, repo_id) is None:
            return True
        prefix = "" if repo_type == "model" else f"{repo_type}s/"
        objects = []
        for obj in payload.get("objects", []):
            item = {"oid": obj["oid"], "size": obj["size"]}
            if obj["oid"] not in self.state.lfs:
                item["authenticated"] = True
                item["actions"] = {
                    "upload": {"href": f"{self.cdn_url}/_lfs/{obj['oid']}"},
                    "verify": {"href": f"{self.base_url}/{prefix}{repo_id}.git/info/lfs/objects/verify"},
                }
            objects.append(item)
        self._json(200, {"transfer": "basic", "objects": objects}, content_type="application/vnd.git-lfs+json")
        return True

    def _lfs_verify(self) -> bool:
        payload = json.loads(self._body())
        data = self.state.lfs.get(payload["oid"])
        if data is None or len(data) != payload["size"]:
            self._error(404, None, f"LFS object {payload['oid']} missing or of the wrong size")
        else:
            self._json(200, {})
        return True

    def _lfs_blob(self, method: str, oid: str) -> bool:
        if method == "PUT":
            if self._drop_if_faulty("lfs_put"):
                return True
            data = self._body()
            if hashlib.sha256(data).hexdigest() != oid:
                self._error(400, None, "uploaded content does not match its sha256")
            else:
                self.state.lfs[oid] = data
                self._send(200)
            return True
        if method in ("GET", "HEAD"):
            data = self.state.lfs.get(oid)
            if data is None:
                self._error(404, None, "no such LFS object")
            else:
                self._send_data(data, {"ETag": f'"{oid}"'})
            return True
        return False

    def _resolve(self, repo_type: str, repo_id: str, revision: str, path: str) -> bool:
        repo = self._repo(repo_type, repo_id)
        if repo is None:
            return True
        commit = self._commit(repo, revision)
        if commit is None:
            return True
        entry = commit.files.get(path)
        if entry is None:
            self._error(404, "EntryNotFound", f"{path} does not exist on {revision}")
            return True
        headers = {"X-Repo-Commit": commit.sha}
        if entry.lfs:  # as on the Hub: redirect to the blob store, with the linked etag and size
            headers.update(
                {
                    "Location": f"{self.cdn_url}/_lfs/{entry.sha256}",
                    "X-Linked-Etag": f'"{entry.sha256}"',
                    "X-Linked-Size": str(len(entry.data)),
                    "ETag": f'"{entry.sha256}"',
                }
            )
            self._send(302, b"", headers)
        else:
            headers["ETag"] = f'"{entry.oid}"'
            self._send_data(entry.data, headers)
        return True


class LocalHub:
    """Runs the Hub and its blob store ("CDN", a second origin: the client follows a redirect to
    another origin only for the download itself, as with the real Hub) on 127.0.0.1 ephemeral ports,
    in daemon threads; ``stop()`` or the ``max_seconds`` watchdog ends them."""

    def __init__(self, max_seconds: float = 600.0):
        self.state = HubState()
        handler = type("BoundHubHandler", (HubHandler,), {"state": self.state})
        self._servers = [ThreadingHTTPServer(("127.0.0.1", 0), handler) for _ in range(2)]
        for server in self._servers:
            server.daemon_threads = True
        self.url, self.cdn_url = (f"http://127.0.0.1:{s.server_address[1]}" for s in self._servers)
        handler.base_url, handler.cdn_url = self.url, self.cdn_url
        self._threads = [
            threading.Thread(target=s.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True) for s in self._servers
        ]
        self._watchdog = threading.Timer(max_seconds, self.stop)
        self._watchdog.daemon = True
        self._stopped = False

    def start(self) -> LocalHub:
        for thread in self._threads:
            thread.start()
        self._watchdog.start()
        return self

    def stop(self) -> None:
        if self._stopped:
            return
        self._stopped = True
        self._watchdog.cancel()
        for server, thread in zip(self._servers, self._threads):
            server.shutdown()
            server.server_close()
            thread.join(timeout=5)

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.stop()

    def fail(self, kind: str, times: int = 1) -> None:
        """Drop the next ``times`` requests of ``kind`` (-1: all until ``fail(kind, 0)``); see the module doc."""
        if kind not in ("lfs_put", "commit", "preupload"):
            raise ValueError(f"unknown fault kind {kind!r}")
        with self.state.lock:
            self.state.faults[kind] = times

    def repo(self, repo_id: str, repo_type: str = "model") -> Repo:
        return self.state.repos[repo_key(repo_type, repo_id)]

    def file(self, repo_id: str, path: str, revision: str = "main", repo_type: str = "model") -> bytes:
        """Content of ``path`` at ``revision`` (for assertions)."""
        return self.repo(repo_id, repo_type).resolve(revision).files[path].data

    def files(self, repo_id: str, revision: str = "main", repo_type: str = "model") -> list[str]:
        return sorted(self.repo(repo_id, repo_type).resolve(revision).files)


def main() -> None:
    """Run the server in the foreground: ``python tests/hub_server.py [--seconds N]``, for manual checks."""
    import argparse

    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seconds", type=float, default=600.0, help="stop after this many seconds")
    args = parser.parse_args()
    hub = LocalHub(max_seconds=args.seconds).start()
    print(f"HF_ENDPOINT={hub.url} HF_HUB_DISABLE_XET=1", flush=True)
    try:
        while not hub._stopped:
            time.sleep(0.5)
    except KeyboardInterrupt:
        hub.stop()


if __name__ == "__main__":
    main()
