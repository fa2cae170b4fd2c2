"""The in-memory state of the loopback Hub: tokens, repos, blobs, commits, pull requests, faults.

:class:`HubStore` holds it all behind one lock and answers the inspection calls tests make
(``head``, ``history``, ``files``, ``requests``...); :class:`~hfcompress.testing.hub_server.HubServer`
adds the HTTP server around it.
"""

from __future__ import annotations

import secrets
import threading
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any

from .git_objects import git_blob_sha1, git_commit_sha1, git_tree_sha1

__all__ = ["Commit", "Fault", "HubError", "HubStore", "HubToken", "PullRequest", "Repo"]

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


class HubStore:
    """Everything the Hub knows, in memory. ``tokens``: ``{token_value: (user, role)}``; by default one
    write and one read token for user ``alice`` (``write_token`` / ``read_token``). ``orgs``:
    ``{org_name: [member, ...]}``."""

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
        return git_tree_sha1(files, prefix)

    def _make_commit(self, files: dict[str, str], parents: list[str], title: str, message: str, author: str) -> str:
        date = _now()
        stamp = int(time.time())
        oid = git_commit_sha1(self._tree_sha(files), parents, author, stamp, title, message, secrets.token_hex(4))
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

