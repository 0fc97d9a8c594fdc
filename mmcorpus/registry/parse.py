"""A spec's YAML -> Spec: the dataset and collection forms, their files, archives, format and images."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from mmcorpus.registry.fields import (
    Fields,
    as_bool,
    as_byte_size,
    as_int,
    as_str,
    as_str_list,
    default_filename,
    file_name,
    hex_digest,
    one_of,
    optional_relative_path,
    path_prefix,
    relative_path,
    stage_names,
)
from mmcorpus.registry.spec import FILE_ROLES, FORMAT_TYPES, NAME_RE, FileSpec, Spec


def _file_spec(f: Fields, key: str, *, archive: bool) -> FileSpec:
    url = f.get("url", as_str)
    manual = f.get("manual", as_str)
    if url is None and manual is None:
        raise f.error("url", "is required (or give 'manual' instructions)")
    values: dict[str, Any] = {
        "key": key,
        "url": url,
        "filename": f.get("filename", file_name) or url_file_name(f, url, key),
        "size": f.get("size", as_int),
        "approx_size": f.get("approx_size", as_byte_size),
        "sha256": f.get("sha256", hex_digest("sha256")),
        "md5": f.get("md5", hex_digest("md5")),
        "mirrors": f.get("mirrors", as_str_list, ()),
        "optional": f.get("optional", as_bool, False),
        "manual": manual,
    }
    if archive:
        values.update(
            strip=f.get("strip", path_prefix, ""),
            into=f.get("into", optional_relative_path, ""),
            include=f.get("include", as_str_list, ()),
        )
    else:
        values.update(
            role=f.get("role", one_of(*FILE_ROLES), "annotations"),
            stages=f.get("stages", stage_names, ()),
            image_prefix=f.get("image_prefix", optional_relative_path, ""),
            columns=f.get("columns", as_str_list, ()),
            records=f.get("records", as_int),
        )
    f.done()
    return FileSpec(**values)


def url_file_name(f: Fields, url: str | None, key: str) -> str:
    """The file name `url` saves as (its last component, else `key`), through the same check as a given
    `filename`: a URL that yields no safe name is an error of the spec, naming its `url`."""
    name = default_filename(url, key)
    try:
        return file_name(name)
    except ValueError as exc:
        raise f.error("url", f"gives no usable file name ({exc}); set 'filename'") from None


def parse_spec(data: Any, source: Path) -> Spec:
    """Validate one YAML document and turn it into a Spec (raises ConfigError naming file and key)."""
    top = Fields(data, "", source)
    name = top.get("name", as_str, required=True)
    if not NAME_RE.match(name):
        raise top.error("name", f"must be lower-case letters, digits, '_', '-' or '.', got {name!r}")
    kind = top.get("kind", one_of("dataset", "collection"), required=True)
    common = {
        "name": name,
        "kind": kind,
        "source": source,
        "title": top.get("title", as_str, ""),
        "description": top.get("description", as_str, ""),
        "license": top.get("license", as_str, ""),
        "homepage": top.get("homepage", as_str, ""),
        "citation": top.get("citation", as_str, ""),
        "version": top.get("version", as_int, 1),
        "notes": top.get("notes", as_str, ""),
        "manual": top.get("manual", as_str),
    }
    spec = _parse_dataset(top, common) if kind == "dataset" else _parse_collection(top, common)
    top.done()
    return spec


def _parse_dataset(top: Fields, common: dict) -> Spec:
    stages = top.get("stages", stage_names, ())
    files_node = top.sub("files")
    if files_node is None or not files_node.data:
        raise top.error("files", "is required and must name at least one file")
    files = {}
    for key in list(files_node.data):
        files_node.key_name(key)
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
    path = top.get("path", relative_path, required=True)
    archives_raw = top.get("archives", lambda v: v if isinstance(v, list) else fail_list(), [])
    top.seen.add("archives")
    archives = []
    for i, item in enumerate(archives_raw):
        sub = Fields(item, f"archives[{i}]", top.source, parent=top)
        name = sub.get("name", file_name) or url_file_name(sub, sub.get("url", as_str), f"archive{i}")
        archives.append(_file_spec(sub, name, archive=True))
    if not archives and common["manual"] is None:
        raise top.error("archives", "is required (or give 'manual' instructions)")
    keys = [a.key for a in archives]
    if len(set(keys)) != len(keys):
        raise top.error("archives", "has two archives with the same name; give each a distinct 'name'")
    return Spec(**common, path=path, archives=tuple(archives), count=top.get("count", as_int))


def fail_list() -> Any:
    raise TypeError("must be a list of archives")
