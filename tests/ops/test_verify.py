"""`verify`: re-hashes ignoring the cache, finds missing archive members, decodes every image in a real
process pool (truncated JPEGs included), and repair moves bad files aside so that a re-fetch restores them."""

from __future__ import annotations

import hashlib
import io
import os
import random
import zipfile
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image

from mmcorpus.fetch import checksums as verify
from mmcorpus.fetch.archives import Mapping, extract_archive, marker_path
from mmcorpus.ops.verify import check_image, format_verify, verify_root
from mmcorpus.registry import Registry, parse_spec
from mmcorpus.schema import STATUS_SCHEMA

ANNOT = b'[{"id": 1}]'
PICS = parse_spec({
    "name": "pics", "kind": "collection", "path": "pics/train",
    "archives": [{"url": "http://x/pics.zip", "strip": "pics/"}],
}, Path("pics.yaml"))
CC = parse_spec({
    "name": "cc", "kind": "dataset", "images": {"from": "url"},
    "format": {"type": "tsv", "columns": ["caption", "url"]},
    "files": {"train": {"url": "http://x/train.tsv"}},
}, Path("cc.yaml"))
CHAT = parse_spec({
    "name": "chat", "kind": "dataset", "format": {"type": "llava"}, "images": {"collections": ["pics"]},
    "files": {"main": {"url": "http://x/chat.json", "size": len(ANNOT),
                       "sha256": hashlib.sha256(ANNOT).hexdigest()}},
}, Path("chat.yaml"))
REGISTRY = Registry({s.name: s for s in (PICS, CC, CHAT)})


def jpeg(seed: int) -> bytes:
    rng = random.Random(seed)
    image = Image.frombytes("RGB", (64, 48), rng.randbytes(64 * 48 * 3))
    out = io.BytesIO()
    image.save(out, "JPEG", quality=90)
    return out.getvalue()


@pytest.fixture
def good_root(root: Path, tmp_path: Path) -> Path:
    """A collection extracted from a zip of 70 good JPEGs (more than one batch) plus a README outside the
    images; a URL-list dataset with one shard; a dataset file whose spec hash matches its bytes."""
    archive = root / "downloads" / "pics" / "pics.zip"
    archive.parent.mkdir(parents=True)
    with zipfile.ZipFile(archive, "w") as zf:
        for i in range(70):
            zf.writestr(f"pics/{i // 35}/{i:03d}.jpg", jpeg(i))
        zf.writestr("pics/README.txt", b"not an image")
    extract_archive(archive, root / "images" / "pics" / "train", Mapping(strip="pics/"))
    shard = root / "images" / "cc" / "train" / "00000"
    shard.mkdir(parents=True)
    rows = []
    for i in range(3):
        (shard / f"{i:09d}.jpg").write_bytes(jpeg(100 + i))
        rows.append({"key": f"{i:09d}", "status": "ok", "image_path": f"cc/train/00000/{i:09d}.jpg"})
    rows.append({"key": "000000003", "status": "failed", "error": "not_found"})
    pq.write_table(pa.Table.from_pylist(rows, schema=STATUS_SCHEMA), shard.parent / "00000.parquet")
    (shard.parent / "00000.done").write_text("{}")
    chat = root / "downloads" / "chat" / "chat.json"
    chat.parent.mkdir(parents=True)
    chat.write_bytes(ANNOT)
    return root


def test_clean_root_verifies(good_root):
    report = verify_root(REGISTRY, good_root, workers=2)
    assert report["ok"], report["bad"]
    pics = report["items"]["pics"]
    assert pics["images"]["checked"] == 70 and pics["images"]["folders"]["pics/train/0"] == {"checked": 35, "bad": 0}
    assert pics["archives"] == [{"key": "pics.zip", "members": 71, "missing": 0, "checked": True}]
    assert report["items"]["cc"]["images"]["checked"] == 3
    assert report["items"]["chat"]["files"][0]["checked"] == ["size", "sha256"]
    assert format_verify(report).endswith("all verified")


