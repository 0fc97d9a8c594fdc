"""`mmcorpus status`: what is on disk under a root, per dataset and collection, quickly and without hashing.

Cron users run it often, on roots of many terabytes on network file systems, so it only reads what is cheap:
- files: present, partial (`.part`) or missing; "verified" comes from verify.py's cache (never re-hashed;
  `mmcorpus verify` does that);
- archives: extracted when their done marker matches the spec's mapping;
- URL-list images: counted from the status parquets' `status`/`error`/`bytes` columns only (one small read
  per shard), never by listing millions of image files;
- collection images: one walk of the collection folder (file count and bytes);
- the last run: `<root>/runs/<name>.json`, written by fetch through mmcorpus.core.runs;
- a lock currently held on the name (a run in progress, or a crashed one).
"""

from __future__ import annotations

import os
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from mmcorpus import layout
from mmcorpus.core.locks import describe_locks
from mmcorpus.core.progress import human_bytes
from mmcorpus.core.runs import read_run
from mmcorpus.fetch import checksums as verify
from mmcorpus.fetch.archives import Mapping, marker_path, read_marker
from mmcorpus.fetch.collections import collection_dir
from mmcorpus.layout import part_path
from mmcorpus.registry import Registry, Spec
from mmcorpus.stage.prepare import prepared_stages
from mmcorpus.stage.report import format_stage_summary

READ_THREADS = 4  # urllist_shards: <shard:05d>.done beside <shard:05d>.parquet, written last


# --------------------------------------------------------------------------------------------- collect


def run(registry: Registry, root: Path, name: str | None = None) -> dict:
    """The command: an unknown name is a usage error, not an empty report."""
    if name is not None:
        registry.get(name)
    return collect_status(registry, root, name)


def collect_status(registry: Registry, root: Path, name: str | None = None) -> dict:
    """Status of every spec, or of `name` (a dataset also shows the collections its images live in)."""
    root = Path(root)
    specs = list(registry) if name is None else registry.with_collections(name)
    report = {"root": str(root), "collected_at": time.time(), "items": {s.name: spec_status(s, root) for s in specs}}
    if name is None:
        report["unknown_on_disk"] = unknown_on_disk(registry, root)
    return report


def unknown_on_disk(registry: Registry, root: Path) -> list[str]:
    """Names with files or a run record under `root` that no loaded spec owns: usually a user's own spec that
    this command was not given (--config-dir / MMCORPUS_CONFIG_DIR), sometimes a renamed one."""
    known = {spec.name for spec in registry}
    owned_images = known | {spec.path.split("/", 1)[0] for spec in registry if spec.kind == "collection" and spec.path}
    found = set()
    for folder, owners in ((root / layout.DOWNLOADS, known), (root / layout.IMAGES, owned_images)):
        if folder.is_dir():
            found |= {p.name for p in folder.iterdir() if p.is_dir() and p.name not in owners
                      and not p.name.startswith(".")}
    runs = root / layout.RUNS
    if runs.is_dir():
        found |= {p.stem for p in runs.glob("*.json") if p.stem not in known}
    return sorted(found)


def spec_status(spec: Spec, root: Path) -> dict:
    files = [_file_status(spec, f, root) for f in spec.downloads]
    item = {
        "name": spec.name,
        "kind": spec.kind,
        "files": files,
        "files_verified": sum(f["state"] == "verified" for f in files),
        "files_wanted": sum(not f["optional"] or f["state"] != "missing" for f in files),
        "images": None,
        "bytes_on_disk": sum(f["bytes"] for f in files),
        "last_run": read_run(root, spec.name),
        "locked_by": "; ".join(describe_locks(root, spec.name)) or None,
    }
    if spec.kind == "collection":
        item["images"] = _folder_images(collection_dir(spec, root))
    elif spec.images_from == "url":
        item["images"] = url_images(layout.images_dir(root, spec.name))
    if item["images"]:
        item["bytes_on_disk"] += item["images"]["bytes"]
    return item


