"""`--engine img2dataset`: img2dataset's `download()` fetches the images of a URL list, then its output is
converted into our layout, so `status`, `verify` and `prepare` see the same tree as after the native engine.

img2dataset is optional and never imported at module import time. It pins old opencv / albumentations /
webdataset, so install it in a virtual environment of its own together with mmcorpus (scripts/ci/
test_img2dataset.sh does exactly that); when it is missing, a one-line usage error says so (exit 2).

How a run goes (the rows are read and written one shard at a time; what stays in memory until img2dataset
returns is each planned shard's row indices, 8 bytes a row):
1. Our TSV is read with our own reader (mmcorpus.fetch.urllist.reader: no header, no quoting, the spec's column order, the
   malformed lines reported), the rows are cut into OUR shards (`shard_size`, `--shard I/N`, `--limit`).
   A shard whose done marker covers it is skipped; rows already ok (or finally failed) in an earlier status
   parquet are kept, as the native engine does. URLs our policy refuses without a network access (not
   http/https, an IP literal that is loopback/private/link-local and no --mirror target) become `blocked_url`
   here and are never handed over.
2. The remaining rows of each shard go to one parquet file of img2dataset's input (columns url, caption,
   mm_index = our row index, mm_url = the URL before --mirror rewriting). Parquet, not TSV: img2dataset reads
   TSV with CSV quoting rules, which captions with quotes break. One file per shard makes each img2dataset
   shard exactly one of ours.
3. `img2dataset.download(output_format="files", distributor=multiprocessing|ray|pyspark, ...)` writes
   `<work>/<i2d shard:05d>/<i2d key>.jpg` (+ .txt, .json) and `<work>/<i2d shard:05d>.parquet` with one row
   per sample (failures included) and `<i2d shard>_stats.json` last (its done marker).
4. Each finished img2dataset shard becomes our shard: images renamed to
   `<root>/images/<dataset>/<subset>/<shard:05d>/<key>.jpg` (key = our row index, 9 digits), a status parquet
   in STATUS_SCHEMA and our done marker, written last. A shard img2dataset did not finish gets neither, so
   the next run fetches it again.

Error mapping (img2dataset keeps only an exception's text; `map_error` documents each case):
    HTTP Error 404 / 410            -> not_found (http_status from the text)
    HTTP Error 3xx "redirect error" -> too_many_redirects
    other HTTP Error NNN            -> http_error (NNN)
    "timed out"                     -> timeout
    X-Robots-Tag directive          -> opted_out
    "unknown url type"              -> blocked_url
    "image area too large"          -> too_large (our max_pixels is passed as max_image_area)
    "Image decoding error"          -> not_image (OpenCV cannot tell an HTML page from a broken JPEG)
    any other download failure      -> connection (refused, reset, DNS, TLS, incomplete read...)
    any other resize failure        -> corrupt
Limits, compared with the native engine (say so to users who pick this engine):
- no byte cap and no total deadline per image (urllib's timeout is per socket operation);
- redirects are followed by urllib without our per-hop URL check, and host names resolving to private
  addresses are not refused (only IP literals are, in step 1);
- a truncated JPEG that OpenCV still decodes counts as ok (the native engine reports `corrupt`);
- without --resize, JPEGs keep their bytes, other formats are re-encoded as JPEG (.jpg, quality 95);
- http_status is 200 for ok rows (not recorded by img2dataset), the code of "HTTP Error NNN" failures, else null.
"""

from __future__ import annotations

import contextlib
import hashlib
import ipaddress
import os
import re
import shutil
import signal
import sys
import time
from array import array
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator

import pyarrow as pa
import pyarrow.parquet as pq

