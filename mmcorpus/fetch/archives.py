"""Safe, resumable, idempotent extraction of zip and tar archives into an image collection folder.

Archives come from the network (COCO, GQA, ShareGPT4V WebData on Google Drive, user-provided SAM tars), so
every member is treated as hostile until checked:

- member names: absolute paths, drive letters, backslashes, `..` components and NUL bytes are refused
  (zip slip); the whole archive is refused, naming the archive and the member. A zip's names are all checked
  before anything is written; a tar is a stream, so members before the bad one stay on disk (without a done
  marker, so nothing counts as extracted);
- links (symlinks, hardlinks) are never created: they are skipped and counted, so no link can point out of
  the target; device files and FIFOs are refused;
- sizes: bytes are counted while streaming, never taken from headers. Each zip member may expand at most
  `max_ratio` times its compressed size (plus a small slack), and the whole archive at most
  `min(max_total_bytes, max_ratio * archive size + slack)` (tar.gz bombs have one compressed stream).

Mapping (the spec's `strip`, `into`, `include`): a member named `strip + rest` lands at
`<dest>/<into>/<rest>`. Members *not* under the `strip` prefix are skipped and counted as
`outside_prefix` (e.g. `__MACOSX/…`, a README at the archive root): the prefix describes where the images
are, and stray files must not land in the image folder. An archive where the prefix matches nothing is an
error (the spec is wrong). `include` globs (fnmatch, `*` also matches `/`) are matched against `rest`.

Resume: each member is written to a temporary name beside its final path and renamed, so a final path
always holds a complete file. A re-run skips members whose final path already has the right size, and a
marker `<dest>/.mmcorpus/<archive>.done` (JSON counts), written last, makes later runs skip the archive.
"""

from __future__ import annotations

import fnmatch
import gzip
import os
import stat
import tarfile
import zipfile
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Iterator

from mmcorpus import layout
from mmcorpus.core.atomicio import (
    read_json,
    sweep_stale_temporaries,
    temporary_name,
    write_json_atomic,
)
from mmcorpus.errors import BadInputError

CHUNK = 1 << 20


class ArchiveError(BadInputError):
    """An archive is unsafe (zip slip, bomb, device file), truncated or not an archive. Names archive and
    member; exit code 2 (bad input): re-running cannot fix it, the file must be replaced."""


@dataclass(frozen=True)
class Limits:
    """Caps against decompression bombs. Images barely compress (JPEG ~1:1, SAM JSON ~10:1), so a
    ratio of 100 is generous for real collections and stops a bomb after a bounded amount of writing."""

    max_total_bytes: int = 1 << 40  # 1 TiB: larger than any collection in the registry
    max_ratio: float = 100.0
    slack: int = 1 << 20  # tiny members (empty-ish text files) may have any ratio


@dataclass(frozen=True)
class Mapping:
    """How member names map to paths under the destination (from a collection archive's FileSpec)."""

    strip: str = ""
    into: str = ""
    include: tuple[str, ...] = ()

    @classmethod
    def of(cls, file_spec) -> "Mapping":
        return cls(file_spec.strip, file_spec.into, tuple(file_spec.include))

    def target(self, name: str) -> str | None:
        """The path relative to dest, or None when the member is outside the prefix."""
        if not name.startswith(self.strip):
            return None
        rest = name[len(self.strip):].strip("/")
        return f"{self.into}/{rest}" if self.into and rest else rest

    def wanted(self, name: str) -> bool:
        rest = name[len(self.strip):].strip("/")
        return not self.include or any(fnmatch.fnmatch(rest, pattern) for pattern in self.include)

    def as_dict(self) -> dict:
        return {"strip": self.strip, "into": self.into, "include": list(self.include)}


