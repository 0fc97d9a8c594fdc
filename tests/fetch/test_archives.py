"""Safe extraction: hostile members are refused, bombs stopped, mapping applied, re-runs resume."""

from __future__ import annotations

import io
import json
import os
import stat
import tarfile
import zipfile
from pathlib import Path

import pytest

from mmcorpus.errors import EXIT_USAGE
from mmcorpus.fetch.archives import (
    ArchiveError,
    Limits,
    Mapping,
    expected_members,
    extract_archive,
    marker_path,
)


def make_zip(path: Path, members: dict[str, bytes], symlinks: dict[str, str] | None = None) -> Path:
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as zf:
        for name, data in members.items():
            zf.writestr(name, data)
        for name, target in (symlinks or {}).items():
            info = zipfile.ZipInfo(name)
            info.external_attr = (stat.S_IFLNK | 0o777) << 16
            zf.writestr(info, target)
    return path


def make_tar(path: Path, members: dict[str, bytes], mode: str = "w:gz", extra: list = ()) -> Path:
    with tarfile.open(path, mode) as tf:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tf.addfile(info, io.BytesIO(data))
        for info in extra:
            tf.addfile(info)
    return path


COCO = {"train2017/": b"", "train2017/000000033471.jpg": b"\xff\xd8jpeg-a", "train2017/000000000009.jpg": b"\xff\xd8b"}


def test_zip_with_strip_lands_in_collection_folder(tmp_path):
    archive = make_zip(tmp_path / "train2017.zip", {**COCO, "__MACOSX/._x.jpg": b"junk"})
    dest = tmp_path / "images/coco/train2017"
    report = extract_archive(archive, dest, Mapping(strip="train2017/"))
    assert (dest / "000000033471.jpg").read_bytes() == b"\xff\xd8jpeg-a"
    assert report["extracted"] == 2 and report["outside_prefix"] == 1 and not report["skipped"]
    assert not (dest / "__MACOSX").exists()
    assert json.loads(marker_path("train2017.zip", dest).read_text())["extracted"] == 2


def test_webdata_nested_prefix_and_into(tmp_path):
    archive = make_zip(tmp_path / "wikiart.zip", {"data/wikiart/images/a_b.jpg": b"x", "data/wikiart/images/c.gif": b"y"})
    dest = tmp_path / "images/wikiart"
    extract_archive(archive, dest, Mapping(strip="data/wikiart/images/", into="images"))
    assert sorted(p.name for p in (dest / "images").iterdir()) == ["a_b.jpg", "c.gif"]


def test_include_keeps_only_jpg_of_sam_tar(tmp_path):
    archive = make_tar(tmp_path / "sa_000000.tar", {"./sa_1.jpg": b"j1", "./sa_1.json": b"{}", "sa_2.jpg": b"j2"}, "w")
    dest = tmp_path / "images/sam/images"
    report = extract_archive(archive, dest, Mapping(include=("*.jpg",)))
    assert sorted(p.name for p in dest.iterdir() if p.is_file()) == ["sa_1.jpg", "sa_2.jpg"]
    assert report["excluded"] == 1


def test_strip_prefix_matching_nothing_is_an_error(tmp_path):
    archive = make_zip(tmp_path / "a.zip", {"val2017/1.jpg": b"x"})
    with pytest.raises(ArchiveError, match="strip prefix 'train2017/'"):
        extract_archive(archive, tmp_path / "out", Mapping(strip="train2017/"))


@pytest.mark.parametrize("name, reason", [
    ("../evil.jpg", "'..'"),
    ("train2017/../../evil.jpg", "'..'"),
    ("/etc/evil.jpg", "absolute"),
    ("C:/evil.jpg", "absolute"),
    ("a\\..\\evil.jpg", "backslash"),
])
def test_zip_slip_members_refuse_the_archive(tmp_path, name, reason):
    archive = make_zip(tmp_path / "slip.zip", {"ok.jpg": b"x", name: b"evil"})
    with pytest.raises(ArchiveError, match=reason) as err:
        extract_archive(archive, tmp_path / "out" / "dest")
    assert "slip.zip" in str(err.value) and err.value.exit_code == EXIT_USAGE
    assert not list(tmp_path.rglob("evil.jpg"))
    assert not (tmp_path / "out").exists()  # nothing written, not even the safe member before the bad one


