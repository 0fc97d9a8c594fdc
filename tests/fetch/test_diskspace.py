"""Free-space checks: a clear error for an absurd requirement on a real folder, expected sizes from specs."""

from __future__ import annotations

import zipfile
from pathlib import Path

import pytest

from mmcorpus.core.diskspace import DiskFullError, ensure_free_space, free_bytes
from mmcorpus.errors import EXIT_FAILED
from mmcorpus.fetch.archives import Mapping, extract_archive
from mmcorpus.fetch.diskspace import (
    ensure_space_for_fetch,
    expected_bytes,
    space_needed,
    unknown_sizes,
)
from mmcorpus.registry import parse_spec

DATASET = parse_spec({
    "name": "tiny", "kind": "dataset", "format": {"type": "llava"},
    "files": {"a": {"url": "http://x/a.json", "size": 1000},
              "b": {"url": "http://x/b.json", "size": 500, "optional": True},
              "c": {"url": "http://x/c.json"}},
}, Path("tiny.yaml"))

COLLECTION = parse_spec({
    "name": "pics", "kind": "collection", "path": "pics",
    "archives": [{"url": "http://x/pics.zip", "size": 2000, "strip": "pics/"}],
}, Path("pics.yaml"))


def test_absurd_requirement_names_need_free_and_file_system(tmp_path):
    with pytest.raises(DiskFullError) as info:
        ensure_free_space(tmp_path / "root" / "downloads" / "cc12m", 10**18, what="cc12m")
    message = str(info.value)
    assert info.value.exit_code == EXIT_FAILED
    assert message.startswith("cc12m: not enough disk space: need 1050000.0 TB")
    free, mount = free_bytes(tmp_path)
    assert f"free on {mount}" in message and str(tmp_path / "root") in message


def test_modest_requirement_passes(tmp_path):
    ensure_free_space(tmp_path, 1000, min_margin=0)
    ensure_free_space(tmp_path / "not" / "yet" / "created", 1, min_margin=0)


def test_dataset_counts_required_files_and_reports_unknown_sizes():
    assert expected_bytes(DATASET) == 1000
    assert expected_bytes(DATASET, only={"a", "b"}) == 1500
    assert unknown_sizes(DATASET) == ["c"]


def test_what_is_on_disk_is_not_counted_again(root):
    folder = root / "downloads" / "tiny"
    folder.mkdir(parents=True)
    (folder / "a.json.part").write_bytes(b"x" * 400)  # a resumable partial download
    assert expected_bytes(DATASET, root) == 600
    (folder / "a.json").write_bytes(b"x" * 1000)
    assert expected_bytes(DATASET, root) == 0


def test_archive_needs_download_plus_expansion_until_extracted(root, tmp_path):
    assert expected_bytes(COLLECTION) == 2000 + 2200
    assert expected_bytes(COLLECTION, expansion=2.0) == 6000
    archive = tmp_path / "pics.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        zf.writestr("pics/1.jpg", b"jpeg")
    extract_archive(archive, root / "images" / "pics", Mapping(strip="pics/"))
    assert expected_bytes(COLLECTION, root) == 0


def test_fetch_plan_adds_up_specs_on_one_file_system(root):
    needs = {"downloads/tiny": 1000, "downloads/pics": 2000, "images/pics": 2200}
    got = {p.relative_to(root).as_posix(): n for s in (DATASET, COLLECTION) for p, n in space_needed(s, root).items()}
    assert got == needs
    assert ensure_space_for_fetch([DATASET, COLLECTION], root, min_margin=0) == 5200
    with pytest.raises(DiskFullError, match="fetch tiny, pics: not enough disk space"):
        ensure_space_for_fetch([DATASET, COLLECTION], root, expansion=1e15)
