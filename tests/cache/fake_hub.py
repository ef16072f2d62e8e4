"""An in-memory stand-in for the Hugging Face Hub HTTP API, enough for the compile cache.

It answers, on 127.0.0.1, the endpoints huggingface_hub 2.4 calls for repo creation, listing,
download and commits (see the docstring of test_remote_hub.py for the list and the client calls
that use each). Every request is logged as (method, route, status); a request to any other path
is answered 404 and logged with route "unknown", so a test notices a new endpoint.

Repos hold a history of snapshots (commit sha -> {path: bytes}); `main` is the head. Uploads are
always "regular" (base64 inside the commit), never LFS. `before_commit` holds hooks run, one per
commit request, before the commit is applied: a hook may change the repo (a concurrent writer) or
return an HTTP status to answer instead.
"""

from __future__ import annotations

import base64
import hashlib
import json
import re
import secrets
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

_REPO = r"(?P<repo>[^/]+/[^/]+)"
ROUTES: list[tuple[str, str, re.Pattern[str]]] = [
    ("POST", "create_repo", re.compile(r"/api/repos/create")),
    ("GET", "repo_info", re.compile(rf"/api/models/{_REPO}/revision/(?P<rev>[^/]+)")),
    ("GET", "tree", re.compile(rf"/api/models/{_REPO}/tree/(?P<rev>[^/]+)(?:/(?P<path>.+))?")),
    ("POST", "preupload", re.compile(rf"/api/models/{_REPO}/preupload/(?P<rev>[^/]+)")),
    ("POST", "commit", re.compile(rf"/api/models/{_REPO}/commit/(?P<rev>[^/]+)")),
    ("HEAD", "resolve", re.compile(rf"/{_REPO}/resolve/(?P<rev>[^/]+)/(?P<path>.+)")),
    ("GET", "resolve", re.compile(rf"/{_REPO}/resolve/(?P<rev>[^/]+)/(?P<path>.+)")),
]


def git_blob_sha1(data: bytes) -> str:
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


@dataclass
class Repo:
    history: dict[str, dict[str, bytes]] = field(default_factory=dict)
    head: str = ""

    def __post_init__(self) -> None:
        self.commit({})

    def commit(self, files: dict[str, bytes]) -> str:
        sha = secrets.token_hex(20)
        self.history[sha] = {**self.history.get(self.head, {}), **files}
        self.head = sha
        return sha

    def snapshot(self, rev: str) -> dict[str, bytes] | None:
        return self.history.get(self.head if rev == "main" else rev)


@dataclass
class Reply:
    status: int
    body: Any = b""
    headers: dict[str, str] = field(default_factory=dict)


