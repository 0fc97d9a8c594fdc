"""Test images for the URL-list engine's tests, generated with Pillow (or by hand where Pillow would be slow)."""

from __future__ import annotations

import hashlib
import io
import struct
import zlib
from pathlib import Path

import pyarrow.parquet as pq
from PIL import Image

from mmcorpus.schema import STATUS_SCHEMA


def jpeg(width: int = 64, height: int = 48, color=(200, 30, 30)) -> bytes:
    out = io.BytesIO()
    Image.new("RGB", (width, height), color).save(out, "JPEG", quality=90)
    return out.getvalue()


def bomb_png(width: int, height: int) -> bytes:
    """A PNG header claiming width x height pixels, with almost no data: what a decompression bomb looks
    like before decoding (built by hand: encoding a real 400 MP image would take seconds)."""

    def chunk(kind: bytes, payload: bytes) -> bytes:
        return struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", zlib.crc32(kind + payload))

    ihdr = struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0)  # 1-bit greyscale
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 1000)) + chunk(b"IEND", b"")


def status_rows(root: Path, dataset: str = "cc3m", subset: str = "train") -> list[dict]:
    rows = []
    for parquet in sorted((root / "images" / dataset / subset).glob("*.parquet")):
        table = pq.read_table(parquet)
        assert table.schema.equals(STATUS_SCHEMA, check_metadata=False)
        rows += table.to_pylist()
    return rows


def url_list_spec(folder: Path, mirror, rows: int = 12, images: list[bytes] | None = None) -> list[str]:
    """A URL-list dataset `mine` whose TSV and JPEGs (`images`, else `rows` generated ones) the local mirror
    serves; returns its --config-dir args."""
    if images is None:
        images = []
        for i in range(rows):
            out = io.BytesIO()
            Image.new("RGB", (40 + i, 30), (i * 20, 0, 0)).save(out, "JPEG")
            images.append(out.getvalue())
    lines = [f"picture {i}\t{mirror.put(f'img/{i}.jpg', image)}" for i, image in enumerate(images)]
    data = ("\n".join(lines) + "\n").encode()
    url = mirror.put("files/list.tsv", data)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "mine.yaml").write_text("\n".join([
        "name: mine", "kind: dataset", "files:", "  train:", f"    url: {url}", "    filename: list.tsv",
        f"    size: {len(data)}", f"    sha256: {hashlib.sha256(data).hexdigest()}",
        "format: {type: tsv, columns: [caption, url]}", "images: {from: url}"]) + "\n")
    return ["--config-dir", str(folder)]
