"""Is a sample's image on disk and decodable? A cheap check: the file exists, is not empty, and PIL can read
its header and run `verify()` (which parses the structure without decoding every pixel).

Images are shared (one COCO picture serves many mix665k and ShareGPT4V records), so results are cached in a
bounded LRU; uncached paths of a batch are checked by a small thread pool (the work is mostly file I/O, and
network file systems reward concurrent reads).
"""

from __future__ import annotations

from collections import OrderedDict
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Iterable

from PIL import Image

REASONS = ("bad_image_path", "image_missing", "image_empty", "image_undecodable")


@dataclass(frozen=True)
class ImageCheck:
    reason: str | None  # None when the image is usable, else one of REASONS
    width: int | None = None
    height: int | None = None


def safe_relative(path: str) -> bool:
    """Image paths are relative to <root>/images and never climb out of it."""
    if not path or "\\" in path or "\0" in path or path.startswith("/"):
        return False
    return ".." not in PurePosixPath(path).parts


def check_image(images_root: Path, relative: str) -> ImageCheck:
    if not safe_relative(relative):
        return ImageCheck("bad_image_path")
    path = images_root / relative
    try:
        size = path.stat().st_size
    except OSError:
        return ImageCheck("image_missing")
    if not path.is_file():
        return ImageCheck("image_missing")
    if size == 0:
        return ImageCheck("image_empty")
    try:
        with Image.open(path) as image:
            width, height = image.size
            image.verify()
    except Exception:  # PIL raises many types (OSError, SyntaxError, ValueError, DecompressionBombError, ...)
        return ImageCheck("image_undecodable")
    return ImageCheck(None, width, height)


class ImageChecker:
    """check_image with an LRU cache and a thread pool for prefetching a batch."""

    def __init__(self, images_root: Path, *, cache_size: int = 200_000, threads: int = 8):
        self.images_root = Path(images_root)
        self.cache_size = cache_size
        self.cache: OrderedDict[str, ImageCheck] = OrderedDict()
        self.pool = ThreadPoolExecutor(max_workers=threads) if threads > 1 else None

    def check(self, relative: str) -> ImageCheck:
        hit = self.cache.get(relative)
        if hit is not None:
            self.cache.move_to_end(relative)
            return hit
        result = check_image(self.images_root, relative)
        self._remember(relative, result)
        return result

    def prefetch(self, paths: Iterable[str]) -> None:
        todo = list(dict.fromkeys(p for p in paths if p not in self.cache))
        if not todo:
            return
        results = self.pool.map(lambda p: check_image(self.images_root, p), todo) if self.pool else None
        for path, result in zip(todo, results or (check_image(self.images_root, p) for p in todo)):
            self._remember(path, result)

    def _remember(self, relative: str, result: ImageCheck) -> None:
        self.cache[relative] = result
        if len(self.cache) > self.cache_size:
            self.cache.popitem(last=False)

    def close(self) -> None:
        if self.pool:
            self.pool.shutdown()

    def __enter__(self) -> "ImageChecker":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
