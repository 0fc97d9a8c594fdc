"""Read normalized parquet in batches and write a stage's parquet shards with fixed-size row groups.

Training readers (HF datasets, torch IterableDatasets over pyarrow, DuckDB) read a row group at a time and
shuffle within and across them, so row groups are kept small and uniform (10,000 rows by default, a few MB of
text) and shards hold a whole number of row groups. Each shard is written under a temporary name and renamed
when complete.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Iterator

import pyarrow as pa
import pyarrow.parquet as pq

from mmcorpus.errors import BadInputError
from mmcorpus.schema import UNIFIED_SCHEMA


def read_batches(path: Path, batch_size: int = 8192) -> Iterator[pa.RecordBatch]:
    """The rows of one normalized file as record batches in UNIFIED_SCHEMA (cast when types differ slightly)."""
    try:
        parquet = pq.ParquetFile(path)
    except (OSError, pa.ArrowInvalid) as exc:
        raise BadInputError(f"{path}: not a readable parquet file ({exc}); delete it and prepare again") from None
    missing = [name for name in UNIFIED_SCHEMA.names if name not in parquet.schema_arrow.names]
    if missing:
        raise BadInputError(f"{path}: not in the unified schema (no column '{missing[0]}'); normalize it again")
    for batch in parquet.iter_batches(batch_size=batch_size, columns=UNIFIED_SCHEMA.names):
        if not batch.schema.equals(UNIFIED_SCHEMA):
            try:
                batch = pa.RecordBatch.from_arrays(
                    [col.cast(field.type) for col, field in zip(batch.columns, UNIFIED_SCHEMA)], schema=UNIFIED_SCHEMA
                )
            except (pa.ArrowInvalid, pa.ArrowNotImplementedError) as exc:
                raise BadInputError(f"{path}: column types differ from the unified schema ({exc})") from None
        yield batch


def count_rows(path: Path) -> int:
    try:
        return pq.ParquetFile(path).metadata.num_rows
    except (OSError, pa.ArrowInvalid) as exc:
        raise BadInputError(f"{path}: not a readable parquet file ({exc}); delete it and prepare again") from None


class ShardWriter:
    """Buffers rows and writes `<folder>/<stem>-NNNNN.parquet` shards of whole row groups."""

    def __init__(self, folder: Path, stem: str, *, rows_per_shard: int, row_group_rows: int, metadata: dict):
        self.folder, self.stem = Path(folder), stem
        self.row_group_rows = max(1, row_group_rows)
        self.rows_per_shard = max(self.row_group_rows, rows_per_shard // self.row_group_rows * self.row_group_rows)
        self.schema = UNIFIED_SCHEMA.with_metadata({k.encode(): v.encode() for k, v in metadata.items()})
        self.folder.mkdir(parents=True, exist_ok=True)
        self.pending: list[pa.RecordBatch] = []
        self.pending_rows = 0
        self.writer: pq.ParquetWriter | None = None
        self.file_rows = 0
        self.files: list[dict] = []

    def write(self, batch: pa.RecordBatch) -> None:
        if batch.num_rows == 0:
            return
        self.pending.append(batch)
        self.pending_rows += batch.num_rows
        while self.pending_rows >= self.row_group_rows:
            self._write_group(self.row_group_rows)

    def close(self) -> list[dict]:
        """Flush what is left; a stage with no rows still gets one empty shard, so readers see the schema."""
        if self.pending_rows or (not self.files and self.writer is None):
            self._write_group(self.pending_rows)
        self._finish_file()
        return self.files

    def _write_group(self, rows: int) -> None:
        table = pa.Table.from_batches(self.pending, schema=UNIFIED_SCHEMA)
        group, rest = table.slice(0, rows), table.slice(rows)
        self.pending, self.pending_rows = rest.to_batches(), rest.num_rows
        if self.writer is None:
            self._open_file()
        self.writer.write_table(group.replace_schema_metadata(self.schema.metadata), row_group_size=max(rows, 1))
        self.file_rows += rows
        if self.file_rows >= self.rows_per_shard:
            self._finish_file()

    def _path(self, index: int) -> Path:
        return self.folder / f"{self.stem}-{index:05d}.parquet"

    def _open_file(self) -> None:
        tmp = self._path(len(self.files)).with_suffix(".parquet.tmp")
        self.writer = pq.ParquetWriter(tmp, self.schema)
        self.file_rows = 0

    def _finish_file(self) -> None:
        if self.writer is None:
            return
        self.writer.close()
        final = self._path(len(self.files))
        os.replace(final.with_suffix(".parquet.tmp"), final)
        self.files.append({"file": final.name, "rows": self.file_rows})
        self.writer = None
