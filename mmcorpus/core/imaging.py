"""Check that downloaded bytes are an image worth keeping, and optionally shrink it.

- Formats: JPEG, PNG, WebP, GIF, BMP only (anything else is `not_image`: HTML error pages served with 200,
  SVG, TIFF, PDF...). The format is sniffed from the magic bytes, never from Content-Type or the URL.
- Stored bytes must decode: a truncated JPEG (a cut download) is `corrupt`. Pillow is left with
  LOAD_TRUNCATED_IMAGES off so that the missing tail is an error, not a grey band.
- Decompression bombs: width x height is read from the header and refused above `max_pixels` before any
  pixel is decoded (`too_large`), so a 100 KB PNG claiming 50,000 x 50,000 pixels costs nothing.
- Resize mode (documented contract, `--resize SIZE`): the SHORTER side becomes SIZE, aspect ratio kept,
  never upscaled (smaller images keep their size), stored as JPEG (quality 95, RGB; transparency flattened
  on white). JPEGs are decoded in draft mode (libjpeg DCT scaling by 1/2, 1/4 or 1/8, never below the
  target), which skips most of the decoding work; what is left (a factor below 2 for JPEGs) is done with
  area averaging (Pillow BOX, the filter img2dataset's default INTER_AREA also uses for shrinking): on the
  2-core benchmark machine it costs half of BICUBIC, with no visible difference at such small factors.
- Without resize the original bytes are stored unchanged; JPEGs are still decoded (draft mode, 1/8 scale:
  every entropy-coded byte is read, so truncation is caught, at a fraction of a full decode's cost).
- `check="structure"` (`--image-check structure`, original bytes only) skips that decode for JPEGs: the
  header is parsed as always (size, bomb guard), the file must hold a scan followed by the end-of-image
  marker (a cut download never has one), and no marker byte pair that cannot appear inside image data may
  sit in between (what makes libjpeg fail on garbled data). It does not decode: garbling that keeps the
  marker rules passes, as it mostly passes libjpeg too (docs/benchmarks.md has the measured difference);
  `mmcorpus verify` decodes every stored image later. On the 2-core benchmark machine the decode is ~1.7 of
  the ~2.9 ms of CPU an image costs. Other formats are always decoded.
"""

from __future__ import annotations

import io
import re
import warnings
from dataclasses import dataclass

from PIL import Image

EXTENSIONS = {"JPEG": "jpg", "PNG": "png", "WEBP": "webp", "GIF": "gif", "BMP": "bmp"}
DEFAULT_MAX_PIXELS = 50_000_000  # ~8000 x 6000; a decode of that size already needs ~150 MB
JPEG_QUALITY = 95
MIN_RESIZE = 16  # --resize below this is a typo, not a training resolution
CHECKS = ("decode", "structure")  # how stored original bytes are proven sound (module docstring)
# Peak memory: a decode needs up to width * height * 4 bytes (max_pixels bounds it). The URL engine decodes on
# one thread per process, so one such buffer per process at a time.


class ImageRejected(Exception):
    """The bytes are not a usable image; `error` is a word of schema.ERRORS."""

    def __init__(self, error: str, detail: str = ""):
        super().__init__(f"{error}: {detail}" if detail else error)
        self.error = error


@dataclass(frozen=True)
class Prepared:
    data: bytes  # what is stored
    ext: str  # file extension of the stored bytes
    width: int  # of the stored image
    height: int


def sniff(data: bytes) -> str | None:
    """The Pillow format name from the magic bytes, or None for anything we do not accept."""
    if data[:3] == b"\xff\xd8\xff":
        return "JPEG"
    if data[:8] == b"\x89PNG\r\n\x1a\n":
        return "PNG"
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "WEBP"
    if data[:6] in (b"GIF87a", b"GIF89a"):
        return "GIF"
    if data[:2] == b"BM":
        return "BMP"
    return None


def prepare(data: bytes, resize: int | None = None, max_pixels: int = DEFAULT_MAX_PIXELS,
            check: str = "decode") -> Prepared:
    """Validate `data` and return what to store, or raise ImageRejected. `check` (one of CHECKS) applies
    when the original bytes are kept; a resize always decodes."""
    fmt = sniff(data)
    if fmt is None:
        raise ImageRejected("not_image", "not JPEG/PNG/WebP/GIF/BMP")
    image = _open(data, fmt, max_pixels)
    if resize is None and check == "structure" and fmt == "JPEG":
        problem = jpeg_structure_problem(data)
        if problem:
            raise ImageRejected("corrupt", problem)
        return Prepared(data, EXTENSIONS[fmt], image.width, image.height)
    return _prepare_opened(image, data, fmt, resize)


# After the first scan starts, 0xFF may only be followed by a stuffed 0x00, a restart marker, the end of the
# image, a fill byte, or what a progressive or arithmetic-coded file puts between scans (DHT, DAC, SOS, DQT,
# DRI, APPn, COM). Anything else is garbled data, and libjpeg stops with an error on it.
_NOT_IN_SCANS = re.compile(rb"\xff[\x01-\xc3\xc5-\xcb\xcd-\xcf\xd8\xdc\xde\xdf\xf0-\xfd]")


