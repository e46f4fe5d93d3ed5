"""A small Hub-compatible HTTP server on 127.0.0.1, for testing against the real ``huggingface_hub`` client.

It implements the part of the Hugging Face Hub API that ``huggingface_hub`` (2.x) uses for
``create_repo``, ``create_branch``, ``repo_info``/``model_info``, ``list_repo_tree``, ``list_repo_refs``,
``create_commit``/``upload_folder`` (preupload, NDJSON commit with regular and LFS files, the git-LFS
batch API with basic PUT upload + verify), ``validate-yaml`` and ``hf_hub_download``/``snapshot_download``
(HEAD/GET ``resolve`` with ``X-Repo-Commit``/``ETag``/``Content-Length``; LFS files answer with a 302
to a blob URL and ``X-Linked-Etag``/``X-Linked-Size``, as the Hub does). Everything is kept in memory.

Pointing the client at it (the recipe ``hub_env`` in ``tests/conftest.py`` applies):
- a fresh process: ``HF_ENDPOINT=http://127.0.0.1:PORT HF_HUB_DISABLE_XET=1 HF_HOME=... HF_TOKEN=...``
  before ``huggingface_hub`` is imported (it reads these at import);
- in-process, after import: set ``huggingface_hub.constants.ENDPOINT``, ``.HUGGINGFACE_CO_URL_TEMPLATE``,
  ``.HF_HUB_DISABLE_XET``, ``.HF_HUB_CACHE``, ``.HF_HUB_OFFLINE``, the module-level default client
  ``huggingface_hub.hf_api.api.endpoint`` and reset ``transformers.utils.hub._hf_api`` (a cached HfApi).
``HF_HUB_DISABLE_XET=1`` is needed because ``hf_xet`` is installed: the client would otherwise upload
through the Xet storage protocol, which this server does not speak.

Fault injection (for tests of failures mid-way): ``hub.fail("lfs_put", times=-1)`` makes the server
drop the connection, without an answer, on that many matching requests (-1: until ``hub.fail(kind, 0)``),
as if it went away during the upload. Kinds: ``lfs_put`` (an LFS blob upload), ``commit`` (the
commit call), ``preupload``.

Not implemented: pull requests, tags, multipart LFS, Xet, auth checks (any token is accepted and
recorded), pagination (one page), repo types other than models.
"""

from __future__ import annotations

import base64
import hashlib
import json
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, unquote, urlsplit

LFS_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".ckpt", ".h5", ".msgpack", ".model", ".png", ".npz")
LFS_MIN_SIZE = 10 * 1024 * 1024
USER = "tester"


def git_blob_sha1(data: bytes) -> str:
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


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


@dataclass
class Repo:
    repo_id: str
    private: bool
    branches: dict = field(default_factory=dict)  # name -> commit sha
    commits: dict = field(default_factory=dict)  # sha -> Commit

    def resolve(self, revision: str) -> Commit | None:
        sha = self.branches.get(revision, revision)
        return self.commits.get(sha)


