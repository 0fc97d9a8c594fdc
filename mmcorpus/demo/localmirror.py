"""A local HTTP mirror on 127.0.0.1: serves a folder, with scripted faults.

It is the bundled demo's web and the tests' internet. Real sockets, real HTTP/1.1 (keep-alive, HEAD,
single byte ranges), and per-path faults that reproduce what dataset hosts do in the wild: 404/410, 5xx
then success, 429 with Retry-After, a connection cut mid-body, a server that ignores Range, redirects, an
HTML page instead of the file, Google Drive's confirm page, slow responses, opt-out headers.

URL paths map to files under the served folder; the query string is ignored (CC3M URLs carry
`?imgmax=800` and the like), except an `id` parameter, which selects routes registered as `path?id=ID`
(Google Drive serves every file from `/uc?id=...`). Faults come from `Route`s registered in code or from
`<folder>/_routes.json` (used by the demo mirror): each request to a path takes the first route whose
`times` is not used up, and when none is left the file is served as is.
"""

from __future__ import annotations

import email.utils
import json
import mimetypes
import posixpath
import ssl
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, unquote, urlsplit

ROUTES_FILE = "_routes.json"


@dataclass
class Route:
    """One scripted behaviour for a path. Unset fields mean "as normal"."""

    status: int | None = None  # answer with this status (and `body`, or a short text) instead of the file
    body: bytes | None = None  # serve these bytes (with status 200 unless `status` is set)
    file: str | None = None  # serve this file of the served folder instead of the one the path names
    headers: dict[str, str] = field(default_factory=dict)  # extra response headers (Retry-After, X-Robots-Tag)
    redirect: str | None = None  # 302 to this location (absolute, or a path on this server)
    ignore_range: bool = False  # answer 200 with the whole body even when a Range was asked for
    cut_after: int | None = None  # send the headers and this many body bytes, then drop the connection
    delay: float = 0.0  # sleep before answering (timeouts)
    drip: float = 0.0  # send the body 1 KB at a time, sleeping this long in between (a slow-drip server)
    html: bool = False  # answer 200 text/html with a small page (an expired link, a viewer page)
    gdrive_confirm: bool = False  # Google Drive: a virus-scan page until the request carries confirm=
    confirm_action: str | None = None  # where that page's form points (default: the same path here)
    times: int | None = None  # how many requests this route answers; None: all of them

    @classmethod
    def from_dict(cls, data: dict) -> "Route":
        data = dict(data)
        if isinstance(data.get("body"), str):
            data["body"] = data["body"].encode()
        return cls(**data)


@dataclass
class SeenRequest:
    method: str
    path: str
    headers: dict[str, str]