def _file_status(spec: Spec, file, root: Path) -> dict:
    path = layout.download_path(root, spec.name, file.filename)
    out = {"key": file.key, "filename": file.filename, "optional": file.optional, "expected_bytes": file.size,
           "bytes": 0}
    if spec.kind == "collection":
        out["extracted"] = _extracted(spec, file, root)
    if path.is_file():
        out["bytes"] = path.stat().st_size
        out["state"] = "verified" if verify.is_verified(path, file) else "present"
        return out
    part = part_path(path)
    if part.is_file():
        out["bytes"] = part.stat().st_size
        out["state"] = "partial"
    elif out.get("extracted"):
        out["state"] = "removed"  # extracted, then deleted to save space: nothing is missing
    else:
        out["state"] = "manual" if file.url is None else "missing"
    return out




def _extracted(spec: Spec, archive, root: Path) -> bool | str:
    dest = collection_dir(spec, root)
    if read_marker(archive.filename, dest, Mapping.of(archive)) is not None:
        return True
    # A marker of another mapping: the spec's strip/include changed since; fetch will extract again.
    return "outdated" if marker_path(archive.filename, dest).exists() else False


# ------------------------------------------------------------------------------------------------ images


def url_images(dataset_dir: Path) -> dict:
    """Totals of a URL-list dataset from its status parquets (`<subset>/<shard>.parquet`)."""
    totals = {"ok": 0, "failed": 0, "failed_by_reason": Counter(), "bytes": 0, "shards": 0, "shards_done": 0,
              "unreadable_shards": [], "subsets": {}}
    for subset_dir in layout.subset_dirs(dataset_dir):
        sub = {"ok": 0, "failed": 0, "shards": 0, "shards_done": 0}
        parquets = layout.shard_statuses(subset_dir)
        # Threads overlap the per-file latency of a network file system; pyarrow releases the GIL.
        with ThreadPoolExecutor(READ_THREADS) as pool:
            all_counts = pool.map(_shard_counts, parquets)
        for parquet, counts in zip(parquets, all_counts):
            sub["shards"] += 1
            sub["shards_done"] += layout.marker_of_status(parquet).exists()
            if counts is None:
                totals["unreadable_shards"].append(str(parquet))
                continue
            sub["ok"] += counts["ok"]
            sub["failed"] += counts["failed"]
            totals["failed_by_reason"].update(counts["reasons"])
            totals["bytes"] += counts["bytes"]
        if sub["shards"]:
            totals["subsets"][subset_dir.name] = sub
            for key in ("ok", "failed", "shards", "shards_done"):
                totals[key] += sub[key]
    totals["failed_by_reason"] = dict(totals["failed_by_reason"].most_common())
    return totals


def _shard_counts(parquet: Path) -> dict | None:
    """ok/failed/reasons/bytes of one shard, reading three columns; None for a damaged or foreign file."""
    try:
        table = pq.read_table(parquet, columns=["status", "error", "bytes"], read_dictionary=["status", "error"],
                              use_threads=False)
    except (OSError, pa.ArrowException):
        return None
    groups = table.group_by(["status", "error"]).aggregate([("bytes", "sum"), ("status", "count")])
    out = {"ok": 0, "failed": 0, "reasons": Counter(), "bytes": 0}
    for row in groups.to_pylist():
        if row["status"] == "ok":
            out["ok"] += row["status_count"]
            out["bytes"] += row["bytes_sum"] or 0
        else:
            out["failed"] += row["status_count"]
            out["reasons"][row["error"] or "unknown"] += row["status_count"]
    return out


def _folder_images(folder: Path) -> dict:
    """File count and bytes under an image collection folder (our bookkeeping folders excluded)."""
    files = size = 0
    stack = [folder] if folder.is_dir() else []
    while stack:
        with os.scandir(stack.pop()) as entries:
            for entry in entries:
                if entry.name in (layout.BOOKKEEPING, layout.REJECTED):
                    continue
                if entry.is_dir(follow_symlinks=False):
                    stack.append(entry.path)
                elif entry.is_file(follow_symlinks=False):
                    files += 1
                    size += entry.stat(follow_symlinks=False).st_size
    return {"files": files, "bytes": size}


# ---------------------------------------------------------------------------------------------- format