@dataclass
class Member:
    """One archive entry, reduced to what extraction needs (the same for zip and tar)."""

    name: str
    kind: str  # "file" | "dir" | "link" | "special"
    size: int  # from the header: used to skip already-extracted files, never to trust the bytes
    compressed: int | None  # zip only: the compressed size (bounds what zipfile reads)
    open: callable  # () -> binary file object


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
    Raises ArchiveError for unsafe, truncated or unreadable archives.
    """
    archive, dest = Path(archive), Path(dest)
    name = name or archive.name
    done = read_marker(name, dest, mapping)
    if done is not None:
        return {**done, "skipped": True}
    if sweep and dest.is_dir():  # a resumed extraction: clear what killed runs left half-written
        sweep_stale_temporaries(dest)
    counts = _Extraction(archive, dest, mapping, limits).run()
    report = {"archive": name, "mapping": mapping.as_dict(), **counts}
    _write_marker(marker_path(name, dest), report)
    if delete_after:
        archive.unlink(missing_ok=True)
    return {**report, "skipped": False}


# What the archive libraries raise on truncated or corrupt data, while listing members or reading one.
_CORRUPT = (zipfile.BadZipFile, tarfile.TarError, EOFError, zlib.error, gzip.BadGzipFile)


def archive_members(archive: Path) -> Iterator[Member]:
    """The members of a zip or tar archive (format sniffed from the bytes, not the extension). A truncated
    or corrupt archive raises ArchiveError, for every caller (extraction, `mmcorpus verify`)."""
    archive = Path(archive)
    if zipfile.is_zipfile(archive):
        return _reporting_corruption(archive, _zip_members(archive))
    if _is_tar(archive):
        return _reporting_corruption(archive, _tar_members(archive))
    raise ArchiveError(f"{archive}: not a zip or tar archive, or truncated (no zip central directory found)")


def _reporting_corruption(archive: Path, members: Iterator[Member]) -> Iterator[Member]:
    try:
        yield from members
    except _CORRUPT as exc:
        # Truncated downloads end here: a cut tar.gz raises EOFError mid-stream. Never let the library
        # traceback reach the user.
        raise ArchiveError(f"{archive}: truncated or corrupt archive ({exc})") from None


# ---------------------------------------------------------------------------------------- extraction


class _Extraction:
    """One pass over an archive's members, with the byte budget shared by all members."""

    def __init__(self, archive: Path, dest: Path, mapping: Mapping, limits: Limits):
        self.archive, self.dest, self.mapping = archive, dest, mapping
        self.max_ratio, self.slack = limits.max_ratio, limits.slack
        self.budget = min(limits.max_total_bytes, int(limits.max_ratio * archive.stat().st_size) + limits.slack)
        self.counts = dict(extracted=0, already_present=0, excluded=0, outside_prefix=0, links_skipped=0,
                           dirs=0, bytes=0)

    def run(self) -> dict:
        try:
            for member in archive_members(self.archive):
                self._one(member)
        except _CORRUPT as exc:  # while reading a member's data (listing them is covered by archive_members)
            raise ArchiveError(f"{self.archive}: truncated or corrupt archive ({exc})") from None
        c = self.counts
        if c["outside_prefix"] and not (c["extracted"] or c["already_present"] or c["excluded"]):
            raise ArchiveError(f"{self.archive}: no member starts with the spec's strip prefix "
                               f"'{self.mapping.strip}' (check the collection spec)")
        return self.counts

    def _one(self, member: Member) -> None:
        check_member_name(self.archive, member.name)
        member.name = "/".join(p for p in member.name.split("/") if p not in ("", "."))  # "./a//b" -> "a/b"
        if member.kind == "special":
            raise ArchiveError(f"{self.archive}: member '{member.name}' is a device file or FIFO; refused")
        if member.kind == "link":
            self.counts["links_skipped"] += 1  # never create links: none can point out of the target
            return
        if member.kind == "dir":
            self.counts["dirs"] += 1
            return
        rel = self.mapping.target(member.name)
        if rel is None:
            self.counts["outside_prefix"] += 1
            return
        if not rel:  # the prefix folder itself stored as a file entry
            self.counts["dirs"] += 1
            return
        if not self.mapping.wanted(member.name):
            self.counts["excluded"] += 1
            return
        final = self.dest / rel
        if final.is_file() and final.stat().st_size == member.size:
            self.counts["already_present"] += 1  # resumed run: finished before the kill
            return
        self._write(member, final)

    def _write(self, member: Member, final: Path) -> None:
        final.parent.mkdir(parents=True, exist_ok=True)
        tmp = temporary_name(final)
        cap = self.budget - self.counts["bytes"]
        if member.compressed is not None:
            cap = min(cap, int(self.max_ratio * member.compressed) + self.slack)
        try:
            with member.open() as src, open(tmp, "wb") as out:
                written = _copy_capped(src, out, cap, lambda: self._bomb(member))
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise
        if written != member.size:
            tmp.unlink(missing_ok=True)
            raise ArchiveError(f"{self.archive}: member '{member.name}' has {written} bytes, header says "
                               f"{member.size} (corrupt archive)")
        os.replace(tmp, final)
        self.counts["extracted"] += 1
        self.counts["bytes"] += written

    def _bomb(self, member: Member) -> ArchiveError:
        return ArchiveError(f"{self.archive}: member '{member.name}' expands beyond the limits "
                            f"(ratio {self.max_ratio:g}x or {self.budget} bytes in total): refused as a "
                            "decompression bomb")


