"""Talking to the Hub: the token and its rights, the diff against the remote, one commit with retries.

:func:`push_to_hub` is the one entry point (the CLI's ``push`` and ``run --push-to`` call it); the
guarantees it gives are listed in the :mod:`hfcompress.hub` package docstring and docs/push.md.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

from ..errors import BadInputError, HfCompressError
from .files import LocalFile, check_repo_id, folder_fingerprint, output_folder_files, refuse_leaked_token
from .verify import verification_block, verify_folder

if TYPE_CHECKING:  # pragma: no cover
    from huggingface_hub import HfApi

__all__ = ["HubAuthError", "HubPushError", "RemotePlan", "commit_text", "push_to_hub"]

log = logging.getLogger("hfcompress.hub")
T = TypeVar("T")

# Hub-managed: the Hub writes it into every new repo; deleting it would turn LFS tracking off.
KEEP_REMOTE = frozenset({".gitattributes"})
LOGIN_HELP = (
    "Log in with `hf auth login` (it stores the token in the login cache) or set the HF_TOKEN environment "
    "variable to a token with write access (create one at https://huggingface.co/settings/tokens)."
)
_VERIFIED: dict[str, dict[str, Any]] = {}
"""Successful verifications in this process, keyed by the folder's content hash."""


class HubAuthError(BadInputError):
    """No usable token: missing, invalid, read-only, or not allowed in the target namespace (exit 2)."""


class HubPushError(HfCompressError):
    """The upload failed; the message says what state the remote is in and what to do (exit 1)."""



def commit_text(folder: Path, commit_message: str | None) -> tuple[str, str]:
    """The commit title naming the recipe (from hfcompress.yaml) and a description with the steps."""
    import yaml

    try:
        recipe = yaml.safe_load((folder / "hfcompress.yaml").read_text()) or {}
    except yaml.YAMLError as exc:
        raise BadInputError(f"push: {folder / 'hfcompress.yaml'} is not valid YAML: {exc}") from None
    if not isinstance(recipe, dict):
        raise BadInputError(f"push: {folder / 'hfcompress.yaml'} must be a mapping (the resolved recipe)")
    steps = [next(iter(s)) if isinstance(s, dict) and s else str(s) for s in recipe.get("steps") or []]
    recipe_name = " -> ".join(steps) if steps else "no steps"
    model = str(recipe.get("model", "unknown model"))
    if os.path.isabs(model):  # a local path says nothing on the Hub and exposes the local layout
        model = Path(model).name
    title = commit_message or f"hfcompress: {recipe_name} on {model}"
    body = yaml.safe_dump({"model": recipe.get("model"), "steps": recipe.get("steps") or []}, sort_keys=False)
    description = f"Compressed with hfcompress (recipe: {recipe_name}).\n\n```yaml\n{body}```\n"
    return title, description


def _status(exc: BaseException) -> int | None:
    response = getattr(exc, "response", None)
    return getattr(response, "status_code", None)


def _is_transient(exc: BaseException) -> bool:
    """Connection-level failures and server-side hiccups; never auth or validation errors."""
    try:
        import httpx2

        if isinstance(exc, httpx2.TransportError):
            return True
    except ImportError:  # pragma: no cover - older huggingface_hub used requests/httpx
        pass
    if isinstance(exc, (ConnectionError, TimeoutError)):
        return True
    status = _status(exc)
    return status is not None and (status >= 500 or status in (408, 412, 429))


def _backoff_waits() -> list[float]:
    attempts = max(1, int(os.environ.get("HFCOMPRESS_PUSH_ATTEMPTS", "5")))
    first = float(os.environ.get("HFCOMPRESS_PUSH_BACKOFF", "1"))
    return [min(first * 2**i, 60.0) for i in range(attempts - 1)]


def _describe(exc: BaseException) -> str:
    status = _status(exc)
    first = str(exc).strip().splitlines()[0].rstrip(".") if str(exc).strip() else ""
    return f"{type(exc).__name__}{f' (HTTP {status})' if status else ''}: {first}"


