"""The single-file downloader used for every annotation file and archive.

What it guards against, in the order a download meets it:
- a spec URL that is a local copy (`file://`, plain path): copied and verified like a download;
- redirects: followed by hand so that the scheme is checked at every hop and `HF_TOKEN` is sent only to the
  Hugging Face endpoint's origin (scheme, host, port) over https or loopback (hub.endpoint_auth, the Hub
  client's rule too), never to the CDN, any other host a redirect leads to, or over plain http;
- transient failures (connection errors, cuts mid-body, 408/429/5xx): retried with exponential backoff and
  jitter, honouring Retry-After; 403/404/410 and other 4xx are final (the next mirror is tried);
- a killed or cut download: bytes go to `<file>.part` (with a `.part.json` naming its source, redacted: no
  password or signature of the URL is stored), and the next
  attempt, in this run or a later one, asks for the rest with Range + If-Range; a server that answers 200
  (ignores Range) or a 206 for another offset makes us restart from zero instead of appending garbage
  (the huggingface_hub and yt-dlp lesson);
- an HTML page instead of the file (expired links, HF `/blob/` viewer pages, Google Drive's virus-scan page):
  Drive's confirm form is followed when the page comes from Google Drive (gdrive.is_drive_url), anything else
  is an error;
- a body that would never end: we ask for identity encoding, and transfer.py stops a body that brings more
  bytes than the spec's size (decoded; the partial file is deleted, not kept) or too few per time window
  (retried and resumed like a cut);
- a wrong file: size and sha256/md5 from the spec are checked before the rename; a mismatch moves the bytes
  to `.rejected/` and the final path never holds them.
"""

from __future__ import annotations

import email.utils
import json
import logging
import os
import random
import re
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from urllib.parse import urljoin, urlsplit

import requests

from mmcorpus import USER_AGENT
from mmcorpus.core.atomicio import read_json
from mmcorpus.core.diskspace import MIN_MARGIN, ensure_free_space
from mmcorpus.core.progress import ByteProgress
from mmcorpus.core.redact import redact_url
from mmcorpus.errors import DownloadError, VerificationError
from mmcorpus.fetch import checksums as verify
from mmcorpus.fetch import transfer
from mmcorpus.fetch.gdrive import gdrive_confirm_url, has_confirm_form, page_title
from mmcorpus.fetch.hub import endpoint_auth
from mmcorpus.fetch.transfer import CHUNK, Body, Limits, content_encoding, describe
from mmcorpus.fetch.urls import UrlRewriter, local_path
from mmcorpus.layout import part_meta_path, part_meta_temp, part_path
from mmcorpus.registry import FileSpec

log = logging.getLogger("mmcorpus.download")

RETRY_STATUSES = {408, 429, 500, 502, 503, 504, 520, 521, 522, 523, 524}
MAX_CONFIRM_PAGES = 3  # Google Drive interstitials followed before giving up


@dataclass
class DownloadOptions:
    rewrite: UrlRewriter = field(default_factory=UrlRewriter)
    retries: int = 5  # further attempts per URL after transient failures
    backoff: float = 1.0  # first retry delay (seconds); doubles each time, with jitter
    max_backoff: float = 60.0
    max_retry_after: float = 300.0  # a Retry-After beyond this is capped (cron runs must end)
    connect_timeout: float = 20.0
    read_timeout: float = 60.0  # per socket read; never more than `window`
    window: float = transfer.DEFAULT_WINDOW  # a body must bring `window_bytes` per `window` seconds (transfer.py)
    window_bytes: int = transfer.WINDOW_BYTES
    max_redirects: int = 10
    hf_token: str | None = field(default_factory=lambda: os.environ.get("HF_TOKEN") or None)
    sleep: Callable[[float], None] = time.sleep

    def for_timeout(self, timeout: float) -> DownloadOptions:
        """These options under `--timeout SECONDS`: the throughput window is WINDOW_PER_TIMEOUT times it."""
        return replace(self, window=transfer.WINDOW_PER_TIMEOUT * timeout)

    def limits(self, spec: FileSpec) -> Limits:
        return Limits(max_bytes=spec.size, window=self.window, window_bytes=self.window_bytes)


@dataclass
class DownloadResult:
    path: Path
    status: str  # "downloaded" | "present" (already there and verified)
    bytes: int
    url: str | None
    digests: dict[str, str]
    seconds: float = 0.0


class _Retry(Exception):
    """A transient failure: try the same URL again (resuming) after `delay` seconds."""

    def __init__(self, reason: str, delay: float | None = None):
        super().__init__(reason)
        self.delay = delay


class _Restart(Exception):
    """The server did not honour our Range: drop the partial file and start again at once."""


class _FollowPage(Exception):
    """An interstitial page (Google Drive confirm) pointed at the real download URL."""

    def __init__(self, url: str):
        super().__init__(url)
        self.url = url


