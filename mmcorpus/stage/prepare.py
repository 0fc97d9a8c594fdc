"""`prepare_stage`, which turns normalized datasets into a stage (its mix: mmcorpus.stage.mix).

`prepare_stage` writes `<root>/stages/<stage>/`:
    data/<stage>-NNNNN.parquet      the samples, UNIFIED_SCHEMA, in a seeded shuffle of the whole mix
                                    (mmcorpus.stage.shuffle), `samples_per_shard` rows per shard
    llava/<stage>.json              with formats "llava"
    webdataset/<stage>-NNNNN.tar    with formats "webdataset", and webdataset/sizes.json (open_clip)
    hf/data/train-NNNNN.parquet     with formats "hf" (TRL / Hub layout, mmcorpus.stage.hfexport)
    README.md                       the dataset card: `datasets.load_dataset(<this folder>)` reads data/
    report.html, manifest.json      counts per dataset, drops by reason, versions, the input fingerprint
It is incremental and atomic: the inputs (normalized file names, sizes and mtimes, image-collection markers,
the mix and the options) are fingerprinted, and a run whose fingerprint matches the manifest does nothing. A run
that only asks for other exports (`--format`) keeps the data shards (hard links, the same bytes) and the
exports it already had, and writes only what is new.
Otherwise the stage is built in a temporary sibling folder and swapped in (old renamed aside, new renamed in,
old deleted), so readers never see a half-written stage and a failed prepare leaves the previous one intact.
"""

from __future__ import annotations

import datetime
import hashlib
import json
import math
import os
import shutil
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

from mmcorpus import __version__, layout
from mmcorpus.core.atomicio import read_json, temporary_name, write_json_atomic
from mmcorpus.core.locks import hold_lock
from mmcorpus.errors import UsageError
from mmcorpus.registry import (
    Registry,
)
from mmcorpus.stage.build import Context, Entry, build_entry
from mmcorpus.stage.card import write_card, write_sizes
from mmcorpus.stage.dedup import Deduper
from mmcorpus.stage.exports import write_llava_json, write_webdataset
from mmcorpus.stage.hfexport import write_hf
from mmcorpus.stage.imagecheck import ImageChecker
from mmcorpus.stage.mix import (
    Mix,
    MixEntry,
    resolve_mix,
    select_entries,
)
from mmcorpus.stage.report import write_report
from mmcorpus.stage.shards import StageWriter, count_rows
from mmcorpus.stage.stats import StageStats

FORMATS = ("parquet", "llava", "webdataset", "hf")
MANIFEST_VERSION = 2  # 2: shuffled shards of samples_per_shard rows, licenses per dataset
FORMAT_NAMES = {"llava": "LLaVA", "tsv": "TSV"}  # format.type as users name it, in messages
EXPORT_OPTIONS = ("formats",)  # options that change the exports only, never data/


# ------------------------------------------------------------------------------------------ inputs on disk


def normalized_files(root: Path, dataset: str, subset: str) -> list[Path]:
    """<root>/normalized/<dataset>/<subset>-NNNNN.parquet, in shard order (temporary files excluded)."""
    return layout.normalized_shards(layout.normalized_dir(root, dataset), subset)


def _stat(path: Path, base: Path) -> list:
    st = path.stat()
    return [str(path.relative_to(base)), st.st_size, st.st_mtime_ns]


def image_state(root: Path, registry: Registry, dataset: str, subset: str) -> list:
    """What tells that images were added since: collection extraction markers, URL-list shard files/markers.
    (Images copied in by hand without a marker are not noticed: use force=True.)"""
    spec = registry.specs[dataset]
    images = layout.images_root(root)
    folders = [layout.bookkeeping_dir(images / registry.specs[c].path) for c in spec.collections if c in registry.specs]
    if spec.images_from == "url":
        folders.append(layout.subset_images_dir(images, dataset, subset))
    return [_stat(p, images) for folder in folders if folder.is_dir() for p in sorted(folder.iterdir()) if p.is_file()]




