"""Archive bytes for the fetch tests, including hostile ones built by hand (headers no library writes)."""

from __future__ import annotations

import gzip
import io
import struct
import tarfile
import zipfile
from pathlib import Path


def zip_bytes(members: dict[str, bytes]) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as zf:
        for name, data in members.items():
            zf.writestr(name, data)
    return buffer.getvalue()


def tar_bytes(members: list[tuple[str, bytes]], format: int = tarfile.GNU_FORMAT) -> bytes:
    """A plain tar of (name, data) regular files, in this order (names may repeat or clash)."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w", format=format) as tf:
        for name, data in members:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tf.addfile(info, io.BytesIO(data))
    return buffer.getvalue()


def zip_with_flags(members: dict[str, bytes], flagged: str, *, flag_bits: int = 0, method: int | None = None) -> bytes:
    """A stored zip where member `flagged` has `flag_bits` or'ed in (0x1: encrypted) and, when given,
    compression `method` (e.g. 99, AES), in its local header and its central directory entry."""
    raw = bytearray(zip_bytes(members))
    target = flagged.encode()
    for signature, flags_at, method_at, name_len_at, name_at in ((b"PK\x03\x04", 6, 8, 26, 30),
                                                                 (b"PK\x01\x02", 8, 10, 28, 46)):
        at = raw.find(signature)
        while at >= 0:
            name_len = struct.unpack_from("<H", raw, at + name_len_at)[0]
            if bytes(raw[at + name_at: at + name_at + name_len]) == target:
                flags = struct.unpack_from("<H", raw, at + flags_at)[0]
                struct.pack_into("<H", raw, at + flags_at, flags | flag_bits)
                if method is not None:
                    struct.pack_into("<H", raw, at + method_at, method)
            at = raw.find(signature, at + 4)
    return bytes(raw)


def oversized_longname_tar_gz(path: Path, declared: int, present: int) -> Path:
    """A tar.gz whose first header is a GNU long-name ('L') header declaring `declared` bytes of name, of
    which `present` bytes of 'a' follow (gzip keeps the file tiny), then an ordinary member."""
    info = tarfile.TarInfo("././@LongLink")
    info.type = tarfile.GNUTYPE_LONGNAME
    info.size = declared
    header = info.tobuf(format=tarfile.GNU_FORMAT)
    with gzip.open(path, "wb", compresslevel=1) as out:
        out.write(header)
        chunk = b"a" * (1 << 20)
        left = present
        while left > 0:
            out.write(chunk[:left])
            left -= len(chunk)
        out.write(tar_bytes([("after.jpg", b"x")]))
    return path
