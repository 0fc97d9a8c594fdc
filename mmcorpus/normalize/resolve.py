"""Image paths of annotation files against the images on disk (<root>/images).

- `is_unsafe_path`: the image paths in dataset files are untrusted; LLaVA joins them to the image folder
  unchecked (reference 11), so absolute paths, `..`, NUL, backslashes and our bookkeeping names are refused
  before any use (layout.safe_relative, the one path check; UNSAFE_PATH_PATTERN is the same rule for RE2).
- `ImageResolver`: finds the file a path means, with the fallbacks the real collections need, and counts what
  it saw. Missing images are counted and reported, never fatal (SAM: about half can be missing, P13).
  * wikiart names with `#Uxxxx` escapes (P11): under wikiart/ only, decode the escapes as they are (the result
    looks like mojibake; do not repair it), then try the extensions .gif .jpg .jpeg .png on the raw and the
    decoded name. A decoded name is checked again (`#U002e#U002e/` decodes to `../`, `#U0000` to NUL): the
    record is refused (`resolve_images` counts it as bad_image_path). The extension fallback applies to every
    missing path: users renamed OCR-VQA GIFs to .gif (P9).
  * OCR-VQA files named .jpg are often GIF or PNG (P9): the format is sniffed from the first bytes and
    mismatches are counted; the JSON's name is kept (that is the name on disk).
Directory listings are cached (one scandir per folder instead of a stat per image): 665k lookups cost a few
set probes each. Memory is bounded by the number of files on disk, not by the annotation file.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

import pyarrow as pa

from mmcorpus import layout
from mmcorpus.normalize.job import Rejects

FALLBACK_EXTENSIONS = (".gif", ".jpg", ".jpeg", ".png")
SNIFF_PREFIXES = ("ocr_vqa/",)  # collections whose file extensions are known to lie
ESCAPED_PREFIXES = ("wikiart/",)  # collections whose JSON names carry #Uxxxx escapes (P11)
BAD_IMAGE_PATH = "bad_image_path"  # the reject reason (the LLaVA normalizer's, for the same rule)
MAX_EXAMPLES = 5
_ESCAPE = re.compile(r"#U([0-9a-fA-F]{4})")
_MAGIC = ((b"\xff\xd8\xff", "jpeg"), (b"\x89PNG", "png"), (b"GIF8", "gif"), (b"BM", "bmp"))
_EXTENSION_FORMAT = {".jpg": "jpeg", ".jpeg": "jpeg", ".png": "png", ".gif": "gif", ".bmp": "bmp", ".webp": "webp"}


UNSAFE_PATH_PATTERN = layout.UNSAFE_PATH_PATTERN  # the LLaVA normalizer checks whole batches with it (RE2)


def is_unsafe_path(path: str) -> bool:
    """Whether an image path from a dataset file must not be joined to the image root."""
    try:
        layout.safe_relative(path)
    except layout.UnsafePath:
        return True
    return False


def resolve_images(batch: pa.RecordBatch, resolver: ImageResolver, rejects: Rejects) -> pa.RecordBatch:
    """Image paths as found on disk (wikiart escapes, other extensions); a missing image keeps the path the
    file gives, and is counted by the resolver. A record whose path is unsafe, as given or once decoded, is
    dropped and counted in `rejects` (bad_image_path, with its record index from the sample_id)."""
    column = batch.schema.get_field_index("image_path")
    paths = batch.column(column).to_pylist()
    found, keep = [], []
    for row, path in enumerate(paths):
        try:
            found.append(path if path is None else resolver.resolve(path) or path)
            keep.append(row)
        except layout.UnsafePath:
            rejects.add(BAD_IMAGE_PATH, _record_index(batch, row))
    if found == paths:
        return batch
    batch = batch.take(pa.array(keep, pa.int64())) if len(keep) < len(paths) else batch
    return batch.set_column(column, batch.schema.field(column), pa.array(found, pa.string()))


def _record_index(batch: pa.RecordBatch, row: int) -> int:
    """`<dataset>/<subset>/<index>` -> index (the record's position in its file or byte range)."""
    return int(batch.column(batch.schema.get_field_index("sample_id"))[row].as_py().rsplit("/", 1)[1])


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
        """The path of the file on disk (relative to the root; may differ from `path`), or None if missing.
        Raises layout.UnsafePath when `path`, or the name its escapes decode to, fails the one path check."""
        layout.safe_relative(path)
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
        except (OSError, ValueError):  # missing folder (the collection is not fetched yet), or a name the
            return frozenset()  # file system cannot encode

    def _fallback(self, path: str) -> str | None:
        decoded = decode_escapes(path) if path.startswith(ESCAPED_PREFIXES) and "#U" in path else path
        if decoded != path:
            layout.safe_relative(decoded)  # the same rule again: escapes can spell '../', '/' or NUL
        elif not self._names(path.rpartition("/")[0]):
            return None  # empty or absent folder (collection not fetched): no other name can exist
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
        except (OSError, ValueError):
            real = "unreadable"
        ext = os.path.splitext(path)[1].lower()
        if _EXTENSION_FORMAT.get(ext) != real:
            key = f"{real} named {ext or '(no extension)'}"
            self.formats[key] = self.formats.get(key, 0) + 1
