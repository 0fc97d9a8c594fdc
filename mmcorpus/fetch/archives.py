"""Safe, resumable, idempotent extraction of zip and tar archives into an image collection folder.

Archives come from the network (COCO, GQA, ShareGPT4V WebData on Google Drive, user-provided SAM tars), so
every member is treated as hostile until checked (the readers, mmcorpus.fetch.archivemembers, bound what a
header may make them read):

- member names: absolute paths, drive letters, backslashes, `..` components and NUL bytes are refused
  (zip slip); the whole archive is refused, naming the archive and the member. A zip's names are all checked
  before anything is written; a tar is a stream, so members before the bad one stay on disk (without a done
  marker, so nothing counts as extracted);
- one member that cannot be placed is refused and counted by reason (`refused`, `refused_reasons` in the
  counts and the done marker), and the rest of the archive goes on: our bookkeeping names (a forged
  `.mmcorpus/<archive>.done`, a `*.mmpart` the sweep would delete; layout.safe_relative on the mapped path),
  a file where the archive already put a folder or the reverse, a name the file system cannot hold, an
  encrypted zip member or one in a compression method zipfile lacks;
- links (symlinks, hardlinks) are never created: they are skipped and counted, so no link can point out of
  the target; device files and FIFOs are refused;
- sizes: bytes are counted while streaming, never taken from headers. Each zip member may expand at most
  `max_ratio` times its compressed size (plus a small slack), and the whole archive at most
  `min(max_total_bytes, max_ratio * archive size + slack)` (tar.gz bombs have one compressed stream).
- a full disk (ENOSPC, EDQUOT, or EFBIG past a file size limit) ends the extraction: the member's temporary
  file is removed, no marker is written, the OSError (naming the member's final path) goes up to the CLI's
  one line for a full disk (exit 1), and a re-run after freeing space resumes.

Mapping (the spec's `strip`, `into`, `include`): a member named `strip + rest` lands at
`<dest>/<into>/<rest>`; `strip` is a folder prefix (`train2017` strips `train2017/`, never `train2017../`).
Members *not* under the `strip` prefix are skipped and counted as `outside_prefix` (e.g. `__MACOSX/…`, a
README at the archive root): the prefix describes where the images are, and stray files must not land in the
image folder. An archive where the prefix matches nothing is an error (the spec is wrong). `include` globs
(fnmatch, `*` also matches `/`) are matched against `rest`.

Resume: each member is written to a temporary name beside its final path and renamed, so a final path
always holds a complete file. A re-run skips members whose final path already has the right size, and a
marker `<dest>/.mmcorpus/<archive>.done` (JSON counts), written last, makes later runs skip the archive.
"""

from __future__ import annotations

import errno
import fnmatch
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO

from mmcorpus import layout
from mmcorpus.core.atomicio import (
    read_json,
    sweep_stale_temporaries,
    temporary_name,
    write_json_atomic,
)
from mmcorpus.errors import MMCorpusError, is_disk_full
from mmcorpus.fetch.archivemembers import (
    CORRUPT,
    ArchiveError,
    Member,
    archive_members,
    check_member_name,
)

__all__ = ["ArchiveError", "ExtractionError", "Limits", "Mapping", "Member", "archive_members",
           "check_member_name", "expected_members", "extract_archive", "marker_path", "read_marker"]

CHUNK = 1 << 20
MAX_EXAMPLES = 5
# Errors the member's own name or place causes (anything else is the machine's: permissions, I/O).
_MEMBER_FAULTS = {errno.ENAMETOOLONG: "name_too_long", errno.EILSEQ: "name_not_storable",
                  errno.EEXIST: "path_conflict", errno.ENOTDIR: "path_conflict", errno.EISDIR: "path_conflict",
                  errno.ENOTEMPTY: "path_conflict"}


class ExtractionError(MMCorpusError):
    """Writing into the collection folder failed for a reason of this machine other than a full disk
    (permissions, I/O): exit 1, no done marker, and a re-run resumes."""


@dataclass(frozen=True)
class Limits:
    """Caps against decompression bombs. Images barely compress (JPEG ~1:1, SAM JSON ~10:1), so a
    ratio of 100 is generous for real collections and stops a bomb after a bounded amount of writing."""

    max_total_bytes: int = 1 << 40  # 1 TiB: larger than any collection in the registry
    max_ratio: float = 100.0
    slack: int = 1 << 20  # tiny members (empty-ish text files) may have any ratio


