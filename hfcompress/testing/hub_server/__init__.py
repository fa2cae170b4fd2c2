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

Modules: :mod:`.git_objects` (blob, tree and commit ids), :mod:`.store` (repos, commits, tokens,
faults, in memory), :mod:`.handler` (HTTP plumbing, auth) and :mod:`.routes` (the Hub API routes).
"""

from __future__ import annotations

import contextlib
import os
import tempfile
import threading
from collections.abc import Iterator
from http.server import ThreadingHTTPServer

from .git_objects import git_blob_sha1 as git_blob_sha1
from .routes import Handler
from .store import Commit as Commit
from .store import HubError as HubError
from .store import HubStore, HubToken
from .store import PullRequest as PullRequest
from .store import Repo as Repo

__all__ = ["HubServer", "HubToken", "hub_client", "hub_server"]


class HubServer(HubStore):
    """An in-memory Hub on ``http://127.0.0.1:<random port>``, served from a background thread.

    ``tokens``: ``{token_value: (user, role)}``; by default one write and one read token for user
    ``alice`` (``write_token`` / ``read_token``). ``orgs``: ``{org_name: [member, ...]}``.
    """

    def __init__(
        self,
        tokens: dict[str, tuple[str, str]] | None = None,
        orgs: dict[str, list[str]] | None = None,
    ) -> None:
        super().__init__(tokens, orgs)
        self._httpd: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None
        self._home: tempfile.TemporaryDirectory[str] | None = None

    # -- lifecycle -------------------------------------------------------------------------------
    def start(self) -> HubServer:
        handler = type("BoundHubHandler", (Handler,), {"hub": self})
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
