"""Google Drive's interstitial pages: the real download URL behind a "can't scan for viruses" page, and the
title of any HTML page a server sent instead of a file (for the error line).

mmcorpus.fetch.urls turns a Drive viewer URL into a download URL; mmcorpus.fetch.files follows what this finds.
Only a page from Google Drive may steer the downloader: any HTML page can carry a `download-form`, so a page
is read for a confirm form only when its URL is https on a Drive host (DRIVE_HOSTS), or is a `--mirror` copy
of such a URL: under a rule's target, and a Drive URL once mapped back to the rule's source (the demo's
`https://=http://127.0.0.1:PORT/https/`, or a rule for Drive alone).
"""

from __future__ import annotations

import html
import re
from collections.abc import Iterable
from urllib.parse import urlencode, urljoin, urlsplit

from mmcorpus.errors import DownloadError
from mmcorpus.fetch.urls import MirrorRule

DRIVE_HOSTS = frozenset({"drive.google.com", "drive.usercontent.google.com", "docs.google.com"})
_FORM = re.compile(r'<form[^>]*id="download-form"[^>]*action="([^"]+)"[^>]*>(.*?)</form>', re.DOTALL)


def is_drive_url(url: str, mirrors: Iterable[MirrorRule] = ()) -> bool:
    """True for an https URL on a Google Drive host, or a URL under a --mirror target that stands for one."""
    if _on_drive(url):
        return True
    return any(_on_drive(rule.source + url[len(rule.target):]) for rule in mirrors
               if url.startswith(rule.target) and _under(url, rule.target))


def _on_drive(url: str) -> bool:
    split = urlsplit(url)
    return split.scheme == "https" and (split.hostname or "").lower() in DRIVE_HOSTS


def _under(url: str, prefix: str) -> bool:
    """`url` on the origin (scheme, host, port) of `prefix` and under its path."""
    target, base = urlsplit(url), urlsplit(prefix)
    return ((target.scheme, target.netloc.lower()) == (base.scheme, base.netloc.lower())
            and target.path.startswith(base.path))


def has_confirm_form(page: str) -> bool:
    """The page looks like Drive's confirm page (for the error line when it came from elsewhere)."""
    return _FORM.search(page) is not None


def gdrive_confirm_url(page: str, page_url: str, cookies=None, mirrors: Iterable[MirrorRule] = ()) -> str | None:
    """The real download URL behind a Google Drive 'can't scan for viruses' page, if this is one; None for
    every page that does not come from Google Drive (is_drive_url), whatever it holds."""
    if not is_drive_url(page_url, mirrors):
        return None
    form = _FORM.search(page)
    if form:
        inputs = re.findall(r'<input[^>]*type="hidden"[^>]*name="([^"]+)"[^>]*value="([^"]*)"', form.group(2))
        action = urljoin(page_url, html.unescape(form.group(1)))
        return f"{action}?{urlencode([(n, html.unescape(v)) for n, v in inputs])}"
    link = re.search(r'href="(/uc\?export=download[^"]*confirm=[^"]+)"', page)
    if link:
        return urljoin(page_url, html.unescape(link.group(1)))
    for name, value in (cookies or {}).items():
        if name.startswith("download_warning"):
            sep = "&" if "?" in page_url else "?"
            return f"{page_url}{sep}confirm={value}"
    if "uc-error-subcaption" in page or "Quota exceeded" in page:
        message = re.search(r'class="uc-error-subcaption">(.*?)<', page, re.DOTALL)
        text = html.unescape(message.group(1)).strip() if message else "download quota exceeded"
        raise DownloadError(f"{page_url}: Google Drive refused the download: {text}", url=page_url)
    return None


def page_title(page: str) -> str:
    match = re.search(r"<title>(.*?)</title>", page, re.DOTALL | re.IGNORECASE)
    return f"title: {html.unescape(match.group(1)).strip()[:80]}" if match else "no title"
