"""`mmcorpus prepare`: normalize what a stage needs (when its inputs changed), then build the stage.

Normalizing mix665k takes a while, so each normalized subset records the fingerprint of its inputs
(`_<subset>.inputs.json`: the annotation file or URL-list status shards, the image collections' extraction
markers, the spec file, the mmcorpus version). A prepare with nothing changed re-normalizes nothing, and
then `stages.prepare_stage` sees unchanged normalized files and leaves the stage as it is.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Callable, Iterable

from mmcorpus import __version__, layout
from mmcorpus.core.atomicio import read_json, write_json_atomic
from mmcorpus.core.locks import hold_lock
from mmcorpus.normalize.runner import normalize_subset
from mmcorpus.registry import Registry
from mmcorpus.schema import UNIFIED_SCHEMA
from mmcorpus.stage.mix import resolve_mix, select_entries
from mmcorpus.stage.prepare import image_state, normalized_files, prepare_stage
from mmcorpus.stage.report import format_stage_summary


def run(registry: Registry, root: Path, *, stage: str | None = None, mix_file: Path | None = None,
        datasets: str | None = None, formats: Iterable[str] | None = None, seed: int | None = None,
        force: bool = False, config_dirs: Iterable[Path] = (), workers: int | None = None,
        samples_per_shard: int = 10_000, log: Callable[[str], None] | None = None) -> dict:
    """The command: `datasets` as typed (`a,b:subset`), `formats` the exports asked for besides parquet."""
    formats = ["parquet", *[f for f in (formats or []) if f != "parquet"]]
    return prepare(registry, root, stage=stage, mix_file=mix_file, datasets=[d for d in (datasets or "").split(",")
                   if d] or None, formats=formats, seed=seed, force=force, config_dirs=config_dirs,
                   workers=workers, samples_per_shard=samples_per_shard, log=log)


def prepare(registry: Registry, root: Path, *, stage: str | None = None, mix_file: Path | None = None,
            datasets: Iterable[str] | None = None, formats: Iterable[str] = ("parquet",), seed: int | None = None,
            force: bool = False, config_dirs: Iterable[Path] = (), workers: int | None = None,
            samples_per_shard: int = 10_000, log: Callable[[str], None] | None = None) -> dict:
    """Normalize the fetched datasets of the stage's mix, then build the stage; returns {normalize, stage}."""
    log = log or (lambda message: None)
    name, mix = resolve_mix(registry, stage, mix_file, config_dirs)
    entries = select_entries(mix, datasets, registry, name)
    normalized = {}
    for entry in entries:
        normalized[entry.label] = normalize_if_changed(registry, root, entry.dataset, entry.subset,
                                                       force=force, workers=workers, log=log)
    manifest = prepare_stage(registry, root, stage=name, mix_file=mix_file, datasets=datasets, formats=formats,
                             seed=seed, force=force, config_dirs=config_dirs, workers=workers,
                             samples_per_shard=samples_per_shard, log=log)
    return {"stage": name, "normalize": normalized, "manifest": manifest}


def normalize_if_changed(registry: Registry, root: Path, dataset: str, subset: str, *, force: bool = False,
                         workers: int | None = None, log: Callable[[str], None] = lambda m: None) -> dict:
    spec = registry.get(dataset)
    file = spec.files[subset]
    if not _fetched(spec, file, root):
        return {"status": "not_fetched"}
    marker = layout.normalize_inputs(root, dataset, subset)
    fingerprint = _inputs_fingerprint(registry, root, spec, file)
    if not force and read_json(marker, {}).get("fingerprint") == fingerprint and normalized_files(root, dataset, subset):
        return {"status": "unchanged"}
    log(f"normalizing {dataset}/{subset}")
    with hold_lock(Path(root), dataset, command=f"mmcorpus prepare (normalize {dataset}/{subset})"):
        # The dataset's lock: a fetch of the same dataset must not replace its files under the normalizer.
        marker.unlink(missing_ok=True)  # until this run ends well: a kill mid-way (even under --force) is redone
        report = normalize_subset(spec, file, Path(root), workers=workers)
    if report.get("status") == "ok":
        write_json_atomic(marker, {"fingerprint": fingerprint})
    return report


def _fetched(spec, file, root: Path) -> bool:
    if spec.images_from == "url":  # URL-list rows come from the engine's status shards
        return bool(layout.shard_statuses(layout.subset_images_dir(layout.images_root(root), spec.name, file.key)))
    return layout.download_path(root, spec.name, file.filename).is_file()


def _inputs_fingerprint(registry: Registry, root: Path, spec, file) -> str:
    source = layout.download_path(root, spec.name, file.filename)
    state = {
        "annotations": _stat(source),
        "images": image_state(root, registry, spec.name, file.key),
        "spec": _stat(spec.source),
        "mmcorpus": __version__,
        "schema": UNIFIED_SCHEMA.names,  # a column added in a development build re-normalizes as well
    }
    return hashlib.sha256(json.dumps(state, sort_keys=True, default=str).encode()).hexdigest()


def _stat(path: Path) -> list | None:
    try:
        st = path.stat()
    except OSError:
        return None
    return [st.st_size, st.st_mtime_ns]


# ---------------------------------------------------------------------------------------------- format


def format_report(result: dict) -> str:
    """What was normalized (or why not), then the stage's summary."""
    lines = []
    for label, report in result["normalize"].items():
        status = report.get("status")
        if status == "ok":
            rejected = report.get("rejected", 0)
            lines.append(f"normalized {label}: {report.get('rows', 0)} rows"
                         + (f", {rejected} records rejected" if rejected else ""))
        else:
            lines.append(f"normalized {label}: {(status or '?').replace('_', ' ')}")
    return "\n".join(lines) + ("\n\n" if lines else "") + format_stage_summary(result["manifest"])