def _with_retries(what: str, fn: Callable[[], T]) -> T:
    waits = _backoff_waits()
    for attempt in range(len(waits) + 1):
        try:
            return fn()
        except Exception as exc:
            if not _is_transient(exc) or attempt == len(waits):
                raise
            log.warning("%s failed (%s); retrying in %.2f s (attempt %d/%d)", what, _describe(exc), waits[attempt],
                        attempt + 2, len(waits) + 1)
            time.sleep(waits[attempt])
    raise AssertionError("unreachable")  # pragma: no cover


def _endpoint() -> str:
    """HF_ENDPOINT as it is *now* (huggingface_hub froze it at import time), else the client's default."""
    from huggingface_hub import constants

    return (os.environ.get("HF_ENDPOINT") or constants.ENDPOINT).rstrip("/")


def _resolve_token(token: str | None) -> str:
    if token:
        return token
    from huggingface_hub import get_token

    found = get_token()
    if not found:
        raise HubAuthError(f"push: no Hugging Face token found. {LOGIN_HELP} Nothing was uploaded.")
    return found


def _check_write_access(api: HfApi, repo_id: str) -> tuple[str, str]:
    """whoami: the token is valid and may write to the repo's namespace. Returns (user, full repo id)."""
    from huggingface_hub.errors import HfHubHTTPError

    try:
        who = _with_retries("checking the token (whoami)", api.whoami)
    except HfHubHTTPError as exc:
        if _status(exc) == 401:
            raise HubAuthError(f"push: the Hugging Face token was rejected (invalid or expired). {LOGIN_HELP}") from None
        raise
    user = str(who.get("name"))
    namespace = repo_id.split("/")[0] if "/" in repo_id else user
    full_id = repo_id if "/" in repo_id else f"{user}/{repo_id}"
    access = (who.get("auth") or {}).get("accessToken") or {}
    role = access.get("role")
    if role == "read":
        raise HubAuthError(
            f"push: the Hugging Face token of {user!r} is read-only and cannot create repos or commits. "
            f"{LOGIN_HELP} Nothing was uploaded."
        )
    if role == "fineGrained":
        fine = access.get("fineGrained") or {}
        allowed = any(
            (scope.get("entity") or {}).get("name") == namespace and "repo.write" in (scope.get("permissions") or [])
            for scope in fine.get("scoped") or []
        ) or "repo.write" in (fine.get("global") or [])
        if not allowed:
            raise HubAuthError(
                f"push: the fine-grained token of {user!r} has no 'repo.write' permission on {namespace!r}. "
                f"{LOGIN_HELP} Nothing was uploaded."
            )
    orgs = {o.get("name"): o for o in who.get("orgs") or []}
    if namespace != user:
        if namespace not in orgs:
            raise HubAuthError(
                f"push: {user!r} is not a member of {namespace!r}, so the token cannot write to {full_id!r}. "
                f"Push to {user}/<name> or log in as a member of {namespace!r}. {LOGIN_HELP}"
            )
        if orgs[namespace].get("roleInOrg") == "read":
            raise HubAuthError(f"push: {user!r} only has the read role in {namespace!r}; ask an admin for write access.")
    return user, full_id


@dataclass
class RemotePlan:
    head: str
    upload: list[str]
    delete: list[str]
    unchanged: list[str]

    @property
    def empty(self) -> bool:
        return not self.upload and not self.delete


def _remote_plan(api: HfApi, repo_id: str, revision: str, local: dict[str, LocalFile]) -> RemotePlan:
    """Diff the local folder against the tree at ``revision`` (resolved once, so both reads agree)."""
    from huggingface_hub import RepoFile

    head = _with_retries("reading the remote revision", lambda: api.repo_info(repo_id, revision=revision).sha)
    assert head is not None
    remote = _with_retries(
        "listing the remote files",
        lambda: {f.path: f for f in api.list_repo_tree(repo_id, recursive=True, revision=head) if isinstance(f, RepoFile)},
    )
    upload = [p for p, f in local.items() if p not in remote or not f.matches(remote[p])]
    unchanged = [p for p in local if p not in upload]
    delete = sorted(p for p in remote if p not in local and p not in KEEP_REMOTE)
    return RemotePlan(head, upload, delete, unchanged)


def _revision_exists(api: HfApi, repo_id: str, revision: str) -> bool:
    from huggingface_hub.errors import RevisionNotFoundError

    try:
        _with_retries("reading the remote revision", lambda: api.repo_info(repo_id, revision=revision))
        return True
    except RevisionNotFoundError:
        return False


