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

Beside the root, a config directory (built-in configs/, MMCORPUS_CONFIG_DIR, --config-dir) holds
`<dir>/stages/<stage>.yaml`, the stage mixes (CONFIG_STAGES below).
"""

from __future__ import annotations

import hashlib
import os
import re
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
LOCK_SUFFIX = ".lock"  # <root>/.locks/<lock name>.lock
NAME_MAX = 255  # bytes in one path component (Linux, macOS): temporary names must fit it too
# The longest name of a downloaded file: its siblings `<name>.part.json`, `.mmcorpus/<name>.verified.json` and
# `.rejected/<name>.<YYYYmmddTHHMMSS>.<pid>` (the longest, 24 bytes more) must fit NAME_MAX too.
MAX_FILE_NAME = NAME_MAX - 32

# Names that are ours wherever they appear: never taken from a spec, an archive member or a dataset file.
BOOKKEEPING_FOLDERS = (BOOKKEEPING, REJECTED)
BOOKKEEPING_SUFFIXES = (PART, PART + ".json", PART + ".tmp", TEMP, DONE)  # part_meta_path, part_meta_temp


# ----------------------------------------------------------------------------------- the one path check


class UnsafePath(ValueError):
    """A value that must not become a path below a folder of ours. `escapes`: it could leave the folder or
    no file system stores it safely (absolute, '..', backslash, NUL); otherwise it is empty or spells one of
    our bookkeeping names (a forged done marker, a temporary the sweep would delete)."""

    def __init__(self, path: str, reason: str, *, escapes: bool):
        super().__init__(f"{reason}, got {path!r}")
        self.path, self.reason, self.escapes = path, reason, escapes


def safe_relative(path: str) -> str:
    """The one check of every value that becomes a path below a folder of ours: spec paths, file names and
    keys, archive members, image paths of dataset files. Returns it normalised (`./a//b/` -> `a/b`);
    raises UnsafePath. UNSAFE_PATH_PATTERN is the same rule as one regular expression."""
    reason = _escape_reason(path)
    if reason:
        raise UnsafePath(path, reason, escapes=True)
    parts = [part for part in path.split("/") if part not in ("", ".")]
    if not parts:
        raise UnsafePath(path, "is empty", escapes=False)
    for part in parts:
        if part in BOOKKEEPING_FOLDERS or part.endswith(BOOKKEEPING_SUFFIXES):
            raise UnsafePath(path, f"uses the bookkeeping name {part!r} (mmcorpus's own: "
                             f"{', '.join(BOOKKEEPING_FOLDERS)}, *{', *'.join(BOOKKEEPING_SUFFIXES)})",
                             escapes=False)
    return "/".join(parts)


def _escape_reason(path: str) -> str | None:
    if not isinstance(path, str):
        return f"must be a string, not {type(path).__name__}"
    if "\0" in path:
        return "contains a NUL byte"
    if path.startswith("/") or path[1:2] == ":":
        return "is an absolute path"
    if "\\" in path:
        return "contains a backslash (Windows path separators are ambiguous)"
    if ".." in path.split("/"):
        return "contains a '..' component"
    return None


def _pattern() -> str:
    """safe_relative as one pattern (a match means unsafe) for Python's re and Arrow's RE2, which checks
    whole batches of image paths at once (tests/registry/test_paths.py holds the two to the same cases)."""
    folders = "|".join(re.escape(name) for name in BOOKKEEPING_FOLDERS)
    suffixes = "|".join(re.escape(name) for name in BOOKKEEPING_SUFFIXES)
    return "|".join([
        r"\x00", r"^/", r"^[^/]:", r"\\", r"(^|/)\.\.(/|$)",  # escapes
        r"^(\.?/)*\.?$",  # empty: nothing but '/' and '.'
        rf"(^|/)({folders})(/|$)", rf"({suffixes})(/|$)",  # bookkeeping names
    ])


UNSAFE_PATH_PATTERN = _pattern()


# ----------------------------------------------------------------------------------------------- the root


DEFAULT_ROOT = "~/mmcorpus-data"  # the data root when neither --root / root= nor $MMCORPUS_ROOT names one


def resolve_root(root: str | Path | None = None) -> Path:
    """The data root: `root`, else $MMCORPUS_ROOT, else DEFAULT_ROOT (the CLI's and open_stage's rule)."""
    return Path(root or os.environ.get("MMCORPUS_ROOT") or DEFAULT_ROOT).expanduser()


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


def normalize_staging(out_dir: Path, subset: str, pid: int) -> Path:
    """The hidden folder a normalizer run (process `pid`) writes a subset's parts in before publishing them."""
    return Path(out_dir) / f".staging-{subset}-{pid}"


