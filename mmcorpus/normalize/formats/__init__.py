"""Normalizers: one module per source format, each turning one input into rows of UNIFIED_SCHEMA.

A normalizer is a module with `normalize(job: Job) -> Iterator[pyarrow.RecordBatch]` and `has_input(job) -> bool`
(is there anything to normalize yet), optionally `split_points(path, parts)` for big files; NORMALIZERS
maps a spec's `format.type` to that module, so adding a format is one module and one line here. Batches have
exactly UNIFIED_SCHEMA (columnar, so millions of rows never become Python dicts; `batch.to_pylist()` gives plain
rows). Records that break the format are never dropped silently: the normalizer counts them in `job.rejects` by
reason, with a few example record indices for the report.
"""

from __future__ import annotations

import bisect
import importlib
from dataclasses import dataclass, field
from pathlib import Path

from mmcorpus.errors import UsageError

NORMALIZERS = {
    "llava": "mmcorpus.normalize.formats.llava",  # LLaVA / ShareGPT4V JSON conversation arrays
    "tsv": "mmcorpus.normalize.formats.tsv",  # CC3M / CC12M: rows come from the URL engine's status parquets
}


@dataclass
class Rejects:
    """Rejected records by reason, with the first `max_examples` record indices (in file order) per reason."""

    max_examples: int = 5
    counts: dict[str, int] = field(default_factory=dict)
    examples: dict[str, list[int]] = field(default_factory=dict)

    def add(self, reason: str, index: int) -> None:
        self.counts[reason] = self.counts.get(reason, 0) + 1
        examples = self.examples.setdefault(reason, [])
        if len(examples) < self.max_examples or index < examples[-1]:  # batches report out of file order
            bisect.insort(examples, index)
            del examples[self.max_examples :]

    @property
    def total(self) -> int:
        return sum(self.counts.values())

    def as_dict(self) -> dict:
        return {reason: {"count": n, "examples": self.examples[reason]} for reason, n in sorted(self.counts.items())}


@dataclass
class Job:
    """What a normalizer needs: where the input is and how its rows are named.

    `path` is the annotation file (JSON formats); URL-list datasets read `<root>/images/<dataset>/<subset>/`.
    `captions`: fill `caption` from two-turn image records (see mmcorpus.normalize.formats.llava).
    `start`/`end`: a byte range of `path`, for normalizers that can split a big file (those whose module has
    `split_points(path, parts)`); record indices count from the range's first record.
    """

    dataset: str
    subset: str
    path: Path | None = None
    root: Path | None = None
    image_prefix: str = ""
    captions: bool = False
    start: int = 0
    end: int | None = None
    rejects: Rejects = field(default_factory=Rejects)
    stats: dict = field(default_factory=dict)  # extra counts a normalizer reports (e.g. failed URLs by error)


def normalizer_module(format_type: str):
    """The module of a spec's format type (imported on first use)."""
    try:
        module = NORMALIZERS[format_type]
    except KeyError:
        raise UsageError(f"no normalizer for format '{format_type}' (known: {', '.join(NORMALIZERS)})") from None
    return importlib.import_module(module)

