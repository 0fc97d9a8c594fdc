"""Image paths of annotation files against the images on disk (<root>/images).

- `is_unsafe_path`: the image paths in dataset files are untrusted; LLaVA joins them to the image folder
  unchecked (reference 11), so absolute paths, `..`, NUL and backslashes are refused before any use.
- `ImageResolver`: finds the file a path means, with the fallbacks the real collections need, and counts what
  it saw. Missing images are counted and reported, never fatal (SAM: about half can be missing, P13).
  * wikiart names with `#Uxxxx` escapes (P11): decode the escapes as they are (the result looks like mojibake;
    do not repair it), then try the extensions .gif .jpg .jpeg .png on the raw and the decoded name. The
    extension fallback applies to every missing path: users renamed OCR-VQA GIFs to .gif (P9).
  * OCR-VQA files named .jpg are often GIF or PNG (P9): the format is sniffed from the first bytes and
    mismatches are counted; the JSON's name is kept (that is the name on disk).
Directory listings are cached (one scandir per folder instead of a stat per image): 665k lookups cost a few
set probes each. Memory is bounded by the number of files on disk, not by the annotation file.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

FALLBACK_EXTENSIONS = (".gif", ".jpg", ".jpeg", ".png")
SNIFF_PREFIXES = ("ocr_vqa/",)  # collections whose file extensions are known to lie
MAX_EXAMPLES = 5
_ESCAPE = re.compile(r"#U([0-9a-fA-F]{4})")
_MAGIC = ((b"\xff\xd8\xff", "jpeg"), (b"\x89PNG", "png"), (b"GIF8", "gif"), (b"BM", "bmp"))
_EXTENSION_FORMAT = {".jpg": "jpeg", ".jpeg": "jpeg", ".png": "png", ".gif": "gif", ".bmp": "bmp", ".webp": "webp"}


# Empty, absolute (/x, C:x), a backslash, a NUL byte, or a '..' component. One pattern for Python's re and
# Arrow's RE2 (the LLaVA normalizer checks whole batches with it).
UNSAFE_PATH_PATTERN = r"^$|^/|^.:|\\|\x00|(^|/)\.\.(/|$)"
_UNSAFE_PATH = re.compile(UNSAFE_PATH_PATTERN)


def is_unsafe_path(path: str) -> bool:
    """Whether an image path from a dataset file must not be joined to the image root."""
    return _UNSAFE_PATH.search(path) is not None


def decode_escapes(name: str) -> str:
    """`b#U00e3#U00b6cklin` -> `bã¶cklin`: ShareGPT4V's wikiart escapes, decoded literally."""
    return _ESCAPE.sub(lambda m: chr(int(m.group(1), 16)), name)


def sniff_format(head: bytes) -> str:
    """Image format from the first bytes of a file: jpeg, png, gif, webp, bmp, empty or unknown."""
    if not head:
        return "empty"
    if head[:4] == b"RIFF" and head[8:12] == b"WEBP":
        return "webp"
    return next((name for magic, name in _MAGIC if head.startswith(magic)), "unknown")


class ImageResolver:
    """Resolves image paths relative to `images_root`, counting found / missing / renamed / format lies."""

    def __init__(self, images_root: Path):
        self.root = Path(images_root)
        self._listings: dict[str, frozenset[str]] = {}
        self.found = 0
        self.renamed = 0
        self.missing: dict[str, dict] = {}  # collection folder -> {"count", "examples"}
        self.formats: dict[str, int] = {}  # "gif named .jpg" -> count

    def resolve(self, path: str) -> str | None:
        """The path of the file on disk (relative to the root; may differ from `path`), or None if missing."""
        found = self._exists(path) and path or self._fallback(path)
        if found is None:
            self._count_missing(path)
            return None
        self.found += 1
        self.renamed += found != path
        if found.startswith(SNIFF_PREFIXES):
            self._check_format(found)
        return found

    def report(self) -> dict:
        return {"found": self.found, "missing": sum(m["count"] for m in self.missing.values()),
                "missing_by_folder": self.missing, "renamed": self.renamed, "format_mismatch": self.formats}

    # ------------------------------------------------------------------------------------------------
    def _exists(self, path: str) -> bool:
        folder, _, name = path.rpartition("/")
        return name in self._names(folder)

    def _names(self, folder: str) -> frozenset[str]:
        names = self._listings.get(folder)
        if names is None:
            names = self._listings[folder] = self._list(folder)
        return names

    def _list(self, folder: str) -> frozenset[str]:
        try:
            with os.scandir(self.root / folder) as entries:
                return frozenset(e.name for e in entries if e.is_file())
        except OSError:  # missing folder: the collection is not fetched (yet)
            return frozenset()

    def _fallback(self, path: str) -> str | None:
        if not self._names(path.rpartition("/")[0]) and "#U" not in path:
            return None  # empty or absent folder (collection not fetched): no other name can exist
        decoded = decode_escapes(path) if "#U" in path else path
        candidates = [decoded] if decoded != path else []
        for name in dict.fromkeys((path, decoded)):
            stem, dot, ext = name.rpartition(".")
            stem = stem if dot and "/" not in ext else name
            candidates += [stem + e for e in FALLBACK_EXTENSIONS if stem + e != path]
        return next((c for c in candidates if self._exists(c)), None)

    def _count_missing(self, path: str) -> None:
        folder = "/".join(path.split("/")[:2]) if "/" in path else ""
        entry = self.missing.setdefault(folder, {"count": 0, "examples": []})
        entry["count"] += 1
        if len(entry["examples"]) < MAX_EXAMPLES:
            entry["examples"].append(path)

    def _check_format(self, path: str) -> None:
        try:
            with open(self.root / path, "rb") as f:
                real = sniff_format(f.read(12))
        except OSError:
            real = "unreadable"
        ext = os.path.splitext(path)[1].lower()
        if _EXTENSION_FORMAT.get(ext) != real:
            key = f"{real} named {ext or '(no extension)'}"
            self.formats[key] = self.formats.get(key, 0) + 1
