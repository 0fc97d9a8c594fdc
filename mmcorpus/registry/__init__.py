"""The registry: one YAML spec per dataset and per image collection (DESIGN.md §1).

Built-in specs live in the repository's `configs/` (shipped as `mmcorpus.builtin_configs`); users add or
override specs from their own folders (`--config-dir`, `MMCORPUS_CONFIG_DIR`), searched after the built-ins.
Specs are user-written files, so loading is strict: an unknown key or a wrong type is an error naming the
file and the key path, never a silent default.
"""

from __future__ import annotations

import dataclasses
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable

import yaml

from mmcorpus.errors import ConfigError, UsageError

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
        sizes = [f.size for f in self.downloads if not f.optional]
        return sum(s for s in sizes if s) if any(sizes) else None


# ------------------------------------------------------------------------------------------- validation


class Fields:
    """Reads a YAML mapping key by key, naming file and key path in every error."""

    def __init__(self, data: Any, where: str, source: Path):
        if not isinstance(data, dict):
            raise ConfigError(f"{source}: {where or 'top level'} must be a mapping, got {type(data).__name__}")
        self.data, self.where, self.source, self.seen = data, where, source, set()

    def _path(self, key: str) -> str:
        return f"{self.where}.{key}" if self.where else key

    def error(self, key: str, message: str) -> ConfigError:
        return ConfigError(f"{self.source}: key '{self._path(key)}' {message}")

    def get(self, key: str, check: Callable[[Any], Any], default: Any = None, required: bool = False) -> Any:
        self.seen.add(key)
        if key not in self.data or self.data[key] is None:
            if required:
                raise self.error(key, "is required")
            return default
        try:
            return check(self.data[key])
        except (TypeError, ValueError) as exc:
            raise self.error(key, str(exc)) from None

    def sub(self, key: str) -> "Fields | None":
        self.seen.add(key)
        if self.data.get(key) is None:
            return None
        return Fields(self.data[key], self._path(key), self.source)

    def done(self) -> None:
        unknown = sorted(set(map(str, self.data)) - self.seen)
        if unknown:
            raise self.error(unknown[0], "is not a known key (typo?)")


def as_str(value: Any) -> str:
    if isinstance(value, bool) or not isinstance(value, (str, int, float)):
        raise TypeError(f"must be a string, got {type(value).__name__}")
    return str(value)


def as_int(value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise TypeError(f"must be a non-negative integer, got {value!r}")
    return value


def as_bool(value: Any) -> bool:
    if not isinstance(value, bool):
        raise TypeError(f"must be true or false, got {value!r}")
    return value


def as_str_list(value: Any) -> tuple[str, ...]:
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, list):
        raise TypeError(f"must be a list of strings, got {type(value).__name__}")
    return tuple(as_str(v) for v in value)


def _stages(value: Any) -> tuple[str, ...]:
    stages = as_str_list(value)
    for stage in stages:
        if stage not in STAGES:
            raise ValueError(f"has unknown stage {stage!r} (known: {', '.join(STAGES)})")
    return stages


def one_of(*allowed: str) -> Callable[[Any], str]:
    def check(value: Any) -> str:
        value = as_str(value)
        if value not in allowed:
            raise ValueError(f"must be one of {', '.join(allowed)}; got {value!r}")
        return value

    return check


def _hex(kind: str) -> Callable[[Any], str]:
    def check(value: Any) -> str:
        value = as_str(value).lower()
        if not HEX_RE[kind].match(value):
            raise ValueError(f"must be a {kind} hex digest, got {value!r}")
        return value

    return check


def _relative_path(value: Any) -> str:
    value = as_str(value).strip("/") if as_str(value) != "" else ""
    parts = value.split("/") if value else []
    if any(p in ("", ".", "..") for p in parts) or "\\" in value or "\0" in value:
        raise ValueError(f"must be a relative path without '..', got {value!r}")
    return value


def _filename(value: Any) -> str:
    value = as_str(value)
    if "/" in value or "\\" in value or value in ("", ".", "..") or "\0" in value:
        raise ValueError(f"must be a plain file name, got {value!r}")
    return value


def default_filename(url: str | None, key: str) -> str:
    """The file name a URL saves as: the last path component, without query."""
    if url:
        from urllib.parse import unquote, urlsplit

        name = unquote(urlsplit(url).path.rstrip("/").rsplit("/", 1)[-1])
        if name and name not in (".", "..", "view", "uc", "download"):
            return name
    return key


