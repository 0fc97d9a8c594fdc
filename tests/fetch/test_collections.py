"""Collections: archives downloaded once through the caller's downloader, extracted by mapping; manual
collections from a user folder or tar; which collections a set of image paths needs."""

from __future__ import annotations

import io
import os
import tarfile
from pathlib import Path

import pytest
import requests
from helpers.archives import zip_bytes

from mmcorpus.fetch.collections import collections_needed, fetch_collection
from mmcorpus.registry import parse_spec


def http_download(file_spec, dest_dir: Path) -> Path:
    """The simplest real downloader: plain requests against the local mirror."""
    response = requests.get(file_spec.url, timeout=10)
    response.raise_for_status()
    path = dest_dir / file_spec.filename
    path.write_bytes(response.content)
    return path


def make_tar(path: Path, members: dict[str, bytes]) -> Path:
    with tarfile.open(path, "w") as tf:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tf.addfile(info, io.BytesIO(data))
    return path


def collection(**fields):
    return parse_spec({"kind": "collection", **fields}, Path("test.yaml"))


@pytest.fixture
def coco(mirror):
    url = mirror.put("zips/train2017.zip", zip_bytes({"train2017/000000033471.jpg": b"bus", "train2017/9.jpg": b"tray"}))
    extra = mirror.put("zips/extra.zip", zip_bytes({"x.jpg": b"x"}))
    return collection(name="coco_train2017", path="coco/train2017", archives=[
        {"url": url, "strip": "train2017/"},
        {"url": extra, "optional": True},
    ])


def test_archive_collection_is_downloaded_extracted_and_then_free(coco, root, mirror):
    summary = fetch_collection(coco, root, http_download)
    assert [a["status"] for a in summary["archives"]] == ["extracted"]  # the optional archive is not fetched
    assert (root / "images/coco/train2017/000000033471.jpg").read_bytes() == b"bus"
    assert (root / "downloads/coco_train2017/train2017.zip").is_file()
    again = fetch_collection(coco, root, http_download)
    assert again["archives"][0]["status"] == "done" and again["archives"][0]["extracted"] == 2
    assert len(mirror.hits("/zips/train2017.zip")) == 1  # the second fetch asked nothing of the network


def test_deleted_archive_is_not_downloaded_again(coco, root, mirror):
    fetch_collection(coco, root, http_download, delete_archives=True)
    assert not (root / "downloads/coco_train2017/train2017.zip").exists()
    assert fetch_collection(coco, root, http_download)["archives"][0]["status"] == "done"
    assert len(mirror.hits("/zips/train2017.zip")) == 1


def test_optional_archive_fetched_when_named(coco, root):
    summary = fetch_collection(coco, root, http_download, only=["extra.zip"])
    assert [a["name"] for a in summary["archives"]] == ["extra.zip"]
    assert (root / "images/coco/train2017/x.jpg").exists()


@pytest.fixture
def sam():
    manual = "Request the SA-1B links at https://ai.meta.com/datasets/segment-anything-downloads/"
    return collection(name="sam", path="sam/images", manual=manual, archives=[
        {"name": f"sa_00000{i}.tar", "manual": manual, "include": ["*.jpg"]} for i in range(2)
    ])


def test_manual_collection_without_source_reports_missing(sam, root):
    summary = fetch_collection(sam, root, http_download)
    assert summary["missing"] == ["sa_000000.tar", "sa_000001.tar"]
    assert "ai.meta.com" in summary["manual"]


def test_optional_manual_tars_placed_in_downloads_are_extracted(root):
    manual = "signed links file"
    spec = collection(name="sam", path="sam/images", manual=manual, archives=[
        {"name": f"sa_00000{i}.tar", "manual": manual, "include": ["*.jpg"], "optional": True} for i in range(3)])
    assert fetch_collection(spec, root, http_download)["archives"] == []  # optional, and nothing given
    (root / "downloads/sam").mkdir(parents=True)
    make_tar(root / "downloads/sam/sa_000001.tar", {"sa_9.jpg": b"j"})
    summary = fetch_collection(spec, root, http_download)
    assert [(a["name"], a["status"]) for a in summary["archives"]] == [("sa_000001.tar", "extracted")]
    assert (root / "images/sam/images/sa_9.jpg").exists()


def test_manual_folder_with_some_tars(sam, root, tmp_path):
    source = tmp_path / "sam_download"
    source.mkdir()
    make_tar(source / "sa_000000.tar", {"sa_1.jpg": b"j", "sa_1.json": b"{}"})
    summary = fetch_collection(sam, root, http_download, manual_source=source)
    assert [a["status"] for a in summary["archives"]] == ["extracted", "missing"]
    assert summary["missing"] == ["sa_000001.tar"]
    assert sorted(p.name for p in (root / "images/sam/images").glob("sa_*")) == ["sa_1.jpg"]
    later = fetch_collection(sam, root, http_download)  # no source this time: the extracted tar is still done
    assert [a["status"] for a in later["archives"]] == ["done", "missing"]
    again = fetch_collection(sam, root, http_download, manual_source=source)  # same folder: not images to copy
    assert [(a["name"], a["status"]) for a in again["archives"]] == [("sa_000000.tar", "done"),
                                                                     ("sa_000001.tar", "missing")]
    assert again["missing"] == ["sa_000001.tar"] and again["manual"]
    assert not (root / "images/sam/images/sa_000000.tar").exists()


