"""fetch orchestration: collections by shard, locks, reports (library level, against the local mirror)."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest
from helpers.archives import zip_bytes

from mmcorpus.core.locks import hold_lock
from mmcorpus.errors import LockedError
from mmcorpus.fetch.files import DownloadOptions
from mmcorpus.fetch.options import FetchOptions
from mmcorpus.fetch.run import fetch, shard_share
from mmcorpus.registry import Registry


@pytest.fixture
def three_part_collection(mirror, tmp_path, monkeypatch) -> Registry:
    """A collection of three archives (like VG's two parts, or SA-1B's tars) served by the local mirror."""
    lines = ["name: parts", "kind: collection", "path: parts/images", "archives:"]
    for part in range(3):
        data = zip_bytes({f"top/{part}_{i}.jpg": f"image {part}/{i}".encode() for i in range(4)})
        url = mirror.put(f"parts/part{part}.zip", data)
        lines += [f"  - url: {url}", f"    sha256: {hashlib.sha256(data).hexdigest()}", "    strip: top/"]
    specs = tmp_path / "specs"
    specs.mkdir()
    (specs / "parts.yaml").write_text("\n".join(lines) + "\n")
    monkeypatch.setenv("MMCORPUS_CONFIG_DIR", str(specs))
    return Registry.load()


def tree(root: Path) -> dict[str, str]:
    images = root / "images"
    return {str(p.relative_to(images)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(images.rglob("*")) if p.is_file() and ".mmcorpus" not in p.parts}


def options(root: Path, shard=None) -> FetchOptions:
    return FetchOptions(root=root, download=DownloadOptions(backoff=0.01), shard=shard)


def test_shard_share_covers_every_item_once():
    keys = [f"k{i}" for i in range(10)]
    parts = [shard_share(keys, (i, 3)) for i in range(3)]
    assert sorted(sum(parts, [])) == sorted(keys)
    assert all(not set(a) & set(b) for a in parts for b in parts if a is not b)
    assert shard_share(keys, None) == keys


def test_collection_shards_union_equals_single_run(three_part_collection, tmp_path):
    single = tmp_path / "single"
    assert fetch(three_part_collection, ["parts"], options(single))["ok"]
    sharded = tmp_path / "sharded"
    first = fetch(three_part_collection, ["parts"], options(sharded, (0, 2)))
    after_first = tree(sharded)
    second = fetch(three_part_collection, ["parts"], options(sharded, (1, 2)))
    assert first["ok"] and second["ok"]
    assert 0 < len(after_first) < len(tree(single))  # slice 0 did only its share
    assert tree(sharded) == tree(single)
    assert len(tree(single)) == 12


def test_second_run_on_same_name_is_refused_with_exit_75(three_part_collection, tmp_path):
    root = tmp_path / "root"
    with hold_lock(root, "parts", command="another mmcorpus fetch"):
        with pytest.raises(LockedError, match="another mmcorpus fetch") as info:
            fetch(three_part_collection, ["parts"], options(root))
    assert info.value.exit_code == 75
    assert fetch(three_part_collection, ["parts"], options(root))["ok"]


def test_shards_lock_separately(three_part_collection, tmp_path):
    """Machines sharing a root over NFS run their slices at the same time."""
    root = tmp_path / "root"
    with hold_lock(root, "parts.shard-0-of-2"):
        assert fetch(three_part_collection, ["parts"], options(root, (1, 2)))["ok"]


def test_failed_archive_is_reported_not_raised(three_part_collection, mirror, tmp_path):
    from mmcorpus.demo.localmirror import Route

    mirror.add("parts/part1.zip", Route(status=404))
    report = fetch(three_part_collection, ["parts"], options(tmp_path / "root"))
    assert report["ok"] is False
    assert "HTTP 404" in report["targets"][0]["error"]


def test_collections_by_need_are_scanned_once_until_the_annotations_change(mirror, tmp_path, monkeypatch):
    """Which collections a JSON dataset needs is read from every record (~30 s for mix665k): a cron re-run
    with nothing changed must reuse the answer, a changed file must be read again."""
    import json

    import mmcorpus.fetch.run as fetch_run

    def records(folder: str) -> bytes:
        return json.dumps([{"id": i, "image": f"{folder}/{i}.jpg", "conversations": [
            {"from": "human", "value": "<image>\nWhat is it?"}, {"from": "gpt", "value": "A test."}]}
            for i in range(3)]).encode()

    specs = tmp_path / "specs"
    specs.mkdir()
    for name in ("first", "second"):
        url = mirror.put(f"{name}.zip", zip_bytes({f"{i}.jpg": b"jpeg" for i in range(3)}))
        (specs / f"{name}.yaml").write_text(f"name: {name}\nkind: collection\npath: {name}\narchives:\n  - url: {url}\n")
    annotations = mirror.put("data.json", records("first"))
    (specs / "mine.yaml").write_text(f"name: mine\nkind: dataset\nfiles:\n  main:\n    url: {annotations}\n"
                                     "format: {type: llava}\nimages:\n  collections: [first, second]\n")
    monkeypatch.setenv("MMCORPUS_CONFIG_DIR", str(specs))
    scans = []
    real_scan = fetch_run.dataset_image_paths
    monkeypatch.setattr(fetch_run, "dataset_image_paths", lambda *a, **k: scans.append(a) or real_scan(*a, **k))
    root = tmp_path / "root"

    def needed() -> dict:
        report = fetch(Registry.load(), ["mine"], options(root))
        return report["targets"][0]["collections_needed"]

    assert needed() == {"first": 3} and len(scans) == 1
    assert needed() == {"first": 3} and len(scans) == 1  # nothing changed: the stored answer
    assert (root / "images/first/2.jpg").is_file() and not (root / "images/second").exists()

    mirror.put("data.json", records("second"))  # the file changed upstream: a forced re-download reads it again
    (root / "downloads/mine/data.json").unlink()
    assert needed() == {"second": 3} and len(scans) == 2
    assert (root / "images/second/2.jpg").is_file()


def test_fetch_extracts_optional_manual_archives_placed_in_downloads(tmp_path, monkeypatch):
    """What the SAM spec's note tells users: put the SA-1B tars you have in downloads/sam/, run fetch."""
    import io
    import tarfile

    specs = tmp_path / "specs"
    specs.mkdir()
    (specs / "tars.yaml").write_text("name: tars\nkind: collection\npath: tars/images\nmanual: ask for links\n"
                                     "archives:\n  - name: t0.tar\n    manual: ask for links\n    optional: true\n")
    monkeypatch.setenv("MMCORPUS_CONFIG_DIR", str(specs))
    root = tmp_path / "root"
    (root / "downloads/tars").mkdir(parents=True)
    with tarfile.open(root / "downloads/tars/t0.tar", "w") as tf:
        info = tarfile.TarInfo("a.jpg")
        info.size = 4
        tf.addfile(info, io.BytesIO(b"jpeg"))
    report = fetch(Registry.load(), ["tars"], options(root))
    assert [(a["name"], a["status"]) for a in report["targets"][0]["archives"]] == [("t0.tar", "extracted")]
    assert (root / "images/tars/images/a.jpg").read_bytes() == b"jpeg"
