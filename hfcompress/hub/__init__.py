"""Pushing an output folder to the Hugging Face Hub, safely enough for unattended CI jobs.

    from hfcompress.hub import push_to_hub
    result = push_to_hub("out", "my-org/minilm-compressed", private=True)
    result["commit_id"]   # None when the remote already had exactly these files

What a push guarantees, in order:

1. **The folder is an hfcompress output folder** (``config.json``, weights, ``README.md``,
   ``results.json`` with a ``verification`` block, ``hfcompress.yaml``), else :class:`BadInputError`.
2. **A write token is available** (argument, ``HF_TOKEN``, or the ``hf auth login`` cache) and
   ``whoami`` says it may write to the namespace: checked before anything else touches the
   network, else :class:`HubAuthError` (exit 2) saying how to log in.
3. **Idempotence**: local files are compared with the remote tree at the target revision (git
   blob sha1 for regular files, sha256 for LFS files). Nothing changed: no commit, no new PR,
   and ``commit_id`` is ``None``.
4. **The folder still works**: a fresh subprocess (offline, without the token in its
   environment) loads it with ``hfcompress.load`` and with plain transformers (with
   ``trust_remote_code`` when the folder ships its modeling file) or ONNX Runtime when the
   format allows, and reproduces ``results.json["verification"]`` within its ``atol``; else
   :class:`~hfcompress.errors.GateFailedError` (exit 3) and nothing is uploaded.
5. **One commit** (message naming the recipe) with only the changed files, plus deletions of
   remote files that the folder no longer has (``.gitattributes`` is kept). The commit names its
   parent, so a concurrent change or a commit whose answer was lost is detected, not duplicated.
6. **Transient failures** (connection errors, HTTP 5xx, 429, 408, a parent that moved) are retried
   with exponential backoff; if they persist, :class:`HubPushError` says the remote is still at its
   previous commit (Hub commits are atomic) and that re-running uploads only what is missing.

The token is never printed, logged, written to a file or passed to the verification subprocess.
Tuning for CI: ``HFCOMPRESS_PUSH_ATTEMPTS`` (default 5), ``HFCOMPRESS_PUSH_BACKOFF`` (first wait in
seconds, default 1, doubling), ``HFCOMPRESS_VERIFY_TIMEOUT`` (seconds, default 1800).

Modules: :mod:`~hfcompress.hub.files` (what is pushed, hashes, the repo id check),
:mod:`~hfcompress.hub.verify` (the fresh-process check and what it compares against) and
:mod:`~hfcompress.hub.push` (token, remote diff, commit with retries).
"""

from __future__ import annotations

from .files import check_repo_id, weight_hashes
from .push import HubAuthError, HubPushError, push_to_hub

# record_verification and tolerance_for are not in __all__ but are imported from here (the pipeline
# records the verification block, tests check tolerances): re-exported explicitly.
from .verify import record_verification as record_verification
from .verify import tolerance_for as tolerance_for
from .verify import verify_folder

__all__ = ["HubAuthError", "HubPushError", "check_repo_id", "push_to_hub", "verify_folder", "weight_hashes"]
