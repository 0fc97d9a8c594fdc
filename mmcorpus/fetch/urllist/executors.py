"""Where the shards of a URL list run: one function signature for every executor (img2dataset's distributor
lesson: multiprocessing / Spark / Ray behind one call).

    run_url_list(spec, subset, tsv_path, root, options, executor="local" | "ray",
                 engine="native" | "img2dataset", ray_address=None, tasks=None, max_retries=3) -> UrlListSummary

- `local`: today's engine in this machine (`fetch_url_list`: a process pool of `options.workers`).
- `ray`: the shard slices run as Ray tasks on an existing cluster. Task t of T fetches the shards with
  index % (N*T) == I + N*t, where I/N is the run's own `--shard` (so a Slurm array of Ray drivers still
  covers every shard exactly once); each task is a plain `fetch_url_list` with `workers=1` (Ray does the
  parallelism) and is retried up to `max_retries` times when it fails or its worker dies: a retried task
  resumes its shards like any re-run. The on-disk result is the same as a local run's: the same code writes
  the same images, status parquets and done markers.
  Which Ray: `ray_address` (`--ray-address`, e.g. ray://head:10001 or head:6379), else `RAY_ADDRESS`, else a
  running local cluster (`ray start --head`; address "auto"), else a new Ray instance on this machine only.
  An already initialised Ray (a library user called ray.init) is used as it is and left running.
  The cluster's nodes must see `root` and the downloaded TSV at the same path (a shared file system, as
  for several machines with `--shard`), and have mmcorpus installed.
- `engine="img2dataset"` hands the rows to img2dataset's `download()` instead (mmcorpus.fetch.urllist.
  img2dataset_engine); the executor then picks its distributor: local -> multiprocessing, ray -> ray,
  pyspark -> pyspark.

Ray and img2dataset are optional extras: they are imported only when asked for, and their absence is a
one-line usage error (exit 2) that says what to install.
"""

from __future__ import annotations

import contextlib
import logging
import os
import sys
import time
from dataclasses import replace
from pathlib import Path

from mmcorpus.core.progress import CountProgress
from mmcorpus.errors import MMCorpusError, UsageError
from mmcorpus.fetch.urllist.img2dataset import (
    DISTRIBUTORS,
    fetch_with_img2dataset,
    import_img2dataset,
)
from mmcorpus.fetch.urllist.native import fetch_url_list
from mmcorpus.fetch.urllist.plan import (
    MALFORMED_LINES_KEPT,
    UrlListOptions,
    UrlListSummary,
    shard_from_env,
)
from mmcorpus.registry import Spec

log = logging.getLogger("mmcorpus.executors")

EXECUTORS = ("local", "ray")
ENGINES = ("native", "img2dataset")
RAY_INSTALL = "pip install 'mmcorpus[ray]'"
DEFAULT_MAX_RETRIES = 3


def run_url_list(spec: Spec, subset: str, tsv_path: str | Path, root: str | Path,
                 options: UrlListOptions | None = None, *, executor: str = "local", engine: str = "native",
                 ray_address: str | None = None, tasks: int | None = None,
                 max_retries: int = DEFAULT_MAX_RETRIES) -> UrlListSummary:
    """Fetch the images of one URL-list file with the chosen engine and executor (module docstring).
    Raises UsageError (exit 2) for an unknown or uninstalled executor/engine and bad options."""
    options = options or UrlListOptions()
    check_available(executor, engine)
    if engine == "img2dataset":
        ray = _import_ray() if executor == "ray" else None
        owned = ray is not None and _connect_ray(ray, ray_address, tasks)  # its ray distributor needs ray.init done
        try:
            return fetch_with_img2dataset(spec, subset, tsv_path, root, options, distributor=DISTRIBUTORS[executor])
        finally:
            if owned:
                ray.shutdown()
    if executor == "local":
        return fetch_url_list(spec, subset, tsv_path, root, options)
    return run_on_ray(spec, subset, tsv_path, root, options, address=ray_address, tasks=tasks,
                      max_retries=max_retries)


