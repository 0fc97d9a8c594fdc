"""Hostile archives (issue 11): a member that cannot be placed is refused and counted, the rest goes on;
bookkeeping names are never extracted; `strip` is a folder prefix; oversized tar headers are refused before
tarfile reads them; a full disk leaves nothing half-written and resumes."""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
import tarfile
import textwrap
import tracemalloc
import zipfile
from pathlib import Path

import pytest
import requests
from helpers.archives import (
    oversized_longname_tar_gz,
    tar_bytes,
    zip_bytes,
    zip_with_flags,
)
from helpers.cli import ENV, mmcorpus, one_line_error

from mmcorpus.fetch.archives import (
    ArchiveError,
    Mapping,
    extract_archive,
    marker_path,
    read_marker,
)
from mmcorpus.fetch.collections import fetch_collection
from mmcorpus.registry import parse_spec


def write(path: Path, data: bytes) -> Path:
    path.write_bytes(data)
    return path


def refused(report: dict) -> dict[str, int]:
    return {reason: entry["count"] for reason, entry in report["refused_reasons"].items()}


# ------------------------------------------------------------------------------------ strip is a folder


def test_strip_without_a_slash_strips_that_folder_only(tmp_path):
    archive = write(tmp_path / "a.zip", zip_bytes({"train2017/1.jpg": b"1", "train2017../x.jpg": b"evil"}))
    dest = tmp_path / "images/coco/train2017"
    report = extract_archive(archive, dest, Mapping(strip="train2017"))
    assert (dest / "1.jpg").read_bytes() == b"1"
    assert report["outside_prefix"] == 1
    assert not (dest.parent / "x.jpg").exists() and not list(tmp_path.rglob("x.jpg"))


# --------------------------------------------------------------------------------- bookkeeping names


def test_forged_markers_and_temporaries_are_refused_and_counted(tmp_path):
    members = {"data/1.jpg": b"1", "data/.mmcorpus/other.zip.done": b"{}", "data/2.jpg.mmpart": b"t",
               "data/sub/.rejected/3.jpg": b"r", "data/4.jpg.part": b"p"}
    archive = write(tmp_path / "a.zip", zip_bytes(members))
    dest = tmp_path / "images/c"
    report = extract_archive(archive, dest, Mapping(strip="data/"))
    assert report["extracted"] == 1 and report["refused"] == 4
    assert refused(report) == {"bookkeeping_name": 4}
    assert read_marker("other.zip", dest) is None and not marker_path("other.zip", dest).exists()
    assert sorted(p.relative_to(dest).as_posix() for p in dest.rglob("*") if p.is_file()) == [
        ".mmcorpus/a.zip.done", "1.jpg"]
    assert json.loads(marker_path("a.zip", dest).read_text())["refused"] == 4  # the marker keeps the count


def test_a_forged_marker_does_not_make_a_collection_skip_its_other_archive(root, mirror):
    first = mirror.put("z/first.zip", zip_bytes({"1.jpg": b"1", ".mmcorpus/second.zip.done": b'{"mapping": '
                                                 b'{"strip": "", "into": "", "include": []}}'}))
    second = mirror.put("z/second.zip", zip_bytes({"2.jpg": b"2"}))
    spec = parse_spec({"name": "pics", "kind": "collection", "path": "pics", "archives": [{"url": first},
                                                                                          {"url": second}]},
                      Path("pics.yaml"))
    summary = fetch_collection(spec, root, _download)
    assert [(a["name"], a["status"]) for a in summary["archives"]] == [("first.zip", "extracted"),
                                                                       ("second.zip", "extracted")]
    assert (root / "images/pics/2.jpg").read_bytes() == b"2"
    assert summary["refused"] == 1 and summary["archives"][0]["refused_reasons"]["bookkeeping_name"]["examples"] == [
        ".mmcorpus/second.zip.done"]


def _download(file_spec, dest_dir: Path) -> Path:
    response = requests.get(file_spec.url, timeout=10)
    response.raise_for_status()
    return write(dest_dir / file_spec.filename, response.content)


# ----------------------------------------------------------------------- members that cannot be placed


def test_a_file_then_a_member_below_it_is_refused_and_the_rest_goes_on(tmp_path):
    archive = write(tmp_path / "a.tar", tar_bytes([("a", b"file"), ("a/b.jpg", b"below"), ("c.jpg", b"c")]))
    report = extract_archive(archive, tmp_path / "out")
    assert (report["extracted"], refused(report)) == (2, {"path_conflict": 1})
    assert (tmp_path / "out/a").read_bytes() == b"file" and (tmp_path / "out/c.jpg").read_bytes() == b"c"
    assert report["refused_reasons"]["path_conflict"]["examples"] == ["a/b.jpg"]


