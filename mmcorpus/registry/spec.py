"""The registry: one YAML spec per dataset and per image collection (DESIGN.md §1).

Built-in specs live in the repository's `configs/` (shipped as `mmcorpus.builtin_configs`); users add or
override specs from their own folders (`--config-dir`, `MMCORPUS_CONFIG_DIR`), searched after the built-ins.
Specs are user-written files, so loading is strict: an unknown key or a wrong type is an error naming the
file and the key path, never a silent default.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

STAGES = ("pretrain", "finetune")
FORMAT_TYPES = ("tsv", "llava")
FILE_ROLES = ("annotations", "metadata")
NAME_RE = re.compile(r"^[a-z0-9][a-z0-9_.-]*$")
HEX_RE = {"sha256": re.compile(r"^[0-9a-f]{64}$"), "md5": re.compile(r"^[0-9a-f]{32}$")}


# --------------------------------------------------------------------------------------------- spec types


@dataclass(frozen=True)
class FileSpec:
    """One downloadable file: an annotation file of a dataset or an archive of a collection.

    `url` is None for files that only exist as a manual download (`manual` says how to get them).
    `size`/`sha256`/`md5` are enforced when present; rounded documentation sizes must not be put here.
    """

    key: str  # subset name (datasets) or archive name (collections)
    url: str | None = None
    filename: str = ""
    size: int | None = None
    approx_size: int | None = None  # when the exact size is not known: for --dry-run and list, never verified
    sha256: str | None = None
    md5: str | None = None
    mirrors: tuple[str, ...] = ()
    optional: bool = False  # not fetched unless asked for by name (NAME:key) or with --all-files
    manual: str | None = None  # how to obtain it when there is no headless download
    # dataset files
    role: str = "annotations"  # metadata files are fetched but not normalized
    stages: tuple[str, ...] = ()  # the stages this file serves, when not all of the dataset's
    image_prefix: str = ""  # prepended to the JSON image paths to make them relative to <root>/images
    columns: tuple[str, ...] = ()  # TSV column order for this file, when it differs from format.columns
    records: int | None = None  # approximate record count, for display
    # collection archives
    strip: str = ""  # member prefix to drop when extracting
    into: str = ""  # sub-folder of the collection path the members land in
    include: tuple[str, ...] = ()  # glob patterns of members to keep (empty: all)

    @property
    def urls(self) -> list[str]:
        """The URL and its mirrors, in the order they are tried."""
        return [u for u in (self.url, *self.mirrors) if u]


@dataclass(frozen=True)
class Spec:
    """A dataset or an image collection, as loaded from one YAML file."""

    name: str
    kind: str  # "dataset" | "collection"
    source: Path  # the YAML file it came from
    title: str = ""
    description: str = ""
    license: str = ""
    homepage: str = ""
    citation: str = ""
    version: int = 1
    notes: str = ""
    manual: str | None = None
    # datasets
    stages: tuple[str, ...] = ()
    files: dict[str, FileSpec] = field(default_factory=dict)
    format_type: str | None = None
    format_columns: tuple[str, ...] = ()
    images_from: str | None = None  # "url": images come from the url column (URL-list datasets)
    collections: tuple[str, ...] = ()
    # collections
    path: str = ""  # under <root>/images
    archives: tuple[FileSpec, ...] = ()
    count: int | None = None  # approximate image count

    @property
    def downloads(self) -> list[FileSpec]:
        """Every file of the spec that goes to <root>/downloads/<name>/."""
        return list(self.files.values()) if self.kind == "dataset" else list(self.archives)

    def approx_size(self) -> int | None:
        sizes = [f.size or f.approx_size for f in self.downloads if not f.optional]
        return sum(s for s in sizes if s) if any(sizes) else None
