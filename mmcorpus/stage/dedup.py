"""Duplicate removal across the datasets of a stage. The first sample kept wins; later copies are dropped.

Two samples are duplicates when
- **same image URL**: both have the same `image_url` (compared exactly, after stripping surrounding
  whitespace). CC3M and CC12M share about 63K URLs; the entry listed first in the mix keeps them.
- **identical records**: they show the same image and teach the same text, i.e. equal `image_path` (both
  null for text-only samples), equal `caption` and the same conversation turns (same roles and contents in
  the same order). Texts are compared after removing the `<image>` placeholder and stripping surrounding
  whitespace, so "<image>\\nWhat is this?" and "What is this?\\n<image>" are the same turn (LLaVA moves the
  token to the front anyway). `sample_id`, `dataset`, `subset`, `source_id`, `image_url`, `width` and
  `height` are not compared: the same record in mix665k and in ShareGPT4V's SFT mix is one record.

Memory: one 8-byte digest per kept sample and per kept URL, held in a sorted array (8 bytes each, plus
a Python set of at most RECENT recent ones): about 250 MB for CC12M's 12.4M samples and URLs, where a Python set
of ints took ~70 bytes each (2 GB). A 64-bit digest collides with probability ~n²/2^65, i.e. less than one
false duplicate in a billion pairs at that size.
"""

from __future__ import annotations

import bisect
import hashlib
from array import array

import numpy as np

IMAGE_TOKEN = "<image>"
RECENT = 1 << 16  # digests held in a Python set before they are merged into the sorted array
_SEP, _TURN = b"\x00", b"\x01"


def _digest(data: bytes) -> int:
    return int.from_bytes(hashlib.blake2b(data, digest_size=8).digest(), "big")


def _text(value: str | None) -> bytes:
    return (value or "").replace(IMAGE_TOKEN, "").strip().encode("utf-8")


def record_key(image_path: str | None, caption: str | None, conversations: list[dict] | None) -> int:
    """The identity of a record as defined in the module docstring."""
    parts = [(image_path or "").encode("utf-8"), _text(caption)]
    for turn in conversations or ():
        parts.append((turn.get("role") or "").encode("utf-8") + _TURN + _text(turn.get("content")))
    return _digest(_SEP.join(parts))


def url_key(url: str) -> int:
    return _digest(url.strip().encode("utf-8"))


class DigestSet:
    """A set of 64-bit digests in 8 bytes each: a sorted array('Q') searched with bisect (about 1 µs a lookup),
    plus a small set of the newest, merged into the array (by numpy, in linear time) once it holds `recent`."""

    def __init__(self, recent: int = RECENT) -> None:
        self.sorted = array("Q")
        self.new: set[int] = set()
        self.recent = recent

    def __contains__(self, digest: int) -> bool:
        if digest in self.new:
            return True
        at = bisect.bisect_left(self.sorted, digest)
        return at < len(self.sorted) and self.sorted[at] == digest

    def add(self, digest: int) -> None:
        if digest in self:
            return
        self.new.add(digest)
        if len(self.new) >= self.recent:
            old = np.frombuffer(self.sorted, dtype=np.uint64) if self.sorted else np.empty(0, dtype=np.uint64)
            new = np.sort(np.fromiter(self.new, dtype=np.uint64, count=len(self.new)))
            merged = array("Q")
            merged.frombytes(np.insert(old, np.searchsorted(old, new), new).tobytes())
            self.sorted = merged
            self.new.clear()

    def __len__(self) -> int:
        return len(self.sorted) + len(self.new)


class Deduper:
    """Remembers what was kept; `check_and_add` returns the drop reason of a duplicate, or None and records it."""

    def __init__(self, recent: int = RECENT) -> None:
        self.urls = DigestSet(recent)
        self.records = DigestSet(recent)

    def check_and_add(self, image_url: str | None, image_path: str | None, caption, conversations) -> str | None:
        url = url_key(image_url) if image_url and image_url.strip() else None
        if url is not None and url in self.urls:
            return "duplicate_url"
        record = record_key(image_path, caption, conversations)
        if record in self.records:
            return "duplicate_record"
        if url is not None:
            self.urls.add(url)
        self.records.add(record)
        return None
