"""`mmcorpus fetch`: what to fetch for each name, in which order, and the report of what happened.

A dataset is fetched as: its annotation files (single-file downloader), then its images: the URL column
(URL-list engine) or the image collections its JSON image paths point into ("fetch by need"). A collection
is its archives, downloaded and extracted. Every step is idempotent, so a cron re-run only does what is left.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mmcorpus import __version__, layout
from mmcorpus.core.atomicio import read_json, write_json_atomic
from mmcorpus.core.locks import hold_lock
from mmcorpus.core.progress import human_bytes
from mmcorpus.core.runs import record_run
from mmcorpus.errors import (
    EXIT_FAILED,
    DiskFullError,
    MMCorpusError,
    UsageError,
    disk_full_message,
    is_disk_full,
)
from mmcorpus.fetch.collections import collections_needed, fetch_collection
from mmcorpus.fetch.diskspace import ensure_space_for_fetch
from mmcorpus.fetch.files import download_file
from mmcorpus.fetch.options import FetchOptions
from mmcorpus.fetch.urllist.executors import run_url_list
from mmcorpus.normalize.runner import dataset_image_paths
from mmcorpus.registry import FileSpec, Registry, Spec

log = logging.getLogger("mmcorpus.fetch")


@dataclass
class Target:
    """One name on the command line: a spec and, optionally, the subsets/archives asked for."""

    spec: Spec
    keys: tuple[str, ...] = ()  # empty: every non-optional file

    def files(self, all_files: bool) -> list[FileSpec]:
        if self.keys:
            return [f for f in self.spec.downloads if f.key in self.keys]
        return [f for f in self.spec.downloads if all_files or not f.optional]


def parse_targets(registry: Registry, names: list[str]) -> list[Target]:
    """`cc3m`, `cc3m:validation`, `llava_instruct:mix665k,instruct150k` -> Targets (unknown names exit 2)."""
    if not names:
        raise UsageError("name at least one dataset or collection (see 'mmcorpus list')")
    targets = []
    for text in names:
        name, _, keys_text = text.partition(":")
        spec = registry.get(name)
        keys = tuple(k for k in keys_text.split(",") if k)
        known = [f.key for f in spec.downloads]
        for key in keys:
            if key not in known:
                raise UsageError(f"'{name}' has no file '{key}' (it has: {', '.join(known)})")
        targets.append(Target(spec, keys))
    return targets


# ------------------------------------------------------------------------------------------ orchestration


def fetch(registry: Registry, names: list[str], options: FetchOptions) -> dict[str, Any]:
    """Fetch every target; returns the report ({"targets": [...], "ok": bool}). Never raises for a
    download failure: it is recorded in the report, and the CLI turns it into exit code 1."""
    options.check()
    targets = parse_targets(registry, names)
    if options.dry_run:
        return {"dry_run": True, "targets": plan_all(registry, targets, options), "ok": True}
    done: set[str] = set()
    reports = []
    for target in targets:
        reports += _fetch_target(registry, target, options, done)
    return {"targets": reports, "ok": all(r["ok"] for r in reports)}


def _fetch_target(registry: Registry, target: Target, options: FetchOptions, done: set[str]) -> list[dict]:
    """A dataset and then the collections it needs; each spec (with its chosen files) at most once per run."""
    key = f"{target.spec.name}:{','.join(target.keys)}"
    if key in done:
        return []
    done.add(key)
    if target.spec.kind == "collection":
        return [_run_step(target, options, lambda: _fetch_collection(target, options))]
    report = _run_step(target, options, lambda: _fetch_dataset(target, options))
    reports = [report]
    if report["ok"] and not options.no_images and target.spec.collections:
        for name in _collections_needed(registry, target, report, options):
            reports += _fetch_target(registry, Target(registry.get(name)), options, done)
    return reports


def _run_step(target: Target, options: FetchOptions, step) -> dict:
    """Run one spec's fetch under its lock; expected failures become a failed report, not an exception."""
    spec = target.spec
    started = time.time()
    report: dict[str, Any] = {"name": spec.name, "kind": spec.kind, "ok": True}
    try:
        with _lock(options, _lock_name(spec.name, options)):
            _check_disk(target, options)
            report.update(_disk_full_as_error(step, f"the files of {spec.name} under {options.root}"))
    except DiskFullError as exc:  # nothing more fits: the command ends here, the run record says why
        with contextlib.suppress(OSError):  # the record may not fit either; the error line is what matters
            _record(options.root, spec.name, {**report, "ok": False, "error": str(exc),
                                              "seconds": round(time.time() - started, 3)})
        raise
    except MMCorpusError as exc:
        if exc.exit_code != EXIT_FAILED:
            raise  # usage errors and lock conflicts end the run with their own exit code
        report.update(ok=False, error=str(exc))
        log.error("%s", exc)
    report["seconds"] = round(time.time() - started, 3)
    report["ok"] = report["ok"] and not report.get("failed_files")
    _record(options.root, spec.name, report)
    return report


