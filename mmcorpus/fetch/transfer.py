"""One response body read within limits: the streaming loop of the single-file downloader (fetch/files.py).

The body is read a piece at a time as it arrives (urllib3's read1: one socket read, at most CHUNK bytes after
decoding), so each limit is checked between pieces however the server sends:
- size: a file never grows past the spec's size. A piece that would take it further stops the download
  (TooLarge), whatever the Content-Encoding (we ask for identity; a server may compress anyway, and 300 KB of
  gzip is 300 MB of zeros) and whether or not a Content-Length was sent;
- compression ratio, for a spec without a size: a compressed body stops when it has decoded to more than
  `max_ratio` times its bytes on the wire plus `slack` (the archive extractor's rule);
- throughput: fewer than `window_bytes` (1 MiB) in a window of `window` seconds stops the body (TooSlow), so
  a server that drips a byte every 20 s cannot hold a fetch, and its lock, for ever. The window is
  WINDOW_PER_TIMEOUT x `--timeout` (60 s by default: about 17 KB/s; a larger --timeout is more patient with a
  slow link). A socket that sends nothing at all ends sooner, at the read timeout, which is at most the window.
TooSlow and Broken are transient (the downloader retries and resumes with Range, as after a cut); TooLarge
and Undecodable are final for that URL.
"""

from __future__ import annotations

import socket
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import BinaryIO

import requests
import urllib3

CHUNK = 1 << 16  # what a cut connection can cost us; small enough to resume close to the cut
WINDOW_PER_TIMEOUT = 3  # the throughput window is this many times --timeout
DEFAULT_WINDOW = 60.0  # seconds: WINDOW_PER_TIMEOUT x --timeout's default of 20 s
WINDOW_BYTES = 1 << 20  # at least this much per window (1 MiB per 60 s: about 17 KB/s)
MAX_RATIO = 100.0  # decoded bytes per wire byte of a compressed body (as archives.ExtractLimits.max_ratio)
SLACK = 1 << 20  # tiny compressed bodies may have any ratio


@dataclass(frozen=True)
class Limits:
    """What one body may cost. `max_bytes`: the whole file's size (the spec's), None when unknown."""

    max_bytes: int | None = None
    window: float = DEFAULT_WINDOW
    window_bytes: int = WINDOW_BYTES
    max_ratio: float = MAX_RATIO
    slack: int = SLACK

    def floor(self) -> str:
        """The minimum rate, as the error line says it."""
        rate = self.window_bytes / self.window / 1024
        return f"{rate:.0f} KB/s" if rate >= 100 else f"{rate:.3g} KB/s"


class TransferFailed(Exception):
    """A body that could not be read to its end within the limits; the message is one plain phrase."""


class Broken(TransferFailed):
    """The connection failed or timed out mid-body (transient)."""


class TooSlow(TransferFailed):
    """Fewer than `window_bytes` arrived in a window (transient: retry and resume)."""


class TooLarge(TransferFailed):
    """More bytes than the file may have (final: the same URL would send them again)."""


class Undecodable(TransferFailed):
    """A Content-Encoding that does not decode (final)."""


def content_encoding(response: requests.Response) -> str | None:
    """The body's Content-Encoding when it is not identity (its bytes on disk are not those on the wire)."""
    value = response.headers.get("Content-Encoding", "").strip().lower()
    return value if value and value != "identity" else None


class Body:
    """One response's body, read within `limits`. `offset`: bytes of the file already on disk (a resume)."""

    def __init__(self, response: requests.Response, limits: Limits, offset: int = 0,
                 clock: Callable[[], float] = time.monotonic):
        self.raw = response.raw
        self.limits = limits
        self.encoding = content_encoding(response)
        self.offset = offset
        self.written = 0  # bytes of this body written to the file
        self.received = 0  # bytes of this body read (decoded), written or not
        self._clock = clock
        self._window_start = clock()
        self._window_received = 0

    @property
    def position(self) -> int:
        """The file's size so far: what a resume would ask for next."""
        return self.offset + self.written

    def read(self) -> bytes:
        """The next piece as it arrives (b"" at the end of the body)."""
        try:
            read1 = getattr(self.raw, "read1", None)
            piece = read1(CHUNK, decode_content=True) if read1 else self.raw.read(CHUNK, decode_content=True)
        except urllib3.exceptions.DecodeError:
            raise Undecodable(f"the body does not decode as Content-Encoding {self.encoding}") from None
        except (urllib3.exceptions.HTTPError, requests.RequestException, OSError) as exc:
            raise Broken(describe(exc)) from None
        if piece:
            self._account(len(piece))
        return piece or b""

    def read_some(self, size: int) -> bytes:
        """At least `size` bytes (fewer only at the end of the body); for looking at the start of a body."""
        pieces, got = [], 0
        while got < size and (piece := self.read()):
            pieces.append(piece)
            got += len(piece)
        return b"".join(pieces)

    def copy(self, fh: BinaryIO, first: bytes, on_piece: Callable[[bytes], None]) -> int:
        """Write `first`, then the rest of the body, to `fh`; each piece also goes to `on_piece`. Returns the
        file's size. Nothing past `limits.max_bytes` is ever written."""
        piece = first or self.read()
        while piece:
            if self.limits.max_bytes is not None and self.position + len(piece) > self.limits.max_bytes:
                raise TooLarge(f"more than {self.limits.max_bytes} bytes arrived (the spec's size"
                               + (f"; Content-Encoding {self.encoding})" if self.encoding else ")"))
            fh.write(piece)  # a full disk is not a transfer failure: its OSError goes up as it is
            on_piece(piece)
            self.written += len(piece)
            piece = self.read()
        return self.position

    def _account(self, size: int) -> None:
        self.received += size
        if self.encoding and self.limits.max_bytes is None:
            wire = self.raw.tell() if hasattr(self.raw, "tell") else 0
            if self.received > self.limits.max_ratio * wire + self.limits.slack:
                raise TooLarge(f"Content-Encoding {self.encoding}: {wire} bytes decode to more than "
                               f"{self.limits.max_ratio:g}x as many")
        now = self._clock()
        self._window_received += size
        if now - self._window_start >= self.limits.window:
            if self._window_received < self.limits.window_bytes:
                raise TooSlow(f"slower than {self.limits.floor()} for {self.limits.window:g} s "
                              f"({self._window_received} bytes in {now - self._window_start:.1f} s)")
            self._window_start, self._window_received = now, 0


def describe(exc: Exception) -> str:
    """A failed request or read as a short phrase for the retry and error lines."""
    if isinstance(exc, (requests.Timeout, urllib3.exceptions.TimeoutError, socket.timeout)):
        return "timed out"
    if isinstance(exc, requests.ConnectionError):
        return "connection failed" if "Max retries" in str(exc) else "connection broken"
    if isinstance(exc, (urllib3.exceptions.HTTPError, OSError)):
        return "connection broken"
    return type(exc).__name__