def _pull_requests(api: HfApi, repo_id: str) -> dict[str, str]:
    """``{"refs/pr/N": head commit}`` of every pull request."""
    refs = _with_retries("listing pull requests", lambda: api.list_repo_refs(repo_id, include_pull_requests=True))
    return {r.ref: r.target_commit for r in refs.pull_requests or []}


def _pr_with_files(api: HfApi, repo_id: str, refs: dict[str, str], local: dict[str, LocalFile]) -> str | None:
    """The newest pull request whose files are exactly the local folder (then there is nothing to open)."""
    for ref in sorted(refs, key=lambda r: int(r.rsplit("/", 1)[1]), reverse=True):
        if _remote_plan(api, repo_id, refs[ref], local).empty:
            return ref
    return None


def push_to_hub(
    folder: str | Path,
    repo_id: str,
    *,
    private: bool = False,
    revision: str | None = None,
    create_pr: bool = False,
    token: str | None = None,
    commit_message: str | None = None,
) -> dict[str, Any]:
    """Verify ``folder`` and upload it to ``repo_id`` as one commit; see the module doc for guarantees.

    ``revision``: the branch to push to (created from ``main`` when missing). ``create_pr``: open a
    pull request against that branch instead of committing to it. Returns a dict with ``repo_id``,
    ``repo_url``, ``revision``, ``commit_id`` and ``commit_url`` (``None`` when nothing changed),
    ``pr_url``, ``url`` (the PR when one was opened, else the repo), ``created_repo``,
    ``created_branch``, ``uploaded``, ``deleted``, ``unchanged`` (paths), ``commit_message`` and
    ``verification`` (the subprocess report, ``None`` when nothing had to be uploaded).
    """
    import tempfile

    secret_box = [token or ""]
    try:
        try:
            with tempfile.TemporaryDirectory(prefix="hfcompress-push-") as scratch:
                return _push(Path(folder), repo_id, private=private, revision=revision, create_pr=create_pr,
                             token=token, commit_message=commit_message, secret_box=secret_box,
                             scratch=Path(scratch))
        except HfCompressError:
            raise
        except Exception as exc:
            if _status(exc) is None and not _is_transient(exc):
                raise
            # An HTTP or connection error outside the commit loop (creating the repo, a branch...).
            raise HubPushError(
                f"push to {repo_id} failed: {_describe(exc)}. Nothing was committed; fix the cause and re-run."
            ) from exc
    except Exception as exc:
        # Belt and braces: no message that leaves this function may carry the token. Same
        # exception (type and exit code kept), message redacted, chained causes dropped.
        secret = secret_box[0] or _secret_in_use()
        if secret and secret in str(exc):
            exc.args = (str(exc).replace(secret, "hf_***"),)
            exc.__cause__ = exc.__context__ = None
            exc.__suppress_context__ = True
        raise


def _secret_in_use() -> str:
    try:
        from huggingface_hub import get_token

        return get_token() or ""
    except Exception:
        return ""


def _card_naming_the_repo(folder: Path, repo_id: str, local: dict[str, LocalFile], scratch: Path) -> dict[str, LocalFile]:
    """The files to publish, with a card whose snippet loads ``repo_id`` rather than the local folder
    it was written in (a run without ``push.repo_id``). The folder itself is not modified."""
    from ..card import card_for_repo

    text = card_for_repo(folder, repo_id)
    if text is None:
        return local
    card = scratch / "README.md"
    card.write_text(text, encoding="utf-8")
    log.info("the card's snippet now loads %s (the local card names the folder)", repo_id)
    return {**local, "README.md": LocalFile("README.md", card, card.stat().st_size)}


@dataclass(frozen=True)
class _Target:
    """Where one push goes: the client, the Hub's address, the repo and branch, and the local files."""

    api: HfApi
    endpoint: str
    repo_id: str
    branch: str
    create_pr: bool
    local: dict[str, LocalFile]

    def discussion_url(self, ref: str) -> str:
        """``refs/pr/N`` -> the pull request's page."""
        return f"{self.endpoint}/{self.repo_id}/discussions/{ref.rsplit('/', 1)[1]}"