def _disk_full_as_error(step, where: str) -> dict:
    """`step()`, with a full disk (ENOSPC, EDQUOT, EFBIG) met anywhere in it raised as DiskFullError."""
    try:
        return step()
    except OSError as exc:
        if not is_disk_full(exc):
            raise
        raise DiskFullError(disk_full_message(exc, where=where)) from None


def _fetch_dataset(target: Target, options: FetchOptions) -> dict:
    spec = target.spec
    with _shared_files_lock(spec.name, options):
        files = _download_all(spec, target.files(options.all_files), options)
    report: dict[str, Any] = {"files": files, "failed_files": [f["key"] for f in files if f["status"] == "failed"]}
    if spec.images_from == "url" and not options.no_images:
        report["images"] = [
            _fetch_url_images(spec, f, options) for f in files
            if f["status"] != "failed" and spec.files[f["key"]].role == "annotations"
        ]
    return report


def _download_all(spec: Spec, files: list[FileSpec], options: FetchOptions) -> list[dict]:
    dest = layout.downloads_dir(options.root, spec.name)
    results = []
    for file in files:
        label = f"{spec.name}/{file.filename}"
        if file.url is None:
            results.append({"key": file.key, "status": "manual", "note": file.manual})
            log.warning("%s: manual download: %s", label, file.manual)
            continue
        try:
            result = download_file(file, dest, options.file_options(), label=label)
        except MMCorpusError as exc:
            if exc.exit_code != EXIT_FAILED:
                raise
            log.error("%s", exc)
            results.append({"key": file.key, "status": "failed", "error": str(exc)})
            continue
        log.info("%s: %s (%s)", label, result.status, human_bytes(result.bytes))
        results.append({"key": file.key, "status": result.status, "path": str(result.path),
                        "bytes": result.bytes, "sha256": result.digests.get("sha256")})
    return results


def _fetch_collection(target: Target, options: FetchOptions) -> dict:
    """The collection's archives (this machine's share of them under --shard), downloaded and extracted."""
    def download(file: FileSpec, dest: Path) -> Path:
        return download_file(file, dest, options.file_options(), label=f"{target.spec.name}/{file.filename}").path

    keys = shard_share([f.key for f in target.files(options.all_files)], options.shard)
    if not target.keys and not options.all_files and options.shard is None:
        keys = None  # fetch_collection's own choice: also the optional manual archives (SA-1B tars) the user
        # placed in downloads/<name>/ or gave with --manual-source
    summary = fetch_collection(target.spec, options.root, download, delete_archives=options.delete_archives,
                               manual_source=options.manual_source, only=keys)
    if not summary["archives"] and target.spec.manual:
        summary["manual"] = target.spec.manual  # nothing headless to fetch: say how to get it
    return summary


def shard_share(keys: list[str], shard: tuple[int, int] | None) -> list[str]:
    """Machine I of N takes every N-th item, starting at I: a deterministic split that covers all once."""
    if shard is None:
        return keys
    index, count = shard
    return [key for position, key in enumerate(keys) if position % count == index]


def _fetch_url_images(spec: Spec, file_report: dict, options: FetchOptions) -> dict:
    file = spec.files[file_report["key"]]
    summary = run_url_list(spec, file.key, Path(file_report["path"]), options.root, options.url_list_options(),
                           executor=options.executor, engine=options.engine, ray_address=options.ray_address,
                           tasks=options.tasks)
    return {"subset": file.key, **summary.to_dict()}


