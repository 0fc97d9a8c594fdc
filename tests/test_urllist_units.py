"""Unit tests of the URL-list engine's parts: TSV reading, URL safety, image checks, header parsing."""

from __future__ import annotations

import io
import time

import pytest
from PIL import Image

from mmcorpus.fetch.urllist.fetcher import _retry_after, opted_out
from mmcorpus.core.imaging import ImageRejected, prepare, sniff, target_size
from mmcorpus.fetch.urllist.reader import ColumnLayout, read_rows
from mmcorpus.fetch.addresses import AddressPolicy, BlockedURL, is_public, parse_target
from urllist_helpers import bomb_png


# ------------------------------------------------------------------------------------------------- tsv


def _read(tmp_path, data: bytes, columns=("caption", "url"), **kwargs):
    path = tmp_path / "list.tsv"
    path.write_bytes(data)
    problems = []
    rows = list(read_rows(path, columns, problems.append, **kwargs))
    return rows, [(p.line, p.reason) for p in problems]


def test_tsv_column_order_and_stray_tabs(tmp_path):
    rows, problems = _read(tmp_path, b"a caption\thttp://x/1.jpg\nwith\ttab\thttp://x/2.jpg\n")
    assert [(r.index, r.caption, r.url) for r in rows] == [(0, "a caption", "http://x/1.jpg"),
                                                            (1, "with\ttab", "http://x/2.jpg")]
    rows, _ = _read(tmp_path, b"http://x/1.jpg\tCaption, with\ttab\n", columns=("url", "caption"))
    assert (rows[0].url, rows[0].caption) == ("http://x/1.jpg", "Caption, with\ttab")
    assert problems == []


def test_tsv_no_trailing_newline_and_limit(tmp_path):
    rows, _ = _read(tmp_path, b"a\thttp://x/1\nb\thttp://x/2\nc\thttp://x/3", stop=2)
    assert [r.caption for r in rows] == ["a", "b"]
    rows, _ = _read(tmp_path, b"a\thttp://x/1\nb\thttp://x/2\nc\thttp://x/3")
    assert rows[-1].url == "http://x/3"


def test_tsv_unwanted_rows_are_not_parsed(tmp_path):
    rows, problems = _read(tmp_path, b"a\thttp://x/1\nbroken\nc\thttp://x/3\n", wanted=lambda i: i != 1)
    assert [r.index for r in rows] == [0, 2] and problems == []


def test_tsv_long_line_drained_in_bounded_memory(tmp_path):
    rows, problems = _read(tmp_path, b"a" * 5000 + b"\thttp://x/1\nb\thttp://x/2\n", max_line=1000)
    assert [r.index for r in rows] == [1] and problems == [(1, "too_long")]


def test_tsv_column_layout_errors():
    layout = ColumnLayout(["caption", "url", "labels"])
    assert layout.split("only") == "no_tab" and layout.split("a\tb") == "missing_columns"
    assert layout.split("a\tb\tc\td") == "extra_columns"
    with pytest.raises(ValueError):
        ColumnLayout(["caption", "link"])


# ---------------------------------------------------------------------------------------------- urls


@pytest.mark.parametrize("url", ["ftp://h/x", "file:///etc/passwd", "javascript:alert(1)", "http://", "x.jpg",
                                 "http://h:99999/x", "http://[::1/x"])
def test_only_http_and_https(url):
    with pytest.raises(BlockedURL):
        parse_target(url)


def test_parse_target_quotes_spaces():
    target = parse_target("HTTPS://Example.COM/a b.jpg?q=1 2")
    assert (target.scheme, target.host, target.port, target.path) == ("https", "example.com", 443, "/a%20b.jpg?q=1%202")


def test_parse_target_non_ascii():
    assert parse_target("http://x/caf\u00e9 1.jpg?a=%C3%A9").path == "/caf%C3%A9%201.jpg?a=%C3%A9"
    assert parse_target("http://b\u00fccher.example/x").host == "xn--bcher-kva.example"