def _push(folder: Path, repo_id: str, *, private: bool, revision: str | None, create_pr: bool, token: str | None,
          commit_message: str | None, secret_box: list[str], scratch: Path) -> dict[str, Any]:
    from huggingface_hub import HfApi, constants

    from .. import __version__

    # 1. Local checks: cheap, no network.
    check_repo_id(repo_id)
    local = output_folder_files(folder)
    verification_block(folder)
    title, description = commit_text(folder, commit_message)
    if constants.is_offline_mode():
        raise BadInputError(
            "push: huggingface_hub is in offline mode (HF_HUB_OFFLINE was set when it was imported). "
            "Unset HF_HUB_OFFLINE (or set it to 0) to push."
        )
    # 2. The token, before anything is uploaded.
    token = _resolve_token(token)
    secret_box[0] = token
    endpoint = _endpoint()
    api = HfApi(endpoint=endpoint, token=token, library_name="hfcompress", library_version=__version__)
    _, repo_id = _check_write_access(api, repo_id)
    local = _card_naming_the_repo(folder, repo_id, local, scratch)
    refuse_leaked_token(local, token)
    target = _Target(api, endpoint, repo_id, revision or "main", create_pr, local)
    branch = target.branch
    result: dict[str, Any] = {
        "repo_id": repo_id, "repo_url": f"{endpoint}/{repo_id}", "revision": branch, "commit_id": None,
        "commit_url": None, "pr_url": None, "created_repo": False, "created_branch": False, "uploaded": [],
        "deleted": [], "unchanged": [], "verification": None, "commit_message": title,
        "url": f"{endpoint}/{repo_id}",
    }

    # 3. Read-only look at the remote: nothing to do means no verification, no commit, no PR.
    done, exists, prs_before = _already_there(target, result)
    if done:
        return result

    # 4. The folder must work before anything is published.
    fingerprint = folder_fingerprint(local)
    if fingerprint not in _VERIFIED:
        _VERIFIED[fingerprint] = verify_folder(folder)
    else:
        log.info("%s was verified earlier in this process (same content): not re-verifying", folder)
    result["verification"] = _VERIFIED[fingerprint]

    # 5. Create what is missing, then commit with retries.
    if not exists:
        _with_retries("creating the repo", lambda: api.create_repo(repo_id, private=private, exist_ok=True))
        result["created_repo"] = True
        log.info("created %s repo %s", "private" if private else "public", repo_id)
    if not _revision_exists(api, repo_id, branch):
        _with_retries("creating the branch", lambda: api.create_branch(repo_id, branch=branch, exist_ok=True))
        result["created_branch"] = True
        log.info("created branch %s of %s", branch, repo_id)
    if create_pr and not prs_before:
        prs_before = _pull_requests(api, repo_id)
    plan = _commit_with_retries(target, prs_before, title, description, result)

    result.update(uploaded=plan.upload, deleted=plan.delete, unchanged=plan.unchanged,
                  url=result["pr_url"] or result["repo_url"])
    if result["commit_id"]:
        result["commit_url"] = f"{endpoint}/{repo_id}/commit/{result['commit_id']}"
        # Read back what the Hub now serves at the new commit: every local file, same content.
        after = _remote_plan(api, repo_id, result["commit_id"], local)
        if after.upload:
            raise HubPushError(f"push to {repo_id}: after commit {result['commit_id']} the Hub serves different "
                               f"content for {', '.join(after.upload)}; re-run the push")
        log.info("pushed %s to %s (%s)", folder, result["pr_url"] or result["repo_url"], result["commit_id"])
    return result


def _already_there(target: _Target, result: dict[str, Any]) -> tuple[bool, bool, dict[str, str]]:
    """Whether the branch (or, with ``create_pr``, a pull request) already has exactly the local files.

    Returns ``(nothing to do, the repo exists, the pull requests seen)``; fills ``result`` on the way.
    """
    from huggingface_hub.errors import RepositoryNotFoundError

    api, repo_id, branch = target.api, target.repo_id, target.branch
    try:
        _with_retries("reading the repo", lambda: api.repo_info(repo_id))
        exists = True
    except RepositoryNotFoundError:
        exists = False
    branch_exists = exists and _revision_exists(api, repo_id, branch)
    prs_before: dict[str, str] = {}
    if branch_exists:
        plan = _remote_plan(api, repo_id, branch, target.local)
        result["unchanged"] = plan.unchanged
        if plan.empty:
            log.info("%s@%s already has exactly these files: nothing to commit", repo_id, branch)
            return True, exists, prs_before
        if target.create_pr:
            prs_before = _pull_requests(api, repo_id)
            same = _pr_with_files(api, repo_id, prs_before, target.local)
            if same is not None:
                log.info("pull request %s already has exactly these files: not opening another", same)
                result["pr_url"] = result["url"] = target.discussion_url(same)
                return True, exists, prs_before
    return False, exists, prs_before


