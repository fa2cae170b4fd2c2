"""HTTP plumbing of the loopback Hub: reading requests, answering them, faults, the request log, auth.

:class:`BaseHandler` turns one HTTP request into a call of the route that
:meth:`BaseHandler._route` (implemented in :mod:`.routes`) picks, and turns a :class:`HubError`
into a Hub-style error answer. Every answer has a Content-Length so keep-alive connections work.
"""

from __future__ import annotations

import contextlib
import json
import socket
from http.server import BaseHTTPRequestHandler
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qs, unquote, urlsplit

from .store import HubError, HubToken, Repo

if TYPE_CHECKING:  # pragma: no cover
    from . import HubServer

__all__ = ["BaseHandler"]


class _DropConnection(Exception):
    pass


def _header_token(handler: BaseHTTPRequestHandler) -> str | None:
    auth = handler.headers.get("Authorization") or ""
    if auth.lower().startswith("bearer "):
        return auth[7:].strip() or None
    return None


class BaseHandler(BaseHTTPRequestHandler):
    """Reads one request, routes it, answers it; every answer has a Content-Length so keep-alive connections work."""

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
        """``(route name, action(body, query))`` for a request; :class:`HubError` 404 when there is none."""
        raise NotImplementedError

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
