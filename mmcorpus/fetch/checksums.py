"""Integrity of downloaded files: size and checksums from the spec, and a cache of what was verified.

Hashing a 20 GB archive on every cron run would take minutes, so a successful verification is recorded in
`.mmcorpus/<file>.verified.json` beside the file; it is trusted while size and mtime are unchanged
(`mmcorpus verify` always re-hashes).

The record's sha256 is also the reference for a file whose spec publishes no checksum: it was taken from the
bytes as they arrived, and a file whose bytes differ from it later was modified on disk. Such a mismatch is
never re-recorded (only a new download writes a new record), so the reference stays the download's.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from pathlib import Path

from mmcorpus import layout
from mmcorpus.core.atomicio import sweep_stale_temporaries, write_json_atomic
from mmcorpus.errors import VerificationError
from mmcorpus.registry import FileSpec

CHUNK = 1 << 20


class Digests:
    """The checksums a spec asks for, fed incrementally as bytes arrive."""

    def __init__(self, spec: FileSpec):
        self.hashes = {}
        if spec.sha256:
            self.hashes["sha256"] = hashlib.sha256()
        if spec.md5:
            self.hashes["md5"] = hashlib.md5()
        # Always keep a sha256, so `status` can report what is on disk even without a published hash.
        self.hashes.setdefault("sha256", hashlib.sha256())

    def update(self, data: bytes) -> None:
        for h in self.hashes.values():
            h.update(data)

    def feed_file(self, path: Path, limit: int | None = None) -> None:
        """Hash the first `limit` bytes of a file (the part already downloaded, when resuming)."""
        remaining = limit
        with open(path, "rb") as fh:
            while remaining is None or remaining > 0:
                chunk = fh.read(CHUNK if remaining is None else min(CHUNK, remaining))
                if not chunk:
                    break
                self.update(chunk)
                if remaining is not None:
                    remaining -= len(chunk)

    def hexdigests(self) -> dict[str, str]:
        return {name: h.hexdigest() for name, h in self.hashes.items()}


def check(spec: FileSpec, size: int, digests: dict[str, str], label: str) -> None:
    """Raise VerificationError when size or a checksum differs from the spec."""
    if spec.size is not None and size != spec.size:
        raise VerificationError(f"{label}: size mismatch: expected {spec.size} bytes, got {size}")
    for name in ("sha256", "md5"):
        expected = getattr(spec, name)
        if expected and digests.get(name) != expected:
            raise VerificationError(f"{label}: {name} mismatch: expected {expected}, got {digests.get(name)}")


def verify_file(path: Path, spec: FileSpec, *, use_cache: bool = True) -> dict[str, str]:
    """Verify a file on disk against its spec; returns its digests. Raises VerificationError."""
    cached = _read_cache(path) if use_cache else None
    if cached is not None and _cache_matches_spec(cached, spec):
        return cached["digests"]
    digests = Digests(spec)
    digests.feed_file(path)
    result = digests.hexdigests()
    check(spec, path.stat().st_size, result, str(path))
    _check_against_download(path, spec, result)
    record_verified(path, result)
    return result


def _check_against_download(path: Path, spec: FileSpec, digests: dict[str, str]) -> None:
    """Without a checksum in the spec, the bytes must still be the ones downloaded (see the module docstring)."""
    if spec.sha256 or spec.md5:
        return
    recorded = (_read_record(path) or {}).get("digests", {}).get("sha256")
    if recorded and digests.get("sha256") != recorded:
        raise VerificationError(f"{path}: modified since download: sha256 {digests.get('sha256')}, recorded at "
                                f"download {recorded} (the spec publishes no checksum)")


def is_verified(path: Path, spec: FileSpec) -> bool:
    """True when the cache says this very file (same size and mtime) verified against the spec; never hashes."""
    cached = _read_cache(path)
    return cached is not None and _cache_matches_spec(cached, spec)


def record_verified(path: Path, digests: dict[str, str]) -> None:
    st = path.stat()
    record = {"size": st.st_size, "mtime_ns": st.st_mtime_ns, "digests": digests, "verified_at": time.time()}
    cache = _cache_path(path)
    write_json_atomic(cache, record)
    sweep_stale_temporaries(cache.parent)  # records of runs killed between write and rename


def _cache_path(path: Path) -> Path:
    return layout.verified_record(path)


def _read_record(path: Path) -> dict | None:
    try:
        record = json.loads(_cache_path(path).read_text())
    except (OSError, ValueError):
        return None
    return record if isinstance(record, dict) else None


def _read_cache(path: Path) -> dict | None:
    record = _read_record(path)
    try:
        st = path.stat()
    except OSError:
        return None
    if record is None or record.get("size") != st.st_size or record.get("mtime_ns") != st.st_mtime_ns:
        return None
    return record


def _cache_matches_spec(record: dict, spec: FileSpec) -> bool:
    digests = record.get("digests", {})
    if spec.size is not None and record.get("size") != spec.size:
        return False
    return all(digests.get(n) == getattr(spec, n) for n in ("sha256", "md5") if getattr(spec, n))


def move_aside(path: Path) -> Path:
    """Move a file that failed verification out of the way (never leave it at the final path)."""
    target = layout.rejected_path(path, time.strftime('%Y%m%dT%H%M%S'), os.getpid())
    target.parent.mkdir(parents=True, exist_ok=True)
    os.replace(path, target)
    return target
