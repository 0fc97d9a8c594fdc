"""The URL-list engine: a TSV of (caption, url) rows -> images on disk + one status row per input row.

Entry point: `fetch_url_list(spec, subset, tsv_path, root, options) -> UrlListSummary`.

How the work is cut (img2dataset's lesson: the shard is the unit of work):
- rows are read in a stream (mmcorpus.fetch.urllist.reader) and grouped into shards of `shard_size` rows by row index;
- `--shard I/N` keeps shards with index % N == I (defaults from SLURM_ARRAY_TASK_ID / _COUNT);
- a shard whose done marker covers its rows is skipped; otherwise a worker process fetches it with a
  pool of network threads while one thread per process validates, resizes and stores what they bring
  (ShardWorker._fetch_and_store), then writes its status parquet and, last, its done marker
  (mmcorpus.fetch.urllist.shards);
- rows already `ok` in an earlier status parquet are kept, final failures too; `retry_failed` re-fetches
  the transient ones (schema.is_transient), never 404/410.
Within a shard each distinct URL is fetched once; duplicate rows get their own copy of the file.

How `mmcorpus fetch` calls it:

    rewrite = UrlRewriter.from_args(mirror_args)     # mmcorpus.fetch.urls: --mirror FROM=TO ..., HF_ENDPOINT
    options = UrlListOptions(workers=..., threads=..., timeout=..., resize=None or SIZE, limit=...,
                             shard=(I, N) or None, retry_failed=..., allow_private_hosts=...,
                             rewrite=rewrite, mirror_hosts=frozenset(rewrite.mirror_hosts()),
                             progress=not quiet, total_hint=file_spec.records)
    summary = fetch_url_list(spec, subset, <root>/downloads/<name>/<filename>, root, options)
    summary.to_dict()  # for --json; summary.success_rate for --min-success
"""

from __future__ import annotations

import hashlib
import multiprocessing
import queue as queue_module
import threading
import time
from concurrent.futures import (
    FIRST_COMPLETED,
    Future,
    ProcessPoolExecutor,
    ThreadPoolExecutor,
    as_completed,
    wait,
)
from pathlib import Path
from typing import Callable, Iterator

from mmcorpus.core.atomicio import write_bytes_atomic
from mmcorpus.core.imaging import ImageRejected, prepare
from mmcorpus.core.progress import CountProgress
from mmcorpus.errors import (
    BadInputError,
    DiskFullError,
    disk_full_message,
    is_disk_full,
)
from mmcorpus.fetch.urllist.fetcher import Fetched, Fetcher
from mmcorpus.fetch.urllist.plan import (
    ShardJob,
    UrlListOptions,
    UrlListSummary,
    failed_row,
    keep_previous,
    recorded_policy,
    shard_already_done,
    shard_from_env,
    shard_jobs,
    shard_stats,
    stored_with_same_resize,
)
from mmcorpus.fetch.urllist.reader import Row
from mmcorpus.fetch.urllist.shards import (
    ShardPaths,
    key_for,
    read_status,
    remove_stale_temporaries,
    write_marker,
    write_status,
)
from mmcorpus.registry import Spec

# ------------------------------------------------------------------------------------------------ entry

DISK_FULL_HINT = "free space and re-run; finished shards are kept"