def _commit_with_retries(target: _Target, prs_before: dict[str, str], title: str, description: str,
                         result: dict[str, Any]) -> RemotePlan:
    """One commit of what differs, retried on transient failures; sets ``commit_id``/``pr_url`` in
    ``result`` and returns the plan that was committed (or found already landed)."""
    from huggingface_hub import CommitOperationAdd, CommitOperationDelete

    api, repo_id, branch, create_pr, local = target.api, target.repo_id, target.branch, target.create_pr, target.local
    waits = _backoff_waits()
    failed_head: str | None = None
    plan = _remote_plan(api, repo_id, branch, local)
    for attempt in range(len(waits) + 1):
        try:
            if failed_head is not None:
                # The previous attempt lost its connection: it may or may not have landed. Look
                # before committing again, so a lost answer never turns into a duplicate commit or PR.
                plan = _remote_plan(api, repo_id, branch, local)
                if create_pr:
                    new = {r: c for r, c in _pull_requests(api, repo_id).items() if r not in prs_before}
                    landed = _pr_with_files(api, repo_id, new, local)
                    if landed is not None:
                        result.update(commit_id=new[landed], pr_url=target.discussion_url(landed))
                        return plan
                elif plan.empty and plan.head != failed_head:
                    result["commit_id"] = plan.head  # our commit landed; only its answer was lost
                    return plan
            if plan.empty:  # e.g. a new branch started from a main that already has these files
                log.info("%s@%s already has exactly these files: nothing to commit", repo_id, branch)
                return plan
            operations: list[Any] = [CommitOperationAdd(p, str(local[p].file)) for p in plan.upload]
            operations += [CommitOperationDelete(p) for p in plan.delete]
            log.info("committing %d changed file(s), %d deletion(s) to %s@%s%s", len(plan.upload), len(plan.delete),
                     repo_id, branch, " as a pull request" if create_pr else "")
            info = api.create_commit(
                repo_id, operations, commit_message=title, commit_description=description, revision=branch,
                create_pr=create_pr, parent_commit=plan.head,
            )
            result.update(commit_id=info.oid, pr_url=info.pr_url)
            return plan
        except Exception as exc:
            if not _is_transient(exc):
                raise HubPushError(
                    f"push to {repo_id}@{branch} failed: {_describe(exc)}. Nothing was committed."
                ) from exc
            if attempt == len(waits):
                raise HubPushError(_gave_up_message(api, repo_id, branch, plan.head, exc, attempt + 1)) from exc
            failed_head = plan.head
            log.warning("commit to %s@%s failed (%s); retrying in %.2f s (attempt %d/%d)", repo_id, branch,
                        _describe(exc), waits[attempt], attempt + 2, len(waits) + 1)
            time.sleep(waits[attempt])
    raise AssertionError("unreachable")  # pragma: no cover


def _gave_up_message(api: HfApi, repo_id: str, branch: str, head: str, exc: BaseException, attempts: int) -> str:
    try:
        now = api.repo_info(repo_id, revision=branch).sha
        state = (f"{repo_id}@{branch} is still at its previous commit {head[:12]} (Hub commits are atomic)"
                 if now == head else f"{repo_id}@{branch} moved to {str(now)[:12]} meanwhile")
    except Exception:
        state = f"the Hub could not be reached to confirm it; commits are atomic, so {repo_id}@{branch} is at " \
                f"{head[:12]} unless a retry landed"
    return (f"push to {repo_id}@{branch} failed after {attempts} attempt(s): {_describe(exc)}. Nothing was "
            f"published: {state}. Re-run the same command to retry; only the files that differ are uploaded.")
