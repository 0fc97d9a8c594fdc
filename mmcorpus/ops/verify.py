"""`mmcorpus verify`: re-check everything on disk, trusting no cache, and optionally repair.

What `status` takes on trust, this re-reads:
- every downloaded file is re-hashed against the spec (the `.verified.json` cache is ignored; a bit flip or
  a file replaced by hand keeps its size and mtime only by accident, but that is exactly the accident);
- every extracted archive that is still on disk is listed again, and each member it should have produced
  must exist with its header size (a folder cleaned by hand, a copy cut short);
- every stored image is decoded in a process pool: PIL `verify()` for structure, then `load()`, which is
  what catches truncated JPEGs (verify() alone reads no pixel data);
- URL-list datasets: every row marked `ok` in a status parquet must still have its image file.

`repair=True` moves what is bad aside (into `.rejected/` beside it, never deleted: the user may want to look)
and makes the next fetch redo it: a collection's extraction markers are removed (extraction skips members
already present, so only the missing ones are written, but an archive deleted after extraction is
downloaded again), a URL-list shard's done marker is removed. `refetch` lists the names to fetch again.
"""

from __future__ import annotations

import multiprocessing
import os
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from pathlib import Path
from typing import Iterator

import pyarrow as pa
import pyarrow.parquet as pq

from mmcorpus import layout
from mmcorpus.errors import VerificationError
from mmcorpus.fetch import checksums as verify
from mmcorpus.fetch.archives import (
    ArchiveError,
    Mapping,
    archive_members,
    marker_path,
    read_marker,
)
from mmcorpus.fetch.collections import collection_dir
from mmcorpus.fetch.options import FetchOptions
from mmcorpus.fetch.urls import UrlRewriter
from mmcorpus.ops import fetch as fetch_command
from mmcorpus.registry import Registry, Spec

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".gif", ".webp", ".bmp", ".tif", ".tiff"}
BATCH = 64  # images per task: enough to amortise inter-process overhead, small enough to spread the work
SKIP_DIRS = {layout.BOOKKEEPING, layout.REJECTED}  # our bookkeeping inside image folders


def run(registry: Registry, root: Path, name: str | None = None, *, workers: int | None = None,
        repair: bool = False, rewrite: UrlRewriter | None = None, allow_private_hosts: bool = False) -> dict:
    """The command: verify, and with `repair` fetch again what was moved aside, with the network options a fetch
    would take (`rewrite` is --mirror). `verified` is the outcome of the check itself; `ok` the command's: with
    `repair`, that of the fetch that redid what was moved aside (its report is `repair`)."""
    if name is not None:
        registry.get(name)
    report = verify_root(registry, root, name, workers=workers, repair=repair)
    if not report["fetched"]:  # "all verified" of nothing would be a lie; asked about a name, it is a failure
        report["ok"] = report["ok"] and name is None
    report["verified"] = report["ok"]
    if repair and report.get("refetch"):
        options = FetchOptions(root=Path(root), rewrite=rewrite or UrlRewriter(),
                               allow_private_hosts=allow_private_hosts)
        report["repair"], _ = fetch_command.run(registry, report["refetch"], options)
        report["ok"] = report["repair"]["ok"]
    return report


def verify_root(registry: Registry, root: Path, name: str | None = None, *, workers: int | None = None,
                repair: bool = False) -> dict:
    """Verify every spec (or `name` and its collections) under `root`; see the module docstring.

    Returns {"root", "ok", "items": {name: item}, "bad": [{"path", "reason"}], "refetch": [names],
    "moved_aside": [paths]}; `ok` is False when anything is bad.
    """
    root = Path(root)
    specs = list(registry) if name is None else registry.with_collections(name)
    workers = workers or os.cpu_count() or 1
    items = {}
    with ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn")) as pool:
        for spec in specs:
            items[spec.name] = _verify_spec(spec, root, pool, workers)
    report = {"root": str(root), "items": items, "bad": [b for i in items.values() for b in i["bad"]],
              "refetch": [], "moved_aside": []}
    report["ok"] = not report["bad"]
    report["fetched"] = [n for n, item in items.items() if _anything_on_disk(item)]
    if repair:
        for item in items.values():
            _repair(registry.get(item["name"]), item, root, report)
    return report


def _anything_on_disk(item: dict) -> bool:
    return bool(item["files"] or item["archives"] or (item["images"] or {}).get("checked"))


def _verify_spec(spec: Spec, root: Path, pool: ProcessPoolExecutor, workers: int) -> dict:
    item = {"name": spec.name, "kind": spec.kind, "files": [], "archives": [], "images": None, "bad": []}
    for file in spec.downloads:
        _verify_download(spec, file, root, item)
    if spec.kind == "collection":
        for archive in spec.archives:
            _verify_members(spec, archive, root, item)
        item["images"] = check_images(collection_dir(spec, root), layout.images_root(root), pool, workers, item["bad"])
    elif spec.images_from == "url":
        dataset_dir = layout.images_dir(root, spec.name)
        item["images"] = check_images(dataset_dir, layout.images_root(root), pool, workers, item["bad"])
        item["images"]["missing"] = _missing_ok_rows(dataset_dir, layout.images_root(root), item["bad"])
    return item


