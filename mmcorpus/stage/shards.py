"""Read normalized parquet in batches and write a stage's parquet shards, shuffled, with uniform row groups.

Training readers (HF datasets, torch IterableDatasets over pyarrow, DuckDB) read a row group at a time and
shuffle within and across them, so row groups are kept small and uniform (at most 10,000 rows by default, a
few MB of text). The rows are written in the seeded order of mmcorpus.stage.shuffle, so every shard mixes the
stage's datasets. The files are written by writers.ShardWriter (temporary name, then rename; zstd).
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from mmcorpus import layout
from mmcorpus.core.parquet import ShardWriter
from mmcorpus.errors import BadInputError
from mmcorpus.schema import ADDITIVE_COLUMNS, UNIFIED_SCHEMA
from mmcorpus.stage.shuffle import BucketShuffle, bucket_count


def read_batches(path: Path, batch_size: int = 8192, columns: list[str] | None = None) -> Iterator[pa.RecordBatch]:
    """The rows of one normalized file as record batches in UNIFIED_SCHEMA (cast when types differ slightly),
    or only its `columns` (a pass that does not need the text need not decode it)."""
    schema = UNIFIED_SCHEMA if columns is None else pa.schema([UNIFIED_SCHEMA.field(name) for name in columns])
    try:
        parquet = pq.ParquetFile(path)
    except (OSError, pa.ArrowInvalid) as exc:
        raise BadInputError(f"{path}: not a readable parquet file ({exc}); delete it and prepare again") from None
    present = parquet.schema_arrow.names
    missing = [name for name in UNIFIED_SCHEMA.names if name not in present and name not in ADDITIVE_COLUMNS]
    if missing:
        raise BadInputError(f"{path}: not in the unified schema (no column '{missing[0]}'); normalize it again")
    absent = [name for name in schema.names if name not in present]  # additive columns of a newer release
    for batch in parquet.iter_batches(batch_size=batch_size, columns=[n for n in schema.names if n in present]):
        if absent:
            columns = {name: batch.column(name) for name in batch.schema.names}
            columns.update({name: pa.nulls(batch.num_rows, schema.field(name).type) for name in absent})
            batch = pa.RecordBatch.from_arrays([columns[name] for name in schema.names], names=schema.names)
        if not batch.schema.equals(schema):
            try:
                batch = pa.RecordBatch.from_arrays(
                    [col.cast(field.type) for col, field in zip(batch.columns, schema)], schema=schema
                )
            except (pa.ArrowInvalid, pa.ArrowNotImplementedError) as exc:
                raise BadInputError(f"{path}: column types differ from the unified schema ({exc})") from None
        yield batch


def count_rows(path: Path) -> int:
    try:
        return pq.ParquetFile(path).metadata.num_rows
    except (OSError, pa.ArrowInvalid) as exc:
        raise BadInputError(f"{path}: not a readable parquet file ({exc}); delete it and prepare again") from None


class StageWriter:
    """The stage's parquet shards, in the seeded order of mmcorpus.stage.shuffle: write() spills the filtered
    batches into the shuffle's buckets, close() writes them out through writers.ShardWriter in shards of
    exactly `samples_per_shard` rows (the last shard shorter), cut into near-equal row groups of at most
    `row_group_rows`; and one empty shard for a stage without rows so that readers still see the schema.
    `expected_rows` (an upper bound of the rows to come) sizes the shuffle's buckets; `spill` is the folder
    they live in until close()."""

    def __init__(self, folder: Path, stem: str, *, samples_per_shard: int, row_group_rows: int, metadata: dict,
                 seed: int, expected_rows: int, spill: Path):
        samples_per_shard = max(1, samples_per_shard)
        groups = math.ceil(samples_per_shard / max(1, row_group_rows))
        self.writer = ShardWriter(folder, stem, metadata, row_group_size=math.ceil(samples_per_shard / groups),
                                  rows_per_shard=samples_per_shard)
        self.shuffle = BucketShuffle(spill, seed, buckets=bucket_count(expected_rows))

    @property
    def row_group_rows(self) -> int:
        return self.writer.row_group_size

    def write(self, batch: pa.RecordBatch) -> None:
        self.shuffle.add(batch)

    def close(self) -> list[dict]:
        for batch in self.shuffle.drain():
            self.writer.write_batch(batch)
        files = self.writer.close()
        if not files:
            self.writer.out_dir.mkdir(parents=True, exist_ok=True)  # ShardWriter makes it only for its first row
            path = layout.normalized_shard(self.writer.out_dir, self.writer.subset, 0)
            pq.write_table(self.writer.schema.empty_table(), path)
            return [{"file": path.name, "rows": 0}]
        return [{"file": f.name, "rows": rows} for f, rows in zip(files, self.writer.file_rows)]

