"""Normalize a fetched dataset into <root>/normalized/<dataset>/<subset>-NNNNN.parquet plus a report.

For each annotation file of the spec (role `annotations`; metadata files are not normalized) this runs the
format's normalizer, checks every image path against <root>/images (resolve.py: missing images are counted,
not fatal), and writes unified parquet shards. Output is staged in a hidden folder and moved over the old
shards only when the whole subset is written; `_<subset>.report.json` is written last.

Big JSON files are cut into byte ranges of whole records (the normalizer's `split_points`) and normalized by
one process per CPU, because parsing 1 GB of JSON is CPU-bound. Record indices, and therefore sample_ids, are
global: range 0 writes its shards directly; later ranges spill Arrow files in the staging folder, which are
turned into parquet with shifted sample_ids (again by all processes) once the record counts before them are
known. If a range fails (a bad cut, or a broken file) the subset is redone in one process, which also gives
the canonical error. Captions are filled (llava normalizer) when the file (or, by default, its dataset) serves the pretrain stage.
"""

from __future__ import annotations

import gc
import multiprocessing
import os
import shutil
import time
from concurrent.futures import ProcessPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import pyarrow as pa

from mmcorpus import layout
from mmcorpus.core.atomicio import pid_alive, write_json_atomic
from mmcorpus.core.parquet import (
    ROW_GROUP_SIZE,
    ROWS_PER_SHARD,
    ShardWriter,
    file_metadata,
)
from mmcorpus.errors import BadInputError
from mmcorpus.normalize.formats import normalizer_module
from mmcorpus.normalize.job import Job, Rejects
from mmcorpus.normalize.resolve import MAX_EXAMPLES, ImageResolver, resolve_images

MIN_SPLIT_BYTES = 64 << 20  # below this, one process is as fast as several
MAX_WORKERS = 8
# Normalized files are an intermediate (stages are built from them and written with zstd): snappy writes in
# half the CPU time of zstd, for ~40 % larger files.
COMPRESSION = "snappy"
SPILL_BATCH_ROWS = 2_000


def normalize_dataset(spec, root: Path, subsets: list[str] | None = None, *, workers: int | None = None,
                      row_group_size: int = ROW_GROUP_SIZE, rows_per_shard: int = ROWS_PER_SHARD) -> dict:
    """Normalize the fetched annotation files of `spec` (all, or the named subsets); return the report.

    Report: {"dataset", "subsets": {subset: {"status": "ok" | "not_downloaded", "rows", "records",
    "rejected", "rejects": {reason: {"count", "examples"}}, "images": {...}, "files", "seconds", ...}}}.
    """
    root = Path(root)
    report = {"dataset": spec.name, "subsets": {}}
    for key, file_spec in spec.files.items():
        if file_spec.role != "annotations" or (subsets is not None and key not in subsets):
            continue
        report["subsets"][key] = normalize_subset(spec, file_spec, root, workers=workers,
                                                  row_group_size=row_group_size, rows_per_shard=rows_per_shard)
    return report


def normalize_subset(spec, file_spec, root: Path, *, workers: int | None = None,
                     row_group_size: int = ROW_GROUP_SIZE, rows_per_shard: int = ROWS_PER_SHARD) -> dict:
    started = time.perf_counter()
    module = normalizer_module(spec.format_type)
    path = layout.download_path(root, spec.name, file_spec.filename)
    plan = _Plan(spec, file_spec, root, path, row_group_size, rows_per_shard)
    if not module.has_input(plan.job()):
        return {"status": "not_downloaded", "input": str(path)}
    ranges = _ranges(module, path, workers)
    _remove_stale_staging(plan)
    staging = layout.normalize_staging(plan.out_dir, file_spec.key, os.getpid())
    try:
        parts = _run_parallel(plan, staging, ranges) if len(ranges) > 1 else None
        if parts is None:
            shutil.rmtree(staging, ignore_errors=True)
            parts = [_run_part(plan, staging, 0, (0, None))]
        files = _publish(plan, staging, parts)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    report = _subset_report(plan, parts, files, time.perf_counter() - started)
    # "_" prefix: pyarrow dataset readers skip it, so the folder still reads as one table
    write_json_atomic(layout.normalize_report(plan.root, plan.spec.name, file_spec.key), report, indent=1)
    return report


def _remove_stale_staging(plan: "_Plan") -> None:
    """Staging folders of killed runs (their pid is gone) would keep GBs of spill files forever."""
    for folder in layout.normalize_stagings(plan.out_dir, plan.subset):
        pid = folder.name.rsplit("-", 1)[-1]
        if pid.isdigit() and not pid_alive(int(pid)):
            shutil.rmtree(folder, ignore_errors=True)


