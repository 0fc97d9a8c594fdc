"""Image collections: download each archive, extract it into <root>/images/<collection path>.

A collection is shared by every dataset whose image paths point into it (COCO serves LLaVA and ShareGPT4V), so
it is fetched once and its extraction markers make later fetches free. The HTTP side is the caller's
`download(file_spec, dest_dir) -> Path` (the resumable, verifying downloader); this module only decides what
to download and where it lands, and never re-downloads an archive whose extraction marker says it is done
(archives may have been deleted after extraction).

Manual collections (SA-1B: signed, expiring links) have archives without a URL. The user passes
`manual_source`: a folder holding the archives by their file names, a single archive, or a folder of
already-extracted images. What cannot be found is reported, never an error: datasets that need it keep the
samples whose image is on disk.

An archive that is unsafe, broken or not an archive (ArchiveError) is one failed entry of the summary (its
error logged, its name in `failed_files`, so the fetch exits 1), never the end of the fetch: the other
archives go on. Members the extraction refused (archives.py: bookkeeping names, a file where a folder is, an
encrypted zip member, ...) are counted in the archive's entry (`refused`, `refused_reasons`) and logged.
"""

from __future__ import annotations

import fnmatch
import logging
import os
import shutil
from collections.abc import Callable, Iterable
from pathlib import Path

from mmcorpus import layout
from mmcorpus.core.atomicio import sweep_stale_temporaries, temporary_name
from mmcorpus.errors import UsageError
from mmcorpus.fetch.archives import (
    ArchiveError,
    Limits,
    Mapping,
    archive_members,
    extract_archive,
    read_marker,
)

# Collection folders swept for half-written files of killed runs during this fetch_collection call. The
# sweep walks the whole folder, so it runs once per fetch and only when something is extracted: SA-1B's 51
# tars share one folder of ~11M files, and a cron re-run of a finished collection extracts nothing.
_swept: set[Path] = set()
log = logging.getLogger("mmcorpus")
DEFAULT_LIMITS = Limits()


def _extract(archive: Path, dest: Path, mapping: Mapping, **options) -> dict:
    if dest not in _swept:
        if dest.is_dir():
            sweep_stale_temporaries(dest)
        _swept.add(dest)
    return extract_archive(archive, dest, mapping, sweep=False, **options)

Download = Callable[[object, Path], Path]


def collection_dir(spec, root: Path) -> Path:
    return layout.images_dir(root, spec.path)


def fetch_collection(
    spec,
    root: Path,
    download: Download,
    *,
    delete_archives: bool = False,
    manual_source: str | Path | None = None,
    only: Iterable[str] | None = None,
    limits: Limits = DEFAULT_LIMITS,
) -> dict:
    """Download and extract every archive of collection `spec`; return a plain summary.

    `only`: archive names to fetch. Without it: the non-optional archives, plus the optional manual ones that
    are given (`manual_source`) or already placed in <root>/downloads/<name>/.
    Summary: {"collection", "path", "archives": [{"name", "status", ...counts}], "missing": [names],
    "failed_files": [names], "refused": members refused in all archives, "manual": instructions or None}.
    Status is one of: extracted, done (marker found, nothing to do), copied (manual image folder), missing
    (manual archive not provided), failed (ArchiveError: "error" says why).
    """
    placed = layout.downloads_dir(root, spec.name)  # where a user may put manual downloads by hand
    chosen = _chosen(spec, only, manual_source, placed)
    dest = collection_dir(spec, root)
    _swept.discard(dest)  # a new fetch: sweep again before its first extraction
    results = []
    manual = [a for a in chosen if a.url is None]
    for archive in chosen:
        if archive.url is not None:
            results.append(_fetch_one(spec, archive, root, dest, download, delete_archives, limits))
    if manual_source is None and any((placed / a.filename).is_file() for a in manual):
        manual_source = placed
    if manual or (spec.manual and not spec.archives):
        results += _from_manual_source(spec, manual, dest, manual_source, limits)
    return {
        "collection": spec.name,
        "path": spec.path,
        "archives": results,
        "missing": [r["name"] for r in results if r["status"] == "missing"],
        "failed_files": [r["name"] for r in results if r["status"] == "failed"],
        "refused": sum(r.get("refused", 0) for r in results),
        "manual": spec.manual if any(r["status"] == "missing" for r in results) else None,
    }


