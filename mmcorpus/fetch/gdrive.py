"""Google Drive's interstitial pages: the real download URL behind a "can't scan for viruses" page, and the
title of any HTML page a server sent instead of a file (for the error line).

mmcorpus.fetch.urls turns a Drive viewer URL into a download URL; mmcorpus.fetch.files follows what this finds.
"""

from __future__ import annotations

import html
import re
from urllib.parse import urlencode, urljoin

from mmcorpus.errors import DownloadError


def gdrive_confirm_url(page: str, page_url: str, cookies=None) -> str | None:
    """The real download URL behind a Google Drive 'can't scan for viruses' page, if this is one."""
    form = re.search(r'<form[^>]*id="download-form"[^>]*action="([^"]+)"[^>]*>(.*?)</form>', page, re.S)
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
        message = re.search(r'class="uc-error-subcaption">(.*?)<', page, re.S)
        text = html.unescape(message.group(1)).strip() if message else "download quota exceeded"
        raise DownloadError(f"{page_url}: Google Drive refused the download: {text}", url=page_url)
    return None


def page_title(page: str) -> str:
    match = re.search(r"<title>(.*?)</title>", page, re.S | re.I)
    return f"title: {html.unescape(match.group(1)).strip()[:80]}" if match else "no title"
