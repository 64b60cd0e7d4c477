"""A Hugging Face Hub-compatible HTTP server for the test suite (stdlib only, in memory, one thread per request).

It answers the endpoints that huggingface_hub 2.4, datasets 5.2, transformers 5.24 and diffusers 0.42 call to
create repos and upload and download files, so that tests push and load for real instead of mocking `HfApi`:

    GET  /api/whoami-v2                                       who the token belongs to
    POST /api/repos/create, /api/repos/delete                 namespaced repos (403 outside the user's namespaces)
    POST /api/validate-yaml                                   card metadata check (YAML mapping, model-index shape)
    GET  /api/{models|datasets}/{ns}/{name}[/revision/{rev}]  repo info (siblings; ?blobs=true adds sizes and LFS)
    GET  /api/.../refs, /api/.../commits/{rev}                branches and history
    POST /api/.../branch/{branch}                             create a branch
    GET  /api/.../tree/{rev}[/{path}]                         folder listing (?recursive=true)
    POST /api/.../paths-info/{rev}                            info about given paths (form data)
    POST /api/.../preupload/{rev}                             "regular" or "lfs" per file (.gitattributes, 10 MiB)
    POST /api/.../commit/{rev}                                NDJSON: header, file (base64), lfsFile, deleted*
    POST /{prefix}{ns}/{name}.git/info/lfs/objects/batch      LFS batch API ("basic" transfer), then PUT the bytes
    HEAD/GET /{prefix}{ns}/{name}/resolve/{rev}/{path}        X-Repo-Commit, ETag, X-Linked-*; Range -> 206

Errors carry the Hub's ``X-Error-Code`` (RepoNotFound, RevisionNotFound, EntryNotFound) so that clients raise their
usual exceptions. A repo id without a namespace matches no repo (404), as on the Hub for new repos. Xet storage
is not offered: clients must run with ``HF_HUB_DISABLE_XET=1``.
"""

from __future__ import annotations

import base64
import fnmatch
import hashlib
import itertools
import json
import re
import socket
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, unquote, urlsplit

import yaml

__all__ = ["HubServer", "reserve_socket"]

USER, ORG, TOKEN = "igpg-tester", "igpg-org", "hf_igpg_test_token"
_TYPES = {"models": "model", "datasets": "dataset", "spaces": "space"}
_PREFIX = {"model": "", "dataset": "datasets/", "space": "spaces/"}
_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,95}$")
_LFS_THRESHOLD = 10 * 2**20
# the Hub's default .gitattributes (abridged to the patterns these tests meet)
_GITATTRIBUTES = "".join(
    f"{p} filter=lfs diff=lfs merge=lfs -text\n"
    for p in ("*.bin", "*.h5", "*.msgpack", "*.npz", "*.parquet", "*.pickle", "*.pkl", "*.pt", "*.pth")
    + ("*.safetensors", "*.tar.gz", "*.zip", "*.zst", "*tfevents*")
)