def _chosen(spec, only, manual_source, placed: Path) -> list:
    """Named archives; else the required ones, plus optional manual ones (SA-1B tars) when the user gives a
    source or has put the file in <root>/downloads/<name>/ (what the SAM spec's manual note tells them)."""
    if only is not None:
        wanted = set(only)
        return [a for a in spec.archives if a.key in wanted]
    return [a for a in spec.archives if not a.optional
            or (a.url is None and (manual_source is not None or (placed / a.filename).is_file()))]


def _fetch_one(spec, archive, root: Path, dest: Path, download: Download, delete: bool, limits: Limits) -> dict:
    mapping = Mapping.of(archive)
    done = read_marker(archive.filename, dest, mapping)
    downloads = layout.downloads_dir(root, spec.name)
    if done is not None:  # extracted before; the archive itself may be gone (delete_archives)
        if delete:  # a run killed between the marker and the deletion left the archive behind
            layout.download_path(root, spec.name, archive.filename).unlink(missing_ok=True)
        return {**done, "name": archive.key, "status": "done"}
    downloads.mkdir(parents=True, exist_ok=True)
    path = Path(download(archive, downloads))
    return _attempt(archive.key, lambda: _extract(path, dest, mapping, limits=limits, delete_after=delete,
                                                  name=archive.filename))


def _attempt(name: str, extract: Callable[[], dict]) -> dict:
    """One archive's summary entry from `extract()`: an ArchiveError is a failed entry (logged once), and
    members refused by this extraction are logged with their reasons."""
    try:
        report = extract()
    except ArchiveError as exc:
        log.error("%s", exc)
        return {"name": name, "status": "failed", "error": str(exc)}
    if report.get("refused") and not report["skipped"]:
        reasons = "; ".join(f"{reason} {entry['count']} (e.g. {entry['examples'][0]})"
                            for reason, entry in sorted(report["refused_reasons"].items()))
        log.warning("%s: %d members refused and not extracted: %s", name, report["refused"], reasons)
    return {**report, "name": name, "status": "done" if report["skipped"] else "extracted"}


# ------------------------------------------------------------------------------------- manual sources


def _from_manual_source(spec, archives: list, dest: Path, source, limits: Limits) -> list[dict]:
    """Manual archives from a user folder or file. Archives are matched by file name; a folder holding
    none of them is taken as already-extracted images and copied (hard-linked when possible)."""
    done, archives = [], list(archives)
    for archive in list(archives):
        marker = read_marker(archive.filename, dest, Mapping.of(archive))
        if marker is not None:  # extracted by an earlier run: no source needed any more
            done.append({**marker, "name": archive.key, "status": "done"})
            archives.remove(archive)
    if done and not archives:
        return done
    return done + _from_source(spec, archives, dest, source, limits, some_done=bool(done))


def _from_source(spec, archives: list, dest: Path, source, limits: Limits, some_done: bool = False) -> list[dict]:
    """`some_done`: other archives of the collection were extracted from this source before, so it is a folder
    of archives even when none of the remaining ones is in it (never to be copied as images)."""
    if source is None:
        return [_missing(a, "no --manual-source given") for a in archives] or [
            {"name": spec.name, "status": "missing", "reason": "no --manual-source given"}
        ]
    source = Path(source)
    if not source.exists():
        raise UsageError(f"manual source {source} does not exist (collection '{spec.name}')")
    if source.is_file():
        return _manual_file(archives, source, dest, limits)
    found = {a.key: source / a.filename for a in archives if (source / a.filename).is_file()}
    if not found and not some_done:
        include = tuple(p for a in archives for p in a.include)
        return [_copy_tree(source, dest, include)]
    return [_extract_manual(a, found[a.key], dest, limits) if a.key in found
            else _missing(a, f"{a.filename} not in {source}") for a in archives]


