"""`hf://` URLs (DESIGN.md 6.2): Hugging Face Hub files named by repository, revision and path.

    hf://datasets/<owner>/<repo>@<revision>/<path in repo>      revision: branch, tag or commit; @main if omitted

A fetch resolves each repository's revision once to a commit (`/api/datasets/<repo>/revision/<rev>`, key `sha`),
so every file of that fetch comes from the same commit, and the commit is what the records show. A path with
`*` or `?` is a glob, expanded through the paged tree API (`Link: <...>; rel="next"`) in sorted path order. Each
file becomes a plain `resolve/<commit>/<path>` URL with the sha256 and size the Hub publishes for LFS files
(`X-Linked-Etag`, `X-Linked-Size` of a HEAD, or the tree's `lfs.oid`/`size`), which the downloader verifies when
the spec gives no checksum. Only the API calls live here; the bytes go through fetch/files.py like any file.
`HF_TOKEN` is sent to the endpoint only, over https (or to an http endpoint on loopback, as in the tests).
"""

from __future__ import annotations

import fnmatch
import os
import re
import time
from dataclasses import dataclass, field
from typing import Callable
from urllib.parse import quote, urlsplit

import requests

from mmcorpus import __version__
from mmcorpus.errors import DownloadError, UsageError

DEFAULT_ENDPOINT = "https://huggingface.co"
REPO_TYPES = ("datasets",)
_URL = re.compile(r"^hf://(?P<type>[a-z]+)/(?P<owner>[^/@]+)/(?P<name>[^/@]+)(?:@(?P<rev>[^/]+))?/(?P<path>.+)$")
_SEGMENT = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")
_COMMIT = re.compile(r"^[0-9a-f]{40}$")
_SHA256 = re.compile(r'^(?:W/)?"?([0-9a-f]{64})"?$')


@dataclass(frozen=True)
class HubUrl:
    """One parsed `hf://` URL."""

    repo_type: str
    repo: str  # owner/name
    revision: str
    path: str  # in the repository; may be a glob

    @property
    def is_glob(self) -> bool:
        return any(c in self.path for c in "*?[")

    def with_revision(self, revision: str) -> str:
        return f"hf://{self.repo_type}/{self.repo}@{revision}/{self.path}"


@dataclass(frozen=True)
class HubFile:
    """One file of a commit: where its bytes are, and what the Hub says they are."""

    path: str
    url: str  # <endpoint>/<type>/<repo>/resolve/<commit>/<path>
    commit: str
    size: int | None
    sha256: str | None  # LFS files only (a git blob's oid is a sha1 of its header + bytes: not checked here)


def endpoint_auth(url: str, endpoint: str, token: str | None) -> dict[str, str]:
    """`Authorization: Bearer <HF_TOKEN>` for a URL of the endpoint's own origin (scheme, host and port: a
    redirect to http on the same host gets nothing), over https or to a loopback endpoint (the tests' fake Hub);
    nothing for any other URL, a plain-http endpoint elsewhere included."""
    target, home = urlsplit(url), urlsplit(endpoint)
    secure = target.scheme == "https" or target.hostname in ("127.0.0.1", "localhost", "::1")
    if token and secure and (target.scheme, target.netloc.lower()) == (home.scheme, home.netloc.lower()):
        return {"Authorization": f"Bearer {token}"}
    return {}


def is_hf_url(url: str | None) -> bool:
    return bool(url) and url.startswith("hf://")


def parse_hf_url(url: str) -> HubUrl:
    """The parts of an `hf://` URL; ValueError naming what is wrong."""
    match = _URL.match(url)
    if not match:
        raise ValueError(f"must be hf://datasets/<owner>/<repo>[@<revision>]/<path>, got {url!r}")
    if match["type"] not in REPO_TYPES:
        raise ValueError(f"must name a dataset repository (hf://datasets/...), got {url!r}")
    owner, name, path = match["owner"], match["name"], match["path"]
    if not (_SEGMENT.match(owner) and _SEGMENT.match(name)):
        raise ValueError(f"has an invalid repository name {owner}/{name!s}")
    parts = path.split("/")
    if any(p in ("", ".", "..") for p in parts) or "\\" in path or "\0" in path:
        raise ValueError(f"has an unsafe path in the repository: {path!r}")
    return HubUrl(match["type"], f"{owner}/{name}", match["rev"] or "main", path)