def reserve_socket() -> socket.socket:
    """A listening socket on 127.0.0.1 with a free port, to hand to `HubServer` later (no race for the port)."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    sock.listen(128)
    return sock


def _git_oid(data: bytes) -> str:
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


def _front_matter(readme: str) -> dict | str | None:
    """The YAML block a README starts with (``---`` lines around it): a dict, None if absent, or an error text."""
    lines = readme.splitlines()
    if not lines or lines[0].strip() != "---":
        return None
    try:
        end = next(i for i, line in enumerate(lines[1:], 1) if line.strip() == "---")
    except StopIteration:
        return "the YAML front matter is not closed by a '---' line"
    try:
        meta = yaml.safe_load("\n".join(lines[1:end]))
    except yaml.YAMLError as e:
        return f"invalid YAML: {e}"
    return meta if isinstance(meta, dict) or meta is None else "the YAML front matter must be a mapping"


def _now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S.000Z", time.gmtime())


@dataclass(frozen=True)
class _File:
    size: int
    blob: str  # key into HubServer.blobs: git oid for regular files, sha256 for LFS files
    lfs: bool

    @property
    def pointer(self) -> bytes:
        return (
            f"version https://git-lfs.github.com/spec/v1\noid sha256:{self.blob}\nsize {self.size}\n".encode()
        )

    @property
    def oid(self) -> str:
        """The git blob id (of the pointer file for LFS files), as the Hub reports it."""
        return _git_oid(self.pointer) if self.lfs else self.blob

    @property
    def etag(self) -> str:
        return self.blob  # sha256 for LFS files, git oid otherwise

    def entry(self, path: str) -> dict:
        e = {"type": "file", "oid": self.oid, "size": self.size, "path": path}
        if self.lfs:
            e["lfs"] = {"oid": self.blob, "size": self.size, "pointerSize": len(self.pointer)}
        return e


@dataclass
class _Commit:
    sha: str
    parent: str | None
    files: dict[str, _File]
    title: str
    date: str


@dataclass
class _Repo:
    type: str
    id: str
    private: bool
    created: str
    commits: dict[str, _Commit] = field(default_factory=dict)
    branches: dict[str, str] = field(default_factory=dict)

    def resolve(self, rev: str) -> _Commit | None:
        sha = self.branches.get(rev, rev)
        return self.commits.get(sha)


class HubError(Exception):
    def __init__(
        self,
        status: int,
        message: str,
        code: str | None = None,
        headers: dict | None = None,
        body: dict | None = None,
    ):
        super().__init__(message)
        self.status, self.message, self.code, self.headers, self.body = (
            status,
            message,
            code,
            headers or {},
            body,
        )


class HubServer:
    """In-memory Hub: `start()` serves on 127.0.0.1 in a daemon thread; `url`, `token`, `user` for the clients."""

    def __init__(self, sock: socket.socket | None = None):
        self._sock = sock
        self._httpd: ThreadingHTTPServer | None = None
        self.lock = threading.RLock()
        self.repos: dict[tuple[str, str], _Repo] = {}
        self.blobs: dict[str, bytes] = {}
        self.lfs_uploads: dict[str, bytes] = {}
        # (method, path, Range header or None) of every request, for tests to inspect
        self.requests: list[tuple[str, str, str | None]] = []
        self._counter = itertools.count()
        self.user, self.orgs, self.token = USER, [ORG], TOKEN

    # ------------------------------------------------------------------ lifecycle
    def start(self) -> HubServer:
        server = self

        class Handler(_Handler):
            hub = server

        sock = self._sock or reserve_socket()
        httpd = ThreadingHTTPServer(sock.getsockname(), Handler, bind_and_activate=False)
        httpd.socket.close()
        httpd.socket = sock
        httpd.daemon_threads = True
        self._httpd = httpd
        threading.Thread(target=httpd.serve_forever, name="hub-server", daemon=True).start()
        return self

    def stop(self) -> None:
        if self._httpd is not None:
            self._httpd.shutdown()
            self._httpd.server_close()
            self._httpd = None

    @property
    def url(self) -> str:
        host, port = (self._sock or self._httpd.socket).getsockname()[:2]
        return f"http://{host}:{port}"

    def reset(self) -> None:
        """Forget every repo and blob (between tests)."""
        with self.lock:
            self.repos.clear()
            self.blobs.clear()
            self.lfs_uploads.clear()
            self.requests.clear()

    # ------------------------------------------------------------------ state helpers (also used by tests)
    def repo(self, repo_id: str, repo_type: str = "model") -> _Repo:
        """The repo, or KeyError."""
        return self.repos[(repo_type, repo_id)]

    def read(self, repo_id: str, path: str, repo_type: str = "model", revision: str = "main") -> bytes:
        """A file's bytes at a revision, straight from the store (KeyError if absent)."""
        f = self.repo(repo_id, repo_type).resolve(revision).files[path]
        return self.blobs[f.blob]

    def files(self, repo_id: str, repo_type: str = "model", revision: str = "main") -> list[str]:
        return sorted(self.repo(repo_id, repo_type).resolve(revision).files)

    def _new_sha(self, *parts: str) -> str:
        return hashlib.sha1("\0".join((*parts, str(next(self._counter)))).encode()).hexdigest()

    def _commit(
        self, repo: _Repo, branch: str, files: dict[str, _File], title: str, parent: str | None
    ) -> str:
        sha = self._new_sha(repo.id, branch, title)
        repo.commits[sha] = _Commit(sha, parent, files, title, _now())
        repo.branches[branch] = sha
        return sha

    def _store(self, data: bytes, lfs: bool) -> _File:
        key = hashlib.sha256(data).hexdigest() if lfs else _git_oid(data)
        self.blobs[key] = data
        return _File(len(data), key, lfs)

    def create(self, repo_type: str, repo_id: str, private: bool = False) -> _Repo:
        repo = _Repo(repo_type, repo_id, private, _now())
        self.repos[(repo_type, repo_id)] = repo
        self._commit(
            repo,
            "main",
            {".gitattributes": self._store(_GITATTRIBUTES.encode(), False)},
            "initial commit",
            None,
        )
        return repo

    def url_of(self, repo: _Repo) -> str:
        return f"{self.url}/{_PREFIX[repo.type]}{repo.id}"