def _copy_capped(src: IO[bytes], out: IO[bytes], cap: int, on_exceed) -> int:
    """Copy src to out, counting bytes; raise on_exceed() as soon as more than `cap` bytes arrive."""
    written = 0
    while chunk := src.read(CHUNK):
        written += len(chunk)
        if written > cap:
            raise on_exceed()
        out.write(chunk)
    return written


def check_member_name(archive: Path, name: str) -> None:
    """Refuse names that could escape the destination (zip slip) or that no file system stores safely."""
    reason = None
    if "\0" in name:
        reason = "contains a NUL byte"
    elif name.startswith("/") or (len(name) > 1 and name[1] == ":"):
        reason = "is an absolute path"
    elif "\\" in name:
        reason = "contains a backslash (Windows path separators are ambiguous)"
    elif ".." in name.split("/"):
        reason = "contains a '..' component"
    if reason:
        raise ArchiveError(f"{archive}: member '{name.replace(chr(0), '<NUL>')}' {reason}; archive refused")


def _write_marker(path: Path, report: dict) -> None:
    write_json_atomic(path, report, indent=1, sort_keys=True)


# ------------------------------------------------------------------------------------------- readers


def _zip_members(archive: Path) -> Iterator[Member]:
    with zipfile.ZipFile(archive) as zf:
        infos = zf.infolist()
        for info in infos:  # the central directory lists every name: refuse a bad one before writing any file
            check_member_name(archive, info.orig_filename)
        for info in infos:
            mode = info.external_attr >> 16
            if stat.S_ISLNK(mode):
                kind = "link"
            elif info.is_dir():
                kind = "dir"
            elif stat.S_IFMT(mode) not in (0, stat.S_IFREG, stat.S_IFDIR):  # 0: no type bits (zipfile, Windows)
                kind = "special"
            else:
                kind = "file"
            # orig_filename keeps a NUL byte that zipfile cuts from .filename
            yield Member(info.orig_filename, kind, info.file_size, info.compress_size,
                         lambda info=info: zf.open(info))


def _is_tar(archive: Path) -> bool:
    try:
        return tarfile.is_tarfile(archive)
    except (OSError, EOFError, zlib.error):
        return False


def _tar_members(archive: Path) -> Iterator[Member]:
    # Stream mode ("r|*") reads the compressed stream once, front to back.
    with tarfile.open(archive, "r|*") as tf:
        for info in tf:
            if info.issym() or info.islnk():
                kind = "link"
            elif info.isdir():
                kind = "dir"
            elif info.isreg():
                kind = "file"
            else:
                kind = "special"
            yield Member(info.name, kind, info.size, None, lambda info=info: tf.extractfile(info))
            tf.members = []  # tarfile keeps every header seen; SA-1B tars have ~22k members each
