"""Benchmark: iterating a prepared stage with `mmcorpus.open_stage` (target: >= 50k samples/s on one core).

Builds a stage of synthetic unified rows (default 100,000: 60% CC3M-like caption rows, 35% multi-turn
instruction rows, 5% text-only rows) with the real stage writer (shuffled shards, row groups of 10,000) and a
minimal manifest, then times `for sample in stage` (dicts with "images" as absolute paths) and prints
samples/s. Images need not exist for iterating paths; the script checks that every sample's "images" is the
images folder joined to its image_path ([] for text-only rows) and that the count is the stage's.

Usage:  python scripts/bench_read.py [--rows N] [--workdir DIR] [--repeat N]
"""

from __future__ import annotations

import argparse
import os
import random
import sys
import tempfile
import time
from pathlib import Path

import pyarrow as pa

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import mmcorpus
from mmcorpus import layout
from mmcorpus.core.atomicio import temporary_name, write_json_atomic
from mmcorpus.schema import UNIFIED_SCHEMA
from mmcorpus.stage.shards import StageWriter

WORDS = ["the", "a", "of", "man", "woman", "bus", "street", "red", "white", "two", "people", "sitting", "table",
         "dog", "cat", "near", "large", "small", "picture", "building", "car", "window", "tree", "sky", "green"]
STAGE = "bench"


def text(rng: random.Random, words: int) -> str:
    return " ".join(rng.choice(WORDS) for _ in range(max(1, words)))


def synthetic_row(rng: random.Random, i: int) -> dict:
    kind = rng.random()
    if kind < 0.60:
        return {"sample_id": f"cc3m/train/{i}", "dataset": "cc3m", "subset": "train", "source_id": str(i),
                "image_path": f"cc3m/train/{i // 10_000:05d}/{i:09d}.jpg", "image_url": f"https://img.example/{i}.jpg",
                "caption": text(rng, 12), "conversations": [], "width": 640, "height": 480}
    turns = [{"role": "user", "content": "<image>\n" + text(rng, 10)}, {"role": "assistant", "content": text(rng, 25)}]
    turns += [t for _ in range(rng.randrange(3)) for t in ({"role": "user", "content": text(rng, 8)},
                                                            {"role": "assistant", "content": text(rng, 20)})]
    image = f"coco/train2017/{i:012d}.jpg" if kind < 0.95 else None
    if image is None:
        turns[0]["content"] = turns[0]["content"].removeprefix("<image>\n")
    return {"sample_id": f"llava_instruct/mix665k/{i}", "dataset": "llava_instruct", "subset": "mix665k",
            "source_id": str(i), "image_path": image, "image_url": None, "caption": None, "conversations": turns,
            "width": 640 if image else None, "height": 480 if image else None}


def build(root: Path, rows: int) -> None:
    """<root>/stages/bench/: data/ shards written by the stage writer, and a manifest that lists them."""
    folder = layout.stage_dir(root, STAGE)
    data = layout.stage_parquet_dir(folder)
    writer = StageWriter(data, STAGE, samples_per_shard=10_000, row_group_rows=10_000, metadata={"stage": STAGE},
                         seed=0, expected_rows=rows, spill=temporary_name(data))
    rng = random.Random(0)
    for start in range(0, rows, 8192):
        chunk = [synthetic_row(rng, i) for i in range(start, min(rows, start + 8192))]
        writer.write(pa.RecordBatch.from_pylist(chunk, schema=UNIFIED_SCHEMA))
    files = writer.close()
    write_json_atomic(layout.stage_manifest(folder), {"stage": STAGE, "fingerprint": "bench",
                                                      "outputs": {"parquet": {"files": files}}})


def iterate(root: Path) -> tuple[int, float]:
    """(samples, seconds) of one pass over the stage."""
    stage = mmcorpus.open_stage(STAGE, root=root)
    samples = 0
    started = time.perf_counter()
    for _ in stage:
        samples += 1
    return samples, time.perf_counter() - started


def wrong_images(root: Path) -> int:
    """Samples whose "images" is not the images folder joined to their image_path ([] for text-only rows)."""
    images = layout.images_root(root)
    wrong = 0
    for sample in mmcorpus.open_stage(STAGE, root=root):
        wrong += sample["images"] != ([os.path.join(images, sample["image_path"])] if sample["image_path"] else [])
    return wrong


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=100_000)
    parser.add_argument("--workdir", type=Path, default=None)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(dir=args.workdir) as tmp:
        root = Path(tmp).absolute()
        started = time.perf_counter()
        build(root, args.rows)
        print(f"built a stage of {args.rows:,} synthetic rows in {time.perf_counter() - started:.1f} s")
        wrong = wrong_images(root)
        if wrong:
            print(f"FAILED: {wrong:,} samples with wrong images")
            return 1
        best = None
        for run in range(args.repeat):
            samples, seconds = iterate(root)
            if samples != args.rows:
                print(f"FAILED: {samples:,} samples read, expected {args.rows:,}")
                return 1
            rate = samples / seconds
            best = max(best or 0, rate)
            print(f"run {run + 1}: {samples:,} samples in {seconds:.2f} s = {rate:,.0f} samples/s")
        print(f"best: {best:,.0f} samples/s (target >= 50,000 on one core)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