def format_status(status: dict) -> str:
    """A table for the terminal, one line per spec, then the details worth a look (failures, partial files,
    locks). Specs with nothing on disk and no run are listed together on one line."""
    lines = [f"root: {status['root']}", ""]
    header = f"{'NAME':<24} {'KIND':<10} {'FILES':<16} {'IMAGES':<26} {'ON DISK':>9}  LAST RUN"
    rows, empty, details = [], [], []
    for item in status["items"].values():
        if not _has_anything(item):
            empty.append(item["name"])
            continue
        rows.append(f"{item['name']:<24} {item['kind']:<10} {_files_cell(item):<16} {_images_cell(item):<26} "
                    f"{human_bytes(item['bytes_on_disk']):>9}  {_run_cell(item['last_run'])}")
        details += _details(item)
    if rows:
        lines += [header, *rows]
    if empty:
        lines += ["", "nothing on disk yet: " + ", ".join(empty)]
    if details:
        lines += ["", *details]
    if status.get("unknown_on_disk"):
        lines += ["", "on disk, but no loaded spec has these names: " + ", ".join(status["unknown_on_disk"])
                  + " (your own specs? pass --config-dir DIR or set MMCORPUS_CONFIG_DIR)"]
    return "\n".join(lines)


def _has_anything(item: dict) -> bool:
    images = item["images"] or {}
    return bool(item["bytes_on_disk"] or item["last_run"] or item["locked_by"] or images.get("shards")
                or any(f["state"] != "missing" and f["state"] != "manual" for f in item["files"]))


def _files_cell(item: dict) -> str:
    cell = f"{item['files_verified']}/{item['files_wanted']} verified"
    if item["kind"] == "collection":
        done = sum(f.get("extracted") is True for f in item["files"])
        cell = f"{done}/{item['files_wanted']} extracted"
    return cell


def _images_cell(item: dict) -> str:
    images = item["images"]
    if not images:
        return "-"
    if "files" in images:
        return f"{images['files']:,} files"
    total = images["ok"] + images["failed"]
    pct = f" ({100 * images['ok'] / total:.0f}%)" if total else ""
    return f"{images['ok']:,} ok / {images['failed']:,} failed{pct}"


def _run_cell(run: dict | None) -> str:
    if not run:
        return "-"
    when = time.strftime("%Y-%m-%d %H:%M", time.localtime(run.get("finished_at", 0)))
    return f"{when} {_run_result(run)}"


def _run_result(run: dict) -> str:
    if run.get("result"):
        return str(run["result"])
    if "ok" in run:
        return "ok" if run["ok"] else "failed"
    return f"exit {run['exit_code']}" if "exit_code" in run else "?"


def _details(item: dict) -> list[str]:
    name, out = item["name"], []
    if item["locked_by"]:
        out.append(f"{name}: locked by {item['locked_by']}")
    run = item["last_run"] or {}
    if run.get("error"):
        out.append(f"{name}: last run {_run_result(run)}: {run['error']}")
    for f in item["files"]:
        if f["state"] in ("present", "partial") or f.get("extracted") == "outdated":
            partial = f["state"] == "partial"
            size = f" ({human_bytes(f['bytes'])} of {human_bytes(f['expected_bytes'])})" if partial else ""
            state = "extracted with an outdated mapping" if f.get("extracted") == "outdated" else f["state"]
            out.append(f"{name}: {f['filename']} {state}{size}")
    images = item["images"] or {}
    if images.get("failed_by_reason"):
        reasons = ", ".join(f"{reason} {count:,}" for reason, count in images["failed_by_reason"].items())
        out.append(f"{name}: failed by reason: {reasons}")
    if images.get("shards", 0) > images.get("shards_done", 0):
        out.append(f"{name}: {images['shards'] - images['shards_done']} of {images['shards']} shards unfinished")
    for path in images.get("unreadable_shards", []):
        out.append(f"{name}: unreadable status parquet {path}")
    return out


def format_report(report: dict, root: Path) -> str:
    """The status table, then a summary of each prepared stage under `root`."""
    lines = [format_status(report)]
    for manifest in prepared_stages(root).values():
        lines += ["", format_stage_summary(manifest)]
    return "\n".join(lines)