def _file_spec(f: Fields, key: str, *, archive: bool) -> FileSpec:
    url = f.get("url", as_str)
    manual = f.get("manual", as_str)
    if url is None and manual is None:
        raise f.error("url", "is required (or give 'manual' instructions)")
    values: dict[str, Any] = dict(
        key=key,
        url=url,
        filename=f.get("filename", _filename) or default_filename(url, key),
        size=f.get("size", as_int),
        sha256=f.get("sha256", _hex("sha256")),
        md5=f.get("md5", _hex("md5")),
        mirrors=f.get("mirrors", as_str_list, ()),
        optional=f.get("optional", as_bool, False),
        manual=manual,
    )
    if archive:
        values.update(
            strip=f.get("strip", as_str, ""),
            into=f.get("into", _relative_path, ""),
            include=f.get("include", as_str_list, ()),
        )
    else:
        values.update(
            role=f.get("role", one_of(*FILE_ROLES), "annotations"),
            stages=f.get("stages", _stages, ()),
            image_prefix=f.get("image_prefix", _relative_path, ""),
            columns=f.get("columns", as_str_list, ()),
            records=f.get("records", as_int),
        )
    f.done()
    return FileSpec(**values)


def parse_spec(data: Any, source: Path) -> Spec:
    """Validate one YAML document and turn it into a Spec (raises ConfigError naming file and key)."""
    top = Fields(data, "", source)
    name = top.get("name", as_str, required=True)
    if not NAME_RE.match(name):
        raise top.error("name", f"must be lower-case letters, digits, '_', '-' or '.', got {name!r}")
    kind = top.get("kind", one_of("dataset", "collection"), required=True)
    common = dict(
        name=name,
        kind=kind,
        source=source,
        title=top.get("title", as_str, ""),
        description=top.get("description", as_str, ""),
        license=top.get("license", as_str, ""),
        homepage=top.get("homepage", as_str, ""),
        citation=top.get("citation", as_str, ""),
        version=top.get("version", as_int, 1),
        notes=top.get("notes", as_str, ""),
        manual=top.get("manual", as_str),
    )
    spec = _parse_dataset(top, common) if kind == "dataset" else _parse_collection(top, common)
    top.done()
    return spec


def _parse_dataset(top: Fields, common: dict) -> Spec:
    stages = top.get("stages", _stages, ())
    files_node = top.sub("files")
    if files_node is None or not files_node.data:
        raise top.error("files", "is required and must name at least one file")
    files = {}
    for key in list(files_node.data):
        sub = files_node.sub(str(key))
        if sub is None:
            raise files_node.error(str(key), "must be a mapping with at least 'url'")
        files[str(key)] = _file_spec(sub, str(key), archive=False)
    files_node.done()
    fmt = top.sub("format")
    if fmt is None:
        raise top.error("format", "is required (format: {type: tsv|llava})")
    format_type = fmt.get("type", one_of(*FORMAT_TYPES), required=True)
    columns = fmt.get("columns", as_str_list, ())
    fmt.done()
    if format_type == "tsv" and not ({"url", "caption"} <= set(columns)):
        raise fmt.error("columns", "must name the 'url' and 'caption' columns for a tsv dataset")
    images = top.sub("images")
    images_from, collections = None, ()
    if images is not None:
        images_from = images.get("from", one_of("url"))
        collections = images.get("collections", as_str_list, ())
        images.done()
    return Spec(
        **common,
        stages=stages,
        files=files,
        format_type=format_type,
        format_columns=columns,
        images_from=images_from,
        collections=collections,
    )


def _parse_collection(top: Fields, common: dict) -> Spec:
    path = top.get("path", _relative_path, required=True)
    archives_raw = top.get("archives", lambda v: v if isinstance(v, list) else _fail_list(), [])
    top.seen.add("archives")
    archives = []
    for i, item in enumerate(archives_raw):
        sub = Fields(item, f"archives[{i}]", top.source)
        name = sub.get("name", as_str) or default_filename(sub.data.get("url"), f"archive{i}")
        archives.append(_file_spec(sub, name, archive=True))
    if not archives and common["manual"] is None:
        raise top.error("archives", "is required (or give 'manual' instructions)")
    keys = [a.key for a in archives]
    if len(set(keys)) != len(keys):
        raise top.error("archives", "has two archives with the same name; give each a distinct 'name'")
    return Spec(**common, path=path, archives=tuple(archives), count=top.get("count", as_int))


