"""The smallest Hugging Face Hub-compatible HTTP server that the real ``huggingface_hub`` client can push to and
download from, for tests and offline demos.

No PyPI package implements the *upload* side of the Hub API (``olah`` mirrors downloads only; ``hf-local-hub``
needs a separate server binary), so this implements exactly the endpoints the client calls:

    GET  /api/whoami-v2                                   who the token belongs to (401 for a rejected token)
    POST /api/repos/create                                create a repo (409 if it exists)
    POST /api/validate-yaml                               the model card's metadata must parse
    GET  /api/{type}s/{repo}[/revision/{rev}]             repo info with its files ("siblings") and commit sha
    GET  /api/{type}s/{repo}/tree/{rev}[/{path}]          file listing (with LFS sha256 for LFS files)
    POST /api/{type}s/{repo}/preupload/{rev}              "regular" or "lfs" per file
    POST /[{type}s/]{repo}.git/info/lfs/objects/batch     LFS batch: where to PUT each missing object
    PUT  /lfs-objects/{sha256}                            the LFS object itself (sha256 checked)
    POST /api/{type}s/{repo}/commit/{rev}                 ndjson commit: regular files, LFS pointers, deletions,
                                                          ``create_pr=1`` opens refs/pr/N
    HEAD/GET /[{type}s/]{repo}/resolve/{rev}/{path}       download with X-Repo-Commit, ETag, X-Linked-* headers

Repos live in memory. The server is bounded (request bodies <= 64 MiB, at most 512 MiB stored) and stops itself
after ``max_lifetime_s`` even if a test forgets to stop it. Binary files (a NUL byte in the first 512 bytes) and
files over 10 MiB go through LFS, as on the Hub; ``xet`` is not offered (the client falls back to LFS when
``HF_HUB_DISABLE_XET`` is set, which :func:`patch_client_endpoint` does).
"""
from __future__ import annotations

import base64
import contextlib
import hashlib
import json
import re
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Iterator
from urllib.parse import parse_qs, unquote, urlsplit

MAX_BODY = 64 * 1024 * 1024
MAX_STORED = 512 * 1024 * 1024
LFS_THRESHOLD = 10 * 1024 * 1024
REPO_TYPES = ("model", "dataset", "space")


def git_blob_oid(data: bytes) -> str:
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


@dataclass
class StoredFile:
    data_sha256: str
    size: int
    blob_oid: str  # git blob id of what git stores: the content, or the LFS pointer
    lfs: bool


@dataclass
class Commit:
    oid: str
    message: str
    files: dict[str, StoredFile]
    parent: str | None
    touched: list[str] = field(default_factory=list)  # paths this commit added, changed or deleted


@dataclass
class Repo:
    repo_type: str
    repo_id: str
    private: bool
    branches: dict[str, str] = field(default_factory=dict)  # ref -> commit oid
    commits: dict[str, Commit] = field(default_factory=dict)
    prs: int = 0


class HubState:
    def __init__(self, tokens: dict[str, str]) -> None:
        self.tokens = dict(tokens)  # token -> user name
        self.repos: dict[tuple[str, str], Repo] = {}
        self.objects: dict[str, bytes] = {}  # sha256 -> content (regular and LFS alike)
        self.stored = 0
        self.lock = threading.Lock()
        self.requests: list[tuple[str, str, int]] = []  # (method, path, status) for tests to inspect
        self.unhandled: list[tuple[str, str]] = []

    def put_object(self, data: bytes) -> str:
        sha = hashlib.sha256(data).hexdigest()
        if sha not in self.objects:
            if self.stored + len(data) > MAX_STORED:
                raise _HTTPError(507, "test hub storage is full")
            self.objects[sha] = data
            self.stored += len(data)
        return sha


class _HTTPError(Exception):
    def __init__(self, status: int, message: str, code: str | None = None, extra: dict | None = None) -> None:
        super().__init__(message)
        self.status, self.message, self.code, self.extra = status, message, code, extra or {}


def _lfs_pointer(sha: str, size: int) -> bytes:
    return f"version https://git-lfs.github.com/spec/v1\noid sha256:{sha}\nsize {size}\n".encode()