# ------------------------------------------------------------------------------------------ entry point


def download_file(spec: FileSpec, dest_dir: Path, options: DownloadOptions | None = None,
                  label: str | None = None) -> DownloadResult:
    """Make `dest_dir/spec.filename` hold the verified file; idempotent (a second call verifies and skips)."""
    options = options or DownloadOptions()
    label = label or spec.filename
    final = dest_dir / spec.filename
    dest_dir.mkdir(parents=True, exist_ok=True)
    if final.exists():
        try:
            digests = verify.verify_file(final, spec)
            # A kill between the rename of the .part and the removal of its sidecars left them behind: they
            # describe a download that is finished, and nothing else would ever remove them.
            _discard(part_path(final))
            return DownloadResult(final, "present", final.stat().st_size, None, digests)
        except VerificationError as exc:
            aside = verify.move_aside(final)
            log.warning("%s; moved to %s, downloading again", exc, aside)
    if not spec.urls:
        raise DownloadError(f"{label}: no download URL in the spec. {spec.manual or ''}".strip())
    failures: list[DownloadError] = []
    for url in spec.urls:
        try:
            return _download_from(url, spec, final, options, label)
        except DownloadError as exc:
            failures.append(exc)
            if len(spec.urls) > 1:
                log.warning("%s", exc)
    if len(failures) == 1:
        raise failures[0]
    last = failures[-1]
    raise type(last)(f"{label}: every URL failed: " + " | ".join(map(str, failures)), url=last.url,
                     status=last.status)


def _download_from(url: str, spec: FileSpec, final: Path, options: DownloadOptions, label: str) -> DownloadResult:
    started = time.monotonic()
    target = options.rewrite(url)
    local = local_path(target)
    if local is not None:
        digests = _copy_local(local, spec, final, label)
    else:
        digests = _fetch_with_retries(url, target, spec, final, options, label)
    return DownloadResult(final, "downloaded", final.stat().st_size, target, digests, time.monotonic() - started)


def _copy_local(source: Path, spec: FileSpec, final: Path, label: str) -> dict[str, str]:
    if not source.is_file():
        raise DownloadError(f"{label}: local file {source} does not exist", url=str(source))
    part = part_path(final)
    digests = verify.Digests(spec)
    progress = ByteProgress(label, source.stat().st_size)
    try:
        with open(source, "rb") as src, open(part, "wb") as dst:
            while chunk := src.read(CHUNK):
                dst.write(chunk)
                digests.update(chunk)
                progress.update(len(chunk))
    finally:
        progress.close()
    return _finish(part, final, spec, digests.hexdigests(), label)


def _finish(part: Path, final: Path, spec: FileSpec, digests: dict[str, str], label: str) -> dict[str, str]:
    """Verify the complete .part and rename it into place, or move it aside."""
    try:
        verify.check(spec, part.stat().st_size, digests, label)
    except VerificationError:
        aside = verify.move_aside(part)
        part_meta_path(part).unlink(missing_ok=True)
        raise VerificationError(f"{label}: downloaded file does not verify (kept as {aside}): "
                                + _mismatch(spec, part=aside, digests=digests)) from None
    os.replace(part, final)
    _discard(part)  # the .part.json (and a .tmp of it that a kill may have left)
    verify.record_verified(final, digests)
    return digests


def _mismatch(spec: FileSpec, part: Path, digests: dict[str, str]) -> str:
    size = part.stat().st_size
    if spec.size is not None and size != spec.size:
        return f"size {size}, expected {spec.size}"
    for name in ("sha256", "md5"):
        if getattr(spec, name) and digests.get(name) != getattr(spec, name):
            return f"{name} {digests.get(name)}, expected {getattr(spec, name)}"
    return "mismatch"


# ------------------------------------------------------------------------------------ HTTP with retries


def _fetch_with_retries(spec_url: str, url: str, spec: FileSpec, final: Path, options: DownloadOptions,
                        label: str) -> dict[str, str]:
    part = part_path(final)
    attempt, pages = 0, 0
    with requests.Session() as session:
        session.headers["User-Agent"] = USER_AGENT
        # Bytes on disk are bytes on the wire: no decoding bomb, and Range offsets mean what they say.
        session.headers["Accept-Encoding"] = "identity"
        while True:
            try:
                digests = _fetch_once(session, spec_url, url, spec, part, options, label)
                return _finish(part, final, spec, digests, label)
            except _Restart as exc:
                log.warning("%s: %s; restarting from the first byte", label, exc)
                _discard(part)
                attempt += 1
            except _FollowPage as page:
                pages += 1
                if pages > MAX_CONFIRM_PAGES:
                    raise DownloadError(f"{label}: {url}: still an HTML page after {pages - 1} confirmations",
                                        url=url) from None
                url = options.rewrite(page.url)
                continue
            except _Retry as exc:
                attempt += 1
                if attempt > options.retries:
                    raise DownloadError(f"{label}: {url}: {exc} (gave up after {attempt} attempts)", url=url) from None
                delay = _backoff(attempt, options) if exc.delay is None else min(exc.delay, options.max_retry_after)
                log.warning("%s: %s; retry %d/%d in %.1f s", label, exc, attempt, options.retries, delay)
                options.sleep(delay)
            if attempt > options.retries:
                raise DownloadError(f"{label}: {url}: server keeps ignoring Range requests", url=url)


