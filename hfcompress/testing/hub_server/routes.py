"""The Hub API routes the loopback server answers, as the real ``huggingface_hub`` client (2.x) calls them.

:meth:`Handler._route` maps a method and path to a route name (the names ``add_fault`` and
``requests`` use) and its action; the actions below read and change the :class:`~.store.HubStore`
under its lock.
"""

from __future__ import annotations

import base64
import hashlib
import json
from typing import Any
from urllib.parse import parse_qs

from .handler import BaseHandler
from .store import INITIAL_GITATTRIBUTES, REPO_TYPES, URL_PREFIX, Commit, HubError, PullRequest, Repo, _now

__all__ = ["Handler"]


class Handler(BaseHandler):
    """Every route: auth, repos, refs and branches, pull requests, files, uploads."""

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
        header, ops, new_blobs = _parse_commit(body)
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
            files = self._apply_operations(dict(hub.commits[parent].files), ops, new_blobs)
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

    def _apply_operations(self, files: dict[str, str], ops: list[tuple[str, dict[str, Any]]],
                          new_blobs: dict[str, bytes]) -> dict[str, str]:
        """The parent's ``files`` (path -> blob id) with the commit's operations applied (caller holds the lock)."""
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
                files[path] = self.hub._store_blob(new_blobs[value["path"]])
        return files


def _parse_commit(body: bytes) -> tuple[dict[str, Any], list[tuple[str, dict[str, Any]]], dict[str, bytes]]:
    """An NDJSON commit payload: its header, its operations and the new files' bytes, all validated."""
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
    return header, ops, new_blobs


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


