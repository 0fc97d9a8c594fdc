"""Free space on the file system that will hold a path: a clear error now, not a full disk half-way.

The generic half of the disk check; mmcorpus.fetch.diskspace knows what a fetch will write and asks here.
`statvfs` reports the file system's free space, not a user's quota on NFS or Lustre.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

from mmcorpus.core.progress import human_bytes
from mmcorpus.errors import MMCorpusError

MARGIN = 0.05  # keep 5% more than the estimate free...
MIN_MARGIN = 1 << 30  # ...and at least 1 GiB: other users of a shared disk write too


class DiskFullError(MMCorpusError):
    """Not enough free space for what a run is about to write (exit 1)."""


def free_bytes(path: Path) -> tuple[int, Path]:
    """Free bytes on the file system that holds `path` (or would, once created), and its mount point."""
    existing = existing_parent(path)
    return shutil.disk_usage(existing).free, mount_point(existing)


def existing_parent(path: Path) -> Path:
    """`path` or its nearest existing parent: the root's sub-folders may not exist yet."""
    existing = Path(path).absolute()
    while not existing.exists():
        existing = existing.parent
    return existing


def mount_point(path: Path) -> Path:
    path = Path(path).absolute()
    while not os.path.ismount(path) and path != path.parent:
        path = path.parent
    return path


def ensure_free_space(path: Path, needed_bytes: int, *, margin: float = MARGIN, min_margin: int = MIN_MARGIN,
                      what: str = "") -> None:
    """Raise DiskFullError ("need X, have Y free on <fs>") unless `needed_bytes` plus a margin fit."""
    if needed_bytes <= 0:
        return
    want = needed_bytes + max(int(needed_bytes * margin), min_margin)
    free, mount = free_bytes(path)
    if free < want:
        label = f"{what}: " if what else ""
        raise DiskFullError(f"{label}not enough disk space: need {human_bytes(want)} "
                            f"({human_bytes(needed_bytes)} + margin), have {human_bytes(free)} free on {mount} "
                            f"(for {path}); free some space or use another --root")
