"""URL-list datasets (CC3M, CC12M) -> unified rows, from the URL engine's status parquets.

The TSV itself is not re-read: the engine already wrote one status row per TSV row in
`<root>/images/<dataset>/<subset>/<shard:05d>.parquet` (STATUS_SCHEMA, DESIGN.md §3). `ok` rows become caption
rows (image_path, image_url, caption, width, height; no conversations); failed rows are counted by error in
`job.stats["failed"]` (link rot is normal and reported, P20). `key` is the TSV row index, so
sample_id = `<dataset>/<subset>/<int(key)>` and cc3m/train and cc3m/validation never collide.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Iterator

import pyarrow.parquet as pq

from mmcorpus.normalizers import Job

SHARD_NAME = re.compile(r"^\d{5}\.parquet$")
COLUMNS = ["key", "url", "caption", "status", "error", "width", "height", "image_path"]


def status_files(root: Path, dataset: str, subset: str) -> list[Path]:
    folder = Path(root) / "images" / dataset / subset
    if not folder.is_dir():
        return []
    return sorted(p for p in folder.iterdir() if SHARD_NAME.match(p.name))


def normalize(job: Job) -> Iterator[dict]:
    base = f"{job.dataset}/{job.subset}/"
    failed: dict[str, int] = job.stats.setdefault("failed", {})
    files = status_files(job.root, job.dataset, job.subset)
    job.stats["status_files"] = len(files)
    for path in files:
        for batch in pq.ParquetFile(path).iter_batches(columns=COLUMNS, batch_size=50_000):
            for status in batch.to_pylist():
                if status["status"] != "ok":
                    error = status["error"] or "unknown"
                    failed[error] = failed.get(error, 0) + 1
                    continue
                yield _row(status, base, job)


def _row(status: dict, base: str, job: Job) -> dict:
    return {
        "sample_id": base + str(int(status["key"])),
        "dataset": job.dataset,
        "subset": job.subset,
        "source_id": status["key"],
        "image_path": status["image_path"],
        "image_url": status["url"],
        "caption": status["caption"],
        "conversations": [],
        "width": status["width"],
        "height": status["height"],
    }