def test_manual_single_tar_path(sam, root, tmp_path):
    tar = make_tar(tmp_path / "sa_000001.tar", {"sa_7.jpg": b"j"})
    summary = fetch_collection(sam, root, http_download, manual_source=tar)
    assert {a["name"]: a["status"] for a in summary["archives"]} == {"sa_000001.tar": "extracted",
                                                                     "sa_000000.tar": "missing"}
    assert (root / "images/sam/images/sa_7.jpg").exists()


def test_manual_folder_of_extracted_images_is_copied(sam, root, tmp_path):
    source = tmp_path / "my_sam_images"
    (source / "sub").mkdir(parents=True)
    (source / "sa_3.jpg").write_bytes(b"3")
    (source / "sub/sa_4.jpg").write_bytes(b"4")
    (source / "sa_3.json").write_bytes(b"{}")
    (source / "link.jpg").symlink_to("/etc/passwd")
    summary = fetch_collection(sam, root, http_download, manual_source=source)
    copied = summary["archives"][0]
    assert (copied["status"], copied["copied"], copied["excluded"], copied["links_skipped"]) == ("copied", 2, 1, 1)
    assert (root / "images/sam/images/sub/sa_4.jpg").read_bytes() == b"4"
    assert fetch_collection(sam, root, http_download, manual_source=source)["archives"][0]["already_present"] == 2


def test_collections_needed_by_longest_prefix():
    colls = [
        collection(name="coco_train2017", path="coco/train2017", archives=[{"url": "file:///c.zip"}]),
        collection(name="vg", path="vg", archives=[{"url": "file:///v.zip"}]),
        collection(name="llava_pretrain", path="llava/llava_pretrain/images", archives=[{"url": "file:///l.zip"}]),
    ]
    paths = ["coco/train2017/000000033471.jpg", "vg/VG_100K/4.jpg", "vg/VG_100K_2/51.jpg", None,
             "llava/llava_pretrain/images/00120/001200924.jpg", "gqa/images/2327515.jpg", "coco/val2017/1.jpg"]
    needed = collections_needed(paths, colls)
    assert needed["needed"] == {"coco_train2017": 1, "vg": 2, "llava_pretrain": 1}
    assert needed["unmatched"] == 2 and needed["unmatched_examples"] == ["gqa/images/2327515.jpg", "coco/val2017/1.jpg"]


def test_the_collection_folder_is_swept_once_per_fetch_and_only_when_extracting(root, mirror, monkeypatch):
    """The sweep for killed runs' temporaries walks the whole folder (SA-1B: ~11M files in one)."""
    from mmcorpus.core.atomicio import temporary_name
    from mmcorpus.fetch import collections

    archives = [{"url": mirror.put(f"zips/p{i}.zip", zip_bytes({f"{i}.jpg": b"x"}))} for i in range(3)]
    spec = collection(name="parts", path="parts", archives=archives)
    dest = root / "images" / "parts"
    dest.mkdir(parents=True)
    stale = dest / temporary_name(dest / "0.jpg").name.replace(f"-{os.getpid()}-", "-999999999-")
    stale.write_bytes(b"left by a killed run")
    sweeps = []
    real_sweep = collections.sweep_stale_temporaries
    monkeypatch.setattr(collections, "sweep_stale_temporaries", lambda folder: sweeps.append(folder) or real_sweep(folder))

    fetch_collection(spec, root, http_download)
    assert sweeps == [dest] and not stale.exists()
    assert sorted(p.name for p in dest.glob("*.jpg")) == ["0.jpg", "1.jpg", "2.jpg"]
    fetch_collection(spec, root, http_download)  # everything done: nothing extracted, nothing walked
    assert sweeps == [dest]


def test_a_broken_archive_is_a_failed_entry_and_the_others_go_on(root, mirror, caplog):
    page = mirror.put("zips/quota.zip", b"<!DOCTYPE html><html>Google Drive quota exceeded</html>")
    good = mirror.put("zips/good.zip", zip_bytes({"1.jpg": b"1"}))
    spec = collection(name="two", path="two", archives=[{"url": page}, {"url": good}])
    with caplog.at_level("ERROR", logger="mmcorpus"):
        summary = fetch_collection(spec, root, http_download)
    assert [(a["name"], a["status"]) for a in summary["archives"]] == [("quota.zip", "failed"), ("good.zip", "extracted")]
    assert "not a zip or tar" in summary["archives"][0]["error"] and summary["failed_files"] == ["quota.zip"]
    assert [r.getMessage() for r in caplog.records] == [summary["archives"][0]["error"]]  # logged once
    assert (root / "images/two/1.jpg").exists()


def test_refused_members_are_in_the_summary_and_the_log(root, mirror, caplog):
    url = mirror.put("zips/pics.zip", zip_bytes({"1.jpg": b"1", "1.jpg.part": b"p", ".mmcorpus/x.done": b"{}"}))
    spec = collection(name="pics", path="pics", archives=[{"url": url}])
    with caplog.at_level("WARNING", logger="mmcorpus"):
        summary = fetch_collection(spec, root, http_download)
    (entry,) = summary["archives"]
    assert (entry["extracted"], entry["refused"], summary["refused"]) == (1, 2, 2)
    assert entry["refused_reasons"] == {"bookkeeping_name": {"count": 2, "examples": ["1.jpg.part", ".mmcorpus/x.done"]}}
    (line,) = [r.getMessage() for r in caplog.records]
    assert line.startswith("pics.zip: 2 members refused") and "bookkeeping_name 2" in line
    again = fetch_collection(spec, root, http_download)  # the marker keeps the counts; nothing logged again
    assert again["archives"][0]["status"] == "done" and again["refused"] == 2
