#!/usr/bin/env python3
"""What `--image-check structure` costs and catches, against the default decode check, in the same run.

    python scripts/bench_image_check.py [--n 300] [--flips 20] [--seed 1]

On the JPEGs of the bench_fetch corpus (generated under --work if missing):
1. CPU per image of both checks on the sound files (time.thread_time, best of 3 passes);
2. which garbled copies each refuses: every file with --flips random bytes of its image data overwritten;
3. which cut copies each refuses: every file cut at a random point.
Prints one table with the counts and the cost ratio.
"""

from __future__ import annotations

import argparse
import random
import sys
import time
from collections import Counter
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "scripts"))

from bench_fetch import build_corpus  # noqa: E402  (the same synthetic corpus as the engine benchmark)

from mmcorpus.core.imaging import CHECKS, ImageRejected, prepare  # noqa: E402


def outcome(data: bytes, check: str) -> str:
    try:
        prepare(data, check=check)
        return "ok"
    except ImageRejected as rejected:
        return rejected.error


def scan_start(data: bytes) -> int:
    sos = data.index(b"\xff\xda")
    return sos + 2 + ((data[sos + 2] << 8) | data[sos + 3])


def cost_ms(files: list[bytes], check: str) -> float:
    best = float("inf")
    for _ in range(3):
        started = time.thread_time()
        for data in files:
            prepare(data, check=check)
        best = min(best, time.thread_time() - started)
    return 1000 * best / len(files)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n", type=int, default=300, help="JPEGs of the corpus to use")
    parser.add_argument("--flips", type=int, default=20, help="bytes overwritten per garbled copy")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--work", type=Path, default=Path("/tmp/mmcorpus-bench"))
    args = parser.parse_args()

    manifest = build_corpus(args.work, 10_000)
    images = sorted((Path(manifest["www"]) / "img").glob("*.jpg"))
    files = [data for data in (p.read_bytes() for p in images) if outcome(data, "decode") == "ok"][: args.n]
    rng = random.Random(args.seed)
    garbled: Counter = Counter()
    cut: Counter = Counter()
    for data in files:
        copy = bytearray(data)
        for _ in range(args.flips):
            copy[rng.randrange(scan_start(data), len(data) - 2)] = rng.randrange(256)
        garbled[tuple(outcome(bytes(copy), check) != "ok" for check in CHECKS)] += 1
        short = data[: rng.randrange(100, len(data) - 2)]
        cut[tuple(outcome(short, check) != "ok" for check in CHECKS)] += 1

    decode_ms, structure_ms = cost_ms(files, "decode"), cost_ms(files, "structure")
    print(f"{len(files)} sound JPEGs of the bench_fetch corpus (mean {sum(map(len, files)) / len(files) / 1000:.0f} KB)")
    print(f"CPU per image: decode {decode_ms:.3f} ms, structure {structure_ms:.3f} ms "
          f"(ratio {structure_ms / decode_ms:.3f})")
    for label, counts in ((f"garbled ({args.flips} random bytes)", garbled), ("cut at a random point", cut)):
        print(f"{label}: refused by both {counts[(True, True)]}, only decode {counts[(True, False)]}, "
              f"only structure {counts[(False, True)]}, neither {counts[(False, False)]}")


if __name__ == "__main__":
    main()
