"""Finding and loading specs: built-ins first, then MMCORPUS_CONFIG_DIR, then --config-dir; one Registry."""

from __future__ import annotations

import dataclasses
import logging
import os
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from mmcorpus.errors import ConfigError, UsageError
from mmcorpus.registry.parse import parse_spec
from mmcorpus.registry.spec import Spec

log = logging.getLogger("mmcorpus.registry")

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
    # User spec files that did not load, by file stem: a command about another name still runs (each is logged
    # as a warning when the registry loads); a command about that name gets the file's own error.
    broken: dict[str, ConfigError] = field(default_factory=dict)

    @classmethod
    def load(cls, extra_dirs: Iterable[str | Path] = ()) -> Registry:
        registry = cls()
        builtin = builtin_config_dir()
        for directory in config_dirs(extra_dirs):
            if not directory.is_dir():
                raise ConfigError(f"{directory}: config directory does not exist")
            seen_here: dict[str, Path] = {}
            for path in sorted(directory.glob("*.yaml")) + sorted(directory.glob("*.yml")):
                try:
                    spec = load_spec_file(path)
                except ConfigError as exc:
                    if directory == builtin:
                        raise
                    registry._set_aside(path.stem, exc)
                    continue
                if spec.name in seen_here:
                    raise ConfigError(f"{path}: name '{spec.name}' is already defined in {seen_here[spec.name]}")
                seen_here[spec.name] = path
                registry.specs[spec.name] = spec
        registry.check_references(builtin)
        return registry

    def _set_aside(self, name: str, exc: ConfigError) -> None:
        self.broken[name] = exc
        log.warning("%s (this spec is skipped)", exc)

    def check_references(self, builtin: Path | None = None) -> None:
        """Every collection a dataset names exists; a user spec that names a missing one is set aside."""
        for spec in list(self.specs.values()):
            for name in spec.collections:
                other = self.specs.get(name)
                if other is None or other.kind != "collection":
                    error = ConfigError(f"{spec.source}: key 'images.collections' names unknown collection '{name}'"
                                        + (f" (its spec did not load: {self.broken[name]})" if name in self.broken
                                           else ""))
                    if builtin is None or Path(spec.source).parent == builtin:
                        raise error
                    del self.specs[spec.name]
                    self._set_aside(spec.name, error)
                    self.broken.setdefault(Path(spec.source).stem, error)  # a command may name it by its file
                    break

    def get(self, name: str) -> Spec:
        try:
            return self.specs[name]
        except KeyError:
            if name in self.broken:
                raise self.broken[name] from None
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