@dataclass
class _Plan:
    """What every part of one subset shares (picklable: sent to worker processes)."""

    spec: object
    file_spec: object
    root: Path
    path: Path
    row_group_size: int
    rows_per_shard: int
    out_dir: Path = field(init=False)

    def __post_init__(self):
        self.out_dir = layout.normalized_dir(self.root, self.spec.name)

    @property
    def subset(self) -> str:
        return self.file_spec.key

    def job(self, byte_range=(0, None)) -> Job:
        start, end = byte_range
        return Job(dataset=self.spec.name, subset=self.subset, path=self.path, root=self.root,
                   image_prefix=self.file_spec.image_prefix, captions="pretrain" in (self.file_spec.stages or self.spec.stages),
                   start=start, end=end)

    def writer(self, folder: Path, name: str, **options) -> ShardWriter:
        meta = file_metadata(self.spec, self.subset, self.file_spec.urls)
        options = {"row_group_size": self.row_group_size, "rows_per_shard": self.rows_per_shard,
                   "compression": COMPRESSION, **options}
        return ShardWriter(folder, name, meta, **options)


# ------------------------------------------------------------------------------------------------ parts


def _ranges(module, path: Path, workers: int | None) -> list[tuple[int, int | None]]:
    workers = workers or min(os.cpu_count() or 1, MAX_WORKERS)
    if workers < 2 or not hasattr(module, "split_points") or path.stat().st_size < MIN_SPLIT_BYTES:
        return [(0, None)]
    cuts = module.split_points(path, workers)
    return list(zip(cuts, cuts[1:]))


def _run_part(plan: _Plan, staging: Path, index: int, byte_range) -> dict:
    """Normalize one byte range. Range 0 writes final shards; others spill one Arrow file (record indices
    local to the range) for _finish_spill."""
    job = plan.job(byte_range)
    resolver = ImageResolver(layout.images_root(plan.root))
    if index == 0:
        writer = plan.writer(staging, "part000")
    else:
        # A temporary file: small record batches, so little is gathered in memory before it is written.
        writer = plan.writer(staging, f"spill{index:03d}", fmt="arrow", rows_per_shard=1 << 62,
                             row_group_size=SPILL_BATCH_ROWS)
    with writer, _no_cyclic_gc():
        for batch in normalizer_module(plan.spec.format_type).normalize(job):
            writer.write_batch(resolve_images(batch, resolver, job.rejects))
    return {"index": index, "files": writer.files, "rows": writer.rows, "records": job.rejects.total + writer.rows,
            "rejects": job.rejects, "stats": job.stats, "images": resolver.report()}


@contextmanager
def _no_cyclic_gc():
    """Parsed records hold no reference cycles (refcounting frees them); the cyclic collector would only
    re-scan millions of short-lived dicts and lists: ~10 % of the CPU time of a normalize."""
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()


def _part_worker(plan: _Plan, staging: Path, index: int, byte_range) -> dict:
    try:
        return _run_part(plan, staging, index, byte_range)
    except BadInputError as exc:
        return {"index": index, "error": str(exc)}


def _run_parallel(plan: _Plan, staging: Path, ranges) -> list[dict] | None:
    """Range 0 in this process, the others in worker processes; None when any range failed (the caller
    then redoes the file in one go). ProcessPoolExecutor, not multiprocessing.Pool: a worker killed by the
    OOM killer raises BrokenProcessPool instead of hanging the run forever."""
    context = multiprocessing.get_context("fork")
    with ProcessPoolExecutor(len(ranges) - 1, mp_context=context) as pool:
        parts = _map_here_and_in(pool, _part_worker, [(plan, staging, i, r) for i, r in enumerate(ranges)])
        if any("error" in p for p in parts):
            return None
        _shift_indices(parts)
        # The spills are cut in as many slices as there are processes, so this second step is parallel too.
        jobs = [(plan, staging, part, lo, hi) for part in parts[1:] for lo, hi in _slices(part, len(ranges))]
        outputs = _map_here_and_in(pool, _finish_spill, jobs)
    for part in parts[1:]:
        part["files"] = []
    for (_, _, part, _, _), files in zip(jobs, outputs):
        part["files"] += files
    return parts


def _map_here_and_in(pool: ProcessPoolExecutor, function, jobs: list[tuple]) -> list:
    """function(*job) for every job, in order: the first in this process, the others in the pool."""
    later = [pool.submit(function, *job) for job in jobs[1:]]
    return ([function(*jobs[0])] if jobs else []) + [future.result() for future in later]


def _shift_indices(parts: list[dict]) -> None:
    """Give every part its first global record index and move its reject examples there."""
    offset = 0
    for part in parts:
        part["first_index"] = offset
        rejects: Rejects = part["rejects"]
        rejects.examples = {r: [i + offset for i in ex] for r, ex in rejects.examples.items()}
        offset += part["records"]


