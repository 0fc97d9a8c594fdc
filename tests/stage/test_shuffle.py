"""The seeded shuffle of a stage: every shard mixes the datasets in their proportions, the order is fixed by the
seed (not by how many buckets or how rows arrived), the counts do not change, and the spill files go away."""

from __future__ import annotations

from collections import Counter

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from helpers.stage import row, write_normalized

from mmcorpus.schema import UNIFIED_SCHEMA
from mmcorpus.stage.prepare import prepare_stage
from mmcorpus.stage.shuffle import MAX_BUCKETS, BucketShuffle, bucket_count, shuffle_key



def text_rows(dataset: str, subset: str, count: int) -> list[dict]:
    return [row(dataset, subset, i, conversations=[{"role": "user", "content": f"{dataset} question {i}"},
                                                   {"role": "assistant", "content": f"answer {i}"}])
            for i in range(count)]


@pytest.fixture
def two_datasets(root):
    """finetune keeps text-only rows: 600 of llava_instruct, 300 of sharegpt4v (no images to check)."""
    write_normalized(root, "llava_instruct", "mix665k", text_rows("llava_instruct", "mix665k", 600))
    write_normalized(root, "sharegpt4v", "sft", text_rows("sharegpt4v", "sft", 300))
    return root


def shard_datasets(root) -> list[Counter]:
    files = sorted((root / "stages/finetune/data").glob("*.parquet"))
    return [Counter(pq.read_table(f, columns=["dataset"]).column("dataset").to_pylist()) for f in files]


def stage_ids(root) -> list[str]:
    files = sorted((root / "stages/finetune/data").glob("*.parquet"))
    return [i for f in files for i in pq.read_table(f, columns=["sample_id"]).column("sample_id").to_pylist()]


def test_every_shard_mixes_the_datasets_in_their_proportions(two_datasets, registry):
    manifest = prepare_stage(registry, two_datasets, "finetune", samples_per_shard=100)
    shards = shard_datasets(two_datasets)
    assert [sum(c.values()) for c in shards] == [100] * 9
    for counts in shards:  # 2/3 llava_instruct: 66.7 expected, sd 4.7
        assert 45 <= counts["llava_instruct"] <= 88 and counts["sharegpt4v"] == 100 - counts["llava_instruct"]
    assert [f["rows"] for f in manifest["outputs"]["parquet"]["files"]] == [100] * 9
    assert {d["dataset"]: d["kept"] for d in manifest["datasets"]} == {"llava_instruct": 600, "sharegpt4v": 300}


def test_the_seed_fixes_the_order_and_the_counts_stay(two_datasets, registry):
    prepare_stage(registry, two_datasets, "finetune", samples_per_shard=100)
    first = stage_ids(two_datasets)
    prepare_stage(registry, two_datasets, "finetune", samples_per_shard=100, force=True)
    assert stage_ids(two_datasets) == first
    other = prepare_stage(registry, two_datasets, "finetune", samples_per_shard=100, seed=1)
    assert stage_ids(two_datasets) != first and sorted(stage_ids(two_datasets)) == sorted(first)
    assert other["total"]["kept"] == 900 and len(set(first)) == 900


def batches(ids: list[str], size: int) -> list[pa.RecordBatch]:
    rows = [row("d", "s", 0) | {"sample_id": i} for i in ids]
    return [pa.RecordBatch.from_pylist(rows[i:i + size], schema=UNIFIED_SCHEMA) for i in range(0, len(rows), size)]


@pytest.mark.parametrize("buckets", [1, 7, 64])
def test_the_order_is_the_seeded_hash_order_whatever_the_buckets(tmp_path, buckets):
    ids = [f"d/s/{i}" for i in range(1000)]
    shuffle = BucketShuffle(tmp_path / "spill", seed=5, buckets=buckets, buffer_rows=64)
    for batch in batches(ids, 37):
        shuffle.add(batch)
    assert (tmp_path / "spill").is_dir()  # the rows went to disk, not to memory
    out = [i for b in shuffle.drain() for i in b.column("sample_id").to_pylist()]
    assert out == sorted(ids, key=lambda i: shuffle_key(5, i))
    assert not (tmp_path / "spill").exists()


def test_rows_arriving_in_another_order_come_out_the_same(tmp_path):
    ids = [f"d/s/{i}" for i in range(300)]
    outs = []
    for name, order in (("a", ids), ("b", ids[::-1])):
        shuffle = BucketShuffle(tmp_path / name, seed=0, buckets=3, buffer_rows=50)
        for batch in batches(order, 40):
            shuffle.add(batch)
        drained = list(shuffle.drain())
        assert all(b.schema.equals(UNIFIED_SCHEMA) for b in drained)  # the key column is gone
        outs.append([i for b in drained for i in b.column("sample_id").to_pylist()])
    assert outs[0] == outs[1] != ids


def test_buckets_are_sized_from_the_expected_rows():
    assert bucket_count(0) == 1 and bucket_count(100_000) == 1 and bucket_count(100_001) == 2
    assert bucket_count(12_400_000) == 124 and bucket_count(10**9) == MAX_BUCKETS
