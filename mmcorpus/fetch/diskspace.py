"""What a fetch will write, checked against free space before large downloads and extractions: a clear error now, not a full disk half-way.

A disk that fills up mid-run costs more than the run: a 20 GB archive cut at 19 GB, extraction stopped
half-way, and on a shared data server every other user's jobs failing too. So fetch asks first:
`ensure_space_for_fetch(specs, root)` (all specs of the run, per file system), or for one step
`ensure_free_space(path, expected_bytes(spec, root))`.

Expected sizes come from the specs (`size` of each file). What is already on disk is not counted again:
a verified file costs nothing, a `.part` only its missing bytes, an extracted archive nothing.

Archives need room twice while they are extracted: the archive itself, and its members (the archive is
deleted only afterwards, if at all). Image archives barely compress (JPEG inside zip or tar.gz: ~1:1), so
extraction is estimated as `size x EXPANSION` with EXPANSION = 1.1 (10% for file-system block rounding of
many small files); pass `expansion=` for collections known to compress better.

Limits: `statvfs` reports the file system's free space, not a user's quota on NFS or Lustre (`lfs quota`);
a quota can still stop a run that passed this check. Unknown sizes (specs without `size`, e.g. COCO's zip)
count as zero: `unknown_sizes` names them. URL-list images are not counted (their size is not in the spec).
"""

from __future__ import annotations

from pathlib import Path

from mmcorpus import layout
from mmcorpus.core.diskspace import (
    MARGIN,
    MIN_MARGIN,
    ensure_free_space,
    existing_parent,
)
from mmcorpus.fetch.archives import Mapping, read_marker
from mmcorpus.fetch.collections import collection_dir
from mmcorpus.layout import part_path

EXPANSION = 1.1
def expected_bytes(spec, root: Path | None = None, *, only: set[str] | None = None,
                   expansion: float = EXPANSION) -> int:
    """Bytes a fetch of `spec` will still write: downloads plus, for collections, extracted members.

    `only`: file/archive keys to count (default: the non-optional ones, as fetch does). With `root`, what is
    already complete on disk is not counted.
    """
    return sum(space_needed(spec, root, only=only, expansion=expansion).values())


def space_needed(spec, root: Path | None = None, *, only: set[str] | None = None,
                 expansion: float = EXPANSION) -> dict[Path, int]:
    """expected_bytes split by the folder the bytes land in (downloads/<name>, images/<collection path>):
    the two may be on different file systems (images/ symlinked to a bigger disk)."""
    base = Path(root) if root is not None else Path(".")
    needs = {layout.downloads_dir(base, spec.name): 0}
    for file in _chosen(spec, only):
        if not file.size:
            continue
        if spec.kind == "collection":
            if root is not None and _extracted(spec, file, root):
                continue
            dest = collection_dir(spec, base)
            needs[dest] = needs.get(dest, 0) + int(file.size * expansion)
        needs[layout.downloads_dir(base, spec.name)] += _still_to_download(spec, file, root)
    return {path: n for path, n in needs.items() if n}


def ensure_space_for_fetch(specs, root: Path, *, only: dict[str, set[str]] | None = None,
                           expansion: float = EXPANSION, margin: float = MARGIN, min_margin: int = MIN_MARGIN) -> int:
    """Check, per file system, that everything `specs` will still write fits; return the total bytes.
    Needs of several specs on one file system are added up: each alone might fit where all together do not.
    The fixed part of the margin is at most what the fetch writes: a small job needs a proportionate margin,
    not a whole GiB (the demo on a nearly full disk)."""
    by_fs: dict[int, tuple[Path, int]] = {}
    for spec in specs:
        keys = only.get(spec.name) if only else None
        for path, n in space_needed(spec, root, only=keys, expansion=expansion).items():
            device = _device(path)
            first, total = by_fs.get(device, (path, 0))
            by_fs[device] = (first, total + n)
    names = ", ".join(s.name for s in specs)
    grand_total = sum(total for _, total in by_fs.values())
    for path, total in by_fs.values():
        ensure_free_space(path, total, margin=margin, min_margin=min(min_margin, grand_total), what=f"fetch {names}")
    return grand_total


def _device(path: Path) -> int:
    return existing_parent(path).stat().st_dev


def unknown_sizes(spec, *, only: set[str] | None = None) -> list[str]:
    """Keys of the files counted as zero by expected_bytes (no `size` in the spec, e.g. COCO's zip)."""
    return [f.key for f in _chosen(spec, only) if not f.size]


def _chosen(spec, only: set[str] | None) -> list:
    return [f for f in spec.downloads if (f.key in only if only is not None else not f.optional)]


def _still_to_download(spec, file, root: Path | None) -> int:
    if root is None:
        return file.size
    final = layout.download_path(root, spec.name, file.filename)
    if final.is_file() and final.stat().st_size == file.size:
        return 0
    part = part_path(final)
    have = part.stat().st_size if part.is_file() else 0
    return max(0, file.size - have)


def _extracted(spec, archive, root: Path) -> bool:
    return read_marker(archive.filename, collection_dir(spec, root), Mapping.of(archive)) is not None