def _slices(part: dict, count: int) -> list[tuple[int, int]]:
    """Contiguous ranges of the record batches of a part's spill file."""
    if not part["files"]:
        return []
    with pa.OSFile(str(part["files"][0])) as source:
        batches = pa.ipc.open_file(source).num_record_batches
    step = max(1, -(-batches // count))
    return [(lo, min(lo + step, batches)) for lo in range(0, batches, step)]


def _finish_spill(plan: _Plan, staging: Path, part: dict, lo: int, hi: int) -> list[Path]:
    """Batches lo..hi of a spill file as parquet shards whose sample_ids carry the global record index."""
    base = f"{plan.spec.name}/{plan.subset}/"
    writer = plan.writer(staging, f"part{part['index']:03d}-{lo:06d}")
    with writer, pa.OSFile(str(part["files"][0])) as source:
        reader = pa.ipc.open_file(source)
        for i in range(lo, hi):
            writer.write_batch(_shift_sample_ids(reader.get_batch(i), base, part["first_index"]))
    return writer.files


def _shift_sample_ids(batch: pa.RecordBatch, base: str, offset: int) -> pa.RecordBatch:
    """`<base><local index>` -> `<base><local index + offset>`."""
    cut = len(base)
    ids = [base + str(int(s[cut:]) + offset) for s in batch.column(0).to_pylist()]
    return batch.set_column(0, batch.schema.field(0), pa.array(ids, pa.string()))


# --------------------------------------------------------------------------------------------- publish


def _publish(plan: _Plan, staging: Path, parts: list[dict]) -> list[Path]:
    """Number the staged shards in record order and move them over the old output of this subset."""
    staged = [f for part in sorted(parts, key=lambda p: p["index"]) for f in part["files"]]
    plan.out_dir.mkdir(parents=True, exist_ok=True)
    final = []
    # Each rename is atomic; a kill between two of them leaves new and old shards side by side. What makes the
    # next prepare normalize again is that its inputs marker (prepare.py) was removed before this run began.
    for number, path in enumerate(staged):
        target = layout.normalized_shard(plan.out_dir, plan.subset, number)
        os.replace(path, target)
        final.append(target)
    for old in layout.normalized_shards(plan.out_dir, plan.subset):
        if old not in final:
            old.unlink()  # shards of a previous, longer output
    return final


def _subset_report(plan: _Plan, parts: list[dict], files: list[Path], seconds: float) -> dict:
    rejects = Rejects()
    for part in parts:
        for reason, count in part["rejects"].counts.items():
            rejects.counts[reason] = rejects.counts.get(reason, 0) + count
            rejects.examples.setdefault(reason, [])
            merged = rejects.examples[reason] + part["rejects"].examples[reason]
            rejects.examples[reason] = merged[: rejects.max_examples]
    report = {
        "status": "ok",
        "dataset": plan.spec.name,
        "subset": plan.subset,
        "input": str(plan.path),
        "records": sum(p["records"] for p in parts),
        "rows": sum(p["rows"] for p in parts),
        "rejected": rejects.total,
        "rejects": rejects.as_dict(),
        "images": _merge_images([p["images"] for p in parts]),
        "files": [f.name for f in files],
        "parts": len(parts),
        "seconds": round(seconds, 2),
    }
    stats = [p["stats"] for p in parts if p["stats"]]
    if stats:
        report["source"] = stats[0]
    return report


def _merge_images(reports: list[dict]) -> dict:
    merged = {"found": 0, "missing": 0, "renamed": 0, "missing_by_folder": {}, "format_mismatch": {}}
    for r in reports:
        for key in ("found", "missing", "renamed"):
            merged[key] += r[key]
        for folder, entry in r["missing_by_folder"].items():
            into = merged["missing_by_folder"].setdefault(folder, {"count": 0, "examples": []})
            into["count"] += entry["count"]
            into["examples"] = (into["examples"] + entry["examples"])[:MAX_EXAMPLES]
        for kind, count in r["format_mismatch"].items():
            merged["format_mismatch"][kind] = merged["format_mismatch"].get(kind, 0) + count
    return merged


def dataset_image_paths(spec, root: Path, subsets: list[str] | None = None):
    """The image paths a fetched dataset's annotation files reference (relative to <root>/images; None for
    text-only records), for fetching collections by need (collections.collections_needed)."""
    module = normalizer_module(spec.format_type)
    for key, file_spec in spec.files.items():
        if file_spec.role != "annotations" or (subsets is not None and key not in subsets):
            continue
        plan = _Plan(spec, file_spec, Path(root), layout.download_path(root, spec.name, file_spec.filename),
                     ROW_GROUP_SIZE, ROWS_PER_SHARD)
        if spec.format_type == "tsv" or not module.has_input(plan.job()):
            continue
        for batch in module.normalize(plan.job()):
            yield from batch.column("image_path").to_pylist()