class LocalMirror:
    """Serve `folder` on 127.0.0.1 in a background thread. Use as a context manager or start()/stop()."""

    def __init__(self, folder: str | Path, host: str = "127.0.0.1", port: int = 0, tls: ssl.SSLContext | None = None):
        """`tls`: a server-side SSL context to serve https (tests of the TLS path) instead of http."""
        self.folder = Path(folder)
        self.scheme = "https" if tls is not None else "http"
        self.routes: dict[str, list[Route]] = {}
        self.requests: list[SeenRequest] = []
        self._lock = threading.Lock()
        self._server = ThreadingHTTPServer((host, port), _make_handler(self))
        self._server.daemon_threads = True
        if tls is not None:
            self._server.socket = tls.wrap_socket(self._server.socket, server_side=True)
        self._thread: threading.Thread | None = None
        self._load_routes_file()

    # -------------------------------------------------------------------------------- control
    @property
    def port(self) -> int:
        return self._server.server_address[1]

    @property
    def url(self) -> str:
        return f"{self.scheme}://127.0.0.1:{self.port}"

    def start(self) -> "LocalMirror":
        self._thread = threading.Thread(target=self._server.serve_forever, args=(0.05,), name="localmirror",
                                        daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()

    def __enter__(self) -> "LocalMirror":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    def add(self, path: str, *routes: Route) -> None:
        """Script the answers for `path` (URL path, leading slash optional)."""
        key = "/" + path.lstrip("/")
        with self._lock:
            self.routes.setdefault(key, []).extend(routes)

    def put(self, path: str, data: bytes) -> str:
        """Write a file into the served folder and return its URL."""
        target = self.folder / path.lstrip("/")
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(data)
        return f"{self.url}/{path.lstrip('/')}"

    def hits(self, path: str) -> list[SeenRequest]:
        key = "/" + path.lstrip("/")
        return [r for r in self.requests if r.path == key]

    # ------------------------------------------------------------------------------- internals
    def _load_routes_file(self) -> None:
        routes_file = self.folder / ROUTES_FILE
        if routes_file.is_file():
            for path, items in json.loads(routes_file.read_text()).items():
                self.add(path, *(Route.from_dict(item) for item in items))

    def _take_route(self, path: str) -> Route | None:
        with self._lock:
            for route in self.routes.get(path, []):
                if route.times is None:
                    return route
                if route.times > 0:
                    route.times -= 1
                    return route
        return None

    def _file_for(self, path: str) -> Path | None:
        clean = posixpath.normpath(unquote(path))
        parts = [p for p in clean.split("/") if p not in ("", ".", "..")]
        target = self.folder.joinpath(*parts) if parts else self.folder
        return target if target.is_file() else None


def _make_handler(mirror: LocalMirror):
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"
        server_version = "mmcorpus-localmirror"

        def log_message(self, *args) -> None:  # keep test and demo output clean
            pass

        def do_HEAD(self) -> None:
            self._answer(head=True)

        def do_GET(self) -> None:
            self._answer(head=False)

        def _answer(self, head: bool) -> None:
            split = urlsplit(self.path)
            path = split.path
            mirror.requests.append(SeenRequest(self.command, path, dict(self.headers.items())))
            file_id = parse_qs(split.query).get("id", [""])[0]
            route = (file_id and mirror._take_route(f"{path}?id={file_id}")) or mirror._take_route(path) or Route()
            if route.delay:
                time.sleep(route.delay)
            if route.redirect:
                location = route.redirect if "://" in route.redirect else mirror.url + route.redirect
                return self._send(302, b"", {"Location": location}, head)
            if route.gdrive_confirm and "confirm" not in parse_qs(split.query):
                page = _gdrive_page(route.confirm_action or mirror.url + path, file_id)
                return self._send(200, page, {"Content-Type": "text/html"}, head)
            if route.html:
                page = b"<!DOCTYPE html><html><head><title>Sign in</title></head><body>Not the file</body></html>"
                return self._send(200, page, {"Content-Type": "text/html; charset=utf-8"}, head)
            if route.status is not None and route.status >= 300:
                body = route.body if route.body is not None else f"status {route.status}\n".encode()
                return self._send(route.status, body, {"Content-Type": "text/plain", **route.headers}, head)
            if route.body is not None:
                data = route.body
            else:
                file = mirror._file_for(route.file or path)
                if file is None:
                    return self._send(404, b"not found\n", {"Content-Type": "text/plain"}, head)
                data = file.read_bytes()
            ctype = mimetypes.guess_type(path)[0] or "application/octet-stream"
            headers = {"Content-Type": ctype, "Accept-Ranges": "bytes", **route.headers}
            self._send_body(data, headers, route, head)

        def _send_body(self, data: bytes, headers: dict, route: Route, head: bool) -> None:
            status, start, end = 200, 0, len(data)
            requested = self.headers.get("Range")
            if requested and not route.ignore_range:
                parsed = _parse_range(requested, len(data))
                if parsed is None:
                    return self._send(416, b"", {"Content-Range": f"bytes */{len(data)}"}, head)
                start, end = parsed
                status = 206
                headers["Content-Range"] = f"bytes {start}-{end - 1}/{len(data)}"
            body = data[start:end]
            if route.cut_after is not None and not head:
                # Promise the whole body, send part of it, drop the connection: a cut download.
                self._send_headers(status, len(body), headers)
                self.wfile.write(body[: route.cut_after])
                self.wfile.flush()
                self.close_connection = True
                return
            if route.drip and not head:
                # Each piece arrives well within any socket timeout: only a total deadline ends this.
                self._send_headers(status, len(body), headers)
                try:
                    for offset in range(0, len(body), 1024):
                        self.wfile.write(body[offset : offset + 1024])
                        self.wfile.flush()
                        time.sleep(route.drip)
                except (BrokenPipeError, ConnectionResetError):
                    self.close_connection = True
                return
            self._send(status, body, headers, head)

        def _send_headers(self, status: int, length: int, headers: dict) -> None:
            self.send_response(status)
            for name, value in headers.items():
                self.send_header(name, value)
            self.send_header("Content-Length", str(length))
            self.send_header("Date", email.utils.formatdate(usegmt=True))
            self.end_headers()

        def _send(self, status: int, body: bytes, headers: dict, head: bool) -> None:
            self._send_headers(status, len(body), headers)
            if not head:
                try:
                    self.wfile.write(body)
                except (BrokenPipeError, ConnectionResetError):
                    self.close_connection = True

    return Handler


def _parse_range(header: str, size: int) -> tuple[int, int] | None:
    """A single `bytes=a-b` / `bytes=a-` / `bytes=-n` range as [start, end); None when unsatisfiable."""
    if not header.startswith("bytes=") or "," in header:
        return None
    first, _, last = header[6:].strip().partition("-")
    try:
        if first == "":
            start, end = max(0, size - int(last)), size
        else:
            start = int(first)
            end = min(size, int(last) + 1) if last else size
    except ValueError:
        return None
    return (start, end) if start < end or (start == 0 and size == 0) else None


def _gdrive_page(action: str, file_id: str) -> bytes:
    """The shape of Google Drive's 'can't scan this file for viruses' page: a form with hidden inputs."""
    return (
        "<!DOCTYPE html><html><head><title>Google Drive - Virus scan warning</title></head><body>"
        "<p class=\"uc-warning-subcaption\">Google Drive can't scan this file for viruses.</p>"
        f'<form id="download-form" action="{action}" method="get">'
        '<input type="submit" id="uc-download-link" value="Download anyway">'
        f'<input type="hidden" name="id" value="{file_id}"><input type="hidden" name="export" value="download">'
        '<input type="hidden" name="confirm" value="t"><input type="hidden" name="uuid" value="0f0e">'
        "</form></body></html>"
    ).encode()


def serve_forever(folder: str | Path, port: int = 0) -> None:  # pragma: no cover - manual use
    """`python -m mmcorpus.demo.localmirror FOLDER [PORT]`: serve a folder until interrupted."""
    with LocalMirror(folder, port=port) as mirror:
        print(f"serving {folder} at {mirror.url}", flush=True)
        try:
            while True:
                time.sleep(3600)
        except KeyboardInterrupt:
            pass


if __name__ == "__main__":  # pragma: no cover
    import sys

    serve_forever(sys.argv[1], int(sys.argv[2]) if len(sys.argv) > 2 else 0)