class HubState:
    """All repos, LFS blobs and a log of requests and commits (for assertions in tests)."""

    def __init__(self):
        self.repos: dict[str, Repo] = {}
        self.lfs: dict[str, bytes] = {}
        self.lock = threading.Lock()
        self.requests: list[tuple[str, str]] = []
        self.unhandled: list[tuple[str, str]] = []
        self.commits: list[tuple[str, str, str]] = []  # (repo_id, branch, message)
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

    def new_commit(self, repo: Repo, branch: str, message: str, files: dict) -> Commit:
        self._counter += 1
        parent = repo.branches.get(branch)
        seed = f"{repo.repo_id}|{branch}|{parent}|{message}|{self._counter}|{sorted(files)}".encode()
        commit = Commit(hashlib.sha1(seed).hexdigest(), parent, message, files)
        repo.commits[commit.sha] = commit
        repo.branches[branch] = commit.sha
        self.commits.append((repo.repo_id, branch, message))
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

    def _json(self, status: int, obj, headers: dict | None = None, content_type="application/json"):
        self._send(status, json.dumps(obj).encode(), headers, content_type)

    def _error(self, status: int, code: str | None, message: str):
        headers = {"X-Error-Message": message}
        if code:
            headers["X-Error-Code"] = code
        self._json(status, {"error": message}, headers)

    def _repo(self, repo_id: str) -> Repo | None:
        repo = self.state.repos.get(repo_id)
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
        with self.state.lock:
            self.state.requests.append((method, self.path))
            if auth.startswith("Bearer "):
                self.state.tokens.add(auth[len("Bearer ") :])
            handled = self._dispatch(method, parts, query)
        if not handled:
            self.state.unhandled.append((method, self.path))
            self._error(404, None, f"unhandled route {method} {self.path}")

    do_GET = lambda self: self._route("GET")  # noqa: E731
    do_HEAD = lambda self: self._route("HEAD")  # noqa: E731
    do_POST = lambda self: self._route("POST")  # noqa: E731
    do_PUT = lambda self: self._route("PUT")  # noqa: E731

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
        if p[:2] == ["api", "models"] and len(p) >= 4:
            return self._api_models(method, p[2] + "/" + p[3], p[4:], q)
        if p[:1] == ["_lfs"] and len(p) == 2:
            return self._lfs_blob(method, p[1])
        if method == "POST" and len(p) == 6 and p[1].endswith(".git") and p[2:5] == ["info", "lfs", "objects"]:
            if p[5] == "batch":
                return self._lfs_batch(p[0] + "/" + p[1][: -len(".git")])
            if p[5] == "verify":
                return self._lfs_verify()
        if method in ("GET", "HEAD") and len(p) >= 5 and p[2] == "resolve":
            return self._resolve(p[0] + "/" + p[1], p[3], "/".join(p[4:]))
        return False

    def _create_repo(self) -> bool:
        payload = json.loads(self._body() or b"{}")
        if payload.get("type", "model") != "model":
            self._error(400, None, "this test server only hosts model repos")
            return True
        repo_id = f"{payload.get('organization') or USER}/{payload['name']}"
        url = f"{self.base_url}/{repo_id}"
        if repo_id in self.state.repos:
            self._json(409, {"error": "You already created this model repo", "url": url})
            return True
        private = payload.get("visibility") == "private" or bool(payload.get("private"))
        repo = Repo(repo_id, private)
        self.state.repos[repo_id] = repo
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

    def _api_models(self, method: str, repo_id: str, rest: list[str], q: dict) -> bool:
        repo = self._repo(repo_id)
        if repo is None:
            return True
        if method == "GET" and (rest == [] or (len(rest) == 2 and rest[0] == "revision")):
            commit = self._commit(repo, rest[1] if rest else "main")
            if commit is not None:
                self._json(
                    200,
                    {
                        "id": repo_id,
                        "modelId": repo_id,
                        "sha": commit.sha,
                        "private": repo.private,
                        "tags": [],
                        "downloads": 0,
                        "likes": 0,
                        "library_name": None,
                        "siblings": [{"rfilename": path} for path in sorted(commit.files)],
                    },
                )
            return True
        if method == "GET" and rest == ["refs"]:
            branches = [{"name": b, "ref": f"refs/heads/{b}", "targetCommit": s} for b, s in repo.branches.items()]
            self._json(200, {"branches": branches, "tags": [], "converts": []})
            return True
        if method == "GET" and len(rest) >= 2 and rest[0] == "tree":
            return self._tree(repo, rest[1], "/".join(rest[2:]), q.get("recursive", "").lower() in ("1", "true"))
        if method == "POST" and len(rest) == 2 and rest[0] == "branch":
            payload = json.loads(self._body() or b"{}")
            if rest[1] in repo.branches:
                self._error(409, None, f"Branch {rest[1]} already exists")
                return True
            start = repo.resolve(payload.get("startingPoint") or "main")
            if start is None:
                self._error(404, "RevisionNotFound", "invalid starting point")
                return True
            repo.branches[rest[1]] = start.sha
            self._json(200, {})
            return True
        if method == "POST" and len(rest) == 2 and rest[0] == "preupload":
            return self._preupload(repo, rest[1])
        if method == "POST" and len(rest) == 2 and rest[0] == "commit":
            return self._create_commit(repo, rest[1], q)
        return False

    def _tree(self, repo: Repo, revision: str, prefix: str, recursive: bool) -> bool:
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
            item = {"type": "file", "oid": git_blob_sha1(entry.data), "size": len(entry.data), "path": path}
            if entry.lfs:
                item["lfs"] = {"oid": entry.sha256, "size": len(entry.data), "pointerSize": 134}
            files.append(item)
        dirs = [{"type": "directory", "oid": hashlib.sha1(d.encode()).hexdigest(), "path": d} for d in sorted(folders)]
        if prefix and not files and not dirs:
            self._error(404, "EntryNotFound", f"{prefix} does not exist on {revision}")
            return True
        self._json(200, dirs + files)
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
        if self._drop_if_faulty("commit"):
            return True
        if q.get("create_pr"):
            self._error(400, None, "pull requests are not supported by this test server")
            return True
        lines = [json.loads(line) for line in self._body().splitlines() if line.strip()]
        if revision not in repo.branches:
            self._error(404, "RevisionNotFound", f"Invalid rev id: {revision}")
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
        commit = self.state.new_commit(repo, revision, message, files)
        self._json(
            200,
            {
                "success": True,
                "commitOid": commit.sha,
                "pullRequestUrl": None,
                "commitUrl": f"{self.base_url}/{repo.repo_id}/commit/{commit.sha}",
            },
        )
        return True

    def _lfs_batch(self, repo_id: str) -> bool:
        payload = json.loads(self._body())
        if self._repo(repo_id) is None:
            return True
        objects = []
        for obj in payload.get("objects", []):
            item = {"oid": obj["oid"], "size": obj["size"]}
            if obj["oid"] not in self.state.lfs:
                item["authenticated"] = True
                item["actions"] = {
                    "upload": {"href": f"{self.cdn_url}/_lfs/{obj['oid']}"},
                    "verify": {"href": f"{self.base_url}/{repo_id}.git/info/lfs/objects/verify"},
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
                self._send(200, data, {"ETag": f'"{oid}"'}, content_type="application/octet-stream")
            return True
        return False

    def _resolve(self, repo_id: str, revision: str, path: str) -> bool:
        repo = self._repo(repo_id)
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
            self._send(200, entry.data, headers, content_type="application/octet-stream")
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

    def file(self, repo_id: str, path: str, revision: str = "main") -> bytes:
        """Content of ``path`` at ``revision`` (for assertions)."""
        return self.state.repos[repo_id].resolve(revision).files[path].data

    def files(self, repo_id: str, revision: str = "main") -> list[str]:
        return sorted(self.state.repos[repo_id].resolve(revision).files)


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
