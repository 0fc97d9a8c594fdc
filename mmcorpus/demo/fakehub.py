"""A local fake of the Hugging Face Hub, enough for `hf://` URLs (DESIGN.md 6.2): the tests' and the demo's Hub.

It answers what the real Hub answers (../shared/reference/hub-and-next-datasets.md, section 2):
    GET  /api/datasets/<repo>/revision/<rev>          {"id", "sha"}; 404 X-Error-Code RevisionNotFound/RepoNotFound
    GET  /api/datasets/<repo>/tree/<rev>[/<folder>]   a page of entries {type, path, size, oid, lfs: {oid, size}},
                                                      `Link: <...>; rel="next"` while more pages follow
    HEAD/GET /datasets/<repo>/resolve/<rev>/<path>   small (git) files: 200 with ETag and X-Repo-Commit;
                                                      LFS files: 302 to the CDN (a second server, another host
                                                      name) with X-Linked-Etag (sha256) and X-Linked-Size
Gated repositories answer 401 (X-Error-Code GatedRepo) without the right `Authorization: Bearer`; `throttle(n)`
makes the next n API/resolve requests 429 with `Retry-After: 0`. Every request is recorded with its headers.
The CDN is a LocalMirror, so Range, cuts and drips work there as in every download test.
"""

from __future__ import annotations

import hashlib
import json
import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, quote, unquote, urlsplit

from mmcorpus.demo.localmirror import LocalMirror, SeenRequest

LFS_THRESHOLD = 1024  # files at least this big are stored "in LFS" (served by the CDN with X-Linked-* headers)


@dataclass
class FakeRepo:
    commits: dict[str, dict[str, bytes]] = field(default_factory=dict)  # every commit ever published: its files
    branches: dict[str, str] = field(default_factory=dict)  # name -> commit; "main" is the newest
    token: str | None = None  # gated: requests need `Authorization: Bearer <token>`


