"""The members of a zip or tar archive, read safely: what mmcorpus.fetch.archives extracts, and `verify` checks.

Archives come from the network, so the readers trust nothing a header says beyond what is needed to list it:

- member names that could escape the destination (absolute, `..`, backslash, NUL: layout.safe_relative, the
  one path check) refuse the whole archive (check_member_name);
- a tar's GNU long-name and pax headers are read whole by tarfile before it returns the member: a header
  declaring hundreds of MB would be read into memory (even by `tarfile.is_tarfile`). Their declared size is
  bounded (MAX_TAR_HEADER) before tarfile reads them, in the one pass over the stream;
- a zip member that cannot be read (encrypted, a compression method zipfile lacks) is listed with the reason
  (`Member.refused`), so extraction refuses that member and goes on with the others.
"""

from __future__ import annotations

import gzip
import stat
import tarfile
import zipfile
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from mmcorpus import layout
from mmcorpus.errors import BadInputError

MAX_TAR_HEADER = 64 << 10  # a long name or a pax record set; PATH_MAX is 4096 bytes
_EXTENDED_HEADERS = (tarfile.GNUTYPE_LONGNAME, tarfile.GNUTYPE_LONGLINK, tarfile.XHDTYPE, tarfile.XGLTYPE,
                     tarfile.SOLARIS_XHDTYPE)
_ZIP_METHODS = {zipfile.ZIP_STORED: "stored", zipfile.ZIP_DEFLATED: "deflate", zipfile.ZIP_BZIP2: "bzip2",
                zipfile.ZIP_LZMA: "lzma"}  # what zipfile can read


class ArchiveError(BadInputError):
    """An archive is unsafe (zip slip, bomb, device file, oversized header), truncated or not an archive.
    Names archive and member; exit code 2 (bad input): re-running cannot fix it, the file must be replaced."""


@dataclass
class Member:
    """One archive entry, reduced to what extraction needs (the same for zip and tar)."""

    name: str
    kind: str  # "file" | "dir" | "link" | "special"
    size: int  # from the header: used to skip already-extracted files, never to trust the bytes
    compressed: int | None  # zip only: the compressed size (bounds what zipfile reads)
    open: callable  # () -> binary file object
    refused: str = ""  # why its bytes cannot be read (a zip member: "encrypted", "unsupported_compression")


def check_member_name(archive: Path, name: str) -> None:
    """Refuse names that could escape the destination (zip slip) or that no file system stores safely: the
    whole archive is refused. Empty names and our bookkeeping names are the extraction's to refuse per member."""
    try:
        layout.safe_relative(name)
    except layout.UnsafePath as exc:
        if exc.escapes:
            shown = name.replace(chr(0), "<NUL>")
            raise ArchiveError(f"{archive}: member '{shown}' {exc.reason}; archive refused") from None


# What the archive libraries raise on truncated or corrupt data, while listing members or reading one.
CORRUPT = (zipfile.BadZipFile, tarfile.TarError, EOFError, zlib.error, gzip.BadGzipFile)


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
    except CORRUPT as exc:
        # Truncated downloads end here: a cut tar.gz raises EOFError mid-stream. Never let the library
        # traceback reach the user.
        raise ArchiveError(f"{archive}: truncated or corrupt archive ({exc})") from None


# ------------------------------------------------------------------------------------------------- zip


def _zip_members(archive: Path) -> Iterator[Member]:
    with zipfile.ZipFile(archive) as zf:
        infos = zf.infolist()
        for info in infos:  # the central directory lists every name: refuse a bad one before writing any file
            check_member_name(archive, info.orig_filename)
        for info in infos:
            # orig_filename keeps a NUL byte that zipfile cuts from .filename
            yield Member(info.orig_filename, _zip_kind(info), info.file_size, info.compress_size,
                         lambda info=info: zf.open(info), _zip_refusal(info))


def _zip_kind(info: zipfile.ZipInfo) -> str:
    mode = info.external_attr >> 16
    if stat.S_ISLNK(mode):
        return "link"
    if info.is_dir():
        return "dir"
    if stat.S_IFMT(mode) not in (0, stat.S_IFREG, stat.S_IFDIR):  # 0: no type bits (zipfile, Windows)
        return "special"
    return "file"


def _zip_refusal(info: zipfile.ZipInfo) -> str:
    """Why zipfile cannot give this member's bytes ('' when it can): zf.open would raise RuntimeError or
    NotImplementedError in the middle of the extraction."""
    if info.flag_bits & 0x1:
        return "encrypted"
    if info.compress_type not in _ZIP_METHODS:
        return "unsupported_compression"
    return ""


# ------------------------------------------------------------------------------------------------- tar


class _HeaderTooLarge(Exception):
    def __init__(self, size: int):
        super().__init__(size)
        self.size = size


class _BoundedTarInfo(tarfile.TarInfo):
    """A TarInfo that checks the declared size of a GNU long-name or pax header before tarfile reads it
    whole. `_proc_member` is where tarfile's TarInfo dispatches on the header type (private, but the same
    since Python 2.6); the long name's own next header comes through here again."""

    def _proc_member(self, tar):
        if self.type in _EXTENDED_HEADERS and self.size > MAX_TAR_HEADER:
            raise _HeaderTooLarge(self.size)
        return super()._proc_member(tar)


def _header_error(archive: Path, exc: _HeaderTooLarge) -> ArchiveError:
    return ArchiveError(f"{archive}: a tar long-name or pax header declares {exc.size} bytes (at most "
                        f"{MAX_TAR_HEADER} are accepted); archive refused")


def _is_tar(archive: Path) -> bool:
    """Whether the bytes are a tar (plain or compressed): the first header is read, bounded."""
    try:
        with tarfile.open(archive, "r|*", tarinfo=_BoundedTarInfo):
            return True
    except _HeaderTooLarge:
        return True  # a tar; _tar_members refuses it with the reason
    except (tarfile.TarError, OSError, EOFError, zlib.error):
        return False


def _tar_members(archive: Path) -> Iterator[Member]:
    try:
        yield from _tar_stream(archive)
    except _HeaderTooLarge as exc:
        raise _header_error(archive, exc) from None


def _tar_stream(archive: Path) -> Iterator[Member]:
    # Stream mode ("r|*") reads the compressed stream once, front to back.
    with tarfile.open(archive, "r|*", tarinfo=_BoundedTarInfo) as tf:
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
