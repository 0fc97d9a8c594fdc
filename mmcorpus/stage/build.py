"""Stream the normalized rows of each mix entry into the stage's parquet shards.

For every row, in this order:
1. the sampling rule picks it or not (`not_sampled`; random:N first finds the N smallest seeded priorities
   among usable rows in a separate pass, checking images only for rows that could still make the cut);
2. it must be usable: an image that is on disk and decodable (`image_missing`, `image_empty`,
   `image_undecodable`, `bad_image_path`), a URL-list row whose download failed has no image
   (`image_not_downloaded`), and text-only rows are kept only where the stage allows them (`text_only`);
3. duplicates of samples kept earlier in the mix are removed (`duplicate_url`, `duplicate_record`; see
   mmcorpus/dedup.py for what counts as identical);
4. weight:W repeats a sample; copies get `#<n>` appended to their sample_id so ids stay unique.
Rows keep their columns; width/height are filled in from the image header when the normalizer left them null.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import pyarrow as pa

from mmcorpus.stage.dedup import Deduper
from mmcorpus.stage.imagecheck import ImageCheck, ImageChecker
from mmcorpus.stage.sampling import BottomK, Rule, copies, priority
from mmcorpus.stage.shards import StageWriter, count_rows, read_batches
from mmcorpus.stage.stats import StageStats

DUPLICATES = ("duplicate_url", "duplicate_record")


@dataclass
class Entry:
    """One dataset/subset of the mix, with the normalized files found for it."""

    dataset: str
    subset: str
    rule: Rule
    seed: int
    files: list[Path] = field(default_factory=list)

    @property
    def label(self) -> str:
        return f"{self.dataset}/{self.subset}"


@dataclass
class Context:
    checker: ImageChecker
    dedup: Deduper
    writer: StageWriter
    stats: StageStats
    keep_text_only: bool
    log: Callable[[str], None] = lambda message: None
    batch_size: int = 8192
    log_every: int = 1_000_000  # rows, for a progress line on long entries (CC12M: 12.4M rows)


class _Rows:
    """The columns of a batch that every row's decision needs, as Python lists. The text (caption and
    conversation turns) is converted only for the rows that reach the duplicate check (`text`): turning every
    conversation of mix665k into Python objects cost more than all the decisions together."""

    DECISION_COLUMNS = ["sample_id", "image_path", "image_url"]  # all that random:N's first pass reads

    def __init__(self, batch: pa.RecordBatch):
        self.batch = batch
        self.ids = batch.column("sample_id").to_pylist()
        self.paths = batch.column("image_path").to_pylist()
        self.urls = batch.column("image_url").to_pylist()

    def text(self, indices: list[int]) -> tuple[list, list]:
        """(captions, conversations) of the rows at `indices`, in that order."""
        picked = pa.array(indices, pa.int64())
        return (self.batch.column("caption").take(picked).to_pylist(),
                self.batch.column("conversations").take(picked).to_pylist())


def _unusable(path: str | None, url: str | None, ctx: Context) -> tuple[str | None, ImageCheck | None]:
    """The drop reason of a row that cannot be trained on (None if usable), and its image check."""
    if path is None:
        if url:
            return "image_not_downloaded", None
        return (None if ctx.keep_text_only else "text_only"), None
    check = ctx.checker.check(path)
    return check.reason, check


def _random_threshold(entry: Entry, ctx: Context) -> int:
    """random:N, first pass: the N-th smallest priority among usable rows."""
    chosen = BottomK(entry.rule.n)
    for path in entry.files:
        for batch in read_batches(path, ctx.batch_size, columns=_Rows.DECISION_COLUMNS):
            rows = _Rows(batch)
            prios = [priority(entry.seed, sid) for sid in rows.ids]
            ctx.checker.prefetch(p for p, q in zip(rows.paths, prios) if p is not None and chosen.could_take(q))
            for p, url, q in zip(rows.paths, rows.urls, prios):
                if chosen.could_take(q) and _unusable(p, url, ctx)[0] is None:
                    chosen.push(q)
    return chosen.threshold()


class _Selector:
    """Applies steps 1-4 of the module docstring to the batches of one entry, counting every outcome."""

    def __init__(self, entry: Entry, ctx: Context):
        self.entry, self.ctx = entry, ctx
        self.rule = entry.rule
        self.threshold = _random_threshold(entry, ctx) if self.rule.kind == "random" else None
        self.counts: Counter = Counter()
        self.sampled = 0  # usable rows the rule picked (before duplicate removal)
        self.kept = 0  # rows written, copies included

    @property
    def done(self) -> bool:
        return self.rule.kind == "first" and self.sampled >= self.rule.n

    def _times(self, sample_id: str) -> int:
        """How many copies the rule wants of a row before it is checked (0: not sampled)."""
        if self.rule.kind == "weight":
            return copies(self.rule.weight, self.entry.seed, sample_id)
        if self.rule.kind == "random":
            return 1 if priority(self.entry.seed, sample_id) <= self.threshold else 0
        return 1

    def process(self, batch: pa.RecordBatch) -> None:
        rows = _Rows(batch)
        times = [self._times(sid) for sid in rows.ids]
        wanted = [p for p, t in zip(rows.paths, times) if t and p is not None]
        self.ctx.checker.prefetch(wanted[: self.rule.n - self.sampled] if self.rule.kind == "first" else wanted)
        usable, sizes = self._usable(rows, times)
        captions, conversations = rows.text(usable)
        take, new_ids = [], []
        for i, caption, turns in zip(usable, captions, conversations):
            reason = self.ctx.dedup.check_and_add(rows.urls[i], rows.paths[i], caption, turns)
            if reason:
                self.counts[reason] += 1
                continue
            for n in range(times[i]):
                take.append(i)
                new_ids.append(rows.ids[i] if n == 0 else f"{rows.ids[i]}#{n}")
                self.ctx.stats.add(self.entry.label, new_ids[-1], rows.paths[i], caption, turns)
        self.kept += len(take)
        if take:
            self.ctx.writer.write(_output(batch, take, new_ids, sizes))

    def _usable(self, rows: _Rows, times: list[int]) -> tuple[list[int], dict]:
        """Steps 1 and 2 over a batch: the indices of the picked rows that are usable, in order (counting the
        others by reason), and the image sizes found on the way. Stops where first:N is complete."""
        usable, sizes = [], {}
        for i in range(len(rows.ids)):
            if self.done:
                break
            self.counts["read"] += 1
            if not times[i]:
                continue
            reason, check = _unusable(rows.paths[i], rows.urls[i], self.ctx)
            if reason:
                self.counts[reason] += 1
                continue
            self.sampled += 1
            usable.append(i)
            if check is not None:
                sizes[i] = (check.width, check.height)
        return usable, sizes

    def summary(self, rows_total: int) -> dict:
        dropped = {k: v for k, v in sorted(self.counts.items()) if k != "read"}
        unusable = sum(v for k, v in dropped.items() if k not in DUPLICATES)
        return {
            "dataset": self.entry.dataset,
            "subset": self.entry.subset,
            "sample": str(self.rule),
            "seed": self.entry.seed,
            "files": [p.name for p in self.entry.files],
            "rows": rows_total,
            "not_sampled": rows_total - self.sampled - unusable,
            "dropped": dropped,
            "kept": self.kept,
            "repeats": self.kept - (self.sampled - sum(dropped.get(k, 0) for k in DUPLICATES)),
        }


def _output(batch: pa.RecordBatch, take: list[int], new_ids: list[str], sizes: dict) -> pa.RecordBatch:
    """The kept rows (with repeats), their final sample ids and filled-in image sizes."""
    out = batch.take(pa.array(take, pa.int64()))
    widths = [w if w is not None else sizes.get(i, (None, None))[0] for i, w in zip(take, out.column("width").to_pylist())]
    heights = [h if h is not None else sizes.get(i, (None, None))[1] for i, h in zip(take, out.column("height").to_pylist())]
    columns = dict(zip(out.schema.names, out.columns))
    columns["sample_id"] = pa.array(new_ids, pa.string())
    columns["width"] = pa.array(widths, pa.int32())
    columns["height"] = pa.array(heights, pa.int32())
    return pa.RecordBatch.from_arrays([columns[name] for name in out.schema.names], schema=out.schema)


def build_entry(entry: Entry, ctx: Context) -> dict:
    """Stream one entry into the writer; return its counts (see _Selector.summary)."""
    selector = _Selector(entry, ctx)
    rows_total = sum(count_rows(path) for path in entry.files)
    for path in entry.files:
        for batch in read_batches(path, ctx.batch_size):
            before = selector.counts["read"]
            selector.process(batch)
            if before // ctx.log_every != selector.counts["read"] // ctx.log_every:
                ctx.log(f"  {entry.label}: {selector.counts['read']:,} of {rows_total:,} rows read, {selector.kept:,} kept")
            if selector.done:
                return selector.summary(rows_total)
    return selector.summary(rows_total)