def normalize_stagings(out_dir: Path, subset: str) -> list[Path]:
    """Staging folders of `subset` in `out_dir`, live or left by killed runs (their pid ends the name)."""
    return list(Path(out_dir).glob(f".staging-{subset}-*"))


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


def img2dataset_job(root: str | Path, dataset: str, subset: str, index: int = 0, count: int = 1) -> Path:
    """The work folder of one img2dataset run of a subset (and of --shard slice `index` of `count` when
    count > 1: slices sharing a root each have their own); removed when the run ends."""
    slice_ = f"-shard-{index}-of-{count}" if count > 1 else ""
    return img2dataset_work(root) / f"{dataset}-{subset}{slice_}"


def locks_dir(root: str | Path) -> Path:
    return Path(root) / LOCKS


def lock_path(root: str | Path, name: str) -> Path:
    return locks_dir(root) / f"{name}{LOCK_SUFFIX}"


def shard_lock_name(name: str, index: int, count: int) -> str:
    """The lock name of slice `index` of `count` of a `fetch --shard` run of `name` (one lock per slice)."""
    return f"{name}.shard-{index}-of-{count}"


def shard_lock_names(root: str | Path, name: str) -> list[str]:
    """The lock names of `name`'s --shard slices that have a lock file now, sorted (for `status`)."""
    return sorted(p.name[: -len(LOCK_SUFFIX)] for p in locks_dir(root).glob(f"{name}.shard-*{LOCK_SUFFIX}"))


def stage_lock_name(stage: str) -> str:
    """The lock name a `prepare` of `stage` holds (apart from the dataset names fetch and normalize lock)."""
    return f"stages.{stage}"


def lock_break_guard(lock: Path) -> Path:
    """The file a process breaking the stale `lock` holds while it does (`<name>.lock.break`, O_EXCL)."""
    return lock.with_name(lock.name + ".break")


# ------------------------------------------------------------------------------------ beside a given file


def bookkeeping_dir(folder: str | Path) -> Path:
    return Path(folder) / BOOKKEEPING


def part_path(final: Path) -> Path:
    """Where the resumable partial download of `final` lives (status and the disk check read it too)."""
    return final.with_name(final.name + PART)


def part_meta_path(part: Path) -> Path:
    """The URL and validator a partial download was started from (never splice bytes of another URL)."""
    return part.with_name(part.name + ".json")


def part_meta_temp(part: Path) -> Path:
    """Where part_meta_path(part) is written before it is renamed into place (`<file>.part.tmp`)."""
    return part_meta_path(part).with_suffix(".tmp")


def temporary_sibling(final: Path, owner: str) -> Path:
    """The temporary name `final` is written under before its rename (`.<name>.<owner>.mmpart`); `owner`
    tells whose it is (mmcorpus.core.atomicio: host, pid and thread), so stale ones can be swept. When that
    would pass NAME_MAX (a legitimate 220-255 byte name), `<name>` is replaced by a hash of it: same folder
    (so the rename stays atomic), same owner ending (so the sweep still knows whose it is)."""
    name = f".{final.name}.{owner}{TEMP}"
    if len(name.encode("utf-8", "surrogateescape")) > NAME_MAX:
        digest = hashlib.sha256(final.name.encode("utf-8", "surrogateescape")).hexdigest()[:16]
        name = f".{digest}.{owner}{TEMP}"
    return final.with_name(name)


def verified_record(path: Path) -> Path:
    """The record of a file's last full checksum verification (size and mtime say when it is stale)."""
    return bookkeeping_dir(path.parent) / f"{path.name}.verified.json"


def rejected_dir(folder: Path) -> Path:
    return Path(folder) / REJECTED


