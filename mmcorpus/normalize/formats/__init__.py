"""Normalizers: one module per source format, named after its `format.type`, each turning one input into rows
of UNIFIED_SCHEMA.

A normalizer is a module with `normalize(job: Job) -> Iterator[pyarrow.RecordBatch]` and `has_input(job) -> bool`
(is there anything to normalize yet), optionally `split_points(path, parts)` for big files; NORMALIZERS maps a
spec's `format.type` (mmcorpus.registry.FORMAT_TYPES) to that module, so adding a format is one module here, one
line in NORMALIZERS and its name in FORMAT_TYPES (tests/normalize/test_formats.py ties the three together).
Batches have exactly UNIFIED_SCHEMA (columnar, so millions of rows never become Python dicts;
`batch.to_pylist()` gives plain rows). Records that break the format are never dropped silently: the normalizer
counts them in `job.rejects` (mmcorpus.normalize.job) by reason, with a few example record indices for the report.
"""

from __future__ import annotations

from types import ModuleType

from mmcorpus.errors import UsageError
from mmcorpus.normalize.formats import llava, tsv

NORMALIZERS: dict[str, ModuleType] = {
    "llava": llava,  # LLaVA / ShareGPT4V JSON conversation arrays
    "tsv": tsv,  # CC3M / CC12M: rows come from the URL engine's status parquets
}


def normalizer_module(format_type: str) -> ModuleType:
    """The module of a spec's format type."""
    try:
        return NORMALIZERS[format_type]
    except KeyError:
        raise UsageError(f"no normalizer for format '{format_type}' (known: {', '.join(NORMALIZERS)})") from None
