"""Where a spec URL is really fetched from: --mirror prefix rules, HF_ENDPOINT, Google Drive links, local paths.

The spec's own URLs are the user's (trusted); URLs found inside dataset files are not, and are checked by
the URL-list engine. This module only rewrites.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import parse_qs, urlsplit, urlunsplit

from mmcorpus.errors import UsageError
from mmcorpus.fetch.addresses import allowance_entry

HF_DEFAULT = "https://huggingface.co"
_GDRIVE_FILE = re.compile(r"^https?://drive\.google\.com/file/d/([A-Za-z0-9_-]+)")
_GDRIVE_OPEN = re.compile(r"^https?://drive\.google\.com/(?:open|uc)\?")


@dataclass(frozen=True)
class MirrorRule:
    source: str  # URL prefix as written in specs and dataset files
    target: str  # what it becomes

    @classmethod
    def parse(cls, text: str) -> "MirrorRule":
        source, sep, target = text.partition("=")
        if not sep or not source or not target:
            raise UsageError(f"--mirror expects FROM=TO (two URL prefixes), got {text!r}")
        return cls(source, target)


@dataclass
class UrlRewriter:
    """Applies --mirror rules (first match wins), then HF_ENDPOINT, then Google Drive normalisation."""

    rules: list[MirrorRule] = field(default_factory=list)
    hf_endpoint: str = field(default_factory=lambda: os.environ.get("HF_ENDPOINT", "") or HF_DEFAULT)

    @classmethod
    def from_args(cls, mirrors: list[str] | None) -> "UrlRewriter":
        return cls([MirrorRule.parse(m) for m in mirrors or []])

    def __call__(self, url: str) -> str:
        url = gdrive_download_url(url)
        for rule in self.rules:
            if url.startswith(rule.source):
                return rule.target + url[len(rule.source) :]
        if url.startswith(HF_DEFAULT + "/") and self.hf_endpoint.rstrip("/") != HF_DEFAULT:
            return self.hf_endpoint.rstrip("/") + url[len(HF_DEFAULT) :]
        return url

    @property
    def hf_host(self) -> str:
        return urlsplit(self.hf_endpoint).netloc.lower()

    def mirror_targets(self) -> set[str]:
        """The URL prefixes --mirror points at, as address-policy entries (addresses.allowance_entry): a URL under
        one of them may reach a loopback/private address (a data server's own mirror); the rest of that host,
        its other ports among them, may not."""
        return {entry for rule in self.rules if (entry := allowance_entry(rule.target)) is not None}

    def mirror_hosts(self) -> set[str]:
        """The host names of the --mirror targets. Not an address allowance to hand on: as an entry a bare host
        allows all its ports, so `mmcorpus fetch` passes mirror_targets()."""
        return {urlsplit(rule.target).hostname or "" for rule in self.rules} - {""}


def gdrive_download_url(url: str) -> str:
    """Turn a Google Drive viewer link into its direct-download form (the confirm page is handled later)."""
    match = _GDRIVE_FILE.match(url)
    if match:
        return f"https://drive.google.com/uc?export=download&id={match.group(1)}"
    if _GDRIVE_OPEN.match(url):
        file_id = parse_qs(urlsplit(url).query).get("id", [""])[0]
        if file_id:
            return f"https://drive.google.com/uc?export=download&id={file_id}"
    return url


def local_path(url: str) -> Path | None:
    """The local file a spec URL names (`file://...` or a plain path), or None for a network URL."""
    split = urlsplit(url)
    if split.scheme == "file":
        return Path(split.path)
    if split.scheme in ("", ) or (len(split.scheme) == 1 and os.name == "nt"):
        return Path(url).expanduser()
    return None


def host_of(url: str) -> str:
    return (urlsplit(url).hostname or "").lower()


def with_query(url: str, params: dict[str, str]) -> str:
    from urllib.parse import urlencode

    split = urlsplit(url)
    query = urlencode(params)
    return urlunsplit((split.scheme, split.netloc, split.path, query, ""))