class FakeHub:
    """The Hub on 127.0.0.1 and its CDN on `localhost` (another host: the token must not follow the redirect)."""

    def __init__(self, folder: str | Path, page_size: int = 2):
        self.folder = Path(folder)
        self.page_size = page_size
        self.repos: dict[str, FakeRepo] = {}
        self.requests: list[SeenRequest] = []
        self._throttle = 0
        self._lock = threading.Lock()
        self.cdn = LocalMirror(self.folder / "cdn")
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), _make_handler(self))
        self._server.daemon_threads = True

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self._server.server_address[1]}"

    def __enter__(self) -> "FakeHub":
        self.cdn.start()
        threading.Thread(target=self._server.serve_forever, args=(0.05,), daemon=True, name="fakehub").start()
        return self

    def __exit__(self, *exc) -> None:
        self._server.shutdown()
        self._server.server_close()
        self.cdn.stop()

    def add_repo(self, repo: str, files: dict[str, bytes], *, token: str | None = None,
                 branches: dict[str, str] | None = None) -> str:
        """Publish `files` as one commit of `repo` (owner/name) on branch main; returns the commit."""
        digest = hashlib.sha1(json.dumps({k: hashlib.sha256(v).hexdigest() for k, v in sorted(files.items())})
                              .encode() + repo.encode()).hexdigest()
        for data in files.values():
            if len(data) >= LFS_THRESHOLD:
                self.cdn.put(f"cdn/{hashlib.sha256(data).hexdigest()}", data)
        found = self.repos.setdefault(repo, FakeRepo())
        found.commits[digest] = dict(files)
        found.branches.update({"main": digest, **(branches or {})})
        found.token = token
        return digest

    def throttle(self, count: int) -> None:
        with self._lock:
            self._throttle = count

    def hits(self, prefix: str) -> list[SeenRequest]:
        return [r for r in self.requests if r.path.startswith(prefix)]

    # ------------------------------------------------------------------------------------------ answers

    def answer(self, method: str, path: str, query: dict, headers: dict) -> tuple[int, dict, bytes]:
        with self._lock:
            if self._throttle > 0:
                self._throttle -= 1
                return 429, {"Retry-After": "0"}, b"rate limited"
        parts = [unquote(p) for p in path.strip("/").split("/")]
        if parts[:2] == ["api", "datasets"] and len(parts) >= 6:
            repo, kind, rev, rest = "/".join(parts[2:4]), parts[4], parts[5], "/".join(parts[6:])
        elif parts[:1] == ["datasets"] and len(parts) >= 6 and parts[3] == "resolve":
            repo, kind, rev, rest = "/".join(parts[1:3]), "resolve", parts[4], "/".join(parts[5:])
        else:
            return 404, {}, b"not found"
        found = self.repos.get(repo)
        if found is None:
            return 404, {"X-Error-Code": "RepoNotFound"}, b"Repository not found"
        if found.token and headers.get("authorization") != f"Bearer {found.token}":
            return 401, {"X-Error-Code": "GatedRepo"}, b"Access to this dataset is restricted"
        commit = found.branches.get(rev, rev if rev in found.commits else None)
        if commit is None:
            return 404, {"X-Error-Code": "RevisionNotFound"}, b"Revision not found"
        if kind == "revision":
            return 200, {"Content-Type": "application/json"}, json.dumps({"id": repo, "sha": commit}).encode()
        if kind == "tree":
            return self._tree(repo, found.commits[commit], commit, rest, query)
        if kind == "resolve":
            return self._resolve(found.commits[commit], commit, rest)
        return 404, {}, b"not found"

    def _tree(self, repo: str, files: dict, commit: str, folder: str, query: dict) -> tuple[int, dict, bytes]:
        prefix = folder.strip("/") + "/" if folder.strip("/") else ""
        entries = [_entry(p, d) for p, d in sorted(files.items()) if p.startswith(prefix)]
        start = int((query.get("cursor") or ["0"])[0])
        page = entries[start:start + self.page_size]
        headers = {"Content-Type": "application/json"}
        if start + self.page_size < len(entries):
            suffix = "/" + quote(folder, safe="") if folder else ""
            headers["Link"] = (f'<{self.url}/api/datasets/{repo}/tree/{commit}{suffix}?recursive=true'
                               f'&cursor={start + self.page_size}>; rel="next"')
        return 200, headers, json.dumps(page).encode()

    def _resolve(self, files: dict, commit: str, path: str) -> tuple[int, dict, bytes]:
        data = files.get(path)
        if data is None:
            return 404, {"X-Error-Code": "EntryNotFound", "X-Repo-Commit": commit}, b"Entry not found"
        headers = {"X-Repo-Commit": commit}
        if len(data) >= LFS_THRESHOLD:
            sha = hashlib.sha256(data).hexdigest()
            cdn = f"http://localhost:{self.cdn.port}/cdn/{sha}?X-Amz-Signature=fake&X-Amz-Expires=3600"
            return 302, {**headers, "Location": cdn, "X-Linked-Etag": f'"{sha}"',
                         "X-Linked-Size": str(len(data))}, b""
        return 200, {**headers, "ETag": f'"{_git_oid(data)}"', "Content-Type": "application/octet-stream"}, data


def _git_oid(data: bytes) -> str:
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


def _entry(path: str, data: bytes) -> dict:
    entry = {"type": "file", "path": path, "size": len(data), "oid": _git_oid(data)}
    if len(data) >= LFS_THRESHOLD:
        entry["lfs"] = {"oid": hashlib.sha256(data).hexdigest(), "size": len(data), "pointerSize": 134}
    return entry


def _make_handler(hub: FakeHub):
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *args) -> None:
            pass

        def do_GET(self) -> None:
            self._reply("GET")

        def do_HEAD(self) -> None:
            self._reply("HEAD")

        def _reply(self, method: str) -> None:
            split = urlsplit(self.path)
            headers = {k.lower(): v for k, v in self.headers.items()}
            hub.requests.append(SeenRequest(method, split.path, headers))
            status, extra, body = hub.answer(method, split.path, parse_qs(split.query), headers)
            self.send_response(status)
            for key, value in extra.items():
                self.send_header(key, value)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            if method == "GET":
                self.wfile.write(body)

    return Handler
