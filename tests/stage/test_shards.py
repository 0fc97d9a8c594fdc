"""The stage's parquet shards: `samples_per_shard` rows each (the last one shorter), near-equal row groups of at
most `row_group_rows`, the rows shuffled, no spill or temporary files left behind."""

from __future__ import annotations

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from helpers.stage import row

from mmcorpus.core.atomicio import temporary_name
from mmcorpus.schema import UNIFIED_SCHEMA
from mmcorpus.stage.shards import StageWriter


def write(folder, count: int, **sizes) -> list[dict]:
    writer = StageWriter(folder, "s", metadata={"stage": "s"}, seed=0, expected_rows=count,
                         spill=temporary_name(folder), **sizes)
    rows = [row("d", "x", i) for i in range(count)]
    for start in range(0, count, 7):  # small batches of any size, as the builder writes them
        writer.write(pa.RecordBatch.from_pylist(rows[start:start + 7], schema=UNIFIED_SCHEMA))
    return writer.close()


def groups(folder) -> list[list[int]]:
    files = sorted(folder.glob("*.parquet"))
    return [[pq.ParquetFile(f).metadata.row_group(i).num_rows for i in range(pq.ParquetFile(f).num_row_groups)]
            for f in files]


@pytest.mark.parametrize(("per_shard", "group", "expected"), [
    (25, 10, [[9, 9, 7], [9, 9, 7], [9, 1]]),  # exactly 25 per shard, groups as equal as they can be
    (20, 10, [[10, 10], [10, 10], [10, 10]]),
    (8, 10, [[8]] * 7 + [[4]]),  # shards smaller than a row group: one group each
])
def test_shards_hold_samples_per_shard_rows_in_near_equal_row_groups(tmp_path, per_shard, group, expected):
    folder = tmp_path / "data"
    files = write(folder, 60, samples_per_shard=per_shard, row_group_rows=group)
    assert groups(folder) == expected
    assert [f["rows"] for f in files] == [sum(g) for g in expected]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["data"]  # the spill folder is gone
    assert sorted(p.name for p in folder.iterdir()) == [f["file"] for f in files]  # no temporaries


def test_the_rows_are_shuffled_and_none_lost(tmp_path):
    folder = tmp_path / "data"
    write(folder, 60, samples_per_shard=100, row_group_rows=100)
    ids = pq.read_table(folder / "s-00000.parquet").column("sample_id").to_pylist()
    assert sorted(ids) == sorted(f"d/x/{i}" for i in range(60)) and ids != [f"d/x/{i}" for i in range(60)]


def test_a_stage_without_rows_has_one_empty_shard_with_the_schema(tmp_path):
    folder = tmp_path / "data"
    assert write(folder, 0, samples_per_shard=10, row_group_rows=10) == [{"file": "s-00000.parquet", "rows": 0}]
    assert pq.read_schema(folder / "s-00000.parquet").remove_metadata().equals(UNIFIED_SCHEMA)