def test_a_folder_then_a_file_of_its_name_is_refused(tmp_path):
    archive = write(tmp_path / "a.tar", tar_bytes([("a/b.jpg", b"below"), ("a", b"file"), ("c.jpg", b"c")]))
    report = extract_archive(archive, tmp_path / "out")
    assert (report["extracted"], refused(report)) == (2, {"path_conflict": 1})
    assert (tmp_path / "out/a/b.jpg").read_bytes() == b"below"
    assert not [p for p in (tmp_path / "out").rglob("*") if p.name.endswith(".mmpart")]


@pytest.mark.parametrize("flags, method, reason", [(0x1, None, "encrypted"), (0, 99, "unsupported_compression")])
def test_unreadable_zip_members_are_refused(tmp_path, flags, method, reason):
    data = zip_with_flags({"ok.jpg": b"ok", "locked.jpg": b"secret"}, "locked.jpg", flag_bits=flags, method=method)
    archive = write(tmp_path / "a.zip", data)
    with zipfile.ZipFile(archive) as zf, pytest.raises((RuntimeError, NotImplementedError)):
        zf.open("locked.jpg")  # the archive really is what the test says
    report = extract_archive(archive, tmp_path / "out")
    assert (report["extracted"], refused(report)) == (1, {reason: 1})
    assert not (tmp_path / "out/locked.jpg").exists()


def test_a_254_byte_name_is_extracted_and_a_longer_one_refused(tmp_path):
    fits, too_long = "n" * 250 + ".jpg", "m" * 260 + ".jpg"
    archive = write(tmp_path / "a.zip", zip_bytes({fits: b"fits", too_long: b"no", "z.jpg": b"z"}))
    report = extract_archive(archive, tmp_path / "out")
    assert (tmp_path / "out" / fits).read_bytes() == b"fits"
    assert (report["extracted"], refused(report)) == (2, {"name_too_long": 1})
    assert report["refused_reasons"]["name_too_long"]["examples"][0].endswith("...")  # examples are cut short


def test_a_10_kb_pax_path_is_refused(tmp_path):
    deep = "/".join(["d" * 200] * 50) + "/x.jpg"  # 10 KB: more than PATH_MAX
    archive = write(tmp_path / "a.tar", tar_bytes([(deep, b"deep"), ("ok.jpg", b"ok")], tarfile.PAX_FORMAT))
    report = extract_archive(archive, tmp_path / "out")
    assert (report["extracted"], refused(report)) == (1, {"name_too_long": 1})


# ------------------------------------------------------------------------------- oversized tar headers


def test_an_oversized_long_name_header_is_refused_before_it_is_read(tmp_path):
    archive = oversized_longname_tar_gz(tmp_path / "big.tar.gz", declared=32 << 20, present=32 << 20)
    assert archive.stat().st_size < 1 << 20  # gzip keeps the test small
    tracemalloc.start()
    try:
        with pytest.raises(ArchiveError, match=r"big.tar.gz: a tar long-name or pax header declares 33554432"):
            extract_archive(archive, tmp_path / "out")
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 4 << 20, peak  # tarfile never read the 32 MB name


def test_an_oversized_header_declared_but_absent_is_refused_too(tmp_path):
    archive = oversized_longname_tar_gz(tmp_path / "cut.tar.gz", declared=200 << 20, present=1000)
    with pytest.raises(ArchiveError, match="header declares 209715200"):
        extract_archive(archive, tmp_path / "out")


def test_a_collection_counts_a_refused_archive_and_goes_on(root, mirror):
    bad = mirror.put("z/bad.tar.gz", b"")
    oversized_longname_tar_gz(mirror.folder / "z/bad.tar.gz", declared=200 << 20, present=1000)
    good = mirror.put("z/good.zip", zip_bytes({"1.jpg": b"1"}))
    spec = parse_spec({"name": "pics", "kind": "collection", "path": "pics",
                       "archives": [{"url": bad}, {"url": good}]}, Path("pics.yaml"))
    summary = fetch_collection(spec, root, _download)
    assert [(a["name"], a["status"]) for a in summary["archives"]] == [("bad.tar.gz", "failed"),
                                                                       ("good.zip", "extracted")]
    assert "header declares" in summary["archives"][0]["error"] and summary["failed_files"] == ["bad.tar.gz"]