from mmcorpus import layout
from mmcorpus.core.imaging import JPEG_QUALITY
from mmcorpus.errors import UsageError
from mmcorpus.fetch.addresses import (
    BlockedURL,
    is_public,
    parse_target,
    private_allowance,
)
from mmcorpus.fetch.urllist.plan import (
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
from mmcorpus.fetch.urllist.reader import Malformed, Row
from mmcorpus.fetch.urllist.shards import (
    ShardPaths,
    key_for,
    read_status,
    write_marker,
    write_status,
)
from mmcorpus.registry import Spec

DISTRIBUTORS = {"local": "multiprocessing", "ray": "ray", "pyspark": "pyspark"}  # --executor -> img2dataset's
INSTALL = ("--engine img2dataset needs img2dataset, which is not installed in this Python: install it with "
           "mmcorpus in a virtual environment of its own (it pins old opencv, albumentations and webdataset): "
           "python3 -m venv i2d && i2d/bin/pip install 'mmcorpus[img2dataset]'")
INPUT_COLUMNS = ["mm_index", "mm_url"]  # saved by img2dataset next to its own columns
ENCODE_FORMAT = "jpg"  # img2dataset names every stored image <key>.jpg


def import_img2dataset():
    # albumentations (imported by img2dataset) asks PyPI for a newer version on import unless told not to
    os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")
    try:
        import img2dataset
    except ImportError:
        raise UsageError(INSTALL) from None
    except AttributeError as exc:  # its distributor module does `import ray; @ray.remote`: a folder named ray
        raise UsageError(f"img2dataset failed to import ({exc}): is there a folder named ray in the working "
                         "directory (Ray's /tmp/ray)? Run from another directory") from None
    return img2dataset


# --------------------------------------------------------------------------------------------- planning


@dataclass
class ShardPlan:
    """What step 1 decided for one of our shards."""

    paths: ShardPaths
    end: int = 0  # one past the highest row index seen (valid or malformed), as the native marker
    # Row indices of the valid rows, in order: 8 bytes a row, as every planned shard is kept until img2dataset
    # returns (CC12M: 12.4M rows; as key strings ~0.8 GB, as int64 ~0.1 GB: 66 vs 8 MB per million, tracemalloc).
    indices: array = field(default_factory=lambda: array("q"))

    def keys(self) -> list[str]:
        return [key_for(index) for index in self.indices]
    malformed: list[Malformed] = field(default_factory=list)
    blocked: list[dict] = field(default_factory=list)  # status rows decided here (blocked_url)
    todo: int = 0  # rows handed to img2dataset


def refused(url: str, options: UrlListOptions) -> str | None:
    """Why our URL policy refuses `url` without any network access, or None (module docstring, step 1)."""
    try:
        target = parse_target(url)
    except BlockedURL as exc:
        return str(exc)
    if options.allow_private_hosts or private_allowance(frozenset(options.mirror_hosts)).covers(target):
        return None
    try:
        ipaddress.ip_address(target.host)
    except ValueError:
        return None  # a host name: img2dataset resolves it, we cannot check the address it connects to
    return None if is_public(target.host) else f"non-public address {target.host}"


def plan_shards(spec: Spec, subset: str, tsv_path: Path, root: Path, options: UrlListOptions,
                input_dir: Path, summary: UrlListSummary) -> Iterator[ShardPlan]:
    """Step 1 and 2: yield each of this run's shards that needs work, with its img2dataset input file
    written (when it has rows to fetch). Finished shards are counted into `summary` and not yielded."""
    images_root = layout.images_root(root)
    for job in shard_jobs(spec, subset, tsv_path, root, options, summary):
        plan = ShardPlan(job.paths, end=job.end, indices=array("q", (row.index for row in job.rows)),
                         malformed=job.malformed)
        marker = shard_already_done(plan, options)
        if marker is not None:
            summary.add_shard({**marker, "fetched": 0, "fetched_ok": 0})
            summary.shards_skipped.append(plan.paths.shard)
            continue
        todo = _rows_to_fetch(plan, job.rows, images_root, options)
        plan.todo = len(todo)
        if todo:
            rewrite = options.rewrite or (lambda u: u)
            table = pa.table({"url": [rewrite(r.url) for r in todo], "caption": [r.caption for r in todo],
                              "mm_index": pa.array([r.index for r in todo], pa.int64()),
                              "mm_url": [r.url for r in todo]})
            pq.write_table(table, input_dir / f"{plan.paths.shard:09d}.parquet")
        yield plan


def _rows_to_fetch(plan: ShardPlan, rows: list[Row], images_root: Path, options: UrlListOptions) -> list[Row]:
    """The shard's rows img2dataset must fetch: not kept from an earlier run, not refused by our URL policy
    (those become blocked_url rows of the plan)."""
    previous = read_status(plan.paths)
    recorded = recorded_policy(plan.paths)  # before stored_with_same_resize may remove the marker
    same_form = stored_with_same_resize(plan.paths, options)
    todo = []
    for row in rows:
        old = previous.get(key_for(row.index))
        if old is not None and old["url"] == row.url and keep_previous(old, images_root, options, same_form, recorded):
            continue
        if refused(options.rewrite(row.url) if options.rewrite else row.url, options) is not None:
            plan.blocked.append(failed_row(row, "blocked_url", None))
        else:
            todo.append(row)
    return todo


# ------------------------------------------------------------------------------------------- conversion

_HTTP = re.compile(r"HTTP Error (\d{3})")


def map_error(status: str | None, message: str | None) -> tuple[str, int | None]:
    """img2dataset's (status, error_message) of a failed sample -> (our error word, http_status)."""
    text = message or ""
    lower = text.lower()
    if status == "failed_to_resize":
        if "area too large" in lower:
            return "too_large", 200
        if "decoding error" in lower:
            return "not_image", 200
        return "corrupt", 200
    if (match := _HTTP.search(text)) is not None:
        code = int(match.group(1))
        if code in (404, 410):
            return "not_found", code
        if 300 <= code < 400 and "redirect" in lower:
            return "too_many_redirects", code
        return "http_error", code
    if "timed out" in lower or "timeout" in lower:
        return "timeout", None
    if "x-robots-tag" in lower:
        return "opted_out", 200
    if "unknown url type" in lower:
        return "blocked_url", None
    return "connection", None


def _status_row(meta: dict, image: Path | None, paths: ShardPaths) -> tuple[dict, Path | None]:
    """One of img2dataset's parquet rows -> (our status row, where its image goes)."""
    index = int(meta["mm_index"])
    key = key_for(index)
    row = dict(key=key, url=meta["mm_url"], caption=meta.get("caption"), status="failed", error=None,
               http_status=None, bytes=None, width=None, height=None, image_path=None, sha256=None)
    if meta.get("status") == "success" and image is not None and image.is_file():
        data = image.read_bytes()
        ext = image.suffix.lstrip(".")
        row.update(status="ok", http_status=200, bytes=len(data), width=meta.get("width"), height=meta.get("height"),
                   image_path=paths.image_relpath(key, ext), sha256=hashlib.sha256(data).hexdigest())
        return row, paths.image(key, ext)
    error, http_status = map_error(meta.get("status"), meta.get("error_message"))
    row.update(error=error, http_status=http_status)
    return row, None


def finished_i2d_shards(output: Path) -> list[Path]:
    """img2dataset's shard parquets whose stats file (written last) exists, in shard order."""
    shards = []
    for stats in output.glob("*_stats.json"):
        name = stats.name[: -len("_stats.json")]
        if (output / f"{name}.parquet").is_file():
            shards.append(output / f"{name}.parquet")
    return sorted(shards, key=lambda p: int(p.stem))


def convert_shard(i2d_parquet: Path, plans: dict[int, ShardPlan], options: UrlListOptions) -> dict | None:
    """Step 4 for one finished img2dataset shard: our images, status parquet and done marker.
    Returns the marker's stats, or None when the shard does not hold all the rows we handed over."""
    table = pq.read_table(i2d_parquet)
    metas = table.to_pylist()
    if not metas:
        return None
    plan = plans.get(int(metas[0]["mm_index"]) // options.shard_size)
    if plan is None or len(metas) != plan.todo or any(int(m["mm_index"]) // options.shard_size != plan.paths.shard
                                                       for m in metas):
        return None  # not a shard of this run, or incomplete: the next run fetches it again
    folder = i2d_parquet.with_suffix("")
    paths = plan.paths
    paths.image_dir.mkdir(parents=True, exist_ok=True)
    rows = {}
    for meta in metas:
        image = folder / f"{meta['key']}.{ENCODE_FORMAT}"
        row, dest = _status_row(meta, image, paths)
        if dest is not None:
            os.replace(image, dest)
        rows[row["key"]] = row
    return finish_shard(plan, rows, options)


def finish_shard(plan: ShardPlan, fetched_rows: dict[str, dict], options: UrlListOptions) -> dict | None:
    """Merge the rows fetched now with those kept from earlier runs and the blocked ones; write the status
    parquet and, last, the done marker (the native engine's marker format, plus engine=img2dataset).
    None when a row is missing (an earlier status parquet vanished meanwhile): the shard stays unfinished."""
    paths = plan.paths
    rows = {**read_status(paths), **{r["key"]: r for r in plan.blocked}, **fetched_rows}
    keys = plan.keys()
    if any(key not in rows for key in keys):
        return None
    ordered = [rows[key] for key in keys]
    paths.image_dir.mkdir(parents=True, exist_ok=True)  # as the native engine: a shard folder even when empty
    fetched = len(fetched_rows) + len(plan.blocked)
    fetched_ok = sum(r["status"] == "ok" for r in fetched_rows.values())
    write_status(paths, ordered)
    stats = {**shard_stats(paths.shard, plan.end, ordered, fetched, fetched_ok, plan.malformed, options.resize,
                                options.policy()),
             "engine": "img2dataset"}
    write_marker(paths, stats)
    return stats


# ------------------------------------------------------------------------------------------------ entry


def download_arguments(options: UrlListOptions, distributor: str, input_dir: Path, output: Path) -> dict:
    """img2dataset.download()'s keyword arguments for our options."""
    if options.resize is None:  # keep the bytes of JPEGs (other formats are re-encoded: module docstring)
        resize = dict(resize_mode="no", skip_reencode=True)
    else:  # shorter side -> SIZE, aspect kept, never upscaled (mmcorpus.core.imaging.target_size)
        resize = dict(image_size=options.resize, resize_mode="keep_ratio", resize_only_if_bigger=True)
    return dict(
        url_list=str(input_dir), input_format="parquet", url_col="url", caption_col="caption",
        save_additional_columns=list(INPUT_COLUMNS), output_format="files", output_folder=str(output),
        processes_count=options.workers, thread_count=options.threads, number_sample_per_shard=options.shard_size,
        oom_shard_count=max(5, len(str(10**9 // options.shard_size))), timeout=options.timeout,
        retries=options.retries, encode_format=ENCODE_FORMAT, encode_quality=JPEG_QUALITY, extract_exif=False,
        compute_hash=None, enable_wandb=False, distributor=distributor, max_image_area=float(options.max_pixels),
        user_agent_token="mmcorpus", disallowed_header_directives=None if options.respect_opt_out else [],
        incremental_mode="incremental", max_shard_retry=1, **resize,  # "overwrite" deletes its own _tmp
    )


def fetch_with_img2dataset(spec: Spec, subset: str, tsv_path: str | Path, root: str | Path,
                           options: UrlListOptions | None = None, *, distributor: str = "multiprocessing",
                           download: Callable[..., None] | None = None) -> UrlListSummary:
    """The img2dataset engine (module docstring). `download` defaults to img2dataset.download."""
    options = options or UrlListOptions()
    options.check()
    if distributor not in DISTRIBUTORS.values():
        raise UsageError(f"img2dataset distributor must be one of {', '.join(DISTRIBUTORS.values())}")
    if download is None:
        download = import_img2dataset().download
        if distributor == "pyspark":
            import importlib.util

            if importlib.util.find_spec("pyspark") is None:
                raise UsageError("--engine img2dataset --executor pyspark needs pyspark: pip install pyspark")
    root = Path(root)
    index, count = options.shard or shard_from_env()
    # A killed run's leftovers. Fetch holds the lock of this name and --shard slice, so the folder is ours:
    # slices sharing a root (one per machine) each have their own.
    work = layout.img2dataset_job(root, spec.name, subset, index, count)
    shutil.rmtree(work, ignore_errors=True)
    input_dir, output = work / "input", work / "output"
    input_dir.mkdir(parents=True)
    summary = UrlListSummary(dataset=spec.name, subset=subset)
    started = time.monotonic()
    try:
        plans = {}
        for plan in plan_shards(spec, subset, Path(tsv_path), root, options, input_dir, summary):
            if plan.todo:
                plans[plan.paths.shard] = plan
            else:  # nothing left to fetch (kept or blocked rows only)
                if (stats := finish_shard(plan, {}, options)) is not None:
                    _done(summary, plan, stats)
        if plans:
            _run_download(download, download_arguments(options, distributor, input_dir, output))
            for i2d_parquet in finished_i2d_shards(output):
                stats = convert_shard(i2d_parquet, plans, options)
                if stats is not None:
                    _done(summary, plans.pop(stats["shard"]), stats)
        if plans:
            print(f"img2dataset did not finish shards {sorted(plans)} of {spec.name}/{subset}: run again to fetch "
                  "them", file=sys.stderr)
    finally:
        shutil.rmtree(work, ignore_errors=True)
        with contextlib.suppress(OSError):
            layout.img2dataset_work(root).rmdir()
        summary.seconds = time.monotonic() - started
    summary.shards_done.sort()
    summary.shards_skipped.sort()
    return summary


def _done(summary: UrlListSummary, plan: ShardPlan, stats: dict) -> None:
    summary.add_shard(stats)
    summary.shards_done.append(plan.paths.shard)


def _run_download(download: Callable[..., None], arguments: dict) -> None:
    """img2dataset prints on stdout (ours carries --json) and replaces the SIGINT handler with one that
    exits 0: its output goes to stderr, and Ctrl-C stays an interruption."""
    saved_stdout, saved_handler = os.dup(1), signal.getsignal(signal.SIGINT)
    sys.stdout.flush()
    os.dup2(2, 1)  # the file descriptor, so that its spawned worker processes inherit it too
    try:
        with contextlib.redirect_stdout(sys.stderr):
            download(**arguments)
    except SystemExit as exc:  # its SIGINT handler
        raise KeyboardInterrupt from exc
    finally:
        sys.stdout.flush()
        os.dup2(saved_stdout, 1)
        os.close(saved_stdout)
        signal.signal(signal.SIGINT, saved_handler)
