"""The on-disk contract (DESIGN.md §3): every path under the data root and every bookkeeping name.

No other module spells a folder or bookkeeping name of the root; they ask here. The layout is a contract with
users (LLaVA's playground layout under images/, dashboards on the status parquets, cron scripts reading runs/),
so a change here is a change of DESIGN.md.

    <root>/downloads/<name>/<file>                  raw files as published (+ <file>.part while downloading)
    <root>/downloads/<name>/.mmcorpus/              verified-checksum records, cached fetch facts
    <root>/images/<collection path>/...             image collections (+ .mmcorpus/<archive>.done markers)
    <root>/images/<dataset>/<subset>/<shard:05d>/<key>.<ext>   URL-list images
    <root>/images/<dataset>/<subset>/<shard:05d>.parquet       their status rows; <shard:05d>.done last
    <root>/normalized/<dataset>/<subset>-NNNNN.parquet         unified rows (+ _<subset>.report.json, .inputs.json)
    <root>/stages/<stage>/                          prepared mixes and exports (manifest.json, report.html, ...)
    <root>/runs/<name>.json                         the last fetch of each name
    <root>/.locks/<name>.lock                       one running command per name
"""

from __future__ import annotations

from pathlib import Path

# -------------------------------------------------------------------------------------- top-level folders

DOWNLOADS = "downloads"
IMAGES = "images"
NORMALIZED = "normalized"
STAGES = "stages"
RUNS = "runs"
LOCKS = ".locks"

# ---------------------------------------------------------------------------------------- bookkeeping names

BOOKKEEPING = ".mmcorpus"  # per folder: markers and records that are ours, not the dataset's
REJECTED = ".rejected"  # beside a file that failed verification: where `verify --repair` moves it
PART = ".part"  # a resumable partial download, beside its final name
TEMP = ".mmpart"  # suffix of every temporary name (mmcorpus.core.atomicio); swept when its owner is dead
DONE = ".done"  # a finished unit of work: an extracted archive, a URL-list shard
MANIFEST = "manifest.json"  # a prepared stage's description
STAGE_REPORT = "report.html"


# ----------------------------------------------------------------------------------------------- the root


def downloads_dir(root: str | Path, name: str) -> Path:
    return Path(root) / DOWNLOADS / name


def download_path(root: str | Path, name: str, filename: str) -> Path:
    """Where a spec's file is stored, as published."""
    return downloads_dir(root, name) / filename


def images_root(root: str | Path) -> Path:
    """The folder LLaVA's image paths are relative to (and every status row's image_path)."""
    return Path(root) / IMAGES


def images_dir(root: str | Path, path: str) -> Path:
    """A collection's folder (`path` from its spec) or a URL-list dataset's (its name)."""
    return images_root(root) / path


def normalized_dir(root: str | Path, dataset: str) -> Path:
    return Path(root) / NORMALIZED / dataset


def normalize_report(root: str | Path, dataset: str, subset: str) -> Path:
    return normalized_dir(root, dataset) / f"_{subset}.report.json"


def normalize_inputs(root: str | Path, dataset: str, subset: str) -> Path:
    """What a subset was normalized from (prepare normalizes again only when it changed)."""
    return normalized_dir(root, dataset) / f"_{subset}.inputs.json"


def stages_root(root: str | Path) -> Path:
    return Path(root) / STAGES


def stage_dir(root: str | Path, stage: str) -> Path:
    return stages_root(root) / stage


def run_record(root: str | Path, name: str) -> Path:
    return Path(root) / RUNS / f"{name}.json"


IMG2DATASET_WORK = ".img2dataset-work"  # under the root: same file system as the images, so moves are renames


def img2dataset_work(root: str | Path) -> Path:
    """Where `--engine img2dataset` lets img2dataset write before its output is moved into our layout."""
    return Path(root) / IMG2DATASET_WORK


def locks_dir(root: str | Path) -> Path:
    return Path(root) / LOCKS


def lock_path(root: str | Path, name: str) -> Path:
    return locks_dir(root) / f"{name}.lock"


# ------------------------------------------------------------------------------------ beside a given file


def bookkeeping_dir(folder: str | Path) -> Path:
    return Path(folder) / BOOKKEEPING