# ------------------------------------------------------------------------------------------- full disk

# A real full disk needs root (a small tmpfs); RLIMIT_FSIZE makes write() fail with EFBIG for real once a file
# passes the limit (SIGXFSZ ignored, as a full disk's ENOSPC would): the same path through the code.
LIMITED = textwrap.dedent("""\
    import resource, signal, sys
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    resource.setrlimit(resource.RLIMIT_FSIZE, (int(sys.argv[1]), resource.RLIM_INFINITY))
    sys.argv = sys.argv[1:]
    exec(sys.argv[1])
""")

MEMBERS = {"a.jpg": b"a" * 1000, "big.jpg": bytes(600_000), "z.jpg": b"z" * 1000}  # big.jpg: zeros, tiny zipped


def run_limited(limit: int, code: str, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", LIMITED, str(limit), code, *args], capture_output=True, text=True,
                          env=ENV, timeout=120, cwd=Path(__file__).parents[1], check=False)


def test_disk_full_while_extracting_leaves_nothing_half_written_and_resumes(tmp_path):
    archive = write(tmp_path / "a.zip", _deflated(MEMBERS))
    dest = tmp_path / "out"
    code = ("import errno, sys; from pathlib import Path; from mmcorpus.fetch.archives import extract_archive\n"
            "try: extract_archive(Path(sys.argv[2]), Path(sys.argv[3]))\n"
            "except OSError as exc: print(errno.errorcode[exc.errno], exc.filename); sys.exit(1)")
    full = run_limited(200_000, code, str(archive), str(dest))
    assert full.returncode == 1, full.stderr
    assert full.stdout.split() == ["EFBIG", str(dest / "big.jpg")]
    assert (dest / "a.jpg").is_file() and not (dest / "big.jpg").exists()
    assert not [p for p in dest.rglob("*") if p.name.endswith(".mmpart")] and not marker_path("a.zip", dest).exists()
    report = extract_archive(archive, dest)  # space freed: the run resumes
    assert (report["already_present"], report["extracted"]) == (1, 2)
    assert (dest / "big.jpg").read_bytes() == MEMBERS["big.jpg"]


def test_disk_full_through_the_cli_is_one_line_and_exit_1(tmp_path, mirror):
    url = mirror.put("z/pics.zip", _deflated(MEMBERS))
    specs = tmp_path / "specs"
    specs.mkdir()
    (specs / "pics.yaml").write_text(f"name: pics\nkind: collection\npath: pics\narchives:\n  - url: {url}\n")
    args = ["--root", str(tmp_path / "root"), "--config-dir", str(specs), "fetch", "pics"]
    code = "import sys, runpy; sys.argv = ['mmcorpus', *sys.argv[2:]]; runpy.run_module('mmcorpus', run_name='__main__')"
    full = run_limited(200_000, code, *args)
    assert full.returncode == 1, full.stderr
    assert "big.jpg" in one_line_error(full)
    dest = tmp_path / "root/images/pics"
    assert not (dest / "big.jpg").exists() and not [p for p in dest.rglob("*") if p.name.endswith(".mmpart")]
    again = mmcorpus(*args)
    assert again.returncode == 0, again.stderr
    assert (dest / "big.jpg").stat().st_size == len(MEMBERS["big.jpg"])


def _deflated(members: dict[str, bytes]) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as zf:
        for name, data in members.items():
            zf.writestr(name, data)
    return buffer.getvalue()


def test_no_temporary_name_passes_name_max(tmp_path):
    name = "n" * 255
    archive = write(tmp_path / "a.zip", zip_bytes({name: b"x"}))
    assert extract_archive(archive, tmp_path / "out")["extracted"] == 1
    assert sorted(os.listdir(tmp_path / "out")) == [".mmcorpus", name]


def test_a_refused_name_that_is_not_utf8_is_shown_escaped(tmp_path):
    raw = tar_bytes([("ok.jpg", b"ok"), ("bad-\udcff.jpg.part", b"p")])  # the name's bytes: b"bad-\xff..."
    assert b"bad-\xff.jpg.part" in raw
    report = extract_archive(write(tmp_path / "a.tar", raw), tmp_path / "out")
    assert report["refused_reasons"]["bookkeeping_name"]["examples"] == ["bad-\\xff.jpg.part"]
    assert json.loads(marker_path("a.tar", tmp_path / "out").read_text())["refused"] == 1