def _collections_needed(registry: Registry, target: Target, report: dict, options: FetchOptions) -> list[str]:
    """The dataset's collections that its downloaded JSON files actually reference.

    Finding out means reading every record (~30 s of CPU for mix665k), so the answer is kept beside the
    annotation files with the fingerprint of what decides it (the files' size and mtime, the spec file, the
    candidate collections' paths, the mmcorpus version): a cron re-run with nothing changed skips the scan.
    """
    spec = target.spec
    paths = sorted((f["key"], f["path"]) for f in report["files"] if f.get("path"))
    candidates = [registry.get(name) for name in spec.collections]
    cache = layout.collections_needed_cache(options.root, spec.name)
    fingerprint = _needs_fingerprint(spec, paths, candidates)
    cached = read_json(cache, {})
    needed = cached.get("needed") if cached.get("fingerprint") == fingerprint else None
    if needed is None:
        image_paths = dataset_image_paths(spec, options.root, [key for key, _ in paths])
        needed = collections_needed(image_paths, candidates)["needed"]
        write_json_atomic(cache, {"fingerprint": fingerprint, "needed": needed})
    report["collections_needed"] = needed
    return [name for name in spec.collections if name in needed]


def _needs_fingerprint(spec: Spec, paths: list[tuple[str, str]], candidates: list[Spec]) -> str:
    def stat(path) -> list | None:
        try:
            st = Path(path).stat()
        except (OSError, TypeError):
            return None
        return [st.st_size, st.st_mtime_ns]

    state = {"files": [[key, stat(path)] for key, path in paths], "spec": stat(spec.source),
             "collections": [[c.name, c.path] for c in candidates], "mmcorpus": __version__}
    return hashlib.sha256(json.dumps(state, sort_keys=True).encode()).hexdigest()


# ----------------------------------------------------------------------------------------- plan, locks


def plan_all(registry: Registry, targets: list[Target], options: FetchOptions) -> list[dict]:
    """--dry-run: each target, and after a JSON dataset the collections it may need (the real fetch reads the
    JSON first and fetches only those its records reference), each once."""
    planned: list[dict] = []
    seen: set[str] = set()
    for target in targets:
        if target.spec.name in seen:
            continue
        seen.add(target.spec.name)
        planned.append(plan(target, options))
        if target.spec.kind == "dataset" and not options.no_images:
            for name in target.spec.collections:
                if name not in seen:
                    seen.add(name)
                    planned.append({**plan(Target(registry.get(name)), options), "needed_by": target.spec.name})
    return planned


def plan(target: Target, options: FetchOptions) -> dict:
    """What a fetch would download (for --dry-run). `web_images`: at most how many images a URL list fetches
    (the spec's approximate record counts, cut at --limit); None when the spec does not say."""
    files = target.files(options.all_files)
    spec = target.spec
    web_images = None
    if spec.images_from == "url" and not options.no_images:
        counts = [f.records for f in files if f.role == "annotations"]
        if counts and all(c is not None for c in counts):
            web_images = sum(c if options.limit is None else min(c, options.limit) for c in counts)
    return {
        "name": spec.name,
        "kind": spec.kind,
        "files": [{"key": f.key, "filename": f.filename, "url": f.url and options.rewrite(f.url),
                   "size": f.size, "approx_size": f.approx_size, "manual": f.manual} for f in files],
        "bytes": sum(f.size or f.approx_size or 0 for f in files),
        "approximate": any(f.size is None and f.approx_size is not None for f in files),
        "unknown_sizes": sum(f.size is None and f.approx_size is None for f in files),
        "images": "url column" if spec.images_from == "url" else list(spec.collections),
        "web_images": web_images,
        "manual": spec.manual,
    }


def _lock_name(name: str, options: FetchOptions) -> str:
    """One lock per root and name; under --shard, one per slice, so N machines sharing a root run together."""
    shard = options.shard
    return name if shard is None else layout.shard_lock_name(name, *shard)


def _shared_files_lock(name: str, options: FetchOptions):
    """Under --shard, every slice needs the same annotation files: one slice downloads them while the
    others wait (their .part files are shared names). Without --shard the run's lock already covers them."""
    if options.shard is None:
        return contextlib.nullcontext()
    return hold_lock(options.root, name, wait=True, poll=2.0, command="mmcorpus fetch (annotation files)")


def _lock(options: FetchOptions, name: str):
    return hold_lock(options.root, name, wait=options.wait_for_lock, command="mmcorpus fetch")


def _record(root: Path, name: str, report: dict) -> None:
    record_run(root, name, report)


def _check_disk(target: Target, options: FetchOptions) -> None:
    """Refuse to start a download or extraction that cannot fit (sizes from the spec)."""
    keys = [f.key for f in target.files(options.all_files)]
    if target.spec.kind == "collection":  # under --shard this machine fetches its share of the archives only
        keys = shard_share(keys, options.shard)
    # Per file system: images/ may be a symlink to another disk.
    ensure_space_for_fetch([target.spec], options.root, only={target.spec.name: set(keys)})