class _Handler(BaseHTTPRequestHandler):
    hub: HubServer
    protocol_version = "HTTP/1.1"  # keep-alive, as the clients expect

    def log_message(self, *args) -> None:  # quiet
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
        n = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(n) if n else b""

    def _send(
        self, status: int, body: bytes = b"", headers: dict | None = None, content_type="application/json"
    ):
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        for k, v in (headers or {}).items():
            self.send_header(k, " ".join(str(v).split()))  # header values are one line
        self.end_headers()
        if self.command != "HEAD" and body:
            self.wfile.write(body)

    def _json(self, status: int, obj, headers: dict | None = None) -> None:
        self._send(status, json.dumps(obj).encode(), headers)

    def _authorized(self) -> bool:
        auth = self.headers.get("Authorization", "")
        return auth == f"Bearer {self.hub.token}"

    def _require_auth(self) -> None:
        auth = self.headers.get("Authorization", "")
        if not auth:
            raise HubError(401, "You must be authenticated to access this resource")
        if auth != f"Bearer {self.hub.token}":
            raise HubError(
                401,
                "Invalid credentials in Authorization header",
                headers={"X-Error-Message": "Invalid credentials in Authorization header"},
            )

    def _dispatch(self) -> None:
        url = urlsplit(self.path)
        self.query = parse_qs(url.query)
        with self.hub.lock:
            self.hub.requests.append((self.command, url.path, self.headers.get("Range")))
        body = self._body() if self.command in ("POST", "PUT", "DELETE") else b""
        try:
            self._route(url.path, body)
        except HubError as e:
            headers = dict(e.headers)
            if e.code:
                headers["X-Error-Code"] = e.code
            headers.setdefault("X-Error-Message", e.message)
            self._json(e.status, {"error": e.message, **(e.body or {})}, headers)

    do_GET = do_HEAD = do_POST = do_PUT = do_DELETE = _dispatch

    # ------------------------------------------------------------------ routing
    def _route(self, path: str, body: bytes) -> None:
        m, hub = self.command, self.hub
        if path == "/api/whoami-v2" and m == "GET":
            self._require_auth()
            return self._json(
                200,
                {
                    "type": "user",
                    "name": hub.user,
                    "fullname": "IGPG Tester",
                    "email": "tester@example.invalid",
                    "orgs": [{"name": o, "type": "org", "roleInOrg": "admin"} for o in hub.orgs],
                    "auth": {
                        "type": "access_token",
                        "accessToken": {"displayName": "tests", "role": "write"},
                    },
                },
            )
        if path == "/api/repos/create" and m == "POST":
            return self._create(json.loads(body or b"{}"))
        if path == "/api/repos/delete" and m == "DELETE" or path == "/api/repos/delete" and m == "POST":
            return self._delete(json.loads(body or b"{}"))
        if path == "/api/validate-yaml" and m == "POST":
            return self._validate_yaml(json.loads(body or b"{}"))
        if path.startswith("/__lfs/") and m == "PUT":
            return self._lfs_put(path.rsplit("/", 1)[1], body)
        if path.startswith("/api/"):
            return self._api(path, body)
        if path.endswith(".git/info/lfs/objects/batch") and m == "POST":
            repo = self._repo_from_web(path[1 : -len(".git/info/lfs/objects/batch")])
            return self._lfs_batch(repo, json.loads(body))
        if "/resolve/" in path and m in ("GET", "HEAD"):
            return self._resolve(path)
        raise HubError(404, f"no route for {m} {path}")

    def _repo_from_web(self, path: str) -> _Repo:
        repo_type = "model"
        for t, prefix in _PREFIX.items():
            if prefix and path.startswith(prefix):
                repo_type, path = t, path[len(prefix) :]
        return self._get_repo(repo_type, unquote(path), write=True)

    def _get_repo(self, repo_type: str, repo_id: str, write: bool = False) -> _Repo:
        repo = self.hub.repos.get((repo_type, repo_id))
        visible = repo is not None and (not repo.private or self._authorized())
        if not visible:
            raise HubError(
                401 if not self._authorized() else 404,
                f"Repository Not Found for {repo_type} {repo_id}",
                "RepoNotFound",
            )
        if write:
            self._require_auth()
            if repo_id.split("/")[0] not in (self.hub.user, *self.hub.orgs):
                raise HubError(403, f"You don't have the rights to write to {repo_id}")
        return repo

    def _commit_of(self, repo: _Repo, rev: str) -> _Commit:
        commit = repo.resolve(unquote(rev))
        if commit is None:
            raise HubError(404, f"Invalid rev id: {rev}", "RevisionNotFound")
        return commit

    # ------------------------------------------------------------------ repos
    def _create(self, payload: dict) -> None:
        self._require_auth()
        hub, name = self.hub, payload.get("name") or ""
        namespace = payload.get("organization") or hub.user
        repo_type = payload.get("type") or "model"
        if not _NAME_RE.match(name) or "--" in name or ".." in name or name.endswith(".git"):
            raise HubError(400, f"Invalid repo name {name!r}")
        if namespace not in (hub.user, *hub.orgs):
            raise HubError(
                403, f"You don't have the rights to create a {repo_type} under the namespace {namespace!r}"
            )
        repo_id = f"{namespace}/{name}"
        with hub.lock:
            if (repo_type, repo_id) in hub.repos:
                url = hub.url_of(hub.repos[(repo_type, repo_id)])
                raise HubError(409, f"You already created this {repo_type} repo", body={"url": url})
            private = payload.get("visibility") == "private" or bool(payload.get("private"))
            repo = hub.create(repo_type, repo_id, private)
        self._json(200, {"url": hub.url_of(repo), "name": repo_id, "id": repo_id})

    def _delete(self, payload: dict) -> None:
        self._require_auth()
        repo_id = f"{payload.get('organization') or self.hub.user}/{payload.get('name')}"
        with self.hub.lock:
            if self.hub.repos.pop((payload.get("type") or "model", repo_id), None) is None:
                raise HubError(404, f"Repository Not Found for {repo_id}", "RepoNotFound")
        self._send(200)

    def _validate_yaml(self, payload: dict) -> None:
        """The README's YAML front matter must parse to a mapping, and a model-index must have the Hub's shape."""
        meta, errors = _front_matter(payload.get("content") or ""), []
        if isinstance(meta, str):
            errors.append(meta)
        elif isinstance(meta, dict) and "model-index" in meta:
            try:
                from huggingface_hub.repocard_data import model_index_to_eval_results

                model_index_to_eval_results(meta["model-index"])
            except (KeyError, TypeError, ValueError, IndexError) as e:
                errors.append(f"model-index: {e!r}")
        if errors:
            raise HubError(400, "invalid metadata", body={"errors": [{"message": m} for m in errors]})
        warnings = [] if meta else [{"message": "Empty or missing yaml metadata in repo card"}]
        self._json(200, {"errors": [], "warnings": warnings})

    # ------------------------------------------------------------------ /api/{type}s/{ns}/{name}/...
    def _api(self, path: str, body: bytes) -> None:
        parts = path.split("/")  # ['', 'api', 'models', ns, name, action, rest...]
        if len(parts) < 5 or parts[2] not in _TYPES:
            raise HubError(404, f"no route for {self.command} {path}")
        repo_type, repo_id = _TYPES[parts[2]], f"{unquote(parts[3])}/{unquote(parts[4])}"
        action, rest = (parts[5] if len(parts) > 5 else ""), parts[6:]
        m = self.command
        if action in ("preupload", "commit", "branch") and m == "POST":
            repo = self._get_repo(repo_type, repo_id, write=True)
            if action == "preupload":
                return self._preupload(repo, unquote("/".join(rest)), json.loads(body))
            if action == "commit":
                return self._commit(repo, unquote("/".join(rest)), body)
            return self._create_branch(repo, unquote("/".join(rest)), json.loads(body or b"{}"))
        repo = self._get_repo(repo_type, repo_id)
        if action == "" and m == "GET":
            return self._info(repo, "main")
        if action == "revision" and m == "GET":
            return self._info(repo, "/".join(rest))
        if action == "refs" and m == "GET":
            return self._refs(repo)
        if action == "commits" and m == "GET":
            return self._commits(repo, "/".join(rest) or "main")
        if action == "tree" and m == "GET":
            return self._tree(repo, rest[0] if rest else "main", unquote("/".join(rest[1:])))
        if action == "paths-info" and m == "POST":
            return self._paths_info(repo, "/".join(rest), body)
        raise HubError(404, f"no route for {m} {path}")

    def _info(self, repo: _Repo, rev: str) -> None:
        commit = self._commit_of(repo, rev)
        blobs = self.query.get("blobs", ["false"])[0].lower() in ("1", "true")
        siblings = []
        for p, f in sorted(commit.files.items()):
            s = {"rfilename": p}
            if blobs:
                s.update(size=f.size, blobId=f.oid)
                if f.lfs:
                    s["lfs"] = {"sha256": f.blob, "size": f.size, "pointerSize": len(f.pointer)}
            siblings.append(s)
        card = {}
        if "README.md" in commit.files:
            meta = _front_matter(self.hub.blobs[commit.files["README.md"].blob].decode("utf-8", "replace"))
            card = meta if isinstance(meta, dict) else {}
        ns = repo.id.split("/")[0]
        info = {
            "_id": hashlib.md5(repo.id.encode()).hexdigest()[:24],
            "id": repo.id,
            "author": ns,
            "sha": commit.sha,
            "lastModified": commit.date,
            "createdAt": repo.created,
            "private": repo.private,
            "gated": False,
            "disabled": False,
            "downloads": 0,
            "likes": 0,
            "tags": list(card.get("tags") or []),
            "cardData": card,
            "siblings": siblings,
            "usedStorage": sum(f.size for f in commit.files.values()),
        }
        if repo.type == "model":
            info.update(
                modelId=repo.id, library_name=card.get("library_name"), pipeline_tag=card.get("pipeline_tag")
            )
        self._json(200, info)

    def _refs(self, repo: _Repo) -> None:
        branches = [
            {"name": b, "ref": f"refs/heads/{b}", "targetCommit": sha}
            for b, sha in sorted(repo.branches.items())
            if not b.startswith("refs/pr/")
        ]
        prs = [
            {"name": b, "ref": b, "targetCommit": sha}
            for b, sha in sorted(repo.branches.items())
            if b.startswith("refs/pr/")
        ]
        self._json(200, {"branches": branches, "converts": [], "tags": [], "pullRequests": prs})

    def _commits(self, repo: _Repo, rev: str) -> None:
        commit, out = self._commit_of(repo, rev), []
        while commit is not None:
            out.append(
                {"id": commit.sha, "title": commit.title, "message": "", "authors": [], "date": commit.date}
            )
            commit = repo.commits.get(commit.parent) if commit.parent else None
        self._json(200, out)

    @staticmethod
    def _dirs(files: dict[str, _File]) -> set[str]:
        return {"/".join(p.split("/")[:i]) for p in files for i in range(1, p.count("/") + 1)}

    def _entries(self, commit: _Commit, paths: list[str]) -> list[dict]:
        dirs, out = self._dirs(commit.files), []
        for p in paths:
            if p in commit.files:
                out.append(commit.files[p].entry(p))
            elif p in dirs:
                out.append(
                    {
                        "type": "directory",
                        "oid": hashlib.sha1(f"{commit.sha}:{p}".encode()).hexdigest(),
                        "size": 0,
                        "path": p,
                    }
                )
        return out

    def _tree(self, repo: _Repo, rev: str, folder: str) -> None:
        commit = self._commit_of(repo, rev)
        recursive = self.query.get("recursive", ["false"])[0].lower() in ("1", "true")
        folder = folder.strip("/")
        names = sorted(set(commit.files) | self._dirs(commit.files))
        if folder and folder not in self._dirs(commit.files):
            raise HubError(404, f"{folder} does not exist on {rev}", "EntryNotFound")
        prefix = folder + "/" if folder else ""
        under = [n for n in names if n.startswith(prefix) and (recursive or "/" not in n[len(prefix) :])]
        self._json(200, self._entries(commit, under))

    def _paths_info(self, repo: _Repo, rev: str, body: bytes) -> None:
        commit = self._commit_of(repo, rev)
        ctype = self.headers.get("Content-Type", "")
        form = json.loads(body) if "json" in ctype else parse_qs(body.decode())
        paths = form.get("paths") or []
        if isinstance(paths, str):
            paths = [paths]
        self._json(200, self._entries(commit, [p.strip("/") for p in paths]))

    # ------------------------------------------------------------------ uploads
    def _lfs_patterns(self, commit: _Commit) -> list[str]:
        f = commit.files.get(".gitattributes")
        text = self.hub.blobs[f.blob].decode() if f else ""
        return [line.split()[0] for line in text.splitlines() if "filter=lfs" in line and line.strip()]

    def _is_lfs(self, commit: _Commit, path: str, size: int) -> bool:
        if size >= _LFS_THRESHOLD:
            return True
        name = path.rsplit("/", 1)[-1]
        return any(fnmatch.fnmatch(path if "/" in pat else name, pat) for pat in self._lfs_patterns(commit))

    def _preupload(self, repo: _Repo, rev: str, payload: dict) -> None:
        commit = self._commit_of(repo, rev)
        out = []
        for f in payload.get("files", []):
            path, size = f["path"], int(f["size"])
            lfs = self._is_lfs(commit, path, size)
            old = commit.files.get(path)
            oid = None if old is None else (old.blob if old.lfs else old.oid)
            out.append(
                {"path": path, "uploadMode": "lfs" if lfs else "regular", "shouldIgnore": False, "oid": oid}
            )
        self._json(200, {"files": out, "commitOid": commit.sha})

    def _lfs_batch(self, repo: _Repo, payload: dict) -> None:
        if payload.get("operation") != "upload":
            raise HubError(400, "only uploads are supported by this server")
        objects = []
        for o in payload.get("objects", []):
            oid, size = o["oid"], int(o["size"])
            obj = {"oid": oid, "size": size, "authenticated": True}
            if oid not in self.hub.lfs_uploads:
                obj["actions"] = {"upload": {"href": f"{self.hub.url}/__lfs/{oid}", "header": {}}}
            objects.append(obj)
        self._json(200, {"transfer": "basic", "objects": objects})

    def _lfs_put(self, oid: str, body: bytes) -> None:
        if hashlib.sha256(body).hexdigest() != oid:
            raise HubError(400, f"uploaded bytes do not match sha256 {oid}")
        with self.hub.lock:
            self.hub.lfs_uploads[oid] = body
        self._send(200)

    def _create_branch(self, repo: _Repo, branch: str, payload: dict) -> None:
        with self.hub.lock:
            if branch in repo.branches:
                raise HubError(409, f"Reference already exists: {branch}")
            start = self._commit_of(repo, payload.get("startingPoint") or "main")
            repo.branches[branch] = start.sha
        self._json(200, {})

    def _commit(self, repo: _Repo, rev: str, body: bytes) -> None:
        hub = self.hub
        lines = [json.loads(x) for x in body.decode().splitlines() if x.strip()]
        if not lines or lines[0].get("key") != "header":
            raise HubError(400, "the commit payload must start with a header line")
        header = lines[0]["value"]
        create_pr = self.query.get("create_pr", ["0"])[0] in ("1", "true")
        with hub.lock:
            base = self._commit_of(repo, rev)
            branch = rev if rev in repo.branches else None
            if branch is None and not create_pr:
                raise HubError(400, f"Can only commit to a branch, got {rev!r}")
            if header.get("parentCommit") and header["parentCommit"] != base.sha:
                raise HubError(412, "A commit has happened since. Please refresh and try again.")
            files = dict(base.files)
            for item in lines[1:]:
                key, value = item["key"], item["value"]
                path = value["path"].strip("/")
                if key == "file":
                    data = (
                        base64.b64decode(value["content"])
                        if value.get("encoding") == "base64"
                        else value["content"].encode()
                    )
                    files[path] = hub._store(data, lfs=False)
                elif key == "lfsFile":
                    oid = value["oid"]
                    data = hub.lfs_uploads.get(oid)
                    if data is None:
                        data = hub.blobs.get(oid)
                    if data is None:
                        raise HubError(
                            422,
                            f"Your push was rejected because an LFS pointer pointed to a file that does not exist ({path})",
                        )
                    files[path] = hub._store(data, lfs=True)
                elif key == "deletedFile":
                    if path not in files:
                        raise HubError(404, f"{path} does not exist", "EntryNotFound")
                    del files[path]
                elif key == "deletedFolder":
                    for p in [p for p in files if p.startswith(path + "/")]:
                        del files[p]
                else:
                    raise HubError(400, f"unknown commit operation {key!r}")
            pr_url = None
            if create_pr:
                n = 1 + sum(b.startswith("refs/pr/") for b in repo.branches)
                target = f"refs/pr/{n}"
                repo.branches[target] = base.sha
                pr_url = f"{hub.url_of(repo)}/discussions/{n}"
            else:
                target = branch
            sha = hub._commit(repo, target, files, header.get("summary") or "", base.sha)
        self._json(
            200,
            {
                "success": True,
                "commitOid": sha,
                "commitUrl": f"{hub.url_of(repo)}/commit/{sha}",
                "hookOutput": "",
                "pullRequestUrl": pr_url,
            },
        )

    # ------------------------------------------------------------------ downloads
    def _resolve(self, path: str) -> None:
        head, _, tail = path[1:].partition("/resolve/")
        repo_type = "model"
        for t, prefix in _PREFIX.items():
            if prefix and head.startswith(prefix):
                repo_type, head = t, head[len(prefix) :]
        repo = self._get_repo(repo_type, unquote(head))
        rev, _, file_path = tail.partition("/")
        commit = self._commit_of(repo, rev)
        file_path = unquote(file_path)
        f = commit.files.get(file_path)
        headers = {"X-Repo-Commit": commit.sha, "Accept-Ranges": "bytes"}
        if f is None:
            raise HubError(404, f"Entry not found: {file_path}", "EntryNotFound", headers=headers)
        data = self.hub.blobs[f.blob]
        headers["ETag"] = f'"{f.etag}"'
        if f.lfs:
            headers.update({"X-Linked-Etag": f'"{f.etag}"', "X-Linked-Size": f.size})
        rng = self.headers.get("Range")
        if rng and self.command == "GET":
            m = re.fullmatch(r"bytes=(\d*)-(\d*)", rng.strip())
            if not m or (m.group(1) == "" and m.group(2) == ""):
                raise HubError(416, f"bad range {rng!r}", headers={"Content-Range": f"bytes */{len(data)}"})
            if m.group(1) == "":  # suffix: the last n bytes
                start, end = max(0, len(data) - int(m.group(2))), len(data) - 1
            else:
                start = int(m.group(1))
                end = min(int(m.group(2)), len(data) - 1) if m.group(2) else len(data) - 1
            if start >= len(data) or start > end:
                raise HubError(
                    416, "Range Not Satisfiable", headers={"Content-Range": f"bytes */{len(data)}"}
                )
            headers["Content-Range"] = f"bytes {start}-{end}/{len(data)}"
            return self._send(206, data[start : end + 1], headers, "application/octet-stream")
        self._send(200, data, headers, "application/octet-stream")