# ------------------------------------------------------------------------------------------- the client


@dataclass
class HubClient:
    """The Hub's API, as the downloader needs it. One client per fetch: revisions are resolved once."""

    endpoint: str = field(default_factory=lambda: (os.environ.get("HF_ENDPOINT") or DEFAULT_ENDPOINT).rstrip("/"))
    token: str | None = field(default_factory=lambda: os.environ.get("HF_TOKEN") or None)
    timeout: float = 30.0
    retries: int = 5
    max_retry_after: float = 300.0
    sleep: Callable[[float], None] = time.sleep
    session: requests.Session = field(default_factory=requests.Session)
    commits: dict[tuple[str, str], str] = field(default_factory=dict)

    def commit(self, url: HubUrl) -> str:
        """The commit `url.revision` names now (a 40-hex revision is taken as is)."""
        if _COMMIT.match(url.revision):
            return url.revision
        key = (url.repo, url.revision)
        if key not in self.commits:
            api = f"{self.endpoint}/api/{url.repo_type}/{url.repo}/revision/{quote(url.revision, safe='')}"
            answer = self._get_json(api, url)
            sha = answer.get("sha") if isinstance(answer, dict) else None
            if not isinstance(sha, str) or not _COMMIT.match(sha):
                raise DownloadError(f"{api}: the Hub's answer has no commit sha", url=api)
            self.commits[key] = sha
        return self.commits[key]

    def files(self, url: str) -> list[HubFile]:
        """The files an `hf://` URL names at its revision's commit: one, or every match of a glob (sorted)."""
        hub = parse_hf_url(url)
        commit = self.commit(hub)
        if not hub.is_glob:
            return [self._head(hub, commit, hub.path)]
        folder = hub.path.rsplit("/", 1)[0] if "/" in hub.path.split("*")[0].split("?")[0] else ""
        entries = [e for e in self.tree(hub, commit, folder) if e.get("type") == "file"
                   and fnmatch.fnmatchcase(str(e.get("path", "")), hub.path)]
        if not entries:
            raise DownloadError(f"{url}: no file of {hub.repo}@{commit[:12]} matches {hub.path!r}", url=url)
        return [self._from_tree(hub, commit, e) for e in sorted(entries, key=lambda e: e["path"])]

    def tree(self, hub: HubUrl, commit: str, folder: str) -> list[dict]:
        """Every entry under `folder` at `commit`, following the `Link: rel="next"` pages to the end."""
        suffix = "/" + quote(folder, safe="") if folder else ""
        page = f"{self.endpoint}/api/{hub.repo_type}/{hub.repo}/tree/{commit}{suffix}?recursive=true&expand=false"
        entries, seen = [], set()
        while page:
            if page in seen:
                raise DownloadError(f"{page}: the Hub's tree pages loop", url=page)
            seen.add(page)
            response = self._request("GET", page, hub)
            data = _json(response, page)
            if not isinstance(data, list):
                raise DownloadError(f"{page}: the Hub's tree answer is not a list", url=page)
            entries += [e for e in data if isinstance(e, dict)]
            page = response.links.get("next", {}).get("url")
        return entries

    def resolve_url(self, hub: HubUrl, commit: str, path: str) -> str:
        return f"{self.endpoint}/{hub.repo_type}/{hub.repo}/resolve/{commit}/{quote(path)}"

    def auth(self, url: str) -> dict[str, str]:
        """The token for the endpoint's own origin (endpoint_auth: the one rule, also fetch/files.py's)."""
        return endpoint_auth(url, self.endpoint, self.token)

    # ------------------------------------------------------------------------------------------- helpers

    def _head(self, hub: HubUrl, commit: str, path: str) -> HubFile:
        url = self.resolve_url(hub, commit, path)
        response = self._request("HEAD", url, hub)
        headers = response.headers
        linked = _SHA256.match(headers.get("X-Linked-Etag", "").strip().lower())
        size = headers.get("X-Linked-Size") or (None if response.is_redirect else headers.get("Content-Length"))
        return HubFile(path, url, commit, int(size) if size and size.isdigit() else None,
                       linked.group(1) if linked else None)

    def _from_tree(self, hub: HubUrl, commit: str, entry: dict) -> HubFile:
        lfs = entry.get("lfs") if isinstance(entry.get("lfs"), dict) else {}
        sha = str(lfs.get("oid") or lfs.get("sha256") or "").lower()
        size = lfs.get("size", entry.get("size"))
        return HubFile(entry["path"], self.resolve_url(hub, commit, entry["path"]), commit,
                       size if isinstance(size, int) else None, sha if re.fullmatch(r"[0-9a-f]{64}", sha) else None)

    def _get_json(self, url: str, hub: HubUrl):
        return _json(self._request("GET", url, hub), url)

    def _request(self, method: str, url: str, hub: HubUrl) -> requests.Response:
        """One API call; 429/5xx retried honouring Retry-After; 401/403/404 become one clear line."""
        headers = {"User-Agent": f"mmcorpus/{__version__}", "Accept-Encoding": "identity", **self.auth(url)}
        for attempt in range(self.retries + 1):
            try:
                response = self.session.request(method, url, headers=headers, allow_redirects=False,
                                                timeout=self.timeout)
            except requests.RequestException as exc:
                if attempt == self.retries:
                    raise DownloadError(f"{url}: {type(exc).__name__} talking to the Hub", url=url) from None
                self.sleep(min(2.0 ** attempt, 60.0))
                continue
            if response.status_code in (429, 500, 502, 503, 504) and attempt < self.retries:
                self.sleep(_retry_after(response, attempt, self.max_retry_after))
                continue
            if response.status_code < 400:
                return response
            raise self._error(response, url, hub)
        raise DownloadError(f"{url}: the Hub kept answering {response.status_code}", url=url)  # pragma: no cover

    def _error(self, response: requests.Response, url: str, hub: HubUrl) -> Exception:
        code, status = response.headers.get("X-Error-Code", ""), response.status_code
        page = f"{self.endpoint}/{hub.repo_type}/{hub.repo}"
        if status in (401, 403) or code == "GatedRepo":
            hint = "set HF_TOKEN to a token of an account that accepted its terms" if not self.token else \
                "HF_TOKEN was sent: accept the repository's terms with that account, or check the token"
            return DownloadError(f"{hub.repo}: the Hub refused access (HTTP {status}, gated or private): {hint} "
                                 f"at {page}", url=url, status=status)
        if code == "RevisionNotFound":
            return UsageError(f"{hub.repo}: no revision {hub.revision!r} on the Hub ({page})")
        if code == "RepoNotFound":
            return UsageError(f"{hub.repo}: no such dataset repository on the Hub ({page})")
        return DownloadError(f"{url}: HTTP {status} from the Hub" + (f" ({code})" if code else ""),
                             url=url, status=status)


def _json(response: requests.Response, url: str):
    try:
        return response.json()
    except ValueError:
        raise DownloadError(f"{url}: the Hub's answer is not JSON", url=url) from None


def _retry_after(response: requests.Response, attempt: int, cap: float) -> float:
    """Retry-After in seconds (the Hub sends seconds), else 1, 2, 4, 8 s."""
    value = (response.headers.get("Retry-After") or "").strip()
    delay = float(value) if value.isdigit() else min(2.0 ** attempt, 8.0)
    return min(delay, cap)