def jpeg_structure_problem(data: bytes) -> str | None:
    """What is wrong with a JPEG's structure, or None: the marker segments must lead to a start of scan, an
    end-of-image marker must follow it, and no marker that cannot appear there may sit between them.

    In entropy-coded data a 0xFF byte is always followed by 0x00 or a restart marker, so the first 0xFFD9
    after the scan starts is the real end of the image (an EXIF thumbnail's end marker comes before the
    scan; what follows, such as a second picture of a multi-picture file, is not looked at, as decoders
    do not). Costs ~0.1 ms for 100 KB, against ~1.5 ms for decoding it.
    """
    scan = _first_scan(data)
    if scan is None:
        return "no start of scan after the header (broken or cut header)"
    end = data.find(b"\xff\xd9", scan)
    if end <= scan:
        return "no end-of-image marker after the scan (truncated)"
    bad = _NOT_IN_SCANS.search(data, scan, end)
    if bad is not None:
        return f"marker 0xFF{data[bad.start() + 1]:02X} inside the image data at byte {bad.start()} (garbled)"
    return None


def _first_scan(data: bytes) -> int | None:
    """Offset of the first entropy-coded byte (after the first start-of-scan header), None if none."""
    pos, size = 2, len(data)  # after SOI
    while pos + 4 <= size:
        if data[pos] != 0xFF:
            return None  # not a marker where one must be: a broken header
        marker = data[pos + 1]
        if marker == 0xFF:  # fill byte before a marker
            pos += 1
            continue
        if marker == 0x01 or 0xD0 <= marker <= 0xD8:  # markers without a length field
            pos += 2
            continue
        length = (data[pos + 2] << 8) | data[pos + 3]
        if length < 2:
            return None
        pos += 2 + length
        if marker == 0xDA:
            return pos if pos <= size else None
    return None


def _prepare_opened(image: Image.Image, data: bytes, fmt: str, resize: int | None) -> Prepared:
    try:
        if resize is None:
            width, height = image.size  # before draft(), which shrinks image.size
            _decode_check(image, fmt)
            return Prepared(data, EXTENSIONS[fmt], width, height)
        return _resized(image, fmt, resize)
    except ImageRejected:
        raise
    except MemoryError:
        raise ImageRejected("too_large", "out of memory while decoding") from None
    except Exception as exc:  # Pillow's plugins raise OSError, SyntaxError, ValueError, struct.error... on bad data
        raise ImageRejected("corrupt", f"{type(exc).__name__}: {exc}") from None


def _open(data: bytes, fmt: str, max_pixels: int) -> Image.Image:
    """Parse the header only; refuse bombs before any pixel is decoded."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)  # we apply our own limit below
            image = Image.open(io.BytesIO(data), formats=[fmt])
    except Image.DecompressionBombError as exc:
        raise ImageRejected("too_large", str(exc)) from None
    except Exception as exc:  # the magic bytes said image, the header disagrees
        raise ImageRejected("corrupt", f"{type(exc).__name__}: {exc}") from None
    width, height = image.size
    if width <= 0 or height <= 0:
        raise ImageRejected("corrupt", f"size {width}x{height}")
    if width * height > max_pixels:
        raise ImageRejected("too_large", f"{width}x{height} pixels > {max_pixels} (decompression bomb guard)")
    return image


def _decode_check(image: Image.Image, fmt: str) -> None:
    """Decode the (first frame of the) image; raises on truncated or broken data."""
    if fmt == "JPEG":
        image.draft(None, (max(1, image.width // 8), max(1, image.height // 8)))
    image.load()


def target_size(width: int, height: int, size: int) -> tuple[int, int]:
    """Shorter side -> size, aspect kept, never upscaled."""
    shorter = min(width, height)
    if shorter <= size:
        return width, height
    scale = size / shorter
    return max(1, round(width * scale)), max(1, round(height * scale))


def _resized(image: Image.Image, fmt: str, size: int) -> Prepared:
    width, height = target_size(image.width, image.height, size)
    if fmt == "JPEG":
        image.draft("RGB", (width, height))  # libjpeg scales by 1/2, 1/4 or 1/8 while decoding, never below target
    image.load()
    image = to_rgb(image)
    if image.size != (width, height):
        image = image.resize((width, height), Image.Resampling.BOX, reducing_gap=2.0)
    out = io.BytesIO()
    image.save(out, "JPEG", quality=JPEG_QUALITY)
    return Prepared(out.getvalue(), "jpg", width, height)


def to_rgb(image: Image.Image) -> Image.Image:
    """RGB for the JPEG encoder; transparent pixels become white, not black."""
    if image.mode == "RGB":
        return image
    if image.mode in ("RGBA", "LA", "PA") or (image.mode == "P" and "transparency" in image.info):
        rgba = image.convert("RGBA")
        background = Image.new("RGB", rgba.size, (255, 255, 255))
        background.paste(rgba, mask=rgba.getchannel("A"))
        return background
    return image.convert("RGB")
