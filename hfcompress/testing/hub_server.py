"""A loopback Hugging Face Hub server, for testing push automation offline.

It implements the HTTP API that the real ``huggingface_hub`` client (2.x) calls for
``whoami``, ``create_repo``, ``create_commit`` / ``upload_folder`` (preupload, YAML validation,
NDJSON commit, ``create_pr``, ``parent_commit``), branches and refs, repo/revision info,
tree listing, ``list_repo_commits`` and downloads (``hf_hub_download``, ``snapshot_download``:
HEAD + GET with ``ETag``, ``X-Repo-Commit``, ``Content-Length`` and ranges)::

    from hfcompress.testing.hub_server import HubServer

    with HubServer() as hub:                       # binds 127.0.0.1 only, random free port
        env = hub.env(token=hub.write_token)        # HF_ENDPOINT, HF_TOKEN, HF_HOME, HF_HUB_OFFLINE=0
        subprocess.run(["hfcompress", "push", "out", "--repo-id", "alice/tiny"], env={**os.environ, **env})
        assert hub.file("alice/tiny", "README.md").startswith(b"---")

Design choices, and why:

- **Only ``uploadMode: "regular"``.** ``hf-xet`` is a hard dependency of huggingface_hub 2.x: answering
  ``"lfs"`` makes the client ask the server for a Xet token and talk to a CAS service. Regular
  uploads carry the bytes base64-encoded inside the commit itself, which works for every file.
- **Real git object ids.** Blobs, trees and commits are hashed exactly like git does (sha1 of
  ``"blob <size>\\0" + data`` etc.), so the ``oid`` the client compares against its local files is
  right, and a re-push of identical files is observable as "no new commit".
- **Atomic commits.** A commit request is parsed and validated completely before the branch
  pointer moves in one assignment under a lock. A connection dropped during the commit (see
  :meth:`HubServer.add_fault`) leaves the branch at its previous commit.
- **Faults on demand.** ``add_fault("commit", "drop", times=2)`` closes the connection without an
  answer the next two times a commit arrives; ``add_fault("whoami", 503)`` answers an HTTP error.
- **Tokens with roles.** A configurable set of tokens (user, ``"read"``/``"write"``). Tokens are
  never logged: the request log keeps method, route, path and status only.

Repositories live in memory: enough for tests, gone when the server stops.

In pytest, ``from hfcompress.testing.hub_server import hub_server, hub_client`` makes two fixtures
available: ``hub_server`` (a running server; point subprocesses at it with ``hub_server.env()``)
and ``hub_client`` (the same, with the already-imported huggingface_hub in this process pointed at
it, see :meth:`HubServer.patch_client`).
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import json
import os
import secrets
import socket
import tempfile
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import datetime, timezone
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

__all__ = ["HubServer", "HubToken", "hub_client", "hub_server"]

# The .gitattributes the Hub writes into the initial commit of every new repo.
INITIAL_GITATTRIBUTES = b"""*.7z filter=lfs diff=lfs merge=lfs -text
*.bin filter=lfs diff=lfs merge=lfs -text
*.ckpt filter=lfs diff=lfs merge=lfs -text
*.gguf filter=lfs diff=lfs merge=lfs -text
*.h5 filter=lfs diff=lfs merge=lfs -text
*.onnx filter=lfs diff=lfs merge=lfs -text
*.pt filter=lfs diff=lfs merge=lfs -text
*.pth filter=lfs diff=lfs merge=lfs -text
*.safetensors filter=lfs diff=lfs merge=lfs -text
*.zip filter=lfs diff=lfs merge=lfs -text
"""

REPO_TYPES = {"models": "model", "datasets": "dataset", "spaces": "space"}
URL_PREFIX = {"model": "", "dataset": "datasets/", "space": "spaces/"}


def git_blob_sha1(data: bytes) -> str:
    """The git object id of a file's content (what the Hub reports as a regular file's ``oid``)."""
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


def _now() -> str:
    return datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"


@dataclass
class HubToken:
    """An access token: who it belongs to and whether it may write."""

    value: str
    user: str
    role: str = "write"  # "read" | "write"


@dataclass
class Commit:
    id: str
    files: dict[str, str]  # path -> blob sha1
    parents: list[str]
    title: str
    message: str
    author: str
    date: str


@dataclass
class PullRequest:
    """A discussion; a pull request when ``is_pull_request`` (its ref ``refs/pr/<num>`` points at ``head``)."""

    num: int
    target_branch: str
    head: str
    title: str
    author: str
    status: str = "open"
    is_pull_request: bool = True
    description: str = ""
    created_at: str = field(default_factory=_now)


@dataclass
class Repo:
    repo_type: str
    repo_id: str
    private: bool
    created_at: str
    branches: dict[str, str] = field(default_factory=dict)
    pull_requests: dict[int, PullRequest] = field(default_factory=dict)
    internal_id: str = field(default_factory=lambda: secrets.token_hex(12))

    @property
    def namespace(self) -> str:
        return self.repo_id.split("/")[0]


@dataclass
class Fault:
    route: str
    action: str | int  # "drop" or an HTTP status code
    remaining: int


class HubError(Exception):
    """Raised inside a handler: becomes an HTTP error answer with Hub-style headers."""

    def __init__(self, status: int, message: str, code: str | None = None, headers: dict[str, str] | None = None,
                 extra: dict[str, Any] | None = None):
        super().__init__(message)
        self.extra = extra or {}
        self.status = status
        self.message = message
        self.code = code
        self.headers = headers or {}


class _DropConnection(Exception):
    pass


class HubServer:
    """An in-memory Hub on ``http://127.0.0.1:<random port>``, served from a background thread.

    ``tokens``: ``{token_value: (user, role)}``; by default one write and one read token for user
    ``alice`` (``write_token`` / ``read_token``). ``orgs``: ``{org_name: [member, ...]}``.
    """

    def __init__(
        self,
        tokens: dict[str, tuple[str, str]] | None = None,
        orgs: dict[str, list[str]] | None = None,
    ) -> None:
        if tokens is None:
            self.write_token = "hf_write_" + secrets.token_hex(16)
            self.read_token = "hf_read_" + secrets.token_hex(16)
            tokens = {self.write_token: ("alice", "write"), self.read_token: ("alice", "read")}
        else:
            self.write_token = next((t for t, (_, r) in tokens.items() if r == "write"), "")
            self.read_token = next((t for t, (_, r) in tokens.items() if r == "read"), "")
        self.tokens = {value: HubToken(value, user, role) for value, (user, role) in tokens.items()}
        self.orgs = {name: list(members) for name, members in (orgs or {}).items()}
        self.repos: dict[tuple[str, str], Repo] = {}
        self.blobs: dict[str, bytes] = {}
        self.commits: dict[str, Commit] = {}
        self.faults: list[Fault] = []
        self.request_log: list[tuple[str, str, str, int]] = []
        """(method, route, path, status) of every request; never headers, so never a token."""
        self.lock = threading.RLock()
        self._httpd: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None
        self._home: tempfile.TemporaryDirectory[str] | None = None

    # -- lifecycle -------------------------------------------------------------------------------
    def start(self) -> HubServer:
        handler = type("BoundHubHandler", (_Handler,), {"hub": self})
        # Port 0: the OS picks a free port, so parallel test runs never collide.
        self._httpd = ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self._httpd.daemon_threads = True
        self._thread = threading.Thread(target=self._httpd.serve_forever, name="hfcompress-hub", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._httpd is not None:
            self._httpd.shutdown()
            self._httpd.server_close()
            self._httpd = None
        if self._home is not None:
            self._home.cleanup()
            self._home = None

    def __enter__(self) -> HubServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def port(self) -> int:
        assert self._httpd is not None, "server not started"
        return int(self._httpd.server_address[1])

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    # -- client configuration --------------------------------------------------------------------
    def env(self, token: str | None = None) -> dict[str, str]:
        """Environment for a subprocess that should talk to this server (merge into ``os.environ``).

        ``HF_HOME`` points to a private temporary folder so the user's login cache and Hub cache
        are neither read nor written. ``token=None`` sets no ``HF_TOKEN``.
        """
        if self._home is None:
            self._home = tempfile.TemporaryDirectory(prefix="hfcompress-hub-home-")
        env = {
            "HF_ENDPOINT": self.endpoint,
            "HF_HOME": self._home.name,
            "HF_HUB_OFFLINE": "0",
            "TRANSFORMERS_OFFLINE": "0",
            "HF_HUB_DISABLE_TELEMETRY": "1",
            "HF_HUB_DISABLE_UPDATE_CHECK": "1",
            "HF_HUB_DISABLE_PROGRESS_BARS": "1",
        }
        if token is not None:
            env["HF_TOKEN"] = token
        return env

    @contextlib.contextmanager
    def patch_client(self) -> Iterator[HubServer]:
        """Point the huggingface_hub already imported in *this* process at the server.

        huggingface_hub reads ``HF_ENDPOINT`` and ``HF_HUB_OFFLINE`` once, at import time, into
        ``huggingface_hub.constants`` (and the module-level ``HfApi`` behind ``create_repo`` & co.
        keeps the endpoint it was built with). A test process has usually imported it long before
        a fixture runs, so setting the environment is not enough: this also patches the constants
        the client reads on every call, and restores everything afterwards. Subprocesses should use
        :meth:`env` instead.
        """
        from huggingface_hub import constants, hf_api

        saved_env = {k: os.environ.get(k) for k in ("HF_ENDPOINT", "HF_HUB_OFFLINE")}
        saved = {
            "ENDPOINT": constants.ENDPOINT,
            "HUGGINGFACE_CO_URL_TEMPLATE": constants.HUGGINGFACE_CO_URL_TEMPLATE,
            "HF_HUB_OFFLINE": constants.HF_HUB_OFFLINE,
        }
        saved_api_endpoint = hf_api.api.endpoint
        os.environ["HF_ENDPOINT"] = self.endpoint
        os.environ["HF_HUB_OFFLINE"] = "0"
        constants.ENDPOINT = self.endpoint
        constants.HUGGINGFACE_CO_URL_TEMPLATE = self.endpoint + "/{repo_id}/resolve/{revision}/{filename}"
        constants.HF_HUB_OFFLINE = False
        hf_api.api.endpoint = self.endpoint
        try:
            yield self
        finally:
            for key, value in saved.items():
                setattr(constants, key, value)
            hf_api.api.endpoint = saved_api_endpoint
            for key, value in saved_env.items():
                if value is None:
                    os.environ.pop(key, None)
                else:
                    os.environ[key] = value

    # -- faults and inspection -------------------------------------------------------------------
    def add_fault(self, route: str, action: str | int = "drop", times: int = 1) -> None:
        """Make the next ``times`` requests to ``route`` fail.

        ``route`` is one of: whoami, create_repo, validate_yaml, info, preupload, commit, refs,
        branch, tree, paths_info, commits, resolve. ``action``: ``"drop"`` reads the request and
        closes the connection without answering (for a commit: before anything is applied), or an
        HTTP status such as 500, 503 or 429 (answered with ``Retry-After: 0``).
        """
        with self.lock:
            self.faults.append(Fault(route, action, times))

    def requests(self, route: str | None = None) -> list[tuple[str, str, str, int]]:
        with self.lock:
            return [r for r in self.request_log if route is None or r[1] == route]

    def repo(self, repo_id: str, repo_type: str = "model") -> Repo:
        return self.repos[(repo_type, repo_id)]

    def head(self, repo_id: str, revision: str = "main", repo_type: str = "model") -> str:
        with self.lock:
            return self._resolve(self.repo(repo_id, repo_type), revision)

    def history(self, repo_id: str, revision: str = "main", repo_type: str = "model") -> list[Commit]:
        """First-parent history, newest first."""
        with self.lock:
            return self._history(self.head(repo_id, revision, repo_type))

    def files(self, repo_id: str, revision: str = "main", repo_type: str = "model") -> dict[str, bytes]:
        with self.lock:
            commit = self.commits[self.head(repo_id, revision, repo_type)]
            return {path: self.blobs[oid] for path, oid in commit.files.items()}

    def file(self, repo_id: str, path: str, revision: str = "main", repo_type: str = "model") -> bytes:
        return self.files(repo_id, revision, repo_type)[path]

    # -- storage (callers hold the lock) ---------------------------------------------------------
    def _store_blob(self, data: bytes) -> str:
        oid = git_blob_sha1(data)
        self.blobs.setdefault(oid, data)
        return oid

    def _tree_sha(self, files: dict[str, str], prefix: str = "") -> str:
        """The git tree id of the folder ``prefix`` (real git tree encoding, nested)."""
        entries: dict[str, tuple[str, bytes]] = {}
        for path, oid in files.items():
            if not path.startswith(prefix):
                continue
            rest = path[len(prefix) :]
            if "/" in rest:
                name = rest.split("/", 1)[0]
                if name not in entries:
                    entries[name] = ("40000", bytes.fromhex(self._tree_sha(files, prefix + name + "/")))
            else:
                entries[rest] = ("100644", bytes.fromhex(oid))
        # git sorts tree entries by name, with folders compared as if their name ended in "/"
        ordered = sorted(entries.items(), key=lambda kv: kv[0] + ("/" if kv[1][0] == "40000" else ""))
        body = b"".join(f"{mode} {name}".encode() + b"\0" + raw for name, (mode, raw) in ordered)
        return hashlib.sha1(b"tree %d\0" % len(body) + body).hexdigest()

    def _make_commit(self, files: dict[str, str], parents: list[str], title: str, message: str, author: str) -> str:
        date = _now()
        stamp = int(time.time())
        text = f"tree {self._tree_sha(files)}\n"
        text += "".join(f"parent {p}\n" for p in parents)
        text += f"author {author} <{author}@users.noreply.huggingface.co> {stamp} +0000\n"
        text += f"committer {author} <{author}@users.noreply.huggingface.co> {stamp} +0000\n\n"
        text += title + ("\n\n" + message if message else "") + "\n"
        # A nonce keeps two identical commits made in the same second distinct, as on the Hub
        # (which records the exact time); git would collide here.
        text += f"\nhub-nonce {secrets.token_hex(4)}\n"
        raw = text.encode()
        oid = hashlib.sha1(b"commit %d\0" % len(raw) + raw).hexdigest()
        self.commits[oid] = Commit(oid, dict(files), parents, title, message, author, date)
        return oid

    def _history(self, head: str) -> list[Commit]:
        out, oid = [], head
        while oid:
            commit = self.commits[oid]
            out.append(commit)
            oid = commit.parents[0] if commit.parents else ""
        return out

    def _resolve(self, repo: Repo, revision: str) -> str:
        """Branch, ``refs/heads/x``, ``refs/pr/N`` or a (prefix of a) commit id -> commit id."""
        if revision.startswith("refs/heads/"):
            revision = revision[len("refs/heads/") :]
        if revision in repo.branches:
            return repo.branches[revision]
        if revision.startswith("refs/pr/") and revision[8:].isdigit():
            pr = repo.pull_requests.get(int(revision[8:]))
            if pr is not None and pr.is_pull_request:
                return pr.head
        if len(revision) >= 7 and all(c in "0123456789abcdef" for c in revision):
            reachable = {c.id for head in self._heads(repo) for c in self._history(head)}
            matches = [oid for oid in reachable if oid.startswith(revision)]
            if len(matches) == 1:
                return matches[0]
        raise HubError(404, f"Invalid rev id: {revision}", "RevisionNotFound")

    def _heads(self, repo: Repo) -> list[str]:
        return list(repo.branches.values()) + [pr.head for pr in repo.pull_requests.values() if pr.is_pull_request]

    def _members(self, namespace: str) -> set[str]:
        return set(self.orgs[namespace]) if namespace in self.orgs else {namespace}


def _header_token(handler: BaseHTTPRequestHandler) -> str | None:
    auth = handler.headers.get("Authorization") or ""
    if auth.lower().startswith("bearer "):
        return auth[7:].strip() or None
    return None


class _Handler(BaseHTTPRequestHandler):
    """Routes one request; every answer has a Content-Length so keep-alive connections work."""

    protocol_version = "HTTP/1.1"
    hub: HubServer  # set on the per-server subclass
    server_version = "hfcompress-hub"

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002
        # The default handler prints to stderr; the hub keeps a structured, token-free log instead.
        pass

    # -- plumbing --------------------------------------------------------------------------------
    def do_GET(self) -> None:
        self._dispatch("GET")

    def do_HEAD(self) -> None:
        self._dispatch("HEAD")

    def do_POST(self) -> None:
        self._dispatch("POST")

    def do_PUT(self) -> None:
        self._dispatch("PUT")

    def do_DELETE(self) -> None:
        self._dispatch("DELETE")

    def _read_body(self) -> bytes:
        if "chunked" in (self.headers.get("Transfer-Encoding") or "").lower():
            chunks = []
            while True:
                size = int(self.rfile.readline().split(b";")[0].strip() or b"0", 16)
                if size == 0:
                    self.rfile.readline()
                    break
                chunks.append(self.rfile.read(size))
                self.rfile.readline()
            return b"".join(chunks)
        length = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(length) if length else b""

    def _send(self, status: int, body: bytes = b"", headers: dict[str, str] | None = None,
              content_type: str = "application/json", length: int | None = None) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body) if length is None else length))
        for key, value in (headers or {}).items():
            self.send_header(key, value)
        self.end_headers()
        if self.command != "HEAD" and body:
            self.wfile.write(body)
        self._status = status

    def _json(self, obj: Any, status: int = 200, headers: dict[str, str] | None = None) -> None:
        self._send(status, json.dumps(obj).encode(), headers)

    def _dispatch(self, method: str) -> None:
        hub = self.hub
        split = urlsplit(self.path)
        # Split before unquoting: the client sends revisions such as "refs%2Fpr%2F1" as ONE segment.
        segments = [unquote(s) for s in split.path.split("/")[1:]]
        query = {k: v[-1] for k, v in parse_qs(split.query).items()}
        self._status = 0
        route = "unknown"
        # Always consume the body first, so a keep-alive connection stays in sync even on errors.
        body = self._read_body()
        try:
            route, action = self._route(method, segments)
            fault = self._take_fault(route)
            if fault == "drop":
                raise _DropConnection
            if isinstance(fault, int):
                raise HubError(fault, f"injected fault: HTTP {fault}", headers={"Retry-After": "0"})
            action(body, query)
        except _DropConnection:
            self.close_connection = True
            with contextlib.suppress(OSError):
                self.connection.shutdown(socket.SHUT_RDWR)
        except HubError as err:
            headers = dict(err.headers)
            if err.code:
                headers["X-Error-Code"] = err.code
            headers["X-Error-Message"] = err.message
            self._json({"error": err.message, **err.extra}, err.status, headers)
        except Exception as err:  # a bug in the server: answer 500 rather than hang the client
            self._json({"error": f"internal error: {type(err).__name__}: {err}"}, 500)
        finally:
            with hub.lock:
                hub.request_log.append((method, route, split.path, self._status))

    def _take_fault(self, route: str) -> str | int | None:
        with self.hub.lock:
            for fault in self.hub.faults:
                if fault.route == route and fault.remaining > 0:
                    fault.remaining -= 1
                    return fault.action
        return None

    def _route(self, method: str, seg: list[str]) -> tuple[str, Any]:
        def bind(fn: Any, *args: Any) -> Any:
            return lambda body, query: fn(*args, body, query)

        if seg[:1] == ["api"]:
            rest = seg[1:]
            if rest == ["whoami-v2"] and method == "GET":
                return "whoami", bind(self._whoami)
            if rest == ["agent-harnesses"] and method == "GET":
                return "agent_harnesses", bind(lambda body, query: self._json({"standardEnvVars": [], "harnesses": {}}))
            if rest == ["repos", "create"] and method == "POST":
                return "create_repo", bind(self._create_repo)
            if rest == ["repos", "delete"] and method == "DELETE":
                return "delete_repo", bind(self._delete_repo)
            if rest == ["validate-yaml"] and method == "POST":
                return "validate_yaml", bind(self._validate_yaml)
            if len(rest) >= 3 and rest[0] in REPO_TYPES:
                repo_type, repo_id, tail = REPO_TYPES[rest[0]], f"{rest[1]}/{rest[2]}", rest[3:]
                if not tail and method == "GET":
                    return "info", bind(self._info, repo_type, repo_id, None)
                op, args = (tail[0], tail[1:]) if tail else ("", [])
                if op == "revision" and len(args) == 1 and method == "GET":
                    return "info", bind(self._info, repo_type, repo_id, args[0])
                if op == "preupload" and len(args) == 1 and method == "POST":
                    return "preupload", bind(self._preupload, repo_type, repo_id, args[0])
                if op == "commit" and len(args) == 1 and method == "POST":
                    return "commit", bind(self._commit, repo_type, repo_id, args[0])
                if op == "refs" and not args and method == "GET":
                    return "refs", bind(self._refs, repo_type, repo_id)
                if op == "branch" and len(args) == 1 and method in ("POST", "DELETE"):
                    return "branch", bind(self._branch, repo_type, repo_id, args[0], method)
                if op == "tree" and len(args) >= 1 and method == "GET":
                    return "tree", bind(self._tree, repo_type, repo_id, args[0], "/".join(args[1:]))
                if op == "paths-info" and len(args) == 1 and method == "POST":
                    return "paths_info", bind(self._paths_info, repo_type, repo_id, args[0])
                if op == "discussions" and not args and method == "POST":
                    return "discussions", bind(self._create_discussion, repo_type, repo_id)
                if op == "discussions" and len(args) == 1 and args[0].isdigit() and method == "GET":
                    return "discussions", bind(self._discussion, repo_type, repo_id, int(args[0]))
                if op == "commits" and len(args) == 1 and method == "GET":
                    return "commits", bind(self._commits, repo_type, repo_id, args[0])
        else:
            repo_type = "model"
            if seg[:1] in (["datasets"], ["spaces"]):
                repo_type, seg = REPO_TYPES[seg[0]], seg[1:]
            if len(seg) >= 5 and seg[2] == "resolve" and method in ("GET", "HEAD"):
                return "resolve", bind(self._resolve_file, repo_type, f"{seg[0]}/{seg[1]}", seg[3], "/".join(seg[4:]))
        raise HubError(404, f"no such route: {method} /{'/'.join(seg)}")

    # -- auth ------------------------------------------------------------------------------------
    def _token(self, required: bool) -> HubToken | None:
        value = _header_token(self)
        if value is None:
            if required:
                raise HubError(401, "Authorization header is missing: log in or pass a token")
            return None
        token = self.hub.tokens.get(value)
        if token is None:
            raise HubError(401, "Invalid credentials in Authorization header")
        return token

    def _repo(self, repo_type: str, repo_id: str, write: bool = False) -> tuple[Repo, HubToken | None]:
        token = self._token(required=write)
        repo = self.hub.repos.get((repo_type, repo_id))
        user = token.user if token else None
        if repo is None or (repo.private and user not in self.hub._members(repo.namespace)):
            # The Hub answers "not found" for private repos the caller may not see.
            raise HubError(404, "Repository not found", "RepoNotFound")
        if write:
            assert token is not None
            if token.role != "write" or token.user not in self.hub._members(repo.namespace):
                raise HubError(403, f"You don't have the rights to write to {repo_id} (token role: {token.role})")
        return repo, token

    def _whoami(self, body: bytes, query: dict[str, str]) -> None:
        token = self._token(required=True)
        assert token is not None
        orgs = [
            {"type": "org", "name": org, "roleInOrg": "write" if token.role == "write" else "read"}
            for org, members in self.hub.orgs.items()
            if token.user in members
        ]
        self._json({
            "type": "user",
            "id": hashlib.sha1(token.user.encode()).hexdigest()[:24],
            "name": token.user,
            "fullname": token.user.title(),
            "email": f"{token.user}@example.invalid",
            "emailVerified": True,
            "isPro": False,
            "orgs": orgs,
            "auth": {"type": "access_token", "accessToken": {"displayName": "hfcompress-test", "role": token.role}},
        })

    # -- repos -----------------------------------------------------------------------------------
    def _create_repo(self, body: bytes, query: dict[str, str]) -> None:
        hub = self.hub
        token = self._token(required=True)
        assert token is not None
        payload = json.loads(body or b"{}")
        name, namespace = payload.get("name"), payload.get("organization") or token.user
        repo_type = payload.get("type") or "model"
        if not name or "/" in name:
            raise HubError(400, "invalid repo name")
        if token.role != "write" or token.user not in hub._members(namespace):
            raise HubError(403, f"You don't have the rights to create a repo under {namespace!r}")
        repo_id = f"{namespace}/{name}"
        url = f"{hub.endpoint}/{URL_PREFIX[repo_type]}{repo_id}"
        private = payload.get("visibility") == "private" or bool(payload.get("private"))
        with hub.lock:
            if (repo_type, repo_id) in hub.repos:
                # The client reads "url" from the 409 answer when exist_ok=True.
                raise HubError(409, f"You already created this {repo_type} repo", extra={"url": url})
            repo = Repo(repo_type, repo_id, private, _now())
            files = {".gitattributes": hub._store_blob(INITIAL_GITATTRIBUTES)}
            repo.branches["main"] = hub._make_commit(files, [], "initial commit", "", token.user)
            hub.repos[(repo_type, repo_id)] = repo
        self._json({"url": url, "name": repo_id, "id": repo.internal_id})

    def _delete_repo(self, body: bytes, query: dict[str, str]) -> None:
        payload = json.loads(body or b"{}")
        token = self._token(required=True)
        assert token is not None
        repo_id = f"{payload.get('organization') or token.user}/{payload.get('name')}"
        repo, _ = self._repo(payload.get("type") or "model", repo_id, write=True)
        with self.hub.lock:
            del self.hub.repos[(repo.repo_type, repo.repo_id)]
        self._json({})

    def _info(self, repo_type: str, repo_id: str, revision: str | None, body: bytes, query: dict[str, str]) -> None:
        hub = self.hub
        repo, _ = self._repo(repo_type, repo_id)
        with hub.lock:
            sha = hub._resolve(repo, revision or "main")
            commit = hub.commits[sha]
            blobs = query.get("blobs", "").lower() in ("1", "true")
            siblings = []
            for path in sorted(commit.files):
                sibling: dict[str, Any] = {"rfilename": path}
                if blobs:
                    sibling.update(size=len(hub.blobs[commit.files[path]]), blobId=commit.files[path])
                siblings.append(sibling)
            card = _front_matter(hub.blobs[commit.files["README.md"]].decode("utf-8", "replace")) \
                if "README.md" in commit.files else None
            self._json({
                "_id": repo.internal_id,
                "id": repo_id,
                "modelId": repo_id,
                "author": repo.namespace,
                "sha": sha,
                "lastModified": commit.date,
                "createdAt": repo.created_at,
                "private": repo.private,
                "gated": False,
                "disabled": False,
                "downloads": 0,
                "likes": 0,
                "tags": list((card or {}).get("tags") or []) if isinstance(card, dict) else [],
                "cardData": card if isinstance(card, dict) else None,
                "siblings": siblings,
                "usedStorage": sum(len(hub.blobs[oid]) for oid in commit.files.values()),
            })

    def _refs(self, repo_type: str, repo_id: str, body: bytes, query: dict[str, str]) -> None:
        repo, _ = self._repo(repo_type, repo_id)
        with self.hub.lock:
            out: dict[str, Any] = {
                "branches": [{"name": b, "ref": f"refs/heads/{b}", "targetCommit": c} for b, c in repo.branches.items()],
                "converts": [],
                "tags": [],
            }
            if query.get("include_prs"):
                out["pullRequests"] = [
                    {"name": f"refs/pr/{n}", "ref": f"refs/pr/{n}", "targetCommit": pr.head}
                    for n, pr in sorted(repo.pull_requests.items())
                    if pr.is_pull_request
                ]
        self._json(out)

    def _branch(self, repo_type: str, repo_id: str, branch: str, method: str, body: bytes, query: dict[str, str]) -> None:
        repo, _ = self._repo(repo_type, repo_id, write=True)
        with self.hub.lock:
            if method == "DELETE":
                if branch == "main" or branch not in repo.branches:
                    raise HubError(403 if branch == "main" else 404, f"cannot delete branch {branch!r}")
                del repo.branches[branch]
                self._json({})
                return
            if branch in repo.branches:
                raise HubError(409, "Reference already exists")
            payload = json.loads(body or b"{}")
            repo.branches[branch] = self.hub._resolve(repo, payload.get("startingPoint") or "main")
        self._json({})

    def _commits(self, repo_type: str, repo_id: str, revision: str, body: bytes, query: dict[str, str]) -> None:
        repo, _ = self._repo(repo_type, repo_id)
        with self.hub.lock:
            history = self.hub._history(self.hub._resolve(repo, revision))
        self._json([
            {"id": c.id, "title": c.title, "message": c.message, "authors": [{"user": c.author}], "date": c.date}
            for c in history
        ])

    def _create_discussion(self, repo_type: str, repo_id: str, body: bytes, query: dict[str, str]) -> None:
        """A pull request starts as a draft whose ref points at the target branch; commits go to its ref.

        This is how huggingface_hub 2.x opens PRs in ``upload_folder``: it never retries a commit
        sent with ``?create_pr=1`` (a lost answer would open a second PR).
        """
        repo, token = self._repo(repo_type, repo_id, write=True)
        assert token is not None
        payload = json.loads(body or b"{}")
        is_pr = bool(payload.get("pullRequest"))
        with self.hub.lock:
            num = max([0, *repo.pull_requests]) + 1
            repo.pull_requests[num] = PullRequest(
                num, "main", repo.branches["main"] if is_pr else "", (payload.get("title") or "").strip(), token.user,
                status="draft" if is_pr else "open", is_pull_request=is_pr, description=payload.get("description") or "",
            )
        self._json({"num": num, "pullRequest": is_pr})

    def _discussion(self, repo_type: str, repo_id: str, num: int, body: bytes, query: dict[str, str]) -> None:
        repo, _ = self._repo(repo_type, repo_id)
        pr = repo.pull_requests.get(num)
        if pr is None:
            raise HubError(404, f"Discussion {num} not found")
        self._json({
            "title": pr.title, "num": pr.num, "author": {"name": pr.author}, "createdAt": pr.created_at,
            "status": pr.status, "repo": {"name": repo.repo_id, "type": repo.repo_type},
            "isPullRequest": pr.is_pull_request, "events": [], "filesWithConflicts": [], "diff": "",
            "changes": {"base": f"refs/heads/{pr.target_branch}"},
        })

    # -- files -----------------------------------------------------------------------------------
    def _entries(self, commit: Commit, paths: list[str], recursive: bool, expand: bool, listing: str | None) -> list:
        """Tree entries: for ``listing`` (a folder, "" for the root) its children; else exactly ``paths``."""
        hub = self.hub
        files = commit.files
        folders = {"/".join(p.split("/")[:i]) for p in files for i in range(1, p.count("/") + 1)}
        if listing is not None:
            if listing and listing not in folders:
                raise HubError(404, f"{listing} does not exist on {commit.id}", "EntryNotFound",
                               {"X-Repo-Commit": commit.id})
            prefix = listing + "/" if listing else ""
            candidates = sorted(p for p in set(files) | folders if p.startswith(prefix) and p != listing)
            paths = [p for p in candidates if recursive or "/" not in p[len(prefix):]]
        out = []
        for path in paths:
            if path in files:
                entry: dict[str, Any] = {"type": "file", "oid": files[path], "size": len(hub.blobs[files[path]]),
                                         "path": path}
            elif path in folders:
                entry = {"type": "directory", "oid": hub._tree_sha(files, path + "/"), "size": 0, "path": path}
            else:
                continue
            if expand:
                last = self._last_commit(commit, path)
                entry["lastCommit"] = {"id": last.id, "title": last.title, "date": last.date}
            out.append(entry)
        return out

    def _last_commit(self, commit: Commit, path: str) -> Commit:
        def state(c: Commit) -> Any:
            return c.files.get(path) or sorted((p, o) for p, o in c.files.items() if p.startswith(path + "/"))

        history = self.hub._history(commit.id)
        for newer, older in zip(history, history[1:], strict=False):
            if state(newer) != state(older):
                return newer
        return history[-1]

    def _tree(self, repo_type: str, repo_id: str, revision: str, path: str, body: bytes, query: dict[str, str]) -> None:
        repo, _ = self._repo(repo_type, repo_id)
        truthy = ("1", "true", "True")
        with self.hub.lock:
            commit = self.hub.commits[self.hub._resolve(repo, revision)]
            entries = self._entries(commit, [], query.get("recursive") in truthy, query.get("expand") in truthy,
                                    path.strip("/"))
        self._json(entries)

    def _paths_info(self, repo_type: str, repo_id: str, revision: str, body: bytes, query: dict[str, str]) -> None:
        repo, _ = self._repo(repo_type, repo_id)
        form = parse_qs(body.decode())
        paths = [p.strip("/") for p in form.get("paths", [])]
        expand = (form.get("expand") or ["false"])[-1].lower() in ("1", "true")
        with self.hub.lock:
            commit = self.hub.commits[self.hub._resolve(repo, revision)]
            self._json(self._entries(commit, paths, False, expand, None))

    def _resolve_file(self, repo_type: str, repo_id: str, revision: str, path: str, body: bytes,
                      query: dict[str, str]) -> None:
        hub = self.hub
        repo, _ = self._repo(repo_type, repo_id)
        with hub.lock:
            sha = hub._resolve(repo, revision)
            oid = hub.commits[sha].files.get(path)
            if oid is None:
                raise HubError(404, "Entry not found", "EntryNotFound", {"X-Repo-Commit": sha})
            data = hub.blobs[oid]
        headers = {"ETag": f'"{oid}"', "X-Repo-Commit": sha, "Accept-Ranges": "bytes"}
        status, start, end = 200, 0, len(data)
        spec = self.headers.get("Range")
        if spec and spec.startswith("bytes="):
            first, _, last = spec[6:].split(",")[0].partition("-")
            start = int(first) if first else max(0, len(data) - int(last))
            end = int(last) + 1 if first and last else len(data)
            if start >= len(data) and len(data) > 0:
                raise HubError(416, "Requested range not satisfiable", headers={"Content-Range": f"bytes */{len(data)}"})
            status = 206
            headers["Content-Range"] = f"bytes {start}-{max(start, end - 1)}/{len(data)}"
        self._send(status, data[start:end], headers, "application/octet-stream")

    def _validate_yaml(self, body: bytes, query: dict[str, str]) -> None:
        payload = json.loads(body or b"{}")
        content = payload.get("content") or ""
        try:
            meta = _front_matter(content)
        except ValueError as err:
            self._json({"errors": [{"message": str(err)}], "warnings": []}, 400)
            return
        errors = []
        if meta is not None and not isinstance(meta, dict):
            errors.append("YAML metadata must be a mapping")
        elif meta:
            if "tags" in meta and not (isinstance(meta["tags"], list) and all(isinstance(t, str) for t in meta["tags"])):
                errors.append('"tags" must be an array of strings')
            for key in ("license", "library_name", "pipeline_tag"):
                if key in meta and not isinstance(meta[key], str):
                    errors.append(f'"{key}" must be a string')
        if errors:
            self._json({"errors": [{"message": e} for e in errors], "warnings": []}, 400)
            return
        warnings = [] if meta else [{"message": "empty or missing yaml metadata in repo card"}]
        self._json({"errors": [], "warnings": warnings})

    # -- uploads ---------------------------------------------------------------------------------
    def _preupload(self, repo_type: str, repo_id: str, revision: str, body: bytes, query: dict[str, str]) -> None:
        repo, _ = self._repo(repo_type, repo_id, write=True)
        payload = json.loads(body or b"{}")
        with self.hub.lock:
            sha = self.hub._resolve(repo, revision)
            existing = self.hub.commits[sha].files
        files = [
            # "regular" for every file: "lfs" would send hf-xet asking for a Xet token (see module doc)
            {"path": f["path"], "uploadMode": "regular", "shouldIgnore": False, "oid": existing.get(f["path"])}
            for f in payload.get("files", [])
        ]
        self._json({"files": files, "commitOid": sha})

    def _commit(self, repo_type: str, repo_id: str, revision: str, body: bytes, query: dict[str, str]) -> None:
        hub = self.hub
        repo, token = self._repo(repo_type, repo_id, write=True)
        assert token is not None
        create_pr = query.get("create_pr") in ("1", "true", "True")
        # 1. Parse and validate the whole payload before touching anything: commits are atomic.
        header: dict[str, Any] | None = None
        ops: list[tuple[str, dict[str, Any]]] = []
        for line in body.splitlines():
            if not line.strip():
                continue
            item = json.loads(line)
            if item.get("key") == "header":
                header = item.get("value") or {}
            else:
                ops.append((item.get("key"), item.get("value") or {}))
        if header is None or not header.get("summary"):
            raise HubError(400, "commit payload has no header with a summary")
        new_blobs: dict[str, bytes] = {}
        for key, value in ops:
            if key == "file":
                if value.get("encoding") != "base64":
                    raise HubError(400, f"unsupported encoding for {value.get('path')}")
                new_blobs[value["path"]] = base64.b64decode(value["content"])
            elif key == "lfsFile":
                raise HubError(400, f"{value.get('path')}: this server only accepts regular files "
                                    "(its preupload answers uploadMode 'regular')")
            elif key not in ("deletedFile", "deletedFolder"):
                raise HubError(400, f"unknown commit operation {key!r}")
        with hub.lock:
            target = revision[len("refs/heads/"):] if revision.startswith("refs/heads/") else revision
            pr_num = int(target[8:]) if target.startswith("refs/pr/") and target[8:].isdigit() else None
            if pr_num is None and target not in repo.branches:
                raise HubError(404, f"Invalid rev id: {revision}", "RevisionNotFound")
            if pr_num is not None and (pr_num not in repo.pull_requests or not repo.pull_requests[pr_num].is_pull_request):
                raise HubError(404, f"Invalid rev id: {revision}", "RevisionNotFound")
            head = repo.pull_requests[pr_num].head if pr_num is not None else repo.branches[target]
            parent = head
            if header.get("parentCommit"):
                wanted = hub._resolve(repo, header["parentCommit"])
                if create_pr:
                    parent = wanted  # a PR may start from any commit
                elif wanted != head:
                    raise HubError(412, "A commit has happened since. Please refresh and try again.")
            files = dict(hub.commits[parent].files)
            for key, value in ops:
                path = value["path"].strip("/")
                if key == "deletedFile":
                    if path not in files:
                        raise HubError(404, f"A file with this name doesn't exist: {path}", "EntryNotFound")
                    del files[path]
                elif key == "deletedFolder":
                    doomed = [p for p in files if p.startswith(path + "/")]
                    if not doomed:
                        raise HubError(404, f"A folder with this name doesn't exist: {path}", "EntryNotFound")
                    for p in doomed:
                        del files[p]
                else:
                    files[path] = hub._store_blob(new_blobs[value["path"]])
            oid = hub._make_commit(files, [parent], header["summary"], header.get("description") or "", token.user)
            url = f"{hub.endpoint}/{URL_PREFIX[repo_type]}{repo_id}"
            answer: dict[str, Any] = {
                "success": True, "commitOid": oid, "commitUrl": f"{url}/commit/{oid}",
                "commitMessage": header["summary"], "hookOutput": "", "pullRequestUrl": None,
            }
            # 2. Apply: one pointer assignment, under the lock.
            if create_pr:
                num = max([0, *repo.pull_requests]) + 1
                base = "main" if pr_num is not None else target
                repo.pull_requests[num] = PullRequest(num, base, oid, header["summary"], token.user)
                answer["pullRequestUrl"] = f"{url}/discussions/{num}"
            elif pr_num is not None:
                repo.pull_requests[pr_num].head = oid
                if repo.pull_requests[pr_num].status == "draft":
                    repo.pull_requests[pr_num].status = "open"
            else:
                repo.branches[target] = oid
        self._json(answer)


def _front_matter(content: str) -> Any:
    """The YAML metadata block of a model card, ``None`` when there is none; ValueError if invalid."""
    import yaml

    text = content.lstrip("\ufeff")
    if not text.startswith("---"):
        return None
    lines = text.splitlines()
    try:
        end = next(i for i, line in enumerate(lines[1:], 1) if line.strip() == "---")
    except StopIteration:
        raise ValueError("YAML metadata block is not closed with '---'") from None
    try:
        return yaml.safe_load("\n".join(lines[1:end]))
    except yaml.YAMLError as err:
        raise ValueError(f"Invalid YAML metadata: {err}") from None


try:  # fixtures for pytest users; the server itself does not need pytest
    import pytest

    @pytest.fixture()
    def hub_server() -> Iterator[HubServer]:
        """A running loopback Hub; point subprocesses at it with ``hub_server.env(token=...)``."""
        with HubServer() as server:
            yield server

    @pytest.fixture()
    def hub_client(hub_server: HubServer) -> Iterator[HubServer]:
        """``hub_server`` with this process's huggingface_hub pointed at it (see ``patch_client``)."""
        with hub_server.patch_client():
            yield hub_server

except ImportError:  # pragma: no cover
    pass