def fetch_url_list(spec: Spec, subset: str, tsv_path: str | Path, root: str | Path,
                   options: UrlListOptions | None = None) -> UrlListSummary:
    """Fetch the images of one URL-list file (`spec.files[subset]`, already downloaded at `tsv_path`)
    into <root>/images/<spec.name>/<subset>/ and return what happened. Idempotent: re-running finishes
    what an interrupted run left and skips finished shards.

    Rows are read as `shard_jobs` says. Raises UsageError for bad options; link rot is reported, never raised.
    """
    options = options or UrlListOptions()
    options.check()
    if not Path(tsv_path).is_file():
        raise BadInputError(f"{tsv_path}: URL list not found (fetch the dataset's files first)")
    file_spec = spec.files.get(subset)
    shard = options.shard or shard_from_env()
    summary = UrlListSummary(dataset=spec.name, subset=subset)
    expected = options.limit or options.total_hint or (file_spec.records if file_spec is not None else None)
    progress = CountProgress(f"{spec.name}/{subset}", total=expected and -(-expected // shard[1]),
                             enabled=options.progress)
    started = time.monotonic()
    jobs = shard_jobs(spec, subset, Path(tsv_path), Path(root), options, summary)
    try:
        if options.workers <= 1:
            _run_here(jobs, options, summary, progress)
        else:
            _run_pool(jobs, options, summary, progress)
    except OSError as exc:
        if not is_disk_full(exc):
            raise
        # Every file is published whole or not at all, and a shard is done only with its marker: a re-run
        # once there is room redoes the unfinished shards and skips the rest.
        raise DiskFullError(disk_full_message(exc, DISK_FULL_HINT)) from None
    finally:
        progress.close()
        summary.seconds = time.monotonic() - started
    summary.shards_done.sort()
    summary.shards_skipped.sort()
    return summary


def _needs_run(job: ShardJob, options: UrlListOptions, summary: UrlListSummary) -> bool:
    """True when the job must run; a finished shard is counted from its marker instead."""
    marker = shard_already_done(job, options)
    if marker is None:
        return True
    summary.add_shard({**marker, "fetched": 0, "fetched_ok": 0})
    summary.shards_skipped.append(job.paths.shard)
    return False


def _finish(stats: dict, summary: UrlListSummary) -> None:
    summary.add_shard(stats)
    summary.shards_done.append(stats["shard"])


def _run_here(jobs: Iterator[ShardJob], options: UrlListOptions, summary: UrlListSummary,
              progress: CountProgress) -> None:
    """workers=1: everything in this process (tests, debugging, tiny lists)."""
    worker = ShardWorker(options)
    try:
        for job in jobs:
            if _needs_run(job, options, summary):
                _finish(worker.run(job, progress.update), summary)
    finally:
        worker.close()


def _run_pool(jobs: Iterator[ShardJob], options: UrlListOptions, summary: UrlListSummary,
              progress: CountProgress) -> None:
    """One process per worker, each fetching one shard at a time with its own thread pool. At most two
    shards per worker are read ahead, so memory does not grow with the length of the list."""
    # fork: workers inherit the options (including a user's rewrite callable) without pickling them.
    context = multiprocessing.get_context("fork")
    _load_lazy_imports()
    updates = context.Queue()
    pending: set[Future] = set()

    def settle() -> None:
        """Wait up to half a second for a shard to finish, keeping the progress display moving."""
        nonlocal pending
        done, pending = wait(pending, timeout=0.5, return_when=FIRST_COMPLETED)
        _drain(updates, progress)
        for future in done:
            _finish(future.result(), summary)

    with ProcessPoolExecutor(options.workers, mp_context=context, initializer=_init_worker,
                             initargs=(options, updates)) as pool:
        try:
            for job in jobs:
                if not _needs_run(job, options, summary):
                    continue
                while len(pending) >= 2 * options.workers:
                    settle()
                pending.add(pool.submit(_run_in_worker, job))
            while pending:
                settle()
        except BaseException:  # a shard failed (a full disk): start no more, let the running ones end
            for future in pending:
                future.cancel()
            raise
    _drain(updates, progress)


def _load_lazy_imports() -> None:
    """pyarrow imports pandas (when it is installed) the first time it converts Python objects: ~0.5 s of CPU.
    Done once here, before the fork, instead of once in every worker process when it writes its first
    status parquet."""
    import pyarrow as pa

    pa.array([0])


def _drain(updates, progress: CountProgress) -> None:
    while True:
        try:
            ok, failed, nbytes = updates.get_nowait()
        except queue_module.Empty:
            return
        progress.update(ok, failed, nbytes)


# --------------------------------------------------------------------------------------- worker process

_WORKER: "ShardWorker | None" = None
_UPDATES = None


def _init_worker(options: UrlListOptions, updates) -> None:
    global _WORKER, _UPDATES
    _WORKER, _UPDATES = ShardWorker(options), updates


def _run_in_worker(job: ShardJob) -> dict:
    batch = _Batcher(_UPDATES.put)
    try:
        return _WORKER.run(job, batch.update)
    finally:
        batch.flush()


class _Batcher:
    """Sends progress to the parent a few times a second, not once per image."""

    def __init__(self, send: Callable[[tuple], None], every: float = 0.25):
        self.send, self.every = send, every
        self.counts = [0, 0, 0]
        self.last = time.monotonic()

    def update(self, ok: int, failed: int, nbytes: int) -> None:
        self.counts = [self.counts[0] + ok, self.counts[1] + failed, self.counts[2] + nbytes]
        if time.monotonic() - self.last >= self.every:
            self.flush()

    def flush(self) -> None:
        if any(self.counts):
            self.send(tuple(self.counts))
        self.counts, self.last = [0, 0, 0], time.monotonic()


class ShardWorker:
    """Fetches shards: one Fetcher (keep-alive connections) and one thread pool for the process's life."""

    def __init__(self, options: UrlListOptions):
        self.options = options
        self.fetcher = Fetcher(options.fetch_policy())
        self.pool = ThreadPoolExecutor(options.threads, thread_name_prefix="fetch")

    def close(self) -> None:
        self.pool.shutdown(wait=True)
        self.fetcher.close()

    def run(self, job: ShardJob, report: Callable[[int, int, int], None]) -> dict:
        paths = job.paths
        paths.image_dir.mkdir(parents=True, exist_ok=True)
        remove_stale_temporaries(paths)
        status = self._kept_rows(job)
        todo: dict[str, list[Row]] = {}
        for row in job.rows:
            if key_for(row.index) not in status:
                todo.setdefault(row.url, []).append(row)
        fetched, fetched_ok = self._fetch_and_store(paths, todo, status, report)
        rows = [status[key_for(row.index)] for row in job.rows]
        write_status(paths, rows)
        stats = _shard_stats(job, rows, fetched, fetched_ok, self.options)
        write_marker(paths, stats)  # last: the shard counts as done only from here on
        return stats

    def _fetch_and_store(self, paths: ShardPaths, todo: dict[str, list[Row]], status: dict[str, dict],
                         report: Callable[[int, int, int], None]) -> tuple[int, int]:
        """Fetch every URL of `todo` on the network threads; validate and store them on this thread.

        One CPU thread per process: with dozens of threads decoding at once, caches and the allocator
        thrash (measured on 2 cores: a fifth fewer images/s with resize, docs/benchmarks.md). `window`
        bounds the bodies fetched but not yet stored, so memory stays flat when the CPU is the bottleneck.
        Returns (rows fetched, rows stored ok); adds their status rows to `status`.
        """
        window = threading.Semaphore(2 * self.options.threads)
        futures = [self.pool.submit(self._fetch_one, window, url, rows) for url, rows in todo.items()]
        fetched = fetched_ok = 0
        try:
            for future in as_completed(futures):
                rows, response = future.result()
                try:
                    results = self._store(paths, rows, response)
                finally:
                    window.release()
                ok = sum(r["status"] == "ok" for r in results)
                report(ok, len(results) - ok, sum(r["bytes"] or 0 for r in results if r["status"] == "ok"))
                fetched, fetched_ok = fetched + len(results), fetched_ok + ok
                status.update((r["key"], r) for r in results)
        except BaseException:  # e.g. a full disk: let the queued fetches end instead of waiting forever
            for future in futures:
                future.cancel()
            for _ in futures:
                window.release()
            raise
        return fetched, fetched_ok

    def _kept_rows(self, job: ShardJob) -> dict[str, dict]:
        """Rows of an earlier status parquet that need no new fetch."""
        kept = {}
        previous = read_status(job.paths)
        recorded = recorded_policy(job.paths)  # before stored_with_same_resize may remove the marker
        same_form = stored_with_same_resize(job.paths, self.options)
        for row in job.rows:
            key = key_for(row.index)
            old = previous.get(key)
            if old is not None and old["url"] == row.url and keep_previous(old, job.paths.images_root,
                                                                           self.options, same_form, recorded):
                kept[key] = {**old, "caption": row.caption}
        return kept

    def _fetch_one(self, window: threading.Semaphore, url: str, rows: list[Row]) -> tuple[list[Row], Fetched]:
        """Network thread: fetch one URL once the window has room for its body."""
        window.acquire()
        try:
            rewrite = self.options.rewrite
            return rows, self.fetcher.fetch(rewrite(url) if rewrite else url)
        except BaseException:
            window.release()
            raise

    def _store(self, paths: ShardPaths, rows: list[Row], fetched: Fetched) -> list[dict]:
        """CPU thread: validate the fetched bytes, store them once per row that names the URL."""
        if fetched.error:
            return [failed_row(row, fetched.error, fetched.http_status) for row in rows]
        try:
            prepared = prepare(fetched.data, self.options.resize, self.options.max_pixels, self.options.image_check)
        except ImageRejected as rejected:
            return [failed_row(row, rejected.error, fetched.http_status) for row in rows]
        digest = hashlib.sha256(prepared.data).hexdigest()
        out = []
        for row in rows:
            key = key_for(row.index)
            write_bytes_atomic(paths.image(key, prepared.ext), prepared.data)
            out.append(dict(
                key=key, url=row.url, caption=row.caption, status="ok", error=None,
                http_status=fetched.http_status, bytes=len(prepared.data), width=prepared.width,
                height=prepared.height, image_path=paths.image_relpath(key, prepared.ext), sha256=digest,
            ))
        return out


def _shard_stats(job: ShardJob, rows: list[dict], fetched: int, fetched_ok: int, options: UrlListOptions) -> dict:
    return shard_stats(job.paths.shard, job.end, rows, fetched, fetched_ok, job.malformed, options.resize,
                       options.policy())