def _fail_list() -> Any:
    raise TypeError("must be a list of archives")


# ------------------------------------------------------------------------------------------------ loading


def builtin_config_dir() -> Path:
    """configs/ of the source tree, or the copy shipped inside an installed package."""
    package = Path(__file__).resolve().parents[1]  # mmcorpus/
    source_tree = package.parent / "configs"
    if source_tree.is_dir():
        return source_tree
    import importlib.util

    # configs/ has no __init__.py: an installed copy is a namespace package, found by its search location.
    spec = importlib.util.find_spec("mmcorpus.builtin_configs")
    locations = list(spec.submodule_search_locations or []) if spec else []
    if not locations:
        raise ConfigError("the built-in specs (mmcorpus.builtin_configs) are missing from this installation")
    return Path(locations[0])


def config_dirs(extra: Iterable[str | Path] = ()) -> list[Path]:
    """Built-ins first, then MMCORPUS_CONFIG_DIR entries (os.pathsep-separated), then --config-dir."""
    dirs = [builtin_config_dir()]
    env = os.environ.get("MMCORPUS_CONFIG_DIR", "")
    dirs += [Path(p) for p in env.split(os.pathsep) if p]
    dirs += [Path(p) for p in extra]
    return dirs


def read_yaml(path: Path, what: str = "spec") -> Any:
    """Parse a user's YAML file; errors name the file (and line) in one line."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{path}: cannot read {what}: {exc}") from None
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        line = f" line {mark.line + 1}" if mark is not None else ""
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        raise ConfigError(f"{path}:{line}: invalid YAML: {problem}") from None


def load_spec_file(path: Path) -> Spec:
    return parse_spec(read_yaml(path), path)


@dataclass
class Registry:
    """All known specs by name. Later folders override earlier ones (a user file may replace a built-in)."""

    specs: dict[str, Spec] = field(default_factory=dict)

    @classmethod
    def load(cls, extra_dirs: Iterable[str | Path] = ()) -> "Registry":
        registry = cls()
        for directory in config_dirs(extra_dirs):
            if not directory.is_dir():
                raise ConfigError(f"{directory}: config directory does not exist")
            seen_here: dict[str, Path] = {}
            for path in sorted(directory.glob("*.yaml")) + sorted(directory.glob("*.yml")):
                spec = load_spec_file(path)
                if spec.name in seen_here:
                    raise ConfigError(f"{path}: name '{spec.name}' is already defined in {seen_here[spec.name]}")
                seen_here[spec.name] = path
                registry.specs[spec.name] = spec
        registry.check_references()
        return registry

    def check_references(self) -> None:
        for spec in self.specs.values():
            for name in spec.collections:
                other = self.specs.get(name)
                if other is None or other.kind != "collection":
                    raise ConfigError(f"{spec.source}: key 'images.collections' names unknown collection '{name}'")

    def get(self, name: str) -> Spec:
        try:
            return self.specs[name]
        except KeyError:
            raise UsageError(f"unknown dataset or collection '{name}'{did_you_mean(name, self.specs)}") from None

    def with_collections(self, name: str) -> list[Spec]:
        """`name`'s spec, then the image collections it names (where a dataset's images live)."""
        spec = self.get(name)
        return [spec] + [self.get(c) for c in spec.collections]

    def __iter__(self):
        return iter(sorted(self.specs.values(), key=lambda s: (s.kind != "dataset", s.name)))

    def datasets(self) -> list[Spec]:
        return [s for s in self if s.kind == "dataset"]

    def collections(self) -> list[Spec]:
        return [s for s in self if s.kind == "collection"]


def did_you_mean(name: str, names: Iterable[str]) -> str:
    """The hint after an unknown name: the close known names, else where to look them up."""
    import difflib

    close = difflib.get_close_matches(name, list(names), n=3, cutoff=0.6)
    return f" (did you mean {', '.join(close)}?)" if close else " (see 'mmcorpus list')"


def spec_to_dict(spec: Spec) -> dict[str, Any]:
    """A JSON-friendly view of a spec (for `info --json` and `list --json`)."""
    out = dataclasses.asdict(spec)
    out["source"] = str(spec.source)
    return out
