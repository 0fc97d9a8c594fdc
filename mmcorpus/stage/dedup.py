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

Memory: one 8-byte digest per kept sample and per kept URL (a Python set of ints, ~70 bytes each): about 1 GB
for 15M samples. A 64-bit digest collides with probability ~n²/2^65, i.e. less than one false duplicate in
a billion pairs at that size.
"""

from __future__ import annotations

import hashlib

IMAGE_TOKEN = "<image>"
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


class Deduper:
    """Remembers what was kept; `check_and_add` returns the drop reason of a duplicate, or None and records it."""

    def __init__(self) -> None:
        self.urls: set[int] = set()
        self.records: set[int] = set()

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
