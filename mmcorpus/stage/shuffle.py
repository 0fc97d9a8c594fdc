"""A seeded shuffle of the whole stage in bounded memory (an external shuffle by buckets).

Streaming loaders (open_clip, webdataset, anything with a shuffle buffer) only mix what sits near each other
in the shards, so the stage is written in a random order: every shard then mixes the stage's datasets in their
proportions. The order is a pure function of (seed, sample_id): rows are sorted by a 64-bit hash of their id,
salted apart from the sampling priorities (which random:N keeps the smallest of, so sorting by them would put
every random:N sample first). The same seed gives the same order however the rows arrived.

The sort runs in two passes: each row goes to one of `buckets` spill files (Arrow IPC, uncompressed) by the
range its hash falls in, so bucket i holds only hashes below those of bucket i+1; then each bucket, sized by
the caller to stay under ~100k rows, is loaded (memory-mapped), sorted by hash and handed on. Memory holds one
bucket and the rows waiting to be spilled (`buffer_rows`), never the stage.
"""

from __future__ import annotations

import math
import shutil
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pyarrow as pa

from mmcorpus.stage.sampling import priority

KEY = "__shuffle_key"  # the hash column of the spill files, dropped again on the way out
BUCKET_ROWS = 100_000  # a bucket's expected rows (LLaVA text: ~150 MB loaded)
MAX_BUCKETS = 256  # open spill files at once; past 25.6M rows buckets grow beyond BUCKET_ROWS
BUFFER_ROWS = 32_768  # rows held before they are spilled


def shuffle_key(seed: int, sample_id: str) -> int:
    """The 64-bit hash a sample is ordered by."""
    return priority(seed, "shuffle:" + sample_id)


def bucket_count(expected_rows: int, bucket_rows: int = BUCKET_ROWS) -> int:
    return max(1, min(MAX_BUCKETS, math.ceil(expected_rows / max(1, bucket_rows))))


class BucketShuffle:
    """add() record batches of one schema in any order; drain() yields them as batches, sorted by shuffle_key.
    The spill files live in `folder` (created here, removed by drain() or close())."""

    def __init__(self, folder: Path, seed: int, *, buckets: int, buffer_rows: int = BUFFER_ROWS):
        self.folder, self.seed, self.buckets, self.buffer_rows = Path(folder), seed, max(1, buckets), buffer_rows
        self._pending: list[list[pa.RecordBatch]] = [[] for _ in range(self.buckets)]
        self._pending_rows = 0
        self._writers: list[pa.ipc.RecordBatchFileWriter | None] = [None] * self.buckets
        self._schema: pa.Schema | None = None

    def add(self, batch: pa.RecordBatch) -> None:
        if not batch.num_rows:
            return
        keys = np.fromiter((shuffle_key(self.seed, s) for s in batch.column("sample_id").to_pylist()),
                           dtype=np.uint64, count=batch.num_rows)
        keyed = batch.append_column(KEY, pa.array(keys, pa.uint64()))
        self._schema = keyed.schema
        # floor(key * buckets / 2**64) from the top 32 bits: no overflow, and monotonic in the key
        which = ((keys >> np.uint64(32)) * np.uint64(self.buckets)) >> np.uint64(32)
        order = np.argsort(which, kind="stable")
        grouped, ends = keyed.take(pa.array(order)), np.searchsorted(which[order], np.arange(1, self.buckets + 1))
        start = 0
        for bucket, end in enumerate(ends.tolist()):
            if end > start:
                self._pending[bucket].append(grouped.slice(start, end - start))
            start = end
        self._pending_rows += batch.num_rows
        if self._pending_rows >= self.buffer_rows:
            self._spill()

    def drain(self) -> Iterator[pa.RecordBatch]:
        """The rows of every bucket in hash order (the key column removed), then the spill files are gone."""
        self._spill()
        self._close_writers()
        try:
            for bucket in range(self.buckets):
                path = self._path(bucket)
                if path.exists():
                    yield from self._sorted(path)
                    path.unlink()
        finally:
            self.close()

    def close(self) -> None:
        """Remove the spill files (also after a failure)."""
        self._close_writers()
        shutil.rmtree(self.folder, ignore_errors=True)

    # ------------------------------------------------------------------------------------------ internal
    def _path(self, bucket: int) -> Path:
        return self.folder / f"{bucket:05d}.arrow"

    def _spill(self) -> None:
        for bucket, batches in enumerate(self._pending):
            if not batches:
                continue
            if self._writers[bucket] is None:
                self.folder.mkdir(parents=True, exist_ok=True)
                self._writers[bucket] = pa.ipc.new_file(str(self._path(bucket)), self._schema)
            self._writers[bucket].write_table(pa.Table.from_batches(batches, self._schema))
            self._pending[bucket] = []
        self._pending_rows = 0

    def _close_writers(self) -> None:
        for bucket, writer in enumerate(self._writers):
            if writer is not None:
                writer.close()
                self._writers[bucket] = None

    def _sorted(self, path: Path, chunk_rows: int = 8192) -> Iterator[pa.RecordBatch]:
        with pa.memory_map(str(path)) as source:
            table = pa.ipc.open_file(source).read_all()
            order = np.argsort(table.column(KEY).to_numpy(), kind="stable")
            table = table.drop_columns([KEY])
            for start in range(0, len(order), chunk_rows):
                yield from table.take(pa.array(order[start:start + chunk_rows])).combine_chunks().to_batches()
