"""Image bytes: accepted formats, refused bytes, the JPEG structure check, decompression bombs, resize geometry."""

from __future__ import annotations

import io

import pytest
from helpers.urllist import bomb_png
from PIL import Image

from mmcorpus.core.imaging import ImageRejected, prepare, sniff, target_size

# ------------------------------------------------------------------------------------------- images


def _encode(fmt: str, size=(120, 80), mode="RGB") -> bytes:
    out = io.BytesIO()
    Image.new(mode, size, "red" if mode != "1" else 0).save(out, fmt)
    return out.getvalue()


@pytest.mark.parametrize("fmt, ext", [("JPEG", "jpg"), ("PNG", "png"), ("WEBP", "webp"), ("GIF", "gif"), ("BMP", "bmp")])
def test_accepted_formats_keep_original_bytes(fmt, ext):
    data = _encode(fmt)
    prepared = prepare(data)
    assert (prepared.data, prepared.ext, prepared.width, prepared.height) == (data, ext, 120, 80)


@pytest.mark.parametrize("data, error", [
    (b"<html>moved</html>", "not_image"), (_encode("TIFF"), "not_image"), (b"", "not_image"),
    (_encode("JPEG", (400, 300))[:-200], "corrupt"), (_encode("PNG", (400, 300))[:-30], "corrupt"),
    (b"\x89PNG\r\n\x1a\n" + b"\0" * 40, "corrupt")],
    ids=["html", "tiff", "empty", "truncated-jpeg", "truncated-png", "png-bad-header"])
def test_rejected_bytes(data, error):
    with pytest.raises(ImageRejected) as caught:
        prepare(data)
    assert caught.value.error == error


def _scan_start(data: bytes) -> int:
    """Offset of a baseline JPEG's entropy-coded data (after the start-of-scan header)."""
    sos = data.index(b"\xff\xda")
    return sos + 2 + ((data[sos + 2] << 8) | data[sos + 3])


def test_structure_check_keeps_complete_jpegs_and_refuses_cut_ones():
    data = _encode("JPEG", (400, 300))
    for whole in (data, data + b"bytes a camera appended after the end marker"):
        prepared = prepare(whole, check="structure")
        assert (prepared.data, prepared.width, prepared.height) == (whole, 400, 300)
    cuts = {"no end marker": data[:-2], "half": data[: len(data) // 2],
            "scan header only": data[: _scan_start(data)], "headers cut": data[:40]}
    for name, cut in cuts.items():
        with pytest.raises(ImageRejected) as caught:
            prepare(cut, check="structure")
        assert caught.value.error == "corrupt", name


def test_structure_check_refuses_markers_that_cannot_sit_in_image_data():
    """Garbled image data mostly shows as a marker where none may be; libjpeg stops on it, and so does the
    structure check (the benchmark notes give the measured agreement on randomly garbled files)."""
    data = _encode("JPEG", (400, 300))
    start = _scan_start(data)
    for marker in (b"\xff\xc0", b"\xff\x24", b"\xff\xd8"):
        garbled = data[:start + 10] + marker + b"\x00\x02" + data[start + 10:]
        for check in ("decode", "structure"):
            with pytest.raises(ImageRejected) as caught:
                prepare(garbled, check=check)
            assert caught.value.error == "corrupt", (marker, check)


def _variant(save) -> bytes:
    out = io.BytesIO()
    save(out)
    return out.getvalue()


_PICTURE = Image.effect_noise((300, 200), 50).convert("RGB")
_EXIF = Image.Exif()
_EXIF[0x010F] = "a camera"


@pytest.mark.parametrize("data", [
    _variant(lambda out: _PICTURE.save(out, "JPEG", progressive=True)),
    _variant(lambda out: _PICTURE.save(out, "JPEG", optimize=True, restart_marker_rows=1)),
    _variant(lambda out: _PICTURE.convert("CMYK").save(out, "JPEG")),
    _variant(lambda out: _PICTURE.convert("L").save(out, "JPEG", subsampling=0)),
    _variant(lambda out: _PICTURE.save(out, "JPEG", exif=_EXIF)),
    _variant(lambda out: _PICTURE.save(out, "MPO", save_all=True, append_images=[_PICTURE.rotate(90)])),
], ids=["progressive", "restart-markers", "cmyk", "grayscale", "exif", "two-picture-mpo"])
def test_structure_check_accepts_every_kind_of_sound_jpeg(data):
    prepared = prepare(data, check="structure")
    assert (prepared.data, prepared.width, prepared.height) == (data, 300, 200)


def test_structure_check_still_decodes_other_formats():
    with pytest.raises(ImageRejected) as caught:
        prepare(_encode("PNG", (400, 300))[:-30], check="structure")
    assert caught.value.error == "corrupt"


@pytest.mark.parametrize("side", [5_000, 30_000])  # above our cap; above Pillow's own bomb limit too
def test_decompression_bomb_refused_from_header(side):
    with pytest.raises(ImageRejected) as caught:
        prepare(bomb_png(side, side), max_pixels=10_000_000)
    assert caught.value.error == "too_large"


def test_resize_geometry_and_output():
    assert target_size(800, 600, 256) == (341, 256)
    assert target_size(600, 2000, 256) == (256, 853)
    assert target_size(200, 100, 256) == (200, 100)
    prepared = prepare(_encode("PNG", (1000, 500), mode="RGBA"), resize=100)
    assert (prepared.ext, prepared.width, prepared.height, sniff(prepared.data)) == ("jpg", 200, 100, "JPEG")
