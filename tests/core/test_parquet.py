"""ShardWriter: row groups, shards, atomic files, metadata, Arrow input and spill format."""

from __future__ import annotations

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

import mmcorpus
from mmcorpus.core.parquet import ShardWriter, file_metadata
from mmcorpus.registry import parse_spec
from mmcorpus.schema import UNIFIED_SCHEMA


def row(i: int) -> dict:
    text_only = i % 4 == 3
    return {
        "sample_id": f"d/s/{i}", "dataset": "d", "subset": "s", "source_id": str(i),
        "image_path": None if text_only else f"coco/train2017/{i:012d}.jpg",
        "caption": "a bus" if i % 4 == 0 else None,
        "conversations": [] if i % 4 == 2 else [{"role": "user", "content": f"<image>\nq{i}"},
                                                {"role": "assistant", "content": f"a{i}"}],
        "width": 640 if i % 2 else None, "height": 480 if i % 2 else None,
    }


def batch(rows: list[dict]) -> pa.RecordBatch:
    return pa.RecordBatch.from_pylist([{**r, "image_url": None} for r in rows], schema=UNIFIED_SCHEMA)


def test_rows_round_trip_with_row_groups_and_shards(tmp_path):
    rows = [row(i) for i in range(25)]
    with ShardWriter(tmp_path, "s", {"dataset": "d"}, row_group_size=4, rows_per_shard=10) as writer:
        writer.write_batch(batch(rows))
    assert [p.name for p in writer.files] == ["s-00000.parquet", "s-00001.parquet", "s-00002.parquet"]
    assert [pq.ParquetFile(p).metadata.num_row_groups for p in writer.files] == [3, 3, 2]  # 4+4+2, 4+4+2, 4+1
    assert writer.file_rows == [pq.read_metadata(p).num_rows for p in writer.files] == [10, 10, 5]
    table = pa.concat_tables(pq.read_table(p) for p in writer.files)
    expected = pa.Table.from_pylist([{**r, "image_url": None} for r in rows], schema=UNIFIED_SCHEMA)
    assert table.to_pylist() == expected.to_pylist()
    assert sorted(p.name for p in tmp_path.iterdir()) == [p.name for p in writer.files]  # no temp files left


def test_file_metadata(tmp_path):
    spec = parse_spec({"name": "llava_pretrain", "kind": "dataset", "license": "research only", "version": 3,
                       "format": {"type": "llava"}, "files": {"558k": {"url": "https://example.org/a.json"}}},
                      tmp_path / "x.yaml")
    meta = file_metadata(spec, "558k", ["https://example.org/a.json"])
    with ShardWriter(tmp_path, "558k", meta) as writer:
        writer.write_batch(batch([row(0)]))
    got = pq.read_schema(writer.files[0]).metadata
    assert got[b"dataset"] == b"llava_pretrain" and got[b"subset"] == b"558k"
    assert got[b"license"] == b"research only" and got[b"spec_version"] == b"3"
    assert got[b"source_urls"] == b'["https://example.org/a.json"]'
    assert got[b"mmcorpus_version"] == mmcorpus.__version__.encode()


def test_failure_leaves_no_file_at_a_final_name(tmp_path):
    with pytest.raises(RuntimeError):
        with ShardWriter(tmp_path, "s", row_group_size=2) as writer:
            writer.write_batch(batch([row(0), row(1), row(2)]))
            raise RuntimeError("killed")
    assert list(tmp_path.iterdir()) == []


def test_no_rows_no_files(tmp_path):
    with ShardWriter(tmp_path / "out", "s") as writer:
        pass
    assert writer.files == [] and not (tmp_path / "out").exists()


def test_arrow_batches_and_spill_format(tmp_path):
    with ShardWriter(tmp_path / "spill", "p", fmt="arrow") as spill:
        spill.write_batch(batch([row(i) for i in range(7)]))
    assert spill.files[0].suffix == ".arrow"
    with pa.OSFile(str(spill.files[0])) as source:
        spilled = pa.ipc.open_file(source).read_all()
    with ShardWriter(tmp_path, "s", row_group_size=3, rows_per_shard=5) as writer:
        writer.write_batch(batch([row(100)]))
        writer.write_batch(spilled.to_batches()[0])
    assert writer.rows == 8 and [pq.read_metadata(p).num_rows for p in writer.files] == [5, 3]
    assert pq.read_table(writer.files[0]).column("sample_id").to_pylist() == ["d/s/100", "d/s/0", "d/s/1", "d/s/2", "d/s/3"]


def test_small_batches_are_gathered_into_full_row_groups(tmp_path):
    writer = ShardWriter(tmp_path, "s", row_group_size=10, rows_per_shard=25)
    for k in range(10):
        writer.write_batch(batch([row(3 * k + i) for i in range(3)]))
    files = writer.close()
    groups = [[pq.ParquetFile(f).metadata.row_group(i).num_rows for i in range(pq.ParquetFile(f).metadata.num_row_groups)]
              for f in files]
    assert groups == [[10, 10, 5], [5]]
    ids = pa.concat_tables(pq.read_table(f) for f in files).column("sample_id").to_pylist()
    assert ids == [f"d/s/{i}" for i in range(30)]