class HubHandler(BaseHTTPRequestHandler):
    server: "LocalHubServer"
    protocol_version = "HTTP/1.1"

    # ------------------------------------------------------------------ plumbing
    def log_message(self, format: str, *args: Any) -> None:  # keep test output clean
        pass

    @property
    def state(self) -> HubState:
        return self.server.state

    @property
    def endpoint(self) -> str:
        return self.server.endpoint

    def _body(self) -> bytes:
        length = int(self.headers.get("Content-Length") or 0)
        if length > MAX_BODY:
            raise _HTTPError(413, f"request body over {MAX_BODY} bytes")
        return self.rfile.read(length) if length else b""

    def _send(self, status: int, body: bytes | dict | list = b"", headers: dict[str, str] | None = None,
              head: bool = False) -> None:
        if isinstance(body, (dict, list)):
            body = json.dumps(body).encode()
            headers = {"Content-Type": "application/json", **(headers or {})}
        self.send_response(status)
        for k, v in (headers or {}).items():
            self.send_header(k, v)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if not head:
            self.wfile.write(body)
        with self.state.lock:
            self.state.requests.append((self.command, urlsplit(self.path).path, status))

    def _user(self, required: bool) -> str | None:
        auth = self.headers.get("Authorization", "")
        if auth.startswith("Bearer "):
            token = auth[len("Bearer "):]
            if token not in self.state.tokens:
                raise _HTTPError(401, "Invalid credentials in Authorization header")
            return self.state.tokens[token]
        if required:
            raise _HTTPError(401, "You must be authenticated to access this endpoint")
        return None

    def _dispatch(self, head: bool = False) -> None:
        try:
            url = urlsplit(self.path)
            query = {k: v[-1] for k, v in parse_qs(url.query).items()}
            for method, pattern, handler in ROUTES:
                if method != ("GET" if self.command == "HEAD" else self.command):
                    continue
                match = re.fullmatch(pattern, url.path)
                if match:
                    handler(self, {k: unquote(v) if v else v for k, v in match.groupdict().items()}, query, head)
                    return
            with self.state.lock:
                self.state.unhandled.append((self.command, url.path))
            raise _HTTPError(404, f"no such endpoint on the test hub: {self.command} {url.path}")
        except _HTTPError as err:
            headers = {"X-Error-Message": err.message}
            if err.code:
                headers["X-Error-Code"] = err.code
            self._send(err.status, {"error": err.message, **err.extra}, headers, head=head)

    def do_GET(self) -> None:
        self._dispatch()

    def do_HEAD(self) -> None:
        self._dispatch(head=True)

    def do_POST(self) -> None:
        self._dispatch()

    def do_PUT(self) -> None:
        self._dispatch()

    # ------------------------------------------------------------------ helpers
    def _repo(self, repo_type: str, repo_id: str, user: str | None, write: bool = False) -> Repo:
        repo = self.state.repos.get((repo_type, repo_id))
        if repo is None or (repo.private and user is None):
            raise _HTTPError(404, f"Repository Not Found for url: {repo_type}s/{repo_id}", "RepoNotFound")
        if write and repo_id.split("/")[0] != user:
            raise _HTTPError(403, f"You don't have the rights to write to {repo_id}")
        return repo

    def _commit(self, repo: Repo, revision: str) -> Commit:
        oid = repo.branches.get(revision) or (revision if revision in repo.commits else None)
        if oid is None:
            raise _HTTPError(404, f"Revision Not Found for url: {repo.repo_id}@{revision}", "RevisionNotFound")
        return repo.commits[oid]

    def _repo_info(self, repo: Repo, commit: Commit) -> dict:
        return {
            "id": repo.repo_id, "modelId": repo.repo_id, "sha": commit.oid, "private": repo.private,
            "siblings": [{"rfilename": p} for p in sorted(commit.files)], "tags": [], "downloads": 0, "likes": 0,
            "lastModified": "2026-01-01T00:00:00.000Z", "createdAt": "2026-01-01T00:00:00.000Z",
        }


# ---------------------------------------------------------------------- endpoints
def whoami(h: HubHandler, m: dict, q: dict, head: bool) -> None:
    user = h._user(required=True)
    h._send(200, {"type": "user", "name": user, "fullname": user, "orgs": [],
                  "auth": {"type": "access_token", "accessToken": {"displayName": "test", "role": "write"}}})