def _backoff(attempt: int, options: DownloadOptions) -> float:
    delay = min(options.backoff * 2 ** (attempt - 1), options.max_backoff)
    return delay * random.uniform(0.75, 1.25)


def _fetch_once(session: requests.Session, spec_url: str, url: str, spec: FileSpec, part: Path,
                options: DownloadOptions, label: str) -> dict[str, str]:
    """One request: resume `part` if it belongs to this URL, stream the rest, return the digests."""
    offset, validator = _resume_point(part, spec_url)
    headers = {}
    if offset:
        headers["Range"] = f"bytes={offset}-"
        if validator:
            headers["If-Range"] = validator  # a changed file answers 200 with the new body, not a bad splice
    try:
        response = _get(session, url, headers, options)
    except requests.RequestException as exc:
        raise _Retry(describe(exc)) from None
    with response:
        offset = _check_response(response, offset, label, url)
        if offset is None:  # 416: what we have is already the whole file
            digests = verify.Digests(spec)
            digests.feed_file(part)
            return digests.hexdigests()
        return _stream_body(response, spec_url, spec, part, offset, options, label)


def _check_response(response: requests.Response, offset: int, label: str, url: str) -> int | None:
    """Decide where the body goes: the offset to write at, None when already complete; or raise."""
    status = response.status_code
    if status == 416 and offset:
        total = _content_range(response.headers.get("Content-Range", ""))[2]
        if total == offset:
            return None
        raise _Restart(f"server refused the range from byte {offset} (416)")
    if status in RETRY_STATUSES:
        raise _Retry(f"HTTP {status}", _retry_after(response.headers.get("Retry-After")))
    if status >= 400:
        hint = " (gone: the link is dead)" if status in (404, 410) else ""
        hint = " (forbidden: expired link or a login is needed)" if status in (401, 403) else hint
        raise DownloadError(f"{label}: {url}: HTTP {status}{hint}", url=url, status=status)
    if status not in (200, 206):
        raise DownloadError(f"{label}: {url}: unexpected HTTP {status}", url=url, status=status)
    if status == 206:
        start, _, _ = _content_range(response.headers.get("Content-Range", ""))
        if start != offset:
            raise _Restart(f"asked for byte {offset}, server sent a range starting at {start}")
        return offset
    if offset:
        log.info("%s: server ignored the Range request (200); downloading from the start", label)
    return 0


def _stream_body(response: requests.Response, spec_url: str, spec: FileSpec, part: Path, offset: int,
                 options: DownloadOptions, label: str) -> dict[str, str]:
    body = Body(response, options.limits(spec), offset)
    if offset and body.encoding:
        raise _Restart(f"server sent a range with Content-Encoding {body.encoding}")
    digests = verify.Digests(spec)
    if offset:
        digests.feed_file(part, offset)
    expected_total = _expected_total(response, offset)
    progress = None
    try:
        first = b""
        if offset == 0:
            first = body.read_some(1024)
            _reject_html_page(response, first, body, spec, options, label)
        if spec.size is not None and expected_total is not None and expected_total > spec.size:
            raise transfer.TooLarge(f"the server announces {expected_total} bytes, more than the spec's size "
                                    f"{spec.size}")
        if expected_total and not spec.size:
            # Specs without a size (COCO's zip) escape fetch's free-space check: check once the server says.
            ensure_free_space(part.parent, expected_total - offset, what=label,
                              min_margin=min(MIN_MARGIN, expected_total - offset))
        if offset == 0 and not body.encoding:  # a decoded body cannot be resumed by byte offset
            _write_meta(part, spec_url, response)
        progress = ByteProgress(label, expected_total or spec.size, offset)
        with open(part, "r+b" if offset else "wb") as fh:
            fh.seek(offset)
            fh.truncate()
            written = body.copy(fh, first, lambda piece: (digests.update(piece), progress.update(len(piece))))
    except (transfer.Broken, transfer.TooSlow) as exc:
        after = f" after {body.position} bytes" if isinstance(exc, transfer.Broken) else ""
        raise _Retry(f"{exc}{after}") from None
    except transfer.TooLarge as exc:
        _discard(part)
        raise VerificationError(f"{label}: {response.url}: {exc}; download stopped and its partial file deleted "
                                "(an oversize download is not kept in .rejected/)", url=response.url) from None
    except transfer.Undecodable as exc:
        raise DownloadError(f"{label}: {response.url}: {exc}", url=response.url) from None
    finally:
        if progress is not None:
            progress.close()
    if expected_total is not None and written < expected_total:
        raise _Retry(f"connection closed after {written} of {expected_total} bytes")
    return digests.hexdigests()