@dataclass(frozen=True)
class Mapping:
    """How member names map to paths under the destination (from a collection archive's FileSpec).
    `strip` is normalised to a folder prefix ending in '/' (or empty)."""

    strip: str = ""
    into: str = ""
    include: tuple[str, ...] = ()

    def __post_init__(self):
        parts = [p for p in self.strip.split("/") if p not in ("", ".")]
        object.__setattr__(self, "strip", "/".join(parts) + "/" if parts else "")

    @classmethod
    def of(cls, file_spec) -> Mapping:
        return cls(file_spec.strip, file_spec.into, tuple(file_spec.include))

    def rest(self, name: str) -> str | None:
        """What follows the prefix in a normalised member name ('' for the prefix folder itself), or None
        when the member is outside the prefix."""
        if name + "/" == self.strip:
            return ""
        return name[len(self.strip):] if name.startswith(self.strip) else None

    def target(self, name: str) -> str | None:
        """The path relative to dest, or None when the member is outside the prefix."""
        rest = self.rest(name)
        if rest is None:
            return None
        return f"{self.into}/{rest}" if self.into and rest else rest

    def wanted(self, name: str) -> bool:
        rest = self.rest(name) or ""
        return not self.include or any(fnmatch.fnmatch(rest, pattern) for pattern in self.include)

    def as_dict(self) -> dict:
        return {"strip": self.strip, "into": self.into, "include": list(self.include)}


def normalised_name(name: str) -> str:
    """`./a//b/` -> `a/b`: the form names are mapped in (after check_member_name)."""
    return "/".join(p for p in name.split("/") if p not in ("", "."))


# ------------------------------------------------------------------------------------------ public API


def marker_path(archive_name: str, dest: Path) -> Path:
    return layout.archive_marker(dest, archive_name)


def read_marker(archive_name: str, dest: Path, mapping: Mapping = Mapping()) -> dict | None:
    """The marker's counts if `archive_name` was fully extracted into `dest` with this mapping, else None.
    Callers check this before downloading, so a deleted archive is not fetched again."""
    done = read_json(marker_path(archive_name, dest), {})
    # A changed mapping (new strip/include in the spec) must re-extract, not trust the old layout.
    return done if done and done.get("mapping") == mapping.as_dict() else None


def extract_archive(
    archive: Path,
    dest: Path,
    mapping: Mapping = Mapping(),
    *,
    limits: Limits = Limits(),
    delete_after: bool = False,
    name: str | None = None,
    sweep: bool = True,
) -> dict:
    """Extract `archive` (zip, tar, tar.gz, tar.bz2, tar.xz) into `dest` per `mapping`; return counts.

    Idempotent: a done marker makes it a no-op (`"skipped": True`). `name` is the marker's name (default:
    the archive's file name). `sweep`: first remove what killed runs left half-written in `dest` (a walk of
    the whole folder; a caller extracting many archives into one folder does it once and passes False).
    Raises ArchiveError for unsafe, truncated or unreadable archives, the OSError of a full disk, and
    ExtractionError when the folder cannot be written for another reason.
    """
    archive, dest = Path(archive), Path(dest)
    name = name or archive.name
    done = read_marker(name, dest, mapping)
    if done is not None:
        return {**done, "skipped": True}
    if sweep and dest.is_dir():  # a resumed extraction: clear what killed runs left half-written
        sweep_stale_temporaries(dest)
    extraction = _Extraction(archive, dest, mapping, limits)
    counts = extraction.run()
    report = {"archive": name, "mapping": mapping.as_dict(), **counts}
    try:
        _write_marker(marker_path(name, dest), report)
    except OSError as exc:
        raise extraction.write_failure(exc, marker_path(name, dest)) from None
    if delete_after:
        archive.unlink(missing_ok=True)
    return {**report, "skipped": False}


def expected_members(archive: Path, mapping: Mapping) -> Iterator[tuple[str, int]]:
    """(path relative to the destination, size) of each regular member extraction writes, by the same
    decisions (for `mmcorpus verify`): links, dirs, members outside the prefix, excluded or refused skipped."""
    for member in archive_members(archive):
        if member.kind == "file" and not member.refused:
            name = normalised_name(member.name)
            rel = _safe_target(mapping, name)
            if rel and mapping.wanted(name):
                yield rel, member.size


def _safe_target(mapping: Mapping, name: str) -> str | None:
    """The member's path under dest when it passes the one path check, else None (outside or refused)."""
    rel = mapping.target(name)
    try:
        return layout.safe_relative(rel) if rel else rel
    except layout.UnsafePath:
        return None


# ---------------------------------------------------------------------------------------- extraction


