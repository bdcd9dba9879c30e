"""A loopback model hub for tests: a small HTTP server on 127.0.0.1 that serves local model
folders through the endpoints huggingface_hub's snapshot_download calls (repo info with its
commit sha, the recursive tree listing, and `resolve/{revision}/{file}` with X-Repo-Commit,
ETag and Content-Length), so the real worker CLI downloads over HTTP as from the Hugging Face
hub (HF_ENDPOINT). A gated repo answers 401 without `Authorization: Bearer <token>`, in the
hub's words (X-Error-Code, X-Error-Message). It records each request for the test to read."""

from __future__ import annotations

import hashlib
import json
import threading
import urllib.parse
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

BRANCH = "main"


@dataclass(frozen=True)
class HubRepo:
    repo_id: str  # org/name
    folder: Path
    gated: bool = False

    @property
    def files(self) -> dict[str, Path]:
        return {
            str(p.relative_to(self.folder)): p
            for p in sorted(self.folder.rglob("*"))
            if p.is_file()
        }

    @property
    def commit(self) -> str:
        digest = hashlib.sha1(self.repo_id.encode())
        for name, path in self.files.items():
            digest.update(name.encode() + b"\0" + hashlib.sha256(path.read_bytes()).digest())
        return digest.hexdigest()


@dataclass(frozen=True)
class Request:
    method: str
    path: str
    authorized: bool  # carried the right token
    status: int


@dataclass
class LoopbackHub:
    repos: dict[str, HubRepo]
    token: str
    requests: list[Request] = field(default_factory=list)

    def __post_init__(self) -> None:
        self._commits = {repo_id: repo.commit for repo_id, repo in self.repos.items()}
        self._etags: dict[Path, str] = {}
        hub = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                hub._answer(self, body=True)

            def do_HEAD(self) -> None:
                hub._answer(self, body=False)

            def log_message(self, *_: Any) -> None:
                pass  # the test reads `requests`

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        host, port = self._server.server_address[:2]
        return f"http://{host!s}:{port}"

    def __enter__(self) -> LoopbackHub:
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(10)

    def commit(self, repo_id: str) -> str:
        return self._commits[repo_id]

    # ------------------------------------------------------------------------- serving
    def _etag(self, path: Path) -> str:
        if path not in self._etags:
            self._etags[path] = hashlib.sha256(path.read_bytes()).hexdigest()
        return self._etags[path]

    def _answer(self, handler: BaseHTTPRequestHandler, *, body: bool) -> None:
        path = urllib.parse.unquote(urllib.parse.urlsplit(handler.path).path)
        given = handler.headers.get("Authorization")
        authorized = given == f"Bearer {self.token}"
        status, headers, payload = self._route(path, given, authorized)
        self.requests.append(Request(handler.command, path, authorized, status))
        handler.send_response(status)
        for key, value in headers.items():
            handler.send_header(key, value)
        if "Content-Length" not in headers:
            handler.send_header("Content-Length", str(len(payload)))
        handler.end_headers()
        if body:
            handler.wfile.write(payload)

    def _route(
        self, path: str, given: str | None, authorized: bool
    ) -> tuple[int, dict[str, str], bytes]:
        api = path.startswith("/api/models/")
        parts = path.removeprefix("/api/models/").removeprefix("/").split("/")
        repo = self.repos.get("/".join(parts[:2]))
        if repo is None:
            return _error(404, "RepoNotFound", "Repository not found")
        if repo.gated and not authorized:
            if given is None:
                message = (f"Access to model {repo.repo_id} is restricted. You must have access "
                           "to it and be authenticated to access it. Please log in.")  # fmt: skip
                return _error(401, "GatedRepo", message)
            return _error(401, None, "Invalid credentials in Authorization header")
        rest = parts[2:]
        commit = self._commits[repo.repo_id]
        if api and (not rest or rest[0] == "revision"):
            revision = rest[1] if len(rest) > 1 else BRANCH
            if revision not in (BRANCH, commit):
                return _error(404, "RevisionNotFound", f"Invalid rev id: {revision}")
            info = {"id": repo.repo_id, "modelId": repo.repo_id, "sha": commit,
                    "private": False, "gated": "manual" if repo.gated else False,
                    "siblings": [{"rfilename": name} for name in repo.files]}  # fmt: skip
            return 200, {"Content-Type": "application/json"}, json.dumps(info).encode()
        if api and rest and rest[0] == "tree":
            if rest[1] not in (BRANCH, commit):
                return _error(404, "RevisionNotFound", f"Invalid rev id: {rest[1]}")
            tree = [{"type": "file", "path": name, "size": p.stat().st_size, "oid": self._etag(p)}
                    for name, p in repo.files.items()]  # fmt: skip
            return 200, {"Content-Type": "application/json"}, json.dumps(tree).encode()
        if not api and len(rest) >= 3 and rest[0] == "resolve":
            if rest[1] not in (BRANCH, commit):
                return _error(404, "RevisionNotFound", f"Invalid rev id: {rest[1]}")
            file = repo.files.get("/".join(rest[2:]))
            if file is None:
                return _error(404, "EntryNotFound", "Entry not found")
            data = file.read_bytes()
            headers = {"X-Repo-Commit": commit, "ETag": f'"{self._etag(file)}"',
                       "Content-Length": str(len(data)),
                       "Content-Type": "application/octet-stream"}  # fmt: skip
            return 200, headers, data
        return _error(404, None, f"no route for {path}")


def _error(status: int, code: str | None, message: str) -> tuple[int, dict[str, str], bytes]:
    headers = {"Content-Type": "application/json", "X-Error-Message": message}
    if code is not None:
        headers["X-Error-Code"] = code
    return status, headers, json.dumps({"error": message}).encode()