# ------------------------------------------------------------------------------------ files, archives


def _verify_download(spec: Spec, file, root: Path, item: dict) -> None:
    path = layout.download_path(root, spec.name, file.filename)
    if not path.is_file():
        return
    checked = [n for n in ("size", "sha256", "md5") if getattr(file, n)] or ["nothing (no size or hash in spec)"]
    entry = {"key": file.key, "path": str(path), "checked": checked, "ok": True}
    try:
        verify.verify_file(path, file, use_cache=False)
    except (VerificationError, OSError) as exc:
        entry.update(ok=False, reason=str(exc))
        item["bad"].append({"path": str(path), "reason": str(exc), "kind": "download"})
    item["files"].append(entry)


def _verify_members(spec: Spec, archive, root: Path, item: dict) -> None:
    """Each member the extraction should have written must exist with its header size."""
    dest = collection_dir(spec, root)
    mapping = Mapping.of(archive)
    if read_marker(archive.filename, dest, mapping) is None:
        return  # not extracted (yet): nothing to compare
    path = layout.download_path(root, spec.name, archive.filename)
    entry = {"key": archive.key, "members": 0, "missing": 0, "checked": path.is_file()}
    if path.is_file():
        try:
            for rel, size in expected_members(path, mapping):
                entry["members"] += 1
                final = dest / rel
                if not (final.is_file() and final.stat().st_size == size):
                    entry["missing"] += 1
                    item["bad"].append({"path": str(final), "reason": f"missing or wrong size (member of "
                                        f"{archive.filename})", "kind": "member"})
        except ArchiveError as exc:
            item["bad"].append({"path": str(path), "reason": str(exc), "kind": "download"})
    item["archives"].append(entry)


def expected_members(archive: Path, mapping: Mapping) -> Iterator[tuple[str, int]]:
    """(path relative to the destination, size) of each regular member extraction writes.
    Mirrors archives._Extraction._one: same name normalisation, prefix, include; links and dirs skipped."""
    for member in archive_members(archive):
        if member.kind != "file":
            continue
        name = "/".join(p for p in member.name.split("/") if p not in ("", "."))
        rel = mapping.target(name)
        if rel and mapping.wanted(name):
            yield rel, member.size


# --------------------------------------------------------------------------------------------- images


def check_images(folder: Path, images_root: Path, pool: ProcessPoolExecutor, workers: int,
                 bad: list) -> dict:
    """Decode every image under `folder` in the pool; per sub-folder counts, bad ones appended to `bad`.
    At most 4 batches per worker are in flight, so memory stays bounded for millions of files."""
    per_folder: dict[str, dict] = {}
    pending = set()

    def collect(done) -> None:
        for future in done:
            rel_folder, checked, failures = future.result()
            counts = per_folder.setdefault(rel_folder, {"checked": 0, "bad": 0})
            counts["checked"] += checked
            counts["bad"] += len(failures)
            bad.extend({"path": p, "reason": r, "kind": "image"} for p, r in failures)

    for rel_folder, paths in _image_batches(folder, images_root):
        if len(pending) >= 4 * workers:
            done, pending = wait(pending, return_when=FIRST_COMPLETED)
            collect(done)
        pending.add(pool.submit(_check_batch, rel_folder, paths))
    collect(wait(pending).done)
    return {"checked": sum(c["checked"] for c in per_folder.values()),
            "bad": sum(c["bad"] for c in per_folder.values()), "folders": dict(sorted(per_folder.items()))}


def _image_batches(folder: Path, images_root: Path) -> Iterator[tuple[str, list[str]]]:
    """(folder relative to <root>/images, up to BATCH image paths), walking lazily. Hidden files are
    temporaries of a running or killed writer, not images."""
    stack = [folder] if folder.is_dir() else []
    while stack:
        current = stack.pop()
        rel = current.relative_to(images_root).as_posix()
        batch = []
        with os.scandir(current) as entries:
            for entry in sorted(entries, key=lambda e: e.name):
                if entry.is_dir(follow_symlinks=False):
                    if entry.name not in SKIP_DIRS:
                        stack.append(Path(entry.path))
                elif (not entry.name.startswith(".") and os.path.splitext(entry.name)[1].lower() in IMAGE_SUFFIXES
                      and entry.is_file(follow_symlinks=False)):
                    batch.append(entry.path)
                    if len(batch) == BATCH:
                        yield rel, batch
                        batch = []
        if batch:
            yield rel, batch


def _check_batch(rel_folder: str, paths: list[str]) -> tuple[str, int, list[tuple[str, str]]]:
    failures = [(p, reason) for p in paths if (reason := check_image(p)) is not None]
    return rel_folder, len(paths), failures