def test_nul_byte_member_is_refused(tmp_path):
    archive = make_zip(tmp_path / "nul.zip", {"aXb.jpg": b"x"})
    raw = archive.read_bytes().replace(b"aXb.jpg", b"a\0b.jpg")  # zipfile cannot write a NUL name itself
    archive.write_bytes(raw)
    with pytest.raises(ArchiveError, match="NUL"):
        extract_archive(archive, tmp_path / "out")


def test_tar_absolute_member_is_refused(tmp_path):
    archive = make_tar(tmp_path / "abs.tar.gz", {"/tmp/evil.jpg": b"x"})
    with pytest.raises(ArchiveError, match="absolute"):
        extract_archive(archive, tmp_path / "out")


def test_symlinks_and_hardlinks_are_never_created(tmp_path):
    zipped = make_zip(tmp_path / "l.zip", {"a.jpg": b"x"}, symlinks={"link.jpg": "/etc/passwd"})
    report = extract_archive(zipped, tmp_path / "z")
    assert report["links_skipped"] == 1 and not (tmp_path / "z/link.jpg").exists()
    sym = tarfile.TarInfo("s.jpg")
    sym.type, sym.linkname = tarfile.SYMTYPE, "../../etc/passwd"
    hard = tarfile.TarInfo("h.jpg")
    hard.type, hard.linkname = tarfile.LNKTYPE, "/etc/passwd"
    tarred = make_tar(tmp_path / "l.tar", {"a.jpg": b"x"}, "w", extra=[sym, hard])
    report = extract_archive(tarred, tmp_path / "t")
    assert report["links_skipped"] == 2 and report["extracted"] == 1
    assert sorted(p.name for p in (tmp_path / "t").iterdir()) == [".mmcorpus", "a.jpg"]


def test_device_file_is_refused(tmp_path):
    dev = tarfile.TarInfo("dev/null")
    dev.type = tarfile.CHRTYPE
    archive = make_tar(tmp_path / "dev.tar", {}, "w", extra=[dev])
    with pytest.raises(ArchiveError, match="'dev/null' is a device"):
        extract_archive(archive, tmp_path / "out")


def test_zip_bomb_member_is_stopped_by_ratio(tmp_path):
    archive = make_zip(tmp_path / "bomb.zip", {"small.jpg": b"x" * 100, "bomb.jpg": bytes(20 << 20)})
    with pytest.raises(ArchiveError, match="'bomb.jpg' expands beyond") as err:
        extract_archive(archive, tmp_path / "out", limits=Limits(max_ratio=100, slack=1 << 16))
    assert "decompression bomb" in str(err.value)
    assert not (tmp_path / "out/bomb.jpg").exists()
    assert not list((tmp_path / "out").glob(".*.mmpart"))  # the partial member is cleaned up


def test_tar_gz_bomb_is_stopped_by_total_budget(tmp_path):
    archive = make_tar(tmp_path / "bomb.tar.gz", {f"{i}.jpg": bytes(4 << 20) for i in range(4)})
    with pytest.raises(ArchiveError, match="expands beyond"):
        extract_archive(archive, tmp_path / "out", limits=Limits(max_ratio=50, slack=1 << 16))


def test_total_byte_cap(tmp_path):
    archive = make_zip(tmp_path / "a.zip", {"a.jpg": b"a" * 5000, "b.jpg": b"b" * 5000})
    with pytest.raises(ArchiveError, match="b.jpg"):
        extract_archive(archive, tmp_path / "out", limits=Limits(max_total_bytes=8000))


