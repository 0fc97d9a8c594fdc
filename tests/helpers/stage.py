"""Builders for stage tests: normalized parquet in UNIFIED_SCHEMA and real image files under <root>/images.

The rows are constructed (not real dataset records); their shapes follow DESIGN.md §4: caption rows of
URL-list datasets, two-turn pretrain records, multi-turn instruction records and text-only records.
"""

from __future__ import annotations

from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
from PIL import Image

from mmcorpus.schema import UNIFIED_SCHEMA


def make_image(root: Path, relative: str, size=(64, 48), colour=(200, 80, 40), fmt: str = "JPEG") -> str:
    path = Path(root) / "images" / relative
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", size, colour).save(path, fmt)
    return relative


def row(dataset: str, subset: str, index: int, **values) -> dict:
    base = {
        "sample_id": f"{dataset}/{subset}/{index}",
        "dataset": dataset,
        "subset": subset,
        "source_id": str(index),
        "image_path": None,
        "image_url": None,
        "caption": None,
        "conversations": [],
        "width": None,
        "height": None,
    }
    base.update(values)
    return base


def caption_row(dataset, subset, index, image_path, caption, url=None) -> dict:
    return row(dataset, subset, index, image_path=image_path, image_url=url, caption=caption)


def chat_row(dataset, subset, index, image_path, question, answer, more_turns=()) -> dict:
    turns = [{"role": "user", "content": question}, {"role": "assistant", "content": answer}]
    for q, a in more_turns:
        turns += [{"role": "user", "content": q}, {"role": "assistant", "content": a}]
    return row(dataset, subset, index, image_path=image_path, conversations=turns)


def write_normalized(root: Path, dataset: str, subset: str, rows: list[dict], shard: int = 0) -> Path:
    folder = Path(root) / "normalized" / dataset
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{subset}-{shard:05d}.parquet"
    pq.write_table(pa.Table.from_pylist(rows, schema=UNIFIED_SCHEMA), path)
    return path


def cc_rows(root: Path, dataset: str, count: int, urls: list[str] | None = None, start: int = 0) -> list[dict]:
    """Caption rows of a URL-list dataset with their images on disk (cc3m/train/00000/000000001.jpg ...)."""
    rows = []
    for i in range(start, start + count):
        rel = make_image(root, f"{dataset}/train/00000/{i:09d}.jpg", colour=(i * 7 % 255, 90, 160))
        url = urls[i - start] if urls else f"https://img.example.com/{dataset}/{i}.jpg"
        rows.append(caption_row(dataset, "train", i, rel, f"a photo number {i} of {dataset}", url=url))
    return rows
