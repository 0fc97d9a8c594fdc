"""`status`: files by state (from the verify cache, never re-hashed), extraction markers, URL-list images by
reason from status parquets, bytes, last run, locks, and the terminal table."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import zipfile
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from mmcorpus.core.locks import hold_lock
from mmcorpus.core.runs import read_run, record_run
from mmcorpus.fetch import checksums as verify
from mmcorpus.fetch.archives import Mapping, extract_archive
from mmcorpus.ops.status import collect_status, format_status
from mmcorpus.registry import Registry, parse_spec
from mmcorpus.schema import STATUS_SCHEMA

CC = parse_spec({
    "name": "cc", "kind": "dataset", "stages": ["pretrain"], "images": {"from": "url"},
    "format": {"type": "tsv", "columns": ["caption", "url"]},
    "files": {"train": {"url": "http://x/train.tsv", "size": 6},
              "validation": {"url": "http://x/val.tsv", "size": 100},
              "labels": {"url": "http://x/labels.tsv"}},
}, Path("cc.yaml"))
PICS = parse_spec({
    "name": "pics", "kind": "collection", "path": "pics/train",
    "archives": [{"url": "http://x/pics.zip", "strip": "pics/"}, {"url": "http://x/more.zip"}],
}, Path("pics.yaml"))
CHAT = parse_spec({
    "name": "chat", "kind": "dataset", "format": {"type": "llava"}, "images": {"collections": ["pics"]},
    "files": {"main": {"url": "http://x/chat.json"}},
}, Path("chat.yaml"))
REGISTRY = Registry({s.name: s for s in (CC, PICS, CHAT)})


def write_shard(root: Path, subset: str, shard: int, rows: list[tuple[str, str | None, int]], done: bool) -> None:
    folder = root / "images" / "cc" / subset
    folder.mkdir(parents=True, exist_ok=True)
    table = pa.Table.from_pylist([
        {"key": f"{shard * 100 + i:09d}", "url": f"http://h/{i}.jpg", "caption": "c", "status": status,
         "error": error, "bytes": size} for i, (status, error, size) in enumerate(rows)], schema=STATUS_SCHEMA)
    pq.write_table(table, folder / f"{shard:05d}.parquet")
    if done:
        (folder / f"{shard:05d}.done").write_text("{}")


@pytest.fixture
def filled_root(root: Path, tmp_path: Path) -> Path:
    downloads = root / "downloads" / "cc"
    downloads.mkdir(parents=True)
    (downloads / "train.tsv").write_bytes(b"a\tb\nc\n")
    verify.record_verified(downloads / "train.tsv", {"sha256": "0" * 64})
    (downloads / "val.tsv.part").write_bytes(b"x" * 40)
    write_shard(root, "train", 0, [("ok", None, 1000), ("failed", "not_found", 0), ("failed", "timeout", 0)], True)
    write_shard(root, "train", 1, [("ok", None, 500), ("failed", "not_found", 0)], False)
    write_shard(root, "validation", 0, [("ok", None, 10)], True)
    archive = tmp_path / "pics.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        zf.writestr("pics/a.jpg", b"12345")
        zf.writestr("pics/b/c.jpg", b"123")
    extract_archive(archive, root / "images" / "pics" / "train", Mapping(strip="pics/"))
    return root


def test_files_states_come_from_the_cache_without_hashing(filled_root):
    cc = collect_status(REGISTRY, filled_root, "cc")["items"]["cc"]
    states = {f["key"]: (f["state"], f["bytes"]) for f in cc["files"]}
    # The recorded digest is fake: "verified" proves the cache was read, not the bytes re-hashed.
    assert states == {"train": ("verified", 6), "validation": ("partial", 40), "labels": ("missing", 0)}
    assert (cc["files_verified"], cc["files_wanted"]) == (1, 3)


def test_file_changed_since_verification_is_only_present(filled_root):
    (filled_root / "downloads" / "cc" / "train.tsv").write_bytes(b"other!")
    cc = collect_status(REGISTRY, filled_root, "cc")["items"]["cc"]
    assert cc["files"][0]["state"] == "present"


def test_url_list_images_by_reason_from_status_parquets(filled_root):
    images = collect_status(REGISTRY, filled_root, "cc")["items"]["cc"]["images"]
    assert (images["ok"], images["failed"], images["bytes"]) == (3, 3, 1510)
    assert images["failed_by_reason"] == {"not_found": 2, "timeout": 1}
    assert (images["shards"], images["shards_done"]) == (3, 2)
    assert images["subsets"]["validation"] == {"ok": 1, "failed": 0, "shards": 1, "shards_done": 1}


def test_damaged_status_parquet_is_reported_not_fatal(filled_root):
    (filled_root / "images" / "cc" / "train" / "00002.parquet").write_bytes(b"not parquet")
    images = collect_status(REGISTRY, filled_root, "cc")["items"]["cc"]["images"]
    assert images["unreadable_shards"][0].endswith("00002.parquet") and images["ok"] == 3


def test_collection_extracted_archive_deleted_afterwards(filled_root):
    item = collect_status(REGISTRY, filled_root)["items"]["pics"]
    pics, more = item["files"]
    assert (pics["state"], pics["extracted"]) == ("removed", True)
    assert (more["state"], more["extracted"]) == ("missing", False)
    assert item["images"] == {"files": 2, "bytes": 8}  # the .mmcorpus marker is not an image


def test_name_of_a_dataset_includes_its_collections(filled_root):
    assert list(collect_status(REGISTRY, filled_root, "chat")["items"]) == ["chat", "pics"]


def test_last_run_and_lock(filled_root):
    record_run(filled_root, "cc", {"exit_code": 0, "result": "ok", "images_ok": 3})
    assert read_run(filled_root, "cc")["images_ok"] == 3
    assert [p.name for p in (filled_root / "runs").iterdir()] == ["cc.json"]  # no temporary left
    with hold_lock(filled_root, "cc", command="mmcorpus fetch cc"):
        status = collect_status(REGISTRY, filled_root)
    cc = status["items"]["cc"]
    assert cc["last_run"]["result"] == "ok" and "mmcorpus fetch cc" in cc["locked_by"]
    json.dumps(status)  # --json must be able to print it


def test_format_status_table(filled_root):
    record_run(filled_root, "cc", {"exit_code": 1})
    text = format_status(collect_status(REGISTRY, filled_root))
    lines = text.splitlines()
    row = next(line for line in lines if line.startswith("cc "))
    assert "1/3 verified" in row and "3 ok / 3 failed (50%)" in row and "exit 1" in row
    assert next(line for line in lines if line.startswith("pics ")).split()[2:4] == ["1/2", "extracted"]
    assert "cc: failed by reason: not_found 2, timeout 1" in lines
    assert "cc: val.tsv partial (40 B of 100 B)" in lines
    assert "cc: 1 of 3 shards unfinished" in lines
    assert "nothing on disk yet: chat" in lines


def test_fetch_report_as_run_record(filled_root):
    record_run(filled_root, "pics", {"name": "pics", "ok": False, "error": "pics.zip: HTTP 404 (gone)"})
    lines = format_status(collect_status(REGISTRY, filled_root)).splitlines()
    assert next(line for line in lines if line.startswith("pics ")).endswith(" failed")
    assert "pics: last run failed: pics.zip: HTTP 404 (gone)" in lines


def test_empty_root(root):
    text = format_status(collect_status(REGISTRY, root))
    assert "nothing on disk yet: cc, chat, pics" in text


def test_lock_of_a_crashed_run_is_shown_as_stale(filled_root):
    dead = int(subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True,
                              text=True).stdout)
    lock = filled_root / ".locks" / "cc.lock"
    lock.parent.mkdir()
    lock.write_text(json.dumps({"host": socket.gethostname(), "pid": dead, "since": 0, "token": "x"}))
    cc = collect_status(REGISTRY, filled_root, "cc")["items"]["cc"]
    assert cc["locked_by"].endswith("[stale: the next run breaks it]")