# -------------------------------------------------------------------------------------------------- ray


def check_available(executor: str = "local", engine: str = "native") -> None:
    """Fail early (UsageError, exit 2), before any download, when the executor or engine cannot run here."""
    if engine not in ENGINES:
        raise UsageError(f"--engine must be one of {', '.join(ENGINES)}, got {engine!r}")
    if engine == "img2dataset":
        if executor not in DISTRIBUTORS:
            raise UsageError(f"--engine img2dataset runs with --executor {', '.join(DISTRIBUTORS)}, got {executor!r}")
        import_img2dataset()
    elif executor not in EXECUTORS:
        raise UsageError(f"--executor must be one of {', '.join(EXECUTORS)}, got {executor!r}")
    if executor == "ray":
        _import_ray()


def _import_ray():
    try:
        import ray
    except ImportError:
        raise UsageError(f"--executor ray needs Ray, which is not installed: {RAY_INSTALL}") from None
    if not hasattr(ray, "init"):  # a folder named ray (Ray's own /tmp/ray session folder) in the working directory
        raise UsageError(f"'import ray' finds the folder {list(getattr(ray, '__path__', []))}, not Ray: "
                         "run from another directory")
    return ray


def _connect_ray(ray, address: str | None, cpus: int | None) -> bool:
    """Attach to a Ray cluster (module docstring); True when this call initialised Ray (and must shut it down)."""
    if ray.is_initialized():
        return False
    quiet = dict(logging_level=logging.WARNING, log_to_driver=False)
    address = address or os.environ.get("RAY_ADDRESS")
    if address:
        try:  # no extra settings: a Ray Client (ray://) connection accepts few of them
            ray.init(address=address)
        except (ConnectionError, ValueError, RuntimeError) as exc:
            raise MMCorpusError(f"cannot reach the Ray cluster at {address}: {exc}") from None
        return True
    try:
        ray.init(address="auto", **quiet)  # a cluster started on this machine with `ray start --head`
        log.info("ray: connected to the running cluster")
    except ConnectionError:
        log.info("ray: no running cluster found, starting a local Ray instance")
        ray.init(num_cpus=cpus, include_dashboard=False, **quiet)
    return True


def task_shards(shard: tuple[int, int], tasks: int) -> list[tuple[int, int]]:
    """The (I, N) slice of each of `tasks` tasks for a run that owns slice `shard`: shard s goes to task t
    when s % (N*T) == I + N*t, so the tasks split exactly the run's own shards."""
    index, count = shard
    return [(index + count * t, count * tasks) for t in range(tasks)]


def _fetch_slice(spec: Spec, subset: str, tsv_path: str, root: str, options: UrlListOptions) -> UrlListSummary:
    """One Ray task: a plain in-process run of the URL-list engine over its slice of the shards."""
    if not Path(tsv_path).is_file():  # a worker node without the shared file system
        raise MMCorpusError(f"{tsv_path} is not visible on this Ray node ({os.uname().nodename}): "
                            "--executor ray needs the root on a file system every node mounts at the same path")
    return fetch_url_list(spec, subset, tsv_path, root, options)


def run_on_ray(spec: Spec, subset: str, tsv_path: str | Path, root: str | Path, options: UrlListOptions, *,
               address: str | None = None, tasks: int | None = None,
               max_retries: int = DEFAULT_MAX_RETRIES) -> UrlListSummary:
    """The shards of this run as `tasks` Ray tasks (default: the cluster's CPU count, at most one per shard)."""
    options.check()
    if tasks is not None and tasks < 1:
        raise UsageError("--tasks must be at least 1")
    ray = _import_ray()
    started = time.monotonic()
    # Ray's driver threads print task retries and worker errors on stdout, which carries `fetch --json`
    with contextlib.redirect_stdout(sys.stderr):
        return _run_on_ray(ray, spec, subset, tsv_path, root, options, address, tasks, max_retries, started)


