"""Typed access to a spec's YAML mapping: every value checked, every error naming the file and key path."""

from __future__ import annotations

import difflib
from collections.abc import Callable
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit

from mmcorpus import layout
from mmcorpus.errors import ConfigError
from mmcorpus.registry.spec import HEX_RE, STAGES

# ------------------------------------------------------------------------------------------- validation


class Fields:
    """Reads a YAML mapping key by key, naming file and key path in every error."""

    def __init__(self, data: Any, where: str, source: Path, parent: Fields | None = None):
        """`parent`: the mapping this one sits in; unknown keys are then reported by the outermost one's
        done(), all at once (a spec with three typos gets one error naming the three)."""
        if not isinstance(data, dict):
            raise ConfigError(f"{source}: {where or 'top level'} must be a mapping, got {type(data).__name__}")
        self.data, self.where, self.source, self.seen = data, where, source, set()
        self.unknown: list[str] = parent.unknown if parent is not None else []
        self.is_root = parent is None

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

    def key_name(self, key: Any) -> str:
        """A key of this mapping that becomes a file and folder name (a `files:` subset: normalized/<dataset>/
        <key>-00000.parquet, images/<dataset>/<key>/), through file_name's check."""
        try:
            return file_name(str(key))
        except ValueError as exc:
            raise self.error(str(key), f"cannot be a subset name: it {exc}") from None

    def sub(self, key: str) -> Fields | None:
        self.seen.add(key)
        if self.data.get(key) is None:
            return None
        return Fields(self.data[key], self._path(key), self.source, parent=self)

    def done(self) -> None:
        """Every key of this mapping that nothing asked for, in one error, each with the nearest known key."""
        for key in sorted(set(map(str, self.data)) - self.seen):
            close = difflib.get_close_matches(key, sorted(self.seen), n=1, cutoff=0.6)
            self.unknown.append(f"'{self._path(key)}'" + (f" (did you mean '{close[0]}'?)" if close else ""))
        if not self.is_root or not self.unknown:
            return
        if len(self.unknown) == 1:
            raise ConfigError(f"{self.source}: key {self.unknown[0]} is not a known key")
        raise ConfigError(f"{self.source}: {len(self.unknown)} unknown keys: {', '.join(self.unknown)}")


def as_str(value: Any) -> str:
    if isinstance(value, bool) or not isinstance(value, (str, int, float)):
        raise TypeError(f"must be a string, got {type(value).__name__}")
    return str(value)


def as_int(value: Any) -> int:
    if isinstance(value, str) and value.strip().isdigit():
        raise TypeError(f"must be a number without quotes (write {value.strip()}, not {value!r})")
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise TypeError(f"must be a non-negative integer, got {value!r}")
    return value


_UNITS = {"B": 1, "KB": 10**3, "MB": 10**6, "GB": 10**9, "TB": 10**12}


def as_byte_size(value: Any) -> int:
    """A size in bytes, or a string such as `18 GB` (decimal units): approximate sizes for display."""
    if isinstance(value, int) and not isinstance(value, bool) and value >= 0:
        return value
    number, _, unit = str(value).strip().partition(" ")
    try:
        size = float(number) * _UNITS[unit.strip().upper() or "B"]
    except (ValueError, KeyError):
        raise TypeError(f"must be bytes or a number and a unit such as '18 GB' (B, KB, MB, GB, TB), "
                        f"got {value!r}") from None
    if size < 0:
        raise TypeError(f"must not be negative, got {value!r}")
    return int(size)


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


def stage_names(value: Any) -> tuple[str, ...]:
    stages = as_str_list(value)
    for stage in stages:
        if stage not in STAGES:
            raise ValueError(f"has unknown stage {stage!r} (known: {', '.join(STAGES)})")
    return stages


def one_of(*allowed: str) -> Callable[[Any], str]:
    def check(value: Any) -> str:
        if isinstance(value, bool):  # YAML reads yes/no/on/off as true/false
            raise ValueError(f"must be one of {'|'.join(allowed)}; got {str(value).lower()} "
                             "(YAML reads yes/no/on/off as true/false)")
        value = as_str(value)
        if value not in allowed:
            raise ValueError(f"must be one of {'|'.join(allowed)}; got {value!r}")
        return value

    return check


def hex_digest(kind: str) -> Callable[[Any], str]:
    def check(value: Any) -> str:
        value = as_str(value).lower()
        if not HEX_RE[kind].match(value):
            raise ValueError(f"must be a {kind} hex digest, got {value!r}")
        return value

    return check


def relative_path(value: Any) -> str:
    """A folder below one of ours (a collection's `path`): layout's one path check, normalised (`a/b/` ->
    `a/b`)."""
    text = as_str(value)
    try:
        return layout.safe_relative(text)
    except layout.UnsafePath as exc:
        raise ValueError(f"must be a safe relative path (it {exc.reason}), got {text!r}") from None


def optional_relative_path(value: Any) -> str:
    """`into`, `image_prefix`: a relative path, or empty for none."""
    return relative_path(value) if as_str(value) != "" else ""


def path_prefix(value: Any) -> str:
    """An archive's `strip`: a folder prefix of member names, always ending in '/' (`train2017` strips
    `train2017/` only, never `train2017../`); empty for none."""
    prefix = optional_relative_path(value)
    return prefix + "/" if prefix else ""


def file_name(value: Any) -> str:
    """One plain file name (a spec's `filename`, a `files:` key, an archive's `name`): the one path check, a
    single component, and short enough that the names mmcorpus derives from it fit the file system."""
    text = as_str(value)
    if "/" in text:
        raise ValueError(f"must be a plain file name (no '/'), got {text!r}")
    try:
        name = layout.safe_relative(text)
    except layout.UnsafePath as exc:
        raise ValueError(f"must be a plain file name (it {exc.reason}), got {text!r}") from None
    if len(name.encode("utf-8", "surrogateescape")) > layout.MAX_FILE_NAME:
        raise ValueError(f"must be a file name of at most {layout.MAX_FILE_NAME} bytes, got {text[:40]!r}...")
    return name


def default_filename(url: str | None, key: str) -> str:
    """The file name a URL saves as: its last path component without query, percent-decoded, and of that the
    part after the last '/' it decodes to (Google Cloud Storage names objects `dir%2Fcc3m.tsv`; a crafted
    `..%2F..%2Fvictim.json` gives `victim.json`). The caller checks the result with file_name."""
    if url:
        name = unquote(urlsplit(url).path.rstrip("/").rsplit("/", 1)[-1]).rsplit("/", 1)[-1]
        if name and name not in (".", "..", "view", "uc", "download"):
            return name
    return key