def rejected_path(path: Path, when: str, pid: int) -> Path:
    """Where `verify --repair` (or a failed download) moves `path`: `.rejected/<name>.<when>.<pid>` beside it."""
    return rejected_dir(path.parent) / f"{path.name}.{when}.{pid}"


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


def subset_dirs(dataset_dir: Path) -> list[Path]:
    """The subset folders of a URL-list dataset's `<root>/images/<dataset>`, sorted."""
    return sorted(p for p in Path(dataset_dir).glob("*") if p.is_dir())


def shard_image_dir(subset_dir: Path, shard: int) -> Path:
    """The folder of a shard's images, `<subset>/<shard:05d>/`."""
    return Path(subset_dir) / shard_name(shard)


def shard_image(subset_dir: Path, shard: int, key: str, ext: str) -> Path:
    """One URL-list image, `<subset>/<shard:05d>/<key>.<ext>`."""
    return shard_image_dir(subset_dir, shard) / f"{key}.{ext}"


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


SHARD_STATUS_NAME = re.compile(r"^\d{5}\.parquet$")  # shard_status's name, for a strict listing


def shard_status_files(subset_dir: Path) -> list[Path]:
    """The status parquets of a subset named exactly as shard_status names them, sorted (the normalizer's
    input: nothing else that a user put there); empty when the folder does not exist."""
    folder = Path(subset_dir)
    if not folder.is_dir():
        return []
    return sorted(p for p in folder.iterdir() if SHARD_STATUS_NAME.match(p.name))


def dataset_shard_statuses(dataset_dir: Path) -> list[Path]:
    """The status parquets of every subset of a URL-list dataset's `<root>/images/<dataset>`, sorted."""
    return sorted(Path(dataset_dir).glob("*/*.parquet"))


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


STAGE_PARQUET = "data"  # in a stage folder: its parquet shards, <stage>-NNNNN.parquet
STAGE_LLAVA = "llava"  # ... the LLaVA JSON export, <stage>.json
STAGE_WEBDATASET = "webdataset"  # ... the WebDataset export, <stage>-NNNNN.tar
STAGE_HF = "hf"  # ... the TRL / Hub layout export, hf/data/train-NNNNN.parquet
STAGE_CARD = "README.md"  # ... the dataset card datasets.load_dataset reads
WEBDATASET_SIZES = "sizes.json"  # in the WebDataset folder: shard -> samples (open_clip's name)
HF_DATA_FILES = f"{STAGE_HF}/data/train-*.parquet"  # the glob a dataset card or load_dataset takes


def stage_parquet_dir(stage_folder: Path) -> Path:
    return Path(stage_folder) / STAGE_PARQUET


def stage_llava_json(stage_folder: Path, stage: str) -> Path:
    return Path(stage_folder) / STAGE_LLAVA / f"{stage}.json"


def stage_webdataset_dir(stage_folder: Path) -> Path:
    return Path(stage_folder) / STAGE_WEBDATASET


def stage_card(stage_folder: Path) -> Path:
    return Path(stage_folder) / STAGE_CARD


def webdataset_sizes(webdataset_folder: Path) -> Path:
    return Path(webdataset_folder) / WEBDATASET_SIZES


def stage_hf_dir(stage_folder: Path) -> Path:
    """`<stage>/hf/data/`, where the hf export's shards go."""
    return Path(stage_folder) / STAGE_HF / "data"


def hf_shard(folder: Path, number: int) -> Path:
    return Path(folder) / f"train-{number:05d}.parquet"


def webdataset_shard(folder: Path, stem: str, number: int) -> Path:
    """`<folder>/<stem>-NNNNN.tar`, numbered as the parquet shards are."""
    return normalized_shard(folder, stem, number, "tar")


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


# ------------------------------------------------------------------------------ config directories


CONFIG_STAGES = "stages"  # in a config directory (not the root): the stage mixes, <dir>/stages/<stage>.yaml


def stage_mix_files(config_dir: str | Path) -> list[Path]:
    """The stage mixes a config directory defines, sorted (the file stem is the stage name)."""
    return sorted((Path(config_dir) / CONFIG_STAGES).glob("*.yaml"))