def create_repo(h: HubHandler, m: dict, q: dict, head: bool) -> None:
    user = h._user(required=True)
    body = json.loads(h._body() or b"{}")
    repo_type = body.get("type") or "model"
    namespace = body.get("organization") or user
    if namespace != user:
        raise _HTTPError(403, f"You don't have the rights to create a repo under {namespace}")
    repo_id = f"{namespace}/{body['name']}"
    prefix = "" if repo_type == "model" else f"{repo_type}s/"
    with h.state.lock:
        if (repo_type, repo_id) in h.state.repos:
            raise _HTTPError(409, "You already created this model repo", "RepoExists",
                             {"url": f"{h.endpoint}/{prefix}{repo_id}"})
        # older clients send "private": true, newer ones "visibility": "private"
        repo = Repo(repo_type, repo_id, bool(body.get("private")) or body.get("visibility") == "private")
        gitattributes = b"*.safetensors filter=lfs diff=lfs merge=lfs -text\n*.png filter=lfs diff=lfs merge=lfs -text\n"
        sha = h.state.put_object(gitattributes)
        init = Commit(hashlib.sha1(f"init {repo_id}".encode()).hexdigest(), "initial commit",
                      {".gitattributes": StoredFile(sha, len(gitattributes), git_blob_oid(gitattributes), False)}, None)
        repo.commits[init.oid] = init
        repo.branches["main"] = init.oid
        h.state.repos[(repo_type, repo_id)] = repo
    h._send(200, {"url": f"{h.endpoint}/{prefix}{repo_id}", "name": repo_id})


def repo_info(h: HubHandler, m: dict, q: dict, head: bool) -> None:
    user = h._user(required=False)
    repo = h._repo(m["type"], m["repo"], user)
    h._send(200, h._repo_info(repo, h._commit(repo, m.get("rev") or "main")), head=head)


def tree(h: HubHandler, m: dict, q: dict, head: bool) -> None:
    user = h._user(required=False)
    repo = h._repo(m["type"], m["repo"], user)
    commit = h._commit(repo, m["rev"])
    base = (m.get("path") or "").strip("/")
    entries = []
    for path, f in sorted(commit.files.items()):
        if base and not path.startswith(base + "/"):
            continue
        entry: dict[str, Any] = {"type": "file", "oid": f.blob_oid, "size": f.size, "path": path}
        if f.lfs:
            entry["lfs"] = {"oid": f.data_sha256, "size": f.size, "pointerSize": len(_lfs_pointer(f.data_sha256, f.size))}
        entries.append(entry)
    h._send(200, entries)


def validate_yaml(h: HubHandler, m: dict, q: dict, head: bool) -> None:
    """The README's YAML front matter must parse to a mapping, and a model-index must be a list of results."""
    import yaml

    body = json.loads(h._body())
    match = re.match(r"^---\n(.*?)\n---\n", body.get("content", ""), re.S)
    errors = []
    if match:
        try:
            meta = yaml.safe_load(match.group(1))
            if not isinstance(meta, dict):
                errors.append("metadata must be a YAML mapping")
            elif "model-index" in meta and not all("results" in entry for entry in meta["model-index"]):
                errors.append("every model-index entry needs 'results'")
        except yaml.YAMLError as err:
            errors.append(f"invalid YAML: {err}")
    h._send(400 if errors else 200, {"errors": [{"message": e} for e in errors], "warnings": []})


def _wants_lfs(size: int, sample: bytes) -> bool:
    return size > LFS_THRESHOLD or b"\0" in sample[:512]


def preupload(h: HubHandler, m: dict, q: dict, head: bool) -> None:
    user = h._user(required=True)
    repo = h._repo(m["type"], m["repo"], user, write=True)
    body = json.loads(h._body())
    current = repo.commits[repo.branches["main"]].files if "main" in repo.branches else {}
    files = []
    for f in body["files"]:
        sample = base64.b64decode(f.get("sample", ""))
        existing = current.get(f["path"])
        # the client skips unchanged files by comparing this oid: sha256 for LFS files, git sha1 otherwise
        oid = (existing.data_sha256 if existing.lfs else existing.blob_oid) if existing else None
        files.append({"path": f["path"], "uploadMode": "lfs" if _wants_lfs(f["size"], sample) else "regular",
                      "shouldIgnore": False, "oid": oid})
    h._send(200, {"files": files, "commitOid": repo.branches.get("main")})