def fingerprint(root: Path, registry: Registry, entries: list[Entry], mix: Mix, options: dict) -> str:
    state = {
        "inputs": [[e.label, [_stat(p, Path(root)) for p in e.files], image_state(root, registry, e.dataset, e.subset)] for e in entries],
        "mix": mix.to_dict() | {"source": None},
        "options": options,
        "mmcorpus": __version__,
        "manifest": MANIFEST_VERSION,
    }
    return hashlib.sha256(json.dumps(state, sort_keys=True, default=str).encode()).hexdigest()


# ------------------------------------------------------------------------------------- folder handling


def stage_dir(root: Path, stage: str) -> Path:
    return layout.stage_dir(root, stage)


def read_manifest(root: Path, stage: str) -> dict | None:
    """The manifest of a prepared stage, or None (for `status` and the no-op check)."""
    return read_json(layout.stage_manifest(stage_dir(root, stage)))


def prepared_stages(root: Path) -> dict[str, dict]:
    """The manifests of every prepared stage under <root>/stages, by name (for `status`)."""
    folder = layout.stages_root(root)
    names = sorted(p.name for p in folder.iterdir() if p.is_dir() and not p.name.startswith(".")) if folder.is_dir() else []
    return {name: m for name in names if (m := read_manifest(root, name)) is not None}


def _recover(final: Path) -> None:
    """Clean up after a prepare that was killed: drop half-built folders; if it died between the two renames
    of the swap, put the previous stage back."""
    building, olds = layout.stage_leftovers(final)
    for tmp in building:
        shutil.rmtree(tmp, ignore_errors=True)
    if olds and not final.exists():
        os.rename(olds.pop(), final)
    for old in olds:
        shutil.rmtree(old, ignore_errors=True)


def _swap_in(new: Path, final: Path) -> None:
    old = layout.stage_previous(final, os.getpid())
    if final.exists():
        os.rename(final, old)
    os.rename(new, final)
    shutil.rmtree(old, ignore_errors=True)


# ------------------------------------------------------------------------------------------------ prepare


@dataclass
class _Plan:
    """Everything one prepare run builds from."""

    name: str
    mix: Mix
    entries: list[Entry]
    missing: list[dict]
    options: dict
    stamp: str = ""
    data_stamp: str = ""  # the fingerprint without EXPORT_OPTIONS: equal means data/ would be byte for byte equal


def prepare_stage(
    registry: Registry,
    root: str | Path,
    stage: str | None = None,
    mix_file: str | Path | None = None,
    datasets: Iterable[str] | None = None,
    formats: Iterable[str] = ("parquet",),
    seed: int | None = None,
    *,
    force: bool = False,
    config_dirs: Iterable[str | Path] = (),
    samples_per_shard: int = 10_000,
    row_group_rows: int = 10_000,
    workers: int | None = None,
    log: Callable[[str], None] | None = None,
) -> dict:
    """Build (or leave as is) <root>/stages/<stage>/ and return its manifest.

    The returned manifest has "unchanged": True when nothing changed since the last prepare. Raises UsageError
    (exit 2) for a bad mix/option or when none of the stage's datasets is normalized on disk, LockedError
    (exit 75) when another prepare of the same stage runs.
    """
    root = Path(root)
    log = log or (lambda message: None)
    name, mix = resolve_mix(registry, stage, mix_file, config_dirs)
    formats = _check_formats(formats)
    if samples_per_shard < 1:
        raise UsageError(f"--samples-per-shard must be a positive number of samples, got {samples_per_shard}")
    seed = mix.seed if seed is None else seed
    chosen = select_entries(mix, datasets, registry, name)
    entries, missing = _locate(root, registry, chosen, seed)
    if not entries:
        raise UsageError(_nothing_usable(name, missing))
    options = {"formats": formats, "seed": seed, "samples_per_shard": samples_per_shard,
               "row_group_rows": row_group_rows, "datasets": [e.label for e in chosen]}
    plan = _Plan(name, mix, entries, missing, options)
    final = stage_dir(root, name)
    with hold_lock(root, layout.stage_lock_name(name), command=f"prepare {name}"):  # exit 75 if another prepare runs
        _recover(final)
        plan.stamp = fingerprint(root, registry, entries, mix, options)
        data_options = {k: v for k, v in options.items() if k not in EXPORT_OPTIONS}
        plan.data_stamp = fingerprint(root, registry, entries, mix, data_options)
        current = read_manifest(root, name)
        if not force and current and current.get("fingerprint") == plan.stamp:
            log(f"stage {name}: nothing changed since {current.get('created')}")
            return {**current, "unchanged": True}
        tmp = layout.stage_building(final, os.getpid())
        try:
            tmp.mkdir(parents=True)
            if not force and _data_reusable(current, final, plan):
                manifest = _reexport(root, final, tmp, current, plan, log)
            else:
                manifest = _build(registry, root, tmp, plan, workers, log)
            _swap_in(tmp, final)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    return {**manifest, "unchanged": False}


