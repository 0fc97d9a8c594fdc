"""Parquet shard writer for unified rows: bounded memory, row groups sized for training readers, atomic files.

Rows come as Arrow record batches of any size (`write_batch`, what the normalizers and the stage builder
produce) and are gathered into row groups of exactly `row_group_size` rows (the last one of a shard may be
shorter), so memory holds at most one row group. A shard is closed after `rows_per_shard` rows. Each file is written
under a temporary name in the same folder and renamed when complete, so a reader (or a killed run) never sees
a half-written `<subset>-NNNNN.parquet`.

`fmt="arrow"` writes Arrow IPC files instead (uncompressed, fast): the spill format of normalize.py.

File-level key/value metadata: `mmcorpus_version` plus what the caller passes (dataset, license, source URLs,
spec version; see `file_metadata`). The source URLs are redacted: the files travel to training clusters and
the Hub, and a spec URL's password or signature must not travel with them.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

import mmcorpus
from mmcorpus import layout
from mmcorpus.core.atomicio import temporary_name
from mmcorpus.core.redact import redact
from mmcorpus.schema import UNIFIED_SCHEMA

ROW_GROUP_SIZE = 10_000  # training readers read a row group at a time; 10k rows of LLaVA text is ~15 MB
ROWS_PER_SHARD = 500_000
COMPRESSION = "zstd"


def file_metadata(spec, subset: str, source_urls: list[str]) -> dict[str, str]:
    """The key/value metadata every normalized file carries (DESIGN.md §4)."""
    return {
        "dataset": spec.name,
        "subset": subset,
        "license": spec.license,
        "source_urls": json.dumps([redact(url) for url in source_urls]),
        "spec_version": str(spec.version),
    }


class ShardWriter:
    """Writes rows to `<out_dir>/<subset>-00000.parquet`, `-00001`, ... Use as a context manager, or call
    close(); `abort()` removes the temporary file of an unfinished shard."""

    def __init__(self, out_dir: Path, subset: str, metadata: dict[str, str] | None = None, *,
                 row_group_size: int = ROW_GROUP_SIZE, rows_per_shard: int = ROWS_PER_SHARD,
                 compression: str = COMPRESSION, fmt: str = "parquet"):
        if row_group_size < 1 or rows_per_shard < 1:
            raise ValueError("row_group_size and rows_per_shard must be positive")
        self.out_dir, self.subset = Path(out_dir), subset
        meta = {"mmcorpus_version": mmcorpus.__version__, **(metadata or {})}
        self.schema = UNIFIED_SCHEMA.with_metadata({k: str(v) for k, v in meta.items()})
        self.row_group_size, self.rows_per_shard, self.compression = row_group_size, rows_per_shard, compression
        if fmt not in ("parquet", "arrow"):
            raise ValueError(f"unknown output format {fmt!r}")
        self.fmt = fmt
        self.files: list[Path] = []
        self.file_rows: list[int] = []  # rows of each file of `files`
        self.rows = 0
        self._writer: pq.ParquetWriter | None = None
        self._tmp: Path | None = None
        self._final: Path | None = None
        self._shard_rows = 0
        self._pending: list[pa.RecordBatch] = []  # Arrow rows not yet written, fewer than a row group
        self._pending_rows = 0

    # -------------------------------------------------------------------------------------------- public
    def write_batch(self, batch: pa.RecordBatch) -> None:
        """Add rows that are already Arrow (UNIFIED_SCHEMA columns). Batches of any size are gathered into
        full row groups (small input batches keep the caller's memory low without making small groups)."""
        self._add(batch)

    def close(self) -> list[Path]:
        """Write what is buffered, finish the open shard; returns the files written."""
        if self._pending_rows:
            self._write_group(self._take(self._pending_rows))
        self._finish_shard()
        return self.files

    def abort(self) -> None:
        if self._writer is not None:
            self._writer.close()
            self._writer = None
        if self._tmp is not None:
            self._tmp.unlink(missing_ok=True)

    def __enter__(self) -> "ShardWriter":
        return self

    def __exit__(self, exc_type, *exc) -> None:
        if exc_type is None:
            self.close()
        else:
            self.abort()

    # ------------------------------------------------------------------------------------------ internal
    def _group_limit(self) -> int:
        return min(self.row_group_size, self.rows_per_shard - self._shard_rows)

    def _add(self, batch: pa.RecordBatch) -> None:
        if batch.num_rows:
            self._pending.append(batch)
            self._pending_rows += batch.num_rows
        while self._pending_rows >= self._group_limit():
            self._write_group(self._take(self._group_limit()))

    def _take(self, count: int) -> pa.Table:
        """The first `count` pending rows as one table; the rest stays pending."""
        table = pa.Table.from_batches(self._pending, schema=self._pending[0].schema)
        rest = table.slice(count)
        self._pending, self._pending_rows = rest.to_batches(), rest.num_rows
        return table.slice(0, count).replace_schema_metadata(self.schema.metadata)

    def _write_group(self, table: pa.Table) -> None:
        if self._writer is None:
            self._open_shard()
        if self.fmt == "parquet":
            self._writer.write_table(table, row_group_size=table.num_rows)
        else:
            self._writer.write_table(table)
        self._shard_rows += table.num_rows
        self.rows += table.num_rows
        if self._shard_rows >= self.rows_per_shard:
            self._finish_shard()

    def _open_shard(self) -> None:
        self.out_dir.mkdir(parents=True, exist_ok=True)
        final = layout.normalized_shard(self.out_dir, self.subset, len(self.files), self.fmt)
        self._final, self._tmp = final, temporary_name(final)
        if self.fmt == "arrow":
            self._writer = pa.ipc.new_file(str(self._tmp), self.schema)
            return
        self._writer = pq.ParquetWriter(self._tmp, self.schema, compression=self.compression,
                                        use_dictionary=["dataset", "subset", "conversations.list.element.role"])

    def _finish_shard(self) -> None:
        if self._writer is None:
            return
        self._writer.close()
        os.replace(self._tmp, self._final)
        self.files.append(self._final)
        self.file_rows.append(self._shard_rows)
        self._writer, self._tmp, self._shard_rows = None, None, 0