@pytest.mark.parametrize("address, public", [
    ("8.8.8.8", True), ("2001:4860:4860::8888", True), ("127.0.0.1", False), ("10.0.0.1", False),
    ("192.168.1.1", False), ("172.16.0.1", False), ("169.254.169.254", False), ("::1", False), ("fe80::1", False),
    ("::ffff:127.0.0.1", False), ("0.0.0.0", False), ("100.64.0.1", False), ("224.0.0.1", False)])
def test_public_addresses(address, public):
    assert is_public(address) is public


def test_address_policy():
    policy = AddressPolicy(allowed_hosts=frozenset({"10.0.0.5"}))
    try:
        assert policy.addresses_for(parse_target("http://10.0.0.5/x"), deadline=time.monotonic() + 5) == ["10.0.0.5"]
        with pytest.raises(BlockedURL):
            policy.addresses_for(parse_target("http://10.0.0.6/x"), deadline=time.monotonic() + 5)
        with pytest.raises(BlockedURL):
            policy.addresses_for(parse_target("http://localhost/x"), deadline=time.monotonic() + 5)
    finally:
        policy.close()
    everything = AddressPolicy(allow_private=True)
    assert everything.addresses_for(parse_target("http://10.0.0.6/x"), deadline=time.monotonic() + 5) == ["10.0.0.6"]
    everything.close()


# ------------------------------------------------------------------------------------------- headers


@pytest.mark.parametrize("values, out", [
    (["noai"], True), (["noindex, NoImageAI"], True), (["mmcorpus: noai"], True), (["*: noai"], True),
    (["otherbot: noai"], False), (["noindex"], False), ([], False), (["unavailable_after: 25 Jun 2010"], False),
    (["noindex", "noai"], True)])
def test_x_robots_tag(values, out):
    assert opted_out(values) is out


def test_retry_after():
    assert _retry_after("7") == 7.0 and _retry_after(None) is None and _retry_after("soon") is None
    assert _retry_after("Wed, 21 Oct 2015 07:28:00 GMT") == 0.0


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


# ------------------------------------------------------------------------------------ bounded resources


def test_host_slots_cap_and_forget_idle_hosts():
    from mmcorpus.fetch.urllist.fetcher import HostSlots

    slots = HostSlots(limit=2)
    assert slots.acquire("a", 0) and slots.acquire("a", 0)
    assert not slots.acquire("a", 0)  # third request to the same host waits (here: gives up at once)
    assert slots.acquire("b", 0) and len(slots) == 2
    for host in ("a", "a", "b"):
        slots.release(host)
    assert len(slots) == 0


def test_connections_per_thread_are_bounded(mirror, monkeypatch):
    from mmcorpus.fetch.urllist import fetcher as httpfetch

    monkeypatch.setattr(httpfetch, "CONNECTIONS_PER_THREAD", 1)
    mirror.put("a.jpg", b"x")
    fetcher = httpfetch.Fetcher(httpfetch.FetchPolicy(allow_private_hosts=True))
    try:
        for host in ("127.0.0.1", "localhost", "127.0.0.1"):  # two origins, one kept connection
            assert fetcher.fetch(f"http://{host}:{mirror.port}/a.jpg").data == b"x"
            assert [origin[1] for origin in fetcher._pool()] == [host]
    finally:
        fetcher.close()


def test_connecting_tries_the_addresses_within_one_deadline(monkeypatch):
    """A host whose addresses all swallow the connection attempt: each further address gets what is left of
    the deadline, not a fresh one (the watchdog only guards connected sockets)."""
    import socket

    from mmcorpus.fetch.urllist import fetcher as httpfetch

    given = []

    def blackhole(address, timeout):
        given.append(timeout)
        time.sleep(0.3)
        raise TimeoutError("timed out")

    monkeypatch.setattr(socket, "create_connection", blackhole)
    conn = httpfetch._PinnedHTTP("example.org", 80, ["192.0.2.1", "192.0.2.2", "192.0.2.3"], timeout=0.5)
    with pytest.raises(TimeoutError):
        conn.connect()
    assert len(given) == 2 and given[0] == pytest.approx(0.5, abs=0.05) and given[1] < 0.35