def test_finds_every_kind_of_damage(good_root):
    images = good_root / "images"
    (images / "pics/train/0/001.jpg").write_bytes(jpeg(1)[:900])  # truncated: only load() notices
    (images / "pics/train/1/040.jpg").write_bytes(b"<html>not an image</html>")
    (images / "pics/train/README.txt").unlink()  # an extracted member gone
    (images / "cc/train/00000/000000002.jpg").unlink()  # a row marked ok without its image
    chat = good_root / "downloads" / "chat" / "chat.json"
    verify.record_verified(chat, {"sha256": CHAT.files["main"].sha256})
    stat = chat.stat()
    chat.write_bytes(b'[{"id": 2}]')  # same size, same mtime: the cache would still say verified
    os.utime(chat, ns=(stat.st_atime_ns, stat.st_mtime_ns))

    report = verify_root(REGISTRY, good_root, workers=2)
    reasons = {Path(b["path"]).name: b["reason"] for b in report["bad"]}
    assert not report["ok"] and len(reasons) == 5
    assert "truncated" in reasons["001.jpg"]
    assert reasons["040.jpg"].startswith("UnidentifiedImageError")
    assert reasons["README.txt"].startswith("missing or wrong size")
    assert reasons["000000002.jpg"] == "missing (status parquet says ok)"
    assert "sha256 mismatch" in reasons["chat.json"]
    assert report["items"]["pics"]["images"]["folders"]["pics/train/1"] == {"checked": 35, "bad": 1}
    assert "verification FAILED" in format_verify(report)


def test_repair_moves_aside_and_a_refetch_restores(good_root):
    images = good_root / "images" / "pics" / "train"
    (images / "0/001.jpg").write_bytes(jpeg(1)[:900])
    (good_root / "images/cc/train/00000/000000001.jpg").write_bytes(b"garbage")

    report = verify_root(REGISTRY, good_root, "pics", workers=1, repair=True)
    assert report["refetch"] == ["pics"] and len(report["moved_aside"]) == 1
    assert not (images / "0/001.jpg").exists() and (images / "0/.rejected").is_dir()
    assert not marker_path("pics.zip", images).exists()  # so that fetch extracts again
    # What fetch does for the collection: extraction writes only the missing member.
    result = extract_archive(good_root / "downloads/pics/pics.zip", images, Mapping(strip="pics/"))
    assert (result["extracted"], result["already_present"]) == (1, 70)
    assert verify_root(REGISTRY, good_root, "pics", workers=1)["ok"]

    report = verify_root(REGISTRY, good_root, "cc", workers=1, repair=True)
    assert report["refetch"] == ["cc"]
    assert not (good_root / "images/cc/train/00000.done").exists()  # the URL-list engine redoes the shard


def test_a_cut_tar_gz_of_an_extracted_collection_is_reported_and_repair_refetches_it(root):
    import tarfile

    tars = parse_spec({"name": "tars", "kind": "collection", "path": "tars",
                       "archives": [{"url": "http://x/part.tar.gz"}]}, Path("tars.yaml"))
    archive = root / "downloads" / "tars" / "part.tar.gz"
    archive.parent.mkdir(parents=True)
    with tarfile.open(archive, "w:gz") as tf:
        for i in range(20):
            data = random.Random(i).randbytes(20_000)
            info = tarfile.TarInfo(f"{i}.bin")
            info.size = len(data)
            tf.addfile(info, io.BytesIO(data))
    extract_archive(archive, root / "images" / "tars", Mapping())
    archive.write_bytes(archive.read_bytes()[: archive.stat().st_size // 2])  # the kept archive got cut

    registry = Registry({"tars": tars})
    report = verify_root(registry, root, "tars", workers=1, repair=True)
    [bad] = report["bad"]
    assert bad["kind"] == "download" and "truncated or corrupt archive" in bad["reason"]
    assert report["refetch"] == ["tars"] and not archive.exists()
    assert not marker_path("part.tar.gz", root / "images" / "tars").exists()  # so fetch downloads it again


def test_check_image_accepts_good_and_names_the_problem(tmp_path):
    good = tmp_path / "good.jpg"
    good.write_bytes(jpeg(5))
    assert check_image(str(good)) is None
    assert check_image(str(tmp_path / "does-not-exist.jpg")).startswith("FileNotFoundError")