def upstream_failures(root: Path, dataset: str, subset: str) -> dict:
    """What was lost before this stage, from the normalizer's `_<subset>.report.json`: records rejected by
    reason, and for URL-list datasets the downloads that failed by reason (link rot). Empty when unknown."""
    report = read_json(layout.normalize_report(root, dataset, subset))
    if not isinstance(report, dict):
        return {}
    rejects = {k: v.get("count", 0) if isinstance(v, dict) else v for k, v in (report.get("rejects") or {}).items()}
    failed = (report.get("source") or {}).get("failed") or {}
    return {"records": report.get("records"), "rejected": rejects,
            "download_failed": failed if isinstance(failed, dict) else {}}


def _check_formats(formats: Iterable[str]) -> list[str]:
    formats = list(dict.fromkeys(formats))
    for fmt in formats:
        if fmt not in FORMATS:
            raise UsageError(f"unknown format '{fmt}': use {', '.join(FORMATS)} (parquet is always written)")
    return ["parquet"] + [f for f in formats if f != "parquet"]


def _locate(root: Path, registry: Registry, chosen: Iterable[MixEntry], seed: int) -> tuple[list[Entry], list[dict]]:
    """The chosen entries with normalized rows on disk, and the others with why they are left out."""
    entries, missing = [], []
    for e in chosen:
        files = normalized_files(root, e.dataset, e.subset)
        if files:
            entries.append(Entry(e.dataset, e.subset, e.rule, e.seed if e.seed is not None else seed, files))
            continue
        fetch = f"mmcorpus fetch {e.dataset}"
        missing.append({"dataset": e.dataset, "subset": e.subset, "fetch": fetch,
                        "reason": _all_rejected(root, registry, e.dataset, e.subset) or "not fetched"})
    return entries, missing


def _all_rejected(root: Path, registry: Registry, dataset: str, subset: str) -> str | None:
    """'all 5 records rejected (missing_conversations 5): is this LLaVA format?' when the normalizer read the
    file and kept nothing, else None (the file is simply not fetched)."""
    upstream = upstream_failures(root, dataset, subset)
    records = upstream.get("records")
    if not isinstance(records, int) or records <= 0:
        return None
    reasons = ", ".join(f"{reason} {n}" for reason, n in sorted(upstream["rejected"].items(), key=lambda kv: -kv[1]))
    fmt = registry.specs[dataset].format_type if dataset in registry.specs else None
    question = f": is this {FORMAT_NAMES.get(fmt, fmt)} format?" if fmt else ""
    return f"all {records} records rejected ({reasons or 'no reasons recorded'}){question}"