def _manual_file(archives: list, source: Path, dest: Path, limits: Limits) -> list[dict]:
    """One user-given archive: the spec archive with that file name, else the first one's mapping."""
    match = next((a for a in archives if a.filename == source.name), None)
    results = [_extract_manual(match, source, dest, limits)] if match else []
    if match is None:
        mapping = Mapping.of(archives[0]) if archives else Mapping()
        results.append(_attempt(source.name, lambda: _unnamed_archive(source, dest, mapping, limits)))
    return results + [_missing(a, "not provided") for a in archives if a is not match]


def _unnamed_archive(source: Path, dest: Path, mapping: Mapping, limits: Limits) -> dict:
    archive_members(source)  # raises a clear ArchiveError when it is not an archive at all
    return _extract(source, dest, mapping, limits=limits)


def _extract_manual(archive, path: Path, dest: Path, limits: Limits) -> dict:
    return _attempt(archive.key, lambda: _extract(path, dest, Mapping.of(archive), limits=limits,
                                                  name=archive.filename))


def _missing(archive, reason: str) -> dict:
    return {"name": archive.key, "status": "missing", "reason": reason, "manual": archive.manual}


def _copy_tree(source: Path, dest: Path, include: tuple[str, ...]) -> dict:
    """Copy regular files under `source` to the same relative paths under `dest` (temp name + rename).
    Symlinks are skipped: the collection must not depend on files outside it."""
    counts = {"name": str(source), "status": "copied", "copied": 0, "already_present": 0, "excluded": 0,
              "links_skipped": 0}
    for folder, dirs, files in os.walk(source):
        dirs[:] = [d for d in dirs if not d.startswith(".")]
        for file in files:
            src = Path(folder) / file
            rel = src.relative_to(source).as_posix()
            if src.is_symlink():
                counts["links_skipped"] += 1
            elif include and not any(fnmatch.fnmatch(rel, p) for p in include):
                counts["excluded"] += 1
            elif (dest / rel).is_file() and (dest / rel).stat().st_size == src.stat().st_size:
                counts["already_present"] += 1
            else:
                _link_or_copy(src, dest / rel)
                counts["copied"] += 1
    return counts


def _link_or_copy(src: Path, final: Path) -> None:
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = temporary_name(final)
    tmp.unlink(missing_ok=True)
    try:
        os.link(src, tmp)  # same file system: no second copy of a 10 GB SAM folder
    except OSError:
        shutil.copyfile(src, tmp)
    os.replace(tmp, final)


# ------------------------------------------------------------------------------------- fetch by need


def collections_needed(image_paths: Iterable[str | None], collections: Iterable) -> dict:
    """Which collections a dataset's image paths (relative to <root>/images) point into.

    A path belongs to the collection whose `path` is its longest folder prefix. Returns
    {"needed": {collection name: image count}, "unmatched": count, "unmatched_examples": [up to 5 paths]}.
    None paths (text-only records) are ignored.
    """
    by_path = {c.path.strip("/"): c.name for c in collections}
    needed: dict[str, int] = {}
    unmatched, examples = 0, []
    for path in image_paths:
        if path is None:
            continue
        name = _owner(path, by_path)
        if name is None:
            unmatched += 1
            if len(examples) < 5:
                examples.append(path)
        else:
            needed[name] = needed.get(name, 0) + 1
    return {"needed": needed, "unmatched": unmatched, "unmatched_examples": examples}


def _owner(path: str, by_path: dict[str, str]) -> str | None:
    parts = path.split("/")[:-1]
    for depth in range(len(parts), 0, -1):  # longest prefix first
        name = by_path.get("/".join(parts[:depth]))
        if name is not None:
            return name
    return None