def test_truncated_zip_is_a_clear_error(tmp_path):
    archive = make_zip(tmp_path / "cut.zip", {f"{i}.jpg": bytes(range(256)) * 40 for i in range(5)})
    archive.write_bytes(archive.read_bytes()[: archive.stat().st_size // 2])
    with pytest.raises(ArchiveError, match="cut.zip.*truncated"):
        extract_archive(archive, tmp_path / "out")


def test_truncated_tar_gz_is_a_clear_error(tmp_path):
    import os

    payload = {f"{i}.jpg": os.urandom(50_000) for i in range(5)}
    archive = make_tar(tmp_path / "cut.tar.gz", payload)
    archive.write_bytes(archive.read_bytes()[: archive.stat().st_size // 2])
    with pytest.raises(ArchiveError, match="cut.tar.gz.*truncated"):
        extract_archive(archive, tmp_path / "out")
    assert not list((tmp_path / "out").rglob(".*.mmpart"))


def test_not_an_archive(tmp_path):
    path = tmp_path / "page.zip"
    path.write_bytes(b"<!DOCTYPE html><html>Google Drive quota exceeded</html>")
    with pytest.raises(ArchiveError, match="not a zip or tar"):
        extract_archive(path, tmp_path / "out")


def test_rerun_is_a_no_op_and_resume_redoes_only_missing_members(tmp_path):
    members = {f"train2017/{i}.jpg": bytes([i]) * (100 + i) for i in range(5)}
    archive = make_zip(tmp_path / "train2017.zip", members)
    dest = tmp_path / "coco"
    mapping = Mapping(strip="train2017/")
    assert extract_archive(archive, dest, mapping)["extracted"] == 5
    assert extract_archive(archive, dest, mapping)["skipped"] is True
    # Simulate a run killed mid-way: no marker, one member missing, one half-written, a stale temp file.
    marker_path("train2017.zip", dest).unlink()
    (dest / "1.jpg").unlink()
    (dest / "2.jpg").write_bytes(b"\x02" * 10)
    (dest / ".1.jpg.mmpart").write_bytes(b"partial")
    report = extract_archive(archive, dest, mapping)
    assert (report["extracted"], report["already_present"]) == (2, 3)
    assert (dest / "2.jpg").read_bytes() == members["train2017/2.jpg"]
    assert not (dest / ".1.jpg.mmpart").exists()


def test_changed_mapping_re_extracts(tmp_path):
    archive = make_zip(tmp_path / "a.zip", {"x/1.jpg": b"1"})
    extract_archive(archive, tmp_path / "d", Mapping())
    report = extract_archive(archive, tmp_path / "d", Mapping(strip="x/"))
    assert not report["skipped"] and (tmp_path / "d/1.jpg").exists()


def test_delete_after_success_only(tmp_path):
    archive = make_zip(tmp_path / "a.zip", {"1.jpg": b"1"})
    extract_archive(archive, tmp_path / "d", delete_after=True)
    assert not archive.exists()
    assert extract_archive(archive, tmp_path / "d")["skipped"]  # the marker answers; no archive needed
    bad = make_zip(tmp_path / "b.zip", {"../1.jpg": b"1"})
    with pytest.raises(ArchiveError):
        extract_archive(bad, tmp_path / "e", delete_after=True)
    assert bad.exists()


def _extract_in_child(args) -> dict:
    archive, dest = args
    return extract_archive(Path(archive), Path(dest), Mapping())


def test_two_concurrent_extractions_never_share_a_temporary_file(tmp_path):
    """A lock broken by mistake costs duplicate work, never corruption (both runs finish, every file whole)."""
    import multiprocessing
    import random

    # Incompressible members: 3 MB of constant bytes would be a zip bomb by the default limits, and
    # the test then passed only when the two runs happened to share the work.
    members = {f"{i:04d}.jpg": random.Random(i).randbytes(20_000 + i) for i in range(150)}
    archive = make_zip(tmp_path / "a.zip", members)
    dest = tmp_path / "out"
    with multiprocessing.get_context("fork").Pool(2) as pool:
        reports = pool.map(_extract_in_child, [(str(archive), str(dest))] * 2)  # raises if a child failed
    for report in reports:  # each run accounts for every member, written by itself or by the other run
        assert report["extracted"] + report["already_present"] == len(members)
    for name, data in members.items():
        assert (dest / name).read_bytes() == data
    assert not list(dest.rglob("*.mmpart"))


def test_stale_temporaries_of_dead_runs_are_swept(tmp_path):
    from mmcorpus.core.atomicio import sweep_stale_temporaries, temporary_name

    dest = tmp_path / "out"
    dest.mkdir()
    mine = temporary_name(dest / "live.jpg")
    mine.write_bytes(b"being written")
    dead = dest / mine.name.replace(f"-{os.getpid()}-", "-999999999-").replace("live", "dead")
    dead.write_bytes(b"left by a killed run")
    assert sweep_stale_temporaries(dest) == 1
    assert mine.exists() and not dead.exists()


def test_expected_members_skip_what_extraction_refuses(tmp_path):
    """What `verify` compares with the disk: the members extraction writes, by the same decisions."""
    archive = make_zip(tmp_path / "a.zip", {"p/1.jpg": b"1", "p/.mmcorpus/b.zip.done": b"{}", "p/x.mmpart": b"t",
                                            "q/2.jpg": b"2", "p/sub/3.jpg": b"33"})
    mapping = Mapping(strip="p")
    assert sorted(expected_members(archive, mapping)) == [("1.jpg", 1), ("sub/3.jpg", 2)]
    extract_archive(archive, tmp_path / "out", mapping)
    assert all((tmp_path / "out" / rel).stat().st_size == size for rel, size in expected_members(archive, mapping))