def lfs_batch(h: HubHandler, m: dict, q: dict, head: bool) -> None:
    user = h._user(required=True)
    repo_type = m["type"].rstrip("s") if m.get("type") else "model"
    h._repo(repo_type, m["repo"], user, write=True)
    body = json.loads(h._body())
    objects = []
    for obj in body.get("objects", []):
        entry: dict[str, Any] = {"oid": obj["oid"], "size": obj["size"]}
        if obj["oid"] not in h.state.objects:
            entry["actions"] = {"upload": {"href": f"{h.endpoint}/lfs-objects/{obj['oid']}", "header": {}}}
        objects.append(entry)
    h._send(200, {"transfer": "basic", "objects": objects}, {"Content-Type": "application/vnd.git-lfs+json"})


def lfs_put(h: HubHandler, m: dict, q: dict, head: bool) -> None:
    data = h._body()
    if hashlib.sha256(data).hexdigest() != m["oid"]:
        raise _HTTPError(400, "uploaded LFS object does not match its sha256")
    with h.state.lock:
        h.state.put_object(data)
    h._send(200)


def commit(h: HubHandler, m: dict, q: dict, head: bool) -> None:
    user = h._user(required=True)
    repo = h._repo(m["type"], m["repo"], user, write=True)
    lines = [json.loads(line) for line in h._body().splitlines() if line.strip()]
    if not lines or lines[0].get("key") != "header":
        raise _HTTPError(400, "commit payload must start with a header line")
    revision = m["rev"]
    with h.state.lock:
        parent = h._commit(repo, revision)
        files = dict(parent.files)
        touched = []
        for item in lines[1:]:
            key, value = item["key"], item["value"]
            touched.append(value["path"])
            if key == "file":
                data = base64.b64decode(value["content"])
                sha = h.state.put_object(data)
                files[value["path"]] = StoredFile(sha, len(data), git_blob_oid(data), False)
            elif key == "lfsFile":
                sha = value["oid"]
                if sha not in h.state.objects:
                    raise _HTTPError(422, f"LFS object {sha} for {value['path']} was never uploaded")
                size = len(h.state.objects[sha])
                files[value["path"]] = StoredFile(sha, size, git_blob_oid(_lfs_pointer(sha, size)), True)
            elif key == "deletedFile":
                files.pop(value["path"], None)
            elif key == "deletedFolder":
                prefix = value["path"].rstrip("/") + "/"
                files = {p: f for p, f in files.items() if not p.startswith(prefix)}
            else:
                raise _HTTPError(400, f"unsupported commit operation {key!r}")
        summary = lines[0]["value"].get("summary", "")
        oid = hashlib.sha1(json.dumps([parent.oid, summary, time.time_ns(), sorted(
            (p, f.blob_oid) for p, f in files.items())]).encode()).hexdigest()
        repo.commits[oid] = Commit(oid, summary, files, parent.oid, touched)
        pr_url = None
        if q.get("create_pr") in ("1", "true", "True"):
            repo.prs += 1
            repo.branches[f"refs/pr/{repo.prs}"] = oid
            pr_url = f"{h.endpoint}/{repo.repo_id}/discussions/{repo.prs}"
        else:
            repo.branches[revision if revision in repo.branches else "main"] = oid
    h._send(200, {"success": True, "commitOid": oid, "commitUrl": f"{h.endpoint}/{repo.repo_id}/commit/{oid}",
                  "pullRequestUrl": pr_url})


def resolve(h: HubHandler, m: dict, q: dict, head: bool) -> None:
    user = h._user(required=False)
    repo_type = m["type"].rstrip("s") if m.get("type") else "model"
    repo = h._repo(repo_type, m["repo"], user)
    c = h._commit(repo, m["rev"])
    f = c.files.get(m["path"])
    if f is None:
        raise _HTTPError(404, f"Entry Not Found for url: {m['repo']}/{m['path']}", "EntryNotFound")
    data = h.state.objects[f.data_sha256]
    headers = {"X-Repo-Commit": c.oid, "ETag": f'"{f.blob_oid}"', "Content-Type": "application/octet-stream"}
    if f.lfs:
        headers |= {"X-Linked-Etag": f'"{f.data_sha256}"', "X-Linked-Size": str(f.size)}
    h._send(200, data, headers, head=head)


_T = r"(?P<type>model|dataset|space)"
_REPO = r"(?P<repo>[\w.-]+/[\w.-]+)"
_REV = r"(?P<rev>[^/]+(?:%2F[^/]+)*)"
def agent_harnesses(h: HubHandler, m: dict, q: dict, head: bool) -> None:
    h._send(200, {"standardEnvVars": [], "harnesses": {}})  # the client's agent-detection registry: empty


