"""fetch orchestration: collections by shard, locks, reports (library level, against the local mirror)."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest
from test_collections import zip_bytes

from mmcorpus.downloaders.http import DownloadOptions
from mmcorpus.errors import LockedError
from mmcorpus.fetch import FetchOptions, ImageOptions, fetch, shard_share
from mmcorpus.locks import hold_lock
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
    return FetchOptions(root=root, download=DownloadOptions(backoff=0.01), images=ImageOptions(shard=shard))


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
    from mmcorpus.localmirror import Route

    mirror.add("parts/part1.zip", Route(status=404))
    report = fetch(three_part_collection, ["parts"], options(tmp_path / "root"))
    assert report["ok"] is False
    assert "HTTP 404" in report["targets"][0]["error"]
