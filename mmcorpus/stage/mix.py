"""Stage mixes (configs/stages/*.yaml, or your own --mix FILE) and which of their entries a prepare takes.

A mix is a user-editable YAML file (see configs/stages/pretrain.yaml for every key). Loading is as strict as
the registry: unknown keys, unknown datasets/subsets and impossible sampling rules are UsageErrors (exit 2)
naming the file and the key. `--datasets` may also name any registered dataset whose spec lists the stage in
`stages:` (DESIGN.md 6.1).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Iterable

from mmcorpus import layout
from mmcorpus.errors import UsageError
from mmcorpus.registry import (
    NAME_RE,
    Fields,
    Registry,
    as_int,
    as_str,
    config_dirs,
    did_you_mean,
    one_of,
    read_yaml,
)
from mmcorpus.stage.sampling import Rule, parse_rule

TEXT_ONLY = ("keep", "drop")


# ------------------------------------------------------------------------------------------------- mixes


@dataclass(frozen=True)
class MixEntry:
    dataset: str
    subset: str
    rule: Rule
    seed: int | None = None  # overrides the mix seed for this entry

    @property
    def label(self) -> str:
        return f"{self.dataset}/{self.subset}"


@dataclass(frozen=True)
class Mix:
    name: str
    source: Path
    entries: tuple[MixEntry, ...]
    description: str = ""
    text_only: str = "keep"  # keep | drop text-only samples
    seed: int = 0

    def to_dict(self) -> dict:
        return {
            "name": self.name,
            "source": str(self.source),
            "text_only": self.text_only,
            "seed": self.seed,
            "datasets": [{"dataset": e.dataset, "subset": e.subset, "sample": str(e.rule), "seed": e.seed} for e in self.entries],
        }


def _entry(item, index: int, source: Path, registry: Registry) -> MixEntry:
    f = Fields(item, f"datasets[{index}]", source)
    dataset = f.get("dataset", as_str, required=True)
    subset = f.get("subset", as_str, required=True)
    rule = f.get("sample", parse_rule, Rule("all"))
    seed = f.get("seed", as_int)
    f.done()
    spec = registry.specs.get(dataset)
    if spec is None:
        hint = did_you_mean(dataset, [s.name for s in registry.datasets()])
        raise f.error("dataset", f"names unknown dataset '{dataset}'{hint}")
    if spec.kind != "dataset":
        raise f.error("dataset", f"names '{dataset}', which is an image collection, not a dataset")
    if subset not in spec.files or spec.files[subset].role != "annotations":
        known = ", ".join(k for k, v in spec.files.items() if v.role == "annotations")
        raise f.error("subset", f"names unknown subset '{subset}' of {dataset} (known: {known})")
    return MixEntry(dataset, subset, rule, seed)


def parse_mix(data, source: Path, registry: Registry) -> Mix:
    top = Fields(data, "", source)
    name = top.get("name", as_str, required=True)
    if not NAME_RE.match(name):
        raise top.error("name", f"must be lower-case letters, digits, '_', '-' or '.', got {name!r}")
    items = top.get("datasets", lambda v: v if isinstance(v, list) and v else _fail_list(), required=True)
    entries = tuple(_entry(item, i, source, registry) for i, item in enumerate(items))
    labels = [e.label for e in entries]
    for i, label in enumerate(labels):
        if label in labels[:i]:
            raise top.error(f"datasets[{i}]", f"repeats {label}; list each dataset/subset once")
    mix = Mix(
        name=name,
        source=source,
        entries=entries,
        description=top.get("description", as_str, ""),
        text_only=top.get("text_only", one_of(*TEXT_ONLY), "keep"),
        seed=top.get("seed", as_int, 0),
    )
    top.done()
    return mix


def _fail_list():
    raise TypeError("must be a non-empty list of {dataset, subset, sample} entries")


def load_mix(path: Path, registry: Registry) -> Mix:
    return parse_mix(read_yaml(Path(path), "mix"), Path(path), registry)


def stage_files(extra_dirs: Iterable[str | Path] = ()) -> dict[str, Path]:
    """Known stage mixes by name: configs/stages/*.yaml, overridden by <config dir>/stages/*.yaml of users."""
    found: dict[str, Path] = {}
    for directory in config_dirs(extra_dirs):
        for path in layout.stage_mix_files(directory):
            found[path.stem] = path
    return found


def resolve_mix(registry: Registry, stage: str | None, mix_file: str | Path | None, extra_dirs=()) -> tuple[str, Mix]:
    """The stage name (the output folder) and its mix: `mix_file` if given, else the stage's built-in mix."""
    if stage is not None and not NAME_RE.match(stage):
        raise UsageError(f"bad stage name {stage!r}: use lower-case letters, digits, '_', '-' or '.'")
    if mix_file is not None:
        mix = load_mix(Path(mix_file), registry)
        return stage or mix.name, mix
    if stage is None:
        raise UsageError("say which stage to prepare: --stage pretrain|finetune, or --mix FILE")
    known = stage_files(extra_dirs)
    if stage not in known:
        raise UsageError(f"unknown stage '{stage}' (known: {', '.join(sorted(known))}); or pass your own --mix FILE")
    return stage, load_mix(known[stage], registry)


def select_entries(mix: Mix, datasets: Iterable[str] | None, registry: Registry | None = None,
                   stage: str | None = None) -> tuple[MixEntry, ...]:
    """`--datasets a,b:subset`: the entries of the mix named by dataset or dataset:subset, plus (DESIGN.md 6.1)
    any registered dataset whose spec lists `stage` in `stages:`: all its annotation subsets serving the stage
    (or the one named), sampled `all`. Mix entries keep their own rules."""
    if not datasets:
        return mix.entries
    chosen: list[MixEntry] = []
    for text in datasets:
        name = text.replace(":", "/")
        from_mix = [e for e in mix.entries if name in (e.dataset, e.label)]
        added = from_mix or _by_spec(name, mix, registry, stage)
        chosen += [e for e in added if e not in chosen]
    return tuple(chosen)


def _by_spec(name: str, mix: Mix, registry: Registry | None, stage: str | None) -> list[MixEntry]:
    dataset, _, subset = name.partition("/")
    have = ", ".join(e.label for e in mix.entries)
    spec = registry.specs.get(dataset) if registry is not None else None
    if spec is None or spec.kind != "dataset":
        hint = did_you_mean(dataset, [s.name for s in registry.datasets()]) if registry is not None else ""
        raise UsageError(f"--datasets: '{name}' is not in mix '{mix.name}' (it has: {have}) and is no registered "
                         f"dataset{hint}")
    serving = [f.key for f in spec.downloads if f.role == "annotations" and stage in (f.stages or spec.stages)]
    if subset:
        if subset not in spec.files or spec.files[subset].role != "annotations":
            known = ", ".join(f.key for f in spec.downloads if f.role == "annotations")
            raise UsageError(f"--datasets: {dataset} has no annotation subset '{subset}' (known: {known})")
        serving = [subset] if subset in serving else []
    if not serving:
        raise UsageError(f"--datasets: '{name}' is not in mix '{mix.name}' and its spec ({spec.source}) does not "
                         f"list '{stage}' in stages:; add it there, or pass your own --mix FILE")
    return [MixEntry(dataset, key, Rule("all")) for key in serving]
