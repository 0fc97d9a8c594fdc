"""Typed access to a spec's YAML mapping: every value checked, every error naming the file and key path."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable

from mmcorpus.errors import ConfigError
from mmcorpus.registry.spec import HEX_RE, STAGES

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


def stage_names(value: Any) -> tuple[str, ...]:
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


def hex_digest(kind: str) -> Callable[[Any], str]:
    def check(value: Any) -> str:
        value = as_str(value).lower()
        if not HEX_RE[kind].match(value):
            raise ValueError(f"must be a {kind} hex digest, got {value!r}")
        return value

    return check


def relative_path(value: Any) -> str:
    value = as_str(value).strip("/") if as_str(value) != "" else ""
    parts = value.split("/") if value else []
    if any(p in ("", ".", "..") for p in parts) or "\\" in value or "\0" in value:
        raise ValueError(f"must be a relative path without '..', got {value!r}")
    return value


def file_name(value: Any) -> str:
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
