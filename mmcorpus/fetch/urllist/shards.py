"""On-disk layout and persistence of URL-list shards (DESIGN.md §3).

    <root>/images/<dataset>/<subset>/<shard:05d>/<key>.<ext>   the images
    <root>/images/<dataset>/<subset>/<shard:05d>.parquet       one STATUS_SCHEMA row per input row
    <root>/images/<dataset>/<subset>/<shard:05d>.done          JSON stats, written last: the shard is finished

Shard s holds the rows with index in [s * shard_size, (s + 1) * shard_size). Keys are the row index padded to
KEY_DIGITS digits, unique within a subset. Every file is written under a temporary name unique to the
process and thread, then renamed: a run killed at any point leaves either the old file or the new one,
never half of one, and the done marker exists only if the parquet before it is complete.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from mmcorpus import layout
from mmcorpus.core.atomicio import (
    publishing,
    read_json,
    sweep_stale_temporaries,
    write_json_atomic,
)
from mmcorpus.schema import STATUS_SCHEMA

KEY_DIGITS = 9  # CC12M has 12.4M rows; 9 digits leave room for lists up to a billion rows
MARKER_VERSION = 1


def key_for(index: int) -> str:
    return f"{index:0{KEY_DIGITS}d}"


@dataclass(frozen=True)
class ShardPaths:
    images_root: Path  # <root>/images
    dataset: str
    subset: str
    shard: int

    @property
    def name(self) -> str:
        return layout.shard_name(self.shard)

    @property
    def subset_dir(self) -> Path:
        return layout.subset_images_dir(self.images_root, self.dataset, self.subset)

    @property
    def image_dir(self) -> Path:
        return layout.shard_image_dir(self.subset_dir, self.shard)

    def image(self, key: str, ext: str) -> Path:
        return layout.shard_image(self.subset_dir, self.shard, key, ext)

    @property
    def parquet(self) -> Path:
        return layout.shard_status(self.subset_dir, self.shard)

    @property
    def marker(self) -> Path:
        return layout.shard_marker(self.subset_dir, self.shard)

    def image_relpath(self, key: str, ext: str) -> str:
        """Relative to <root>/images, as stored in the status parquet's image_path."""
        return layout.shard_image_relpath(self.dataset, self.subset, self.shard, key, ext)


def write_status(paths: ShardPaths, rows: list[dict]) -> None:
    table = pa.Table.from_pylist(rows, schema=STATUS_SCHEMA)
    with publishing(paths.parquet) as tmp:
        pq.write_table(table, tmp)


def read_status(paths: ShardPaths) -> dict[str, dict]:
    """The rows of an existing status parquet by key; empty when there is none or it is unreadable."""
    if not paths.parquet.exists():
        return {}
    try:
        table = pq.read_table(paths.parquet, schema=STATUS_SCHEMA)
    except (OSError, pa.ArrowException):  # a foreign or damaged file: fetch the shard again
        return {}
    return {row["key"]: row for row in table.to_pylist()}


def write_marker(paths: ShardPaths, stats: dict) -> None:
    write_json_atomic(paths.marker, {"version": MARKER_VERSION, **stats}, sort_keys=True)


def read_marker(paths: ShardPaths) -> dict | None:
    return read_json(paths.marker)


def remove_stale_temporaries(paths: ShardPaths) -> None:
    """Delete the temporary files killed runs left in this shard's folder and beside it (parquet, marker)."""
    if paths.image_dir.is_dir():
        sweep_stale_temporaries(paths.image_dir)
    if paths.subset_dir.is_dir():
        sweep_stale_temporaries(paths.subset_dir, recursive=False)