class _Extraction:
    """One pass over an archive's members, with the byte budget shared by all members."""

    def __init__(self, archive: Path, dest: Path, mapping: Mapping, limits: Limits):
        self.archive, self.dest, self.mapping = archive, dest, mapping
        self.max_ratio, self.slack = limits.max_ratio, limits.slack
        self.budget = min(limits.max_total_bytes, int(limits.max_ratio * archive.stat().st_size) + limits.slack)
        self.counts = {"extracted": 0, "already_present": 0, "excluded": 0, "outside_prefix": 0, "links_skipped": 0,
                           "dirs": 0, "bytes": 0, "refused": 0}
        self.refusals: dict[str, dict] = {}  # reason -> {"count", "examples"}

    def run(self) -> dict:
        try:
            for member in archive_members(self.archive):
                self._one(member)
        except CORRUPT as exc:  # while reading a member's data (listing them is covered by archive_members)
            raise ArchiveError(f"{self.archive}: truncated or corrupt archive ({exc})") from None
        c = self.counts
        if c["outside_prefix"] and not (c["extracted"] or c["already_present"] or c["excluded"] or c["refused"]):
            raise ArchiveError(f"{self.archive}: no member starts with the spec's strip prefix "
                               f"'{self.mapping.strip}' (check the collection spec)")
        return {**self.counts, "refused_reasons": self.refusals}

    def _one(self, member: Member) -> None:
        check_member_name(self.archive, member.name)
        name = normalised_name(member.name)
        if member.kind == "special":
            raise ArchiveError(f"{self.archive}: member '{name}' is a device file or FIFO; refused")
        if member.kind == "link":
            self.counts["links_skipped"] += 1  # never create links: none can point out of the target
            return
        if member.kind == "dir":
            self.counts["dirs"] += 1
            return
        rel = self.mapping.target(name)
        if rel is None:
            self.counts["outside_prefix"] += 1
        elif not rel:  # the prefix folder itself stored as a file entry
            self.counts["dirs"] += 1
        elif not self.mapping.wanted(name):
            self.counts["excluded"] += 1
        else:
            self._checked(member, name, rel)

    def _checked(self, member: Member, name: str, rel: str) -> None:
        """The mapped path through the one path check (our bookkeeping names), then onto disk."""
        try:
            rel = layout.safe_relative(rel)
        except layout.UnsafePath as exc:
            self._refuse(name, "unsafe_path" if exc.escapes else "bookkeeping_name")
            return
        if member.refused:
            self._refuse(name, member.refused)
            return
        final = self.dest / rel
        try:
            if final.is_file() and final.stat().st_size == member.size:
                self.counts["already_present"] += 1  # resumed run: finished before the kill
                return
            self._write(member, final)
        except OSError as exc:
            if exc.errno not in _MEMBER_FAULTS:
                raise self.write_failure(exc, final) from None
            self._refuse(name, _MEMBER_FAULTS[exc.errno])

    def _write(self, member: Member, final: Path) -> None:
        final.parent.mkdir(parents=True, exist_ok=True)
        tmp = temporary_name(final)
        cap = self.budget - self.counts["bytes"]
        if member.compressed is not None:
            cap = min(cap, int(self.max_ratio * member.compressed) + self.slack)
        try:
            with member.open() as src, open(tmp, "wb") as out:
                written = _copy_capped(src, out, cap, lambda: self._bomb(member))
            if written != member.size:
                raise ArchiveError(f"{self.archive}: member '{member.name}' has {written} bytes, header says "
                                   f"{member.size} (corrupt archive)")
            os.replace(tmp, final)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise
        self.counts["extracted"] += 1
        self.counts["bytes"] += written

    def _refuse(self, name: str, reason: str) -> None:
        self.counts["refused"] += 1
        entry = self.refusals.setdefault(reason, {"count": 0, "examples": []})
        entry["count"] += 1
        if len(entry["examples"]) < MAX_EXAMPLES:
            entry["examples"].append(_shown(name))

    def write_failure(self, exc: OSError, final: Path) -> Exception:
        """An OSError of this machine while writing `final`: a full disk stays the OSError (naming `final`)
        for the CLI's one disk-full line; any other becomes one ExtractionError line."""
        if is_disk_full(exc):
            exc.filename = exc.filename or str(final)
            return exc
        return ExtractionError(f"{self.archive}: cannot write {final} ({exc.strerror or exc}); fix it and run the "
                               "fetch again (it resumes)")

    def _bomb(self, member: Member) -> ArchiveError:
        return ArchiveError(f"{self.archive}: member '{member.name}' expands beyond the limits "
                            f"(ratio {self.max_ratio:g}x or {self.budget} bytes in total): refused as a "
                            "decompression bomb")


def _shown(name: str) -> str:
    """A member name as the marker and the log show it: bytes that are not UTF-8 (tar names keep them as
    surrogates) as escapes, and at most 120 characters (a pax name may have 10 KB)."""
    text = name.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")
    return text if len(text) <= 120 else text[:117] + "..."


def _copy_capped(src: IO[bytes], out: IO[bytes], cap: int, on_exceed) -> int:
    """Copy src to out, counting bytes; raise on_exceed() as soon as more than `cap` bytes arrive."""
    written = 0
    while chunk := src.read(CHUNK):
        written += len(chunk)
        if written > cap:
            raise on_exceed()
        out.write(chunk)
    return written


def _write_marker(path: Path, report: dict) -> None:
    write_json_atomic(path, report, indent=1, sort_keys=True)
