"""Files appear whole or not at all: temporary names unique to a writer, atomic renames, stale sweeps.

Every writer of mmcorpus writes to a temporary sibling and renames it into place (atomic on POSIX file
systems, NFS and Lustre included), so a reader, or a run resumed after kill -9, never sees half a file at a
final path. The temporary name carries host, pid and thread: two runs writing the same file (a lock broken by
mistake) never write into one temporary file, and the temporaries of killed runs can be told from those of
live ones and swept.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from mmcorpus import layout

HOST_TAG = hashlib.sha1(socket.gethostname().encode()).hexdigest()[:8]
_TEMP_OWNER = re.compile(r"\.([0-9a-f]{8})-(\d+)-\d+" + re.escape(layout.TEMP) + "$")
FOREIGN_TEMP_MAX_AGE = 24 * 3600  # another host's temporary file untouched this long belongs to a dead run


def temporary_name(final: Path) -> Path:
    """A temporary sibling unique to this host, process and thread: two runs extracting the same archive (a
    lock broken by mistake) must never write into one file, or a rename could publish the other's
    half-written bytes at the final path. sweep_stale_temporaries removes those of killed runs."""
    return layout.temporary_sibling(final, f"{HOST_TAG}-{os.getpid()}-{threading.get_ident()}")


def sweep_stale_temporaries(folder: Path, *, recursive: bool = True) -> int:
    """Delete the temporary files that killed runs left under `folder` (their process is gone, or, from
    another host, they have not been touched for a day); a live run's are left alone."""
    removed = 0
    for current, _dirs, files in os.walk(folder):
        for name in files:
            if name.endswith(layout.TEMP) and _is_stale_temporary(Path(current) / name):
                Path(current, name).unlink(missing_ok=True)
                removed += 1
        if not recursive:
            break
    return removed


def _is_stale_temporary(path: Path) -> bool:
    owner = _TEMP_OWNER.search(path.name)
    if owner is None:
        return True  # the older, shared-name form: no live run writes it any more
    host, pid = owner.group(1), int(owner.group(2))
    if host != HOST_TAG:
        try:
            return time.time() - path.stat().st_mtime > FOREIGN_TEMP_MAX_AGE
        except OSError:
            return False
    return pid != os.getpid() and not pid_alive(pid)


def pid_alive(pid: int) -> bool:
    """Whether a process of this pid runs on this host (one we may not signal counts as running)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return not _zombie(pid)


def _zombie(pid: int) -> bool:
    """A process killed (-9) but not yet reaped by its parent still answers kill(pid, 0): it is dead all the
    same, and its locks and temporaries are free to take (Linux: state Z in /proc/<pid>/stat)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[-1].split()[:1] == ["Z"]


@contextmanager
def publishing(path: Path) -> Iterator[Path]:
    """Yield the temporary name to write `path` through; rename it into place when the block ends well.

    When the block fails (a full disk, a kill signal turned into an exception), the temporary file is
    deleted: half a file must not keep the space a re-run needs. An OSError that names no file (write()
    raises ENOSPC without one) is given `path`, so the message says what could not be written.
    """
    path = Path(path)
    tmp = temporary_name(path)
    try:
        yield tmp
        os.replace(tmp, path)
    except BaseException as exc:
        tmp.unlink(missing_ok=True)
        if isinstance(exc, OSError) and exc.filename is None:
            exc.filename = str(path)
        raise


def write_bytes_atomic(path: Path, data: bytes) -> None:
    """Write `data` to `path` through a temporary name unique to this writer."""
    with publishing(path) as tmp, open(tmp, "wb") as handle:
        handle.write(data)


def read_json(path: Path, default: Any = None) -> Any:
    """A JSON bookkeeping file (marker, manifest, cache), or `default` when it is missing or unreadable.
    Writers go through write_json_atomic, so a file that does not parse was not written by us: treat it
    as absent and let the caller redo what it records."""
    try:
        return json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return default


def write_json_atomic(path: Path, data: Any, *, indent: int | None = None, sort_keys: bool = False) -> None:
    """Write `data` as JSON to `path` through a temporary name unique to this writer."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    text = json.dumps(data, indent=indent, sort_keys=sort_keys, ensure_ascii=False, default=str)
    with publishing(path) as tmp:
        tmp.write_text(text, encoding="utf-8")