ROUTES = [
    ("GET", r"/api/agent-harnesses", agent_harnesses),
    ("GET", r"/api/whoami-v2", whoami),
    ("POST", r"/api/repos/create", create_repo),
    ("POST", r"/api/validate-yaml", validate_yaml),
    ("GET", rf"/api/{_T}s/{_REPO}(?:/revision/{_REV})?", repo_info),
    ("GET", rf"/api/{_T}s/{_REPO}/tree/{_REV}(?:/(?P<path>.*))?", tree),
    ("POST", rf"/api/{_T}s/{_REPO}/preupload/{_REV}", preupload),
    ("POST", rf"/api/{_T}s/{_REPO}/commit/{_REV}", commit),
    ("POST", rf"/(?:(?P<type>datasets|spaces)/)?{_REPO}\.git/info/lfs/objects/batch", lfs_batch),
    ("PUT", r"/lfs-objects/(?P<oid>[0-9a-f]{64})", lfs_put),
    ("GET", rf"/(?:(?P<type>datasets|spaces)/)?{_REPO}/resolve/{_REV}/(?P<path>.+)", resolve),
]


class LocalHubServer(ThreadingHTTPServer):
    """``with LocalHubServer(tokens={"hf_test": "alice"}) as hub: ...`` serves on ``hub.endpoint``."""

    daemon_threads = True

    def __init__(self, tokens: dict[str, str] | None = None, port: int = 0, max_lifetime_s: float = 600.0) -> None:
        super().__init__(("127.0.0.1", port), HubHandler)
        self.state = HubState(tokens or {"hf_test_token_alice": "alice"})
        self.endpoint = f"http://127.0.0.1:{self.server_address[1]}"
        self._thread = threading.Thread(target=self.serve_forever, kwargs={"poll_interval": 0.1}, daemon=True)
        self._timer = threading.Timer(max_lifetime_s, self.stop)
        self._timer.daemon = True

    def start(self) -> "LocalHubServer":
        self._thread.start()
        self._timer.start()
        return self

    def stop(self) -> None:
        self._timer.cancel()
        if self._thread.is_alive():
            self.shutdown()
        self.server_close()

    def __enter__(self) -> "LocalHubServer":
        return self.start()

    def __exit__(self, *exc: Any) -> None:
        self.stop()

    def file_bytes(self, repo_id: str, path: str, revision: str = "main", repo_type: str = "model") -> bytes:
        repo = self.state.repos[(repo_type, repo_id)]
        return self.state.objects[repo.commits[repo.branches[revision]].files[path].data_sha256]

    def history(self, repo_id: str, revision: str = "main", repo_type: str = "model") -> list[Commit]:
        """Commits of ``revision``, oldest first (the repo-creation commit included)."""
        repo = self.state.repos[(repo_type, repo_id)]
        out, oid = [], repo.branches[revision]
        while oid:
            out.append(repo.commits[oid])
            oid = repo.commits[oid].parent
        return out[::-1]


@contextlib.contextmanager
def patch_client_endpoint(endpoint: str) -> Iterator[None]:
    """Point ``huggingface_hub`` (already imported) at ``endpoint``, online, without Xet; restore afterwards."""
    import os

    from huggingface_hub import constants

    saved_env = {k: os.environ.get(k) for k in ("HF_ENDPOINT", "HF_HUB_OFFLINE", "HF_HUB_DISABLE_XET")}
    saved = {k: getattr(constants, k) for k in ("ENDPOINT", "HUGGINGFACE_CO_URL_TEMPLATE", "HF_HUB_OFFLINE", "HF_HUB_DISABLE_XET")}
    os.environ.update({"HF_ENDPOINT": endpoint, "HF_HUB_OFFLINE": "0", "HF_HUB_DISABLE_XET": "1"})
    constants.ENDPOINT = endpoint
    constants.HUGGINGFACE_CO_URL_TEMPLATE = endpoint + "/{repo_id}/resolve/{revision}/{filename}"
    constants.HF_HUB_OFFLINE = False
    constants.HF_HUB_DISABLE_XET = True
    try:
        yield
    finally:
        for k, v in saved.items():
            setattr(constants, k, v)
        for k, v in saved_env.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