class FakeHub:
    def __init__(self) -> None:
        self.repos: dict[str, Repo] = {}
        self.requests: list[tuple[str, str, int]] = []
        self.before_commit: list[Callable[[FakeHub, str], int | None]] = []
        self.lock = threading.Lock()
        hub = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: Any) -> None:
                pass

            def _serve(self) -> None:
                body = self._body()
                with hub.lock:
                    route, reply = hub.dispatch(self.command, self.path, body)
                    hub.requests.append((self.command, route, reply.status))
                data = reply.body if isinstance(reply.body, bytes) else json.dumps(reply.body).encode()
                self.send_response(reply.status)
                headers = {"Content-Type": "application/json", "Content-Length": str(len(data)), **reply.headers}
                for name, value in headers.items():
                    self.send_header(name, value)
                self.end_headers()
                if self.command != "HEAD":
                    self.wfile.write(data)

            def _body(self) -> bytes:
                if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
                    chunks = []
                    while (size := int(self.rfile.readline().strip() or b"0", 16)) > 0:
                        chunks.append(self.rfile.read(size))
                        self.rfile.readline()
                    self.rfile.readline()
                    return b"".join(chunks)
                return self.rfile.read(int(self.headers.get("Content-Length") or 0))

            do_GET = do_HEAD = do_POST = do_PUT = do_DELETE = _serve

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self._thread = threading.Thread(target=self.server.serve_forever, args=(0.05,), daemon=True)
        self._thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()

    def routes(self) -> list[str]:
        return [route for _, route, _ in self.requests]

    # ---- routing ----------------------------------------------------------------------------------
    def dispatch(self, method: str, raw_path: str, body: bytes) -> tuple[str, Reply]:
        parts = urlsplit(raw_path)
        for verb, name, pattern in ROUTES:
            match = pattern.fullmatch(parts.path)
            if verb == method and match:
                args = {k: unquote(v) for k, v in match.groupdict().items() if v is not None}
                return name, getattr(self, f"_{name}")(body=body, query=parse_qs(parts.query), **args)
        return "unknown", Reply(404, {"error": f"fake hub: no route for {method} {parts.path}"})

    def _repo(self, repo: str) -> Repo | Reply:
        if repo not in self.repos:
            return Reply(404, {"error": "Repository not found"}, {"X-Error-Code": "RepoNotFound"})
        return self.repos[repo]

    def _snapshot(self, repo: str, rev: str) -> dict[str, bytes] | Reply:
        found = self._repo(repo)
        if isinstance(found, Reply):
            return found
        snapshot = found.snapshot(rev)
        if snapshot is None:
            return Reply(404, {"error": "Revision not found"}, {"X-Error-Code": "RevisionNotFound"})
        return snapshot

    # ---- endpoints -----------------------------------------------------------------------------------
    def _create_repo(self, body: bytes, **_: Any) -> Reply:
        payload = json.loads(body)
        repo = f"{payload['organization']}/{payload['name']}"
        if repo in self.repos:
            return Reply(409, {"error": "You already created this model repo", "url": f"{self.url}/{repo}"})
        self.repos[repo] = Repo()
        return Reply(200, {"url": f"{self.url}/{repo}", "name": repo})

    def _repo_info(self, repo: str, rev: str, **_: Any) -> Reply:
        found = self._repo(repo)
        if isinstance(found, Reply):
            return found
        sha = found.head if rev == "main" else rev
        if sha not in found.history:
            return Reply(404, {"error": "Revision not found"}, {"X-Error-Code": "RevisionNotFound"})
        return Reply(200, {"id": repo, "sha": sha, "private": True, "siblings": [{"rfilename": p} for p in found.history[sha]]})

    def _tree(self, repo: str, rev: str, query: dict[str, list[str]], path: str = "", **_: Any) -> Reply:
        snapshot = self._snapshot(repo, rev)
        if isinstance(snapshot, Reply):
            return snapshot
        prefix = f"{path.strip('/')}/" if path else ""
        recursive = query.get("recursive", ["False"])[0].lower() == "true"
        files = {p: d for p, d in snapshot.items() if p.startswith(prefix)}
        if path and not files:
            return Reply(404, {"error": f"{path} does not exist"}, {"X-Error-Code": "EntryNotFound"})
        listed: dict[str, dict[str, Any]] = {}
        for p, data in files.items():
            rest = p[len(prefix):].split("/")
            for depth in range(1, len(rest)):  # the folders on the way
                folder = prefix + "/".join(rest[:depth])
                if recursive or depth == 1:
                    listed[folder] = {"type": "directory", "oid": hashlib.sha1(folder.encode()).hexdigest(), "path": folder}
            if recursive or len(rest) == 1:
                listed[p] = {"type": "file", "oid": git_blob_sha1(data), "size": len(data), "path": p}
        return Reply(200, [listed[k] for k in sorted(listed)])

    def _resolve(self, repo: str, rev: str, path: str, **_: Any) -> Reply:
        snapshot = self._snapshot(repo, rev)
        if isinstance(snapshot, Reply):
            return snapshot
        commit = self.repos[repo].head if rev == "main" else rev
        if path not in snapshot:
            return Reply(404, {"error": "Entry not found"}, {"X-Error-Code": "EntryNotFound", "X-Repo-Commit": commit})
        data = snapshot[path]
        return Reply(200, data, {"Content-Type": "application/octet-stream", "ETag": f'"{git_blob_sha1(data)}"', "X-Repo-Commit": commit})

    def _preupload(self, repo: str, rev: str, body: bytes, **_: Any) -> Reply:
        snapshot = self._snapshot(repo, rev)
        if isinstance(snapshot, Reply):
            return snapshot
        files = json.loads(body)["files"]
        return Reply(200, {"files": [
            {"path": f["path"], "uploadMode": "regular", "shouldIgnore": False,
             "oid": git_blob_sha1(snapshot[f["path"]]) if f["path"] in snapshot else None}
            for f in files
        ]})

    def _commit(self, repo: str, rev: str, body: bytes, **_: Any) -> Reply:
        found = self._repo(repo)
        if isinstance(found, Reply):
            return found
        if self.before_commit and (status := self.before_commit.pop(0)(self, repo)) is not None:
            return Reply(status, {"error": f"injected {status}"})
        lines = [json.loads(line) for line in body.splitlines() if line.strip()]
        header = lines[0]["value"]
        if header.get("parentCommit") not in (None, found.head):
            return Reply(412, {"error": "A commit has happened since. Please refresh and try again."})
        files = {}
        for line in lines[1:]:
            if line["key"] != "file" or line["value"].get("encoding") != "base64":
                return Reply(400, {"error": f"fake hub: unsupported commit line {line['key']}"})
            files[line["value"]["path"]] = base64.b64decode(line["value"]["content"])
        sha = found.commit(files)
        return Reply(200, {"success": True, "commitOid": sha, "commitUrl": f"{self.url}/{repo}/commit/{sha}", "hookOutput": ""})