def _nothing_usable(stage: str, missing: list[dict]) -> str:
    rejected = [f"{m['dataset']}/{m['subset']}: {m['reason']}" for m in missing if m["reason"] != "not fetched"]
    if rejected:
        return f"stage {stage} has no usable records: " + "; ".join(rejected)
    fetch = " ".join(dict.fromkeys(m["dataset"] for m in missing))
    return f"nothing fetched for stage {stage}: run mmcorpus fetch {fetch} (then prepare again)"


def _build(registry: Registry, root: Path, out: Path, plan: _Plan, workers: int | None, log) -> dict:
    """Write the whole stage into `out`: parquet shards, exports, report, and the manifest last."""
    images_root = layout.images_root(root)
    options = plan.options
    data = layout.stage_parquet_dir(out)
    writer = StageWriter(data, plan.name, samples_per_shard=options["samples_per_shard"],
                         row_group_rows=options["row_group_rows"], metadata=_file_metadata(registry, plan),
                         seed=options["seed"], expected_rows=_expected_rows(plan.entries), spill=temporary_name(data))
    stats = StageStats(options["seed"])
    summaries = []
    with ImageChecker(images_root, workers=workers) as checker:
        ctx = Context(checker, Deduper(), writer, stats, keep_text_only=plan.mix.text_only == "keep", log=log)
        for entry in plan.entries:
            log(f"stage {plan.name}: {entry.label} ({entry.rule})")
            spec = registry.specs[entry.dataset]
            summary = build_entry(entry, ctx) | {"spec_version": spec.version, "license": spec.license}
            summaries.append(summary | {"upstream": upstream_failures(root, entry.dataset, entry.subset)})
    shards = writer.close()
    outputs = {"parquet": {"folder": layout.STAGE_PARQUET, "files": shards, "row_group_rows": writer.row_group_rows}}
    outputs.update(_exports(out, [data / s["file"] for s in shards], images_root, plan, log))
    manifest = _manifest(registry, plan, summaries, outputs, stats)
    _finish(out, manifest, images_root)
    return manifest


def _finish(out: Path, manifest: dict, images_root: Path) -> None:
    """What every prepared stage carries besides its data and exports; the manifest last."""
    write_card(out, manifest)
    write_report(manifest, out, images_root)
    write_json_atomic(layout.stage_manifest(out), manifest, indent=2)


def _expected_rows(entries: list[Entry]) -> int:
    """An upper bound of the rows the entries can keep (it sizes the shuffle's buckets)."""
    total = 0
    for entry in entries:
        rows = sum(count_rows(path) for path in entry.files)
        rule = entry.rule
        total += min(rows, rule.n) if rule.kind in ("first", "random") else rows * math.ceil(rule.weight)
    return total


# ------------------------------------------------------------------------- other exports, the same data


def _data_reusable(current: dict | None, final: Path, plan: _Plan) -> bool:
    """True when the stage on disk has the data this run would write (only export options differ)."""
    if not current or current.get("data_fingerprint") != plan.data_stamp:
        return False
    files = (current.get("outputs") or {}).get("parquet", {}).get("files") or []
    folder = layout.stage_parquet_dir(final)
    return bool(files) and all((folder / f["file"]).is_file() for f in files)


def _link_tree(source: Path, dest: Path) -> None:
    """dest gets the files of source as hard links (the same bytes, no copy), copies where links fail."""
    for path in sorted(source.rglob("*")):
        target = dest / path.relative_to(source)
        if path.is_dir():
            target.mkdir(parents=True, exist_ok=True)
            continue
        target.parent.mkdir(parents=True, exist_ok=True)
        try:
            os.link(path, target)
        except OSError:
            shutil.copy2(path, target)


