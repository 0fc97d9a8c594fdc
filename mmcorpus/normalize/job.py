"""What a normalizer is given (Job) and how it counts the records it refuses (Rejects)."""

from __future__ import annotations

import bisect
from dataclasses import dataclass, field
from pathlib import Path


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
