"""Is a sample's image on disk and decodable? A cheap check: the file exists, is not empty, and PIL can read
its header and run `verify()` (which parses the structure without decoding every pixel).

Images are shared (one COCO picture serves many mix665k and ShareGPT4V records), so results are cached in a
bounded LRU. Uncached paths of a batch are checked in chunks by a process pool when there are many: PIL parses
headers in Python under the GIL, so threads made it slower (measured: 100k JPEGs, 19 s in one thread, 31 s
with 8 threads); processes use every core and overlap the reads on network file systems. Workers are forked
(as in normalize.py and the URL engine): instant start, and no re-import of the caller's __main__.
"""

from __future__ import annotations

import multiprocessing
import os
import posixpath
import stat
from collections import OrderedDict
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable

from PIL import Image

from mmcorpus.normalize.resolve import is_unsafe_path

REASONS = ("bad_image_path", "image_missing", "image_empty", "image_undecodable")
POOL_MIN = 512  # uncached paths in one prefetch below this are checked in-process (no pool start-up)
CHUNK = 256


@dataclass(frozen=True)
class ImageCheck:
    reason: str | None  # None when the image is usable, else one of REASONS
    width: int | None = None
    height: int | None = None


def check_image(images_root: str | Path, relative: str) -> ImageCheck:
    if not relative or is_unsafe_path(relative):  # the normalizer's rule: never climb out of <root>/images
        return ImageCheck("bad_image_path")
    path = os.path.join(images_root, relative)
    try:
        info = os.stat(path)
    except OSError:
        return ImageCheck("image_missing")
    if not stat.S_ISREG(info.st_mode):
        return ImageCheck("image_missing")
    if info.st_size == 0:
        return ImageCheck("image_empty")
    try:
        with Image.open(path) as image:
            width, height = image.size
            image.verify()
    except Exception:  # PIL raises many types (OSError, SyntaxError, ValueError, DecompressionBombError, ...)
        return ImageCheck("image_undecodable")
    return ImageCheck(None, width, height)


def check_chunk(images_root: str, paths: list[str]) -> list[ImageCheck]:
    return [check_image(images_root, p) for p in paths]


class ImageChecker:
    """check_image with an LRU cache, and a process pool for prefetching the paths of a batch."""

    def __init__(self, images_root: Path, *, cache_size: int = 200_000, workers: int | None = None):
        self.images_root = str(images_root)
        self.cache_size = cache_size
        self.cache: OrderedDict[str, ImageCheck] = OrderedDict()
        self.folders: dict[str, bool] = {}  # folder (relative) -> exists; a prepare holds the dataset's lock
        self.workers = workers if workers is not None else (os.cpu_count() or 1)
        self.pool: ProcessPoolExecutor | None = None

    def check(self, relative: str) -> ImageCheck:
        hit = self.cache.get(relative)
        if hit is not None:
            self.cache.move_to_end(relative)
            return hit
        result = check_image(self.images_root, relative)
        self._remember(relative, result)
        return result

    def prefetch(self, paths: Iterable[str]) -> None:
        todo = []
        for path in dict.fromkeys(p for p in paths if p not in self.cache):
            if self._in_missing_folder(path):
                self._remember(path, ImageCheck("image_missing"))
            else:
                todo.append(path)
        if self.workers <= 1 or len(todo) < POOL_MIN:
            results = check_chunk(self.images_root, todo)
        else:
            chunks = [todo[i : i + CHUNK] for i in range(0, len(todo), CHUNK)]
            results = [r for part in self._pool().map(check_chunk, [self.images_root] * len(chunks), chunks) for r in part]
        for path, result in zip(todo, results):
            self._remember(path, result)

    def _in_missing_folder(self, relative: str) -> bool:
        """Whether the image's folder does not exist: a collection that was never fetched (say OCR-VQA in a
        mix665k prepare) then costs one stat, not one per image sent through the pool."""
        if not relative or is_unsafe_path(relative):
            return False  # check_image names the reason
        folder = posixpath.dirname(relative)
        exists = self.folders.get(folder)
        if exists is None:
            exists = self.folders[folder] = os.path.isdir(os.path.join(self.images_root, folder))
        return not exists

    def _pool(self) -> ProcessPoolExecutor:
        if self.pool is None:
            self.pool = ProcessPoolExecutor(self.workers, mp_context=multiprocessing.get_context("fork"))
        return self.pool

    def _remember(self, relative: str, result: ImageCheck) -> None:
        self.cache[relative] = result
        if len(self.cache) > self.cache_size:
            self.cache.popitem(last=False)

    def close(self) -> None:
        if self.pool is not None:
            self.pool.shutdown()

    def __enter__(self) -> "ImageChecker":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