def _reexport(root: Path, final: Path, out: Path, current: dict, plan: _Plan, log) -> dict:
    """The stage of `current` with this run's exports: data/ and every unchanged export kept, the rest written."""
    _link_tree(layout.stage_parquet_dir(final), layout.stage_parquet_dir(out))
    old_outputs = current.get("outputs") or {}
    outputs = {"parquet": old_outputs["parquet"]}
    keep = [f for f in plan.options["formats"] if f in old_outputs and f != "parquet"]
    for fmt in keep:
        _link_tree(final / old_outputs[fmt]["folder"], out / old_outputs[fmt]["folder"])
        outputs[fmt] = old_outputs[fmt]
    todo = [f for f in plan.options["formats"] if f != "parquet" and f not in keep]
    log(f"stage {plan.name}: data unchanged, " + (f"writing {', '.join(todo)}" if todo else "updating the exports"))
    parquet_files = [layout.stage_parquet_dir(out) / s["file"] for s in outputs["parquet"]["files"]]
    images_root = layout.images_root(root)
    todo_plan = _Plan(plan.name, plan.mix, plan.entries, plan.missing, plan.options | {"formats": ["parquet", *todo]})
    outputs.update(_exports(out, parquet_files, images_root, todo_plan, log))
    manifest = {**current, "created": _now(), "mmcorpus_version": __version__, "fingerprint": plan.stamp,
                "options": plan.options, "outputs": {f: outputs[f] for f in plan.options["formats"]}}
    _finish(out, manifest, images_root)
    return manifest


def _now() -> str:
    return datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")


def _exports(out: Path, parquet_files: list[Path], images_root: Path, plan: _Plan, log) -> dict:
    outputs, options = {}, plan.options
    if "llava" in options["formats"]:
        log(f"stage {plan.name}: writing the LLaVA JSON")
        llava = write_llava_json(parquet_files, layout.stage_llava_json(out, plan.name), seed=options["seed"])
        outputs["llava"] = llava | {"folder": layout.STAGE_LLAVA}
    if "webdataset" in options["formats"]:
        log(f"stage {plan.name}: writing WebDataset shards")
        tars = write_webdataset(parquet_files, layout.stage_webdataset_dir(out), images_root, stem=plan.name,
                                per_shard=options["samples_per_shard"], seed=options["seed"])
        write_sizes(layout.stage_webdataset_dir(out), tars["shards"])
        outputs["webdataset"] = tars | {"folder": layout.STAGE_WEBDATASET}
    if "hf" in options["formats"]:
        log(f"stage {plan.name}: writing the Hugging Face (TRL) parquet")
        outputs["hf"] = write_hf(parquet_files, out, images_root, seed=options["seed"],
                                 per_shard=options["samples_per_shard"])
    return outputs


def _file_metadata(registry: Registry, plan: _Plan) -> dict:
    """Parquet key/value metadata (DESIGN.md §4, for a mix): the datasets with license and spec version."""
    sources = [{"dataset": e.dataset, "subset": e.subset, "license": registry.specs[e.dataset].license,
                "spec_version": registry.specs[e.dataset].version, "homepage": registry.specs[e.dataset].homepage}
               for e in plan.entries]
    return {"stage": plan.name, "datasets": json.dumps(sources), "fingerprint": plan.data_stamp}  # + mmcorpus_version


def _manifest(registry: Registry, plan: _Plan, summaries: list[dict], outputs: dict, stats: StageStats) -> dict:
    drops: dict[str, int] = {}
    for s in summaries:
        for reason, n in s["dropped"].items():
            drops[reason] = drops.get(reason, 0) + n
    return {
        "stage": plan.name,
        "created": _now(),
        "mmcorpus_version": __version__,
        "fingerprint": plan.stamp,
        "data_fingerprint": plan.data_stamp,
        "mix": plan.mix.to_dict(),
        "options": plan.options,
        "total": {
            "rows": sum(s["rows"] for s in summaries),
            "kept": sum(s["kept"] for s in summaries),
            "not_sampled": sum(s["not_sampled"] for s in summaries),
            "dropped": dict(sorted(drops.items(), key=lambda kv: -kv[1])),
        },
        "datasets": summaries,
        "missing": plan.missing,
        "spec_versions": {s["dataset"]: registry.specs[s["dataset"]].version for s in summaries},
        "outputs": outputs,
        "stats": stats.to_dict(),
    }