def check_image(path: str) -> str | None:
    """None when the image decodes completely, else the reason."""
    from PIL import Image, ImageFile

    ImageFile.LOAD_TRUNCATED_IMAGES = False  # a truncated JPEG must fail load(), not be padded with grey
    try:
        with Image.open(path) as image:
            image.verify()
        with Image.open(path) as image:  # verify() leaves the image unusable: open again to decode
            image.load()
    except Exception as exc:  # PIL raises OSError, SyntaxError, ValueError, DecompressionBombError, ...
        return f"{type(exc).__name__}: {exc}"
    return None


def _missing_ok_rows(dataset_dir: Path, images_root: Path, bad: list) -> int:
    """Rows a status parquet marks `ok` whose image file is gone (read shard by shard: bounded memory)."""
    missing = 0
    for parquet in layout.dataset_shard_statuses(dataset_dir):
        try:
            table = pq.read_table(parquet, columns=["status", "image_path"])
        except (OSError, pa.ArrowException) as exc:
            bad.append({"path": str(parquet), "reason": f"unreadable status parquet: {exc}", "kind": "shard"})
            continue
        for status, rel in zip(table.column("status").to_pylist(), table.column("image_path").to_pylist()):
            if status == "ok" and rel and not (images_root / rel).is_file():
                missing += 1
                bad.append({"path": str(images_root / rel), "reason": "missing (status parquet says ok)",
                            "kind": "image"})
    return missing


# --------------------------------------------------------------------------------------------- repair


def _repair(spec: Spec, item: dict, root: Path, report: dict) -> None:
    """Move bad files aside and remove the markers that would make fetch skip redoing them."""
    if not item["bad"]:
        return
    for bad in item["bad"]:
        path = Path(bad["path"])
        if bad["kind"] in ("download", "image") and path.is_file():
            report["moved_aside"].append(str(verify.move_aside(path)))
        if bad["kind"] == "image" and spec.kind == "dataset":
            layout.marker_of_image(path).unlink(missing_ok=True)
        if bad["kind"] == "shard":  # an unreadable status parquet: the engine redoes a shard without marker
            layout.marker_of_status(path).unlink(missing_ok=True)
    # A collection's bad download is one of its archives: without its marker, fetch downloads it again.
    if spec.kind == "collection" and any(b["kind"] in ("image", "member", "download") for b in item["bad"]):
        for archive in spec.archives:
            marker_path(archive.filename, collection_dir(spec, root)).unlink(missing_ok=True)
    report["refetch"].append(spec.name)


# --------------------------------------------------------------------------------------------- format


def format_verify(report: dict, max_bad: int = 20, quiet: bool = False) -> str:
    """Per spec one line, then the bad files (the first `max_bad`), then what repair moved; `quiet` keeps only
    the bad files and the last line."""
    lines = [f"root: {report['root']}"]
    if not report.get("fetched", True):
        return "\n".join(lines + [f"nothing fetched under {report['root']}"])
    for item in report["items"].values():
        if quiet or item["name"] not in report.get("fetched", report["items"]):
            continue  # nothing of it on disk: nothing was checked
        files = f"{sum(f['ok'] for f in item['files'])}/{len(item['files'])} files ok"
        members = sum(a["members"] - a["missing"] for a in item["archives"])
        images = item["images"] or {}
        parts = [files] + ([f"{members:,} archive members present"] if item["archives"] else [])
        if images:
            parts.append(f"{images['checked'] - images['bad']:,}/{images['checked']:,} images decode")
        if images.get("missing"):
            parts.append(f"{images['missing']:,} images missing")
        lines.append(f"{item['name']}: " + ", ".join(parts))
    bad = report["bad"]
    if bad:
        lines += ["", f"{len(bad)} bad:"] + [f"  {b['path']}: {b['reason']}" for b in bad[:max_bad]]
        if len(bad) > max_bad:
            lines.append(f"  ... and {len(bad) - max_bad} more (--json lists all)")
    moved = report["moved_aside"]
    if moved:
        lines.append(f"moved aside into .rejected/ beside them: {len(moved)} files")
        lines += [f"  {path}" for path in moved[:max_bad]]
        if len(moved) > max_bad:
            lines.append(f"  ... and {len(moved) - max_bad} more (--json lists all)")
    if report["refetch"]:
        lines.append("to fetch again: " + " ".join(report["refetch"]))
    verified = report.get("verified", report["ok"])
    lines.append("all verified" if verified else f"verification FAILED: {len(bad)} bad")
    return "\n".join(lines)


def format_report(report: dict, quiet: bool = False) -> str:
    """The verification, then (with --repair) the fetch that redid what was moved aside, and the outcome."""
    text = format_verify(report, quiet=quiet)
    repair = report.get("repair")
    if repair:
        fetched = fetch_command.format_report(repair)
        text += "\n\nrepair: fetched again " + " ".join(report["refetch"]) + ("" if quiet else "\n" + fetched)
        text += "\n" + ("repaired: run mmcorpus verify again to check" if report["ok"] else
                        "repair FAILED: the fetch above did not complete")
    return text