def _run_on_ray(ray, spec: Spec, subset: str, tsv_path: str | Path, root: str | Path, options: UrlListOptions,
                address: str | None, tasks: int | None, max_retries: int, started: float) -> UrlListSummary:
    owned = _connect_ray(ray, address, tasks)
    try:
        tasks = tasks or _default_tasks(ray, spec, subset, options)
        base = replace(options, workers=1, progress=False)
        remote = ray.remote(num_cpus=1, max_retries=max_retries, retry_exceptions=True)(_fetch_slice)
        pending = {
            remote.remote(spec, subset, str(Path(tsv_path).resolve()), str(Path(root).resolve()),
                          replace(base, shard=slice_)): slice_
            for slice_ in task_shards(options.shard or shard_from_env(), tasks)
        }
        log.info("ray: %d tasks for %s/%s (%d retries each)", len(pending), spec.name, subset, max_retries)
        progress = CountProgress(f"{spec.name}/{subset} (ray, {tasks} tasks)", enabled=options.progress)
        try:
            parts, failures = _gather(ray, pending, progress)
        finally:
            progress.close()
    finally:
        if owned:
            ray.shutdown()
    if failures:
        raise MMCorpusError(f"ray: {len(failures)} of {tasks} tasks failed after {max_retries} retries "
                            f"(finished shards are kept; run again to resume): {failures[0]}")
    summary = merge_summaries(spec.name, subset, parts)
    summary.seconds = time.monotonic() - started
    return summary


def _default_tasks(ray, spec: Spec, subset: str, options: UrlListOptions) -> int:
    cpus = max(1, int(ray.cluster_resources().get("CPU", 1)))
    file_spec = spec.files.get(subset)
    rows = options.limit or options.total_hint or (file_spec.records if file_spec is not None else None)
    if rows:  # more tasks than this run's shards would only read the list for nothing
        slices = (options.shard or shard_from_env())[1]
        cpus = min(cpus, max(1, -(-rows // options.shard_size // slices)))
    return cpus


def _gather(ray, pending: dict, progress: CountProgress) -> tuple[list[UrlListSummary], list[str]]:
    parts, failures = [], []
    waiting = list(pending)
    while waiting:
        done, waiting = ray.wait(waiting, num_returns=1)
        for ref in done:
            index, count = pending[ref]
            try:
                part = ray.get(ref)
            except Exception as exc:  # RayTaskError, WorkerCrashedError... after the retries
                failures.append(f"task {index}/{count}: {str(exc).strip().splitlines()[-1]}")
                log.error("ray: task %d/%d failed: %s", index, count, exc)
                continue
            parts.append(part)
            progress.update(part.ok, part.rows - part.ok, part.bytes)  # a task reports when it ends
            log.info("ray: task %d/%d done: %d rows, %d ok, shards %s", index, count, part.rows, part.ok,
                     part.shards_done or "-")
    return parts, failures


def merge_summaries(dataset: str, subset: str, parts: list[UrlListSummary]) -> UrlListSummary:
    """One summary for the whole run from the tasks' summaries (their slices are disjoint)."""
    total = UrlListSummary(dataset=dataset, subset=subset)
    for part in parts:
        total.add_shard(vars(part))  # rows, ok, bytes, failed by error, fetched, fetched_ok
        for reason, count in part.malformed.items():
            total.malformed[reason] = total.malformed.get(reason, 0) + count
        for reason, lines in part.malformed_lines.items():
            total.malformed_lines.setdefault(reason, []).extend(lines)
        total.shards_done += part.shards_done
        total.shards_skipped += part.shards_skipped
        total.seconds = max(total.seconds, part.seconds)
    # each task kept its first lines per reason, so the first of their union are the run's first
    total.malformed_lines = {reason: sorted(lines)[:MALFORMED_LINES_KEPT] for reason, lines in total.malformed_lines.items()}
    total.shards_done.sort()
    total.shards_skipped.sort()
    return total