def part_path(final: Path) -> Path:
    """Where the resumable partial download of `final` lives (status and the disk check read it too)."""
    return final.with_name(final.name + PART)


def part_meta_path(part: Path) -> Path:
    """The URL and validator a partial download was started from (never splice bytes of another URL)."""
    return part.with_name(part.name + ".json")


def verified_record(path: Path) -> Path:
    """The record of a file's last full checksum verification (size and mtime say when it is stale)."""
    return bookkeeping_dir(path.parent) / f"{path.name}.verified.json"


def rejected_dir(folder: Path) -> Path:
    return Path(folder) / REJECTED


def archive_marker(dest: str | Path, archive_name: str) -> Path:
    """Written last when an archive is fully extracted into `dest`."""
    return bookkeeping_dir(dest) / f"{archive_name}{DONE}"


def collections_needed_cache(root: str | Path, name: str) -> Path:
    return bookkeeping_dir(downloads_dir(root, name)) / "collections-needed.json"


# ---------------------------------------------------------------------------------------- URL-list shards


def shard_name(shard: int) -> str:
    return f"{shard:05d}"


def subset_images_dir(root_images: Path, dataset: str, subset: str) -> Path:
    """`<root>/images/<dataset>/<subset>`, from the images root (what the URL-list engine is given)."""
    return Path(root_images) / dataset / subset


def shard_status(subset_dir: Path, shard: int) -> Path:
    return Path(subset_dir) / f"{shard_name(shard)}.parquet"


def shard_marker(subset_dir: Path, shard: int) -> Path:
    return Path(subset_dir) / f"{shard_name(shard)}{DONE}"


def shard_image_relpath(dataset: str, subset: str, shard: int, key: str, ext: str) -> str:
    """Relative to <root>/images, as stored in the status parquet's image_path."""
    return f"{dataset}/{subset}/{shard_name(shard)}/{key}.{ext}"


def shard_statuses(subset_dir: Path) -> list[Path]:
    """The status parquets of a subset's shards, in shard order."""
    return sorted(Path(subset_dir).glob("*.parquet"))


def marker_of_status(status: Path) -> Path:
    """A shard's done marker, from its status parquet."""
    return status.with_suffix(DONE)


def marker_of_image(image: Path) -> Path:
    """`<subset>/<shard>/<key>.jpg` -> `<subset>/<shard>.done`"""
    return image.parent.with_name(image.parent.name + DONE)


# -------------------------------------------------------------------------------- normalized rows, stages


def normalized_shard(out_dir: Path, subset: str, number: int, suffix: str = "parquet") -> Path:
    """`<root>/normalized/<dataset>/<subset>-NNNNN.parquet` (also a stage's parquet shards)."""
    return Path(out_dir) / f"{subset}-{number:05d}.{suffix}"


def normalized_shards(out_dir: Path, subset: str) -> list[Path]:
    """The subset's numbered shards in `out_dir` (nothing else that happens to share the prefix)."""
    prefix = f"{subset}-"
    return sorted(p for p in Path(out_dir).glob(f"{prefix}*.parquet")
                  if p.name[len(prefix):-len(".parquet")].isdigit()) if Path(out_dir).is_dir() else []


def stage_manifest(stage_folder: Path) -> Path:
    return Path(stage_folder) / MANIFEST


def stage_report(stage_folder: Path) -> Path:
    return Path(stage_folder) / STAGE_REPORT


def stage_building(final: Path, pid: int) -> Path:
    """The hidden folder a stage is built in before it is swapped in (`.<stage>.tmp-<pid>`)."""
    return final.with_name(f".{final.name}.tmp-{pid}")


def stage_previous(final: Path, pid: int) -> Path:
    """Where the previous stage waits during the swap (`.<stage>.old-<pid>`)."""
    return final.with_name(f".{final.name}.old-{pid}")


def stage_leftovers(final: Path) -> tuple[list[Path], list[Path]]:
    """Folders a killed prepare may have left beside `final`: (half-built, previous stages oldest first)."""
    building = list(final.parent.glob(f".{final.name}.tmp-*"))
    previous = sorted(final.parent.glob(f".{final.name}.old-*"), key=lambda p: p.stat().st_mtime)
    return building, previous