def _get(session: requests.Session, url: str, headers: dict, options: DownloadOptions) -> requests.Response:
    """GET with redirects followed by hand: scheme checked and credentials recomputed at every hop."""
    for _ in range(options.max_redirects + 1):
        scheme = urlsplit(url).scheme
        if scheme not in ("http", "https"):
            raise DownloadError(f"{url}: refusing URL scheme '{scheme}' (only http and https)", url=url)
        response = session.get(url, headers={**headers, **endpoint_auth(url, options.rewrite.hf_endpoint,
                                                                         options.hf_token)},
                               stream=True, allow_redirects=False,
                               timeout=(options.connect_timeout, min(options.read_timeout, options.window)))
        if not response.is_redirect:
            return response
        location = response.headers.get("Location", "")
        response.close()
        url = urljoin(url, location)
    raise DownloadError(f"{url}: more than {options.max_redirects} redirects", url=url)


# ---------------------------------------------------------------------------------- HTML pages, Drive


_HTML_START = re.compile(rb"^\s*(<!doctype\s+html|<html|<head|<body)", re.IGNORECASE)


def _reject_html_page(response: requests.Response, first: bytes, body: Body, spec: FileSpec,
                      options: DownloadOptions, label: str) -> None:
    if spec.filename.lower().endswith((".html", ".htm")):
        return
    ctype = response.headers.get("Content-Type", "").lower()
    if not (_HTML_START.match(first[:1024]) or ctype.startswith("text/html")):
        return
    page = (first + body.read_some(256 * 1024)).decode("utf-8", "replace")
    confirm = gdrive_confirm_url(page, response.url, response.cookies, options.rewrite.rules)
    if confirm:
        raise _FollowPage(confirm)
    elsewhere = "; a Google Drive confirm form, from a host that is not Google Drive: not followed" \
        if has_confirm_form(page) else ""
    raise VerificationError(f"{label}: {response.url} sent an HTML page instead of the file "
                            f"({page_title(page)}{elsewhere}); an expired link, a login wall or a viewer URL "
                            "(Hugging Face links must use /resolve/, not /blob/)", url=response.url)


# ----------------------------------------------------------------------------------- .part bookkeeping


def _resume_point(part: Path, spec_url: str) -> tuple[int, str | None]:
    """Bytes already downloaded for this URL, and the validator to send with If-Range."""
    if not part.exists():
        return 0, None
    meta = read_json(part_meta_path(part), {})
    if meta.get("url") != redact_url(spec_url):  # a partial file of something else: never splice it
        _discard(part)
        return 0, None
    return part.stat().st_size, meta.get("validator")


def _write_meta(part: Path, spec_url: str, response: requests.Response) -> None:
    etag = response.headers.get("ETag")
    validator = etag if etag and not etag.startswith("W/") else response.headers.get("Last-Modified")
    tmp = part_meta_temp(part)
    # Redacted: a signed URL's new signature still names the same file, and If-Range guards its bytes.
    tmp.write_text(json.dumps({"url": redact_url(spec_url), "validator": validator}))
    os.replace(tmp, part_meta_path(part))


def _discard(part: Path) -> None:
    part.unlink(missing_ok=True)
    part_meta_path(part).unlink(missing_ok=True)
    part_meta_temp(part).unlink(missing_ok=True)


def _expected_total(response: requests.Response, offset: int) -> int | None:
    if response.status_code == 206:
        return _content_range(response.headers.get("Content-Range", ""))[2]
    length = response.headers.get("Content-Length")
    if length and length.isdigit() and not content_encoding(response):  # else it counts compressed bytes
        return int(length)
    return None


def _content_range(value: str) -> tuple[int | None, int | None, int | None]:
    """`bytes 100-199/1000` -> (100, 199, 1000); `bytes */1000` -> (None, None, 1000)."""
    match = re.match(r"bytes\s+(?:(\d+)-(\d+)|\*)/(\d+|\*)", value.strip())
    if not match:
        return None, None, None
    start, end, total = match.groups()
    as_int = lambda v: int(v) if v and v != "*" else None
    return as_int(start), as_int(end), as_int(total)


def _retry_after(value: str | None) -> float | None:
    if not value:
        return None
    if value.strip().isdigit():
        return float(value.strip())
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - time.time())
