"""URL-list datasets (CC3M, CC12M) -> unified rows, from the URL engine's status parquets.

The TSV itself is not re-read: the engine already wrote one status row per TSV row in
`<root>/images/<dataset>/<subset>/<shard:05d>.parquet` (STATUS_SCHEMA, DESIGN.md §3). `ok` rows become caption
rows (image_path, image_url, caption, width, height; no conversations); failed rows are counted by error in
`job.stats["failed"]` (link rot is normal and reported, P20). `key` is the TSV row index, so
sample_id = `<dataset>/<subset>/<key without its zero padding>` and cc3m/train and cc3m/validation never collide.
"""

from __future__ import annotations

from pathlib import Path
from typing import Iterator

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from mmcorpus import layout
from mmcorpus.normalize.job import Job
from mmcorpus.schema import UNIFIED_SCHEMA

COLUMNS = ["key", "url", "caption", "status", "error", "width", "height", "image_path"]


def status_files(root: Path, dataset: str, subset: str) -> list[Path]:
    return layout.shard_status_files(layout.subset_images_dir(layout.images_root(root), dataset, subset))


def has_input(job: Job) -> bool:
    """Whether the URL engine has written any status shard for this subset yet."""
    return bool(status_files(job.root, job.dataset, job.subset))


def normalize(job: Job) -> Iterator[pa.RecordBatch]:
    """UNIFIED_SCHEMA batches of the ok rows; failed rows counted in job.stats["failed"] by error."""
    failed: dict[str, int] = job.stats.setdefault("failed", {})
    files = status_files(job.root, job.dataset, job.subset)
    job.stats["status_files"] = len(files)
    for path in files:
        for status in pq.ParquetFile(path).iter_batches(columns=COLUMNS, batch_size=50_000):
            ok = pc.equal(status.column("status"), "ok")
            for error, count in _failures(status.filter(pc.invert(ok))).items():
                failed[error] = failed.get(error, 0) + count
            yield _unified(status.filter(ok), job)


def _failures(rows: pa.RecordBatch) -> dict[str, int]:
    errors = pc.fill_null(rows.column("error"), "unknown")
    return {item["values"]: item["counts"] for item in pc.value_counts(errors).to_pylist()}


def _unified(ok: pa.RecordBatch, job: Job) -> pa.RecordBatch:
    n = ok.num_rows
    base = f"{job.dataset}/{job.subset}/"
    keys = ok.column("key")
    columns = {
        "sample_id": pa.array([base + (key.lstrip("0") or "0") for key in keys.to_pylist()], pa.string()),
        "dataset": pa.array([job.dataset] * n, pa.string()),
        "subset": pa.array([job.subset] * n, pa.string()),
        "source_id": keys,
        "source_id_int": pa.nulls(n, pa.int64()),
        "image_path": ok.column("image_path"),
        "image_url": ok.column("url"),
        "caption": ok.column("caption"),
        "conversations": pa.array([[]] * n, UNIFIED_SCHEMA.field("conversations").type),
        "width": ok.column("width"),
        "height": ok.column("height"),
    }
    return pa.RecordBatch.from_arrays([columns[f.name] for f in UNIFIED_SCHEMA], schema=UNIFIED_SCHEMA)
