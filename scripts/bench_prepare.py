#!/usr/bin/env python3
"""Benchmark: normalizing a mix665k-shaped JSON with mmcorpus vs the naive baseline.

Generates a synthetic llava_v1_5_mix665k.json (665,298 records, ~1 GB by default; the sources in the real
proportions of reference 8.3, int GQA ids, ASIN-like OCR-VQA ids, the text-only ShareGPT tail), then runs, each
in its own subprocess so that peak RSS is the process's own (os.wait4 rusage):

- mmcorpus: `mmcorpus.normalize.runner.normalize_dataset` on the built-in llava_instruct spec (subset mix665k), i.e.
  what `mmcorpus prepare` runs: parse, validate, map roles and paths, look images up on disk, write parquet;
- baseline: `json.load` + `pyarrow.Table.from_pylist` + `pyarrow.parquet.write_table`. The ids are turned into
  strings first: from_pylist refuses the real file's mixed int/str ids, so a naive script needs at least that.

Usage:  python scripts/bench_prepare.py [--records N] [--workdir DIR] [--keep] [--repeat N]
"""

from __future__ import annotations

import argparse
import json
import os
import random
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

# Per-source record counts of the real mix665k (reference 8.3, haotian-liu/LLaVA#657).
SOURCES = {"coco": 364_100, "vg": 86_417, "gqa": 72_140, "ocr_vqa": 80_000, "textvqa": 21_953, "text": 40_688}
TOTAL = sum(SOURCES.values())  # 665,298
WORDS = ("the a of man woman bus street red white two people sitting table dog cat standing near large small "
         "image picture building car window tree sky green blue holding wearing shirt room kitchen food plate "
         "water field sign front side top background group young old black yellow player ball game train").split()
VQA_SUFFIX = "\nAnswer the question using a single word or phrase."


class Synth:
    """Deterministic text and records; sizes tuned so 665,298 records make ~1 GB like the real file."""

    def __init__(self, seed: int = 665):
        self.rng = random.Random(seed)
        self.corpus = " ".join(self.rng.choice(WORDS) for _ in range(400_000))

    def text(self, mean: int) -> str:
        n = max(2, int(self.rng.expovariate(1 / mean)))
        start = self.rng.randrange(0, len(self.corpus) - n - 1)
        return self.corpus[start : start + n].strip() or "yes"

    def turns(self, pairs: int, q: int, a: int, first_suffix: str = "", image: bool = True) -> list[dict]:
        out = []
        for i in range(pairs):
            question = self.text(q) + "?"
            if i == 0:
                question += first_suffix
                if image:
                    question = "<image>\n" + question if self.rng.random() < 0.8 else question + "\n<image>"
            out += [{"from": "human", "value": question}, {"from": "gpt", "value": self.text(a)}]
        return out

    def record(self, source: str, n: int) -> dict:
        r = self.rng
        if source == "coco":
            kind = r.random()
            if kind < 0.45:  # LLaVA-Instruct conversations / reasoning / detail
                conv = self.turns(r.randint(1, 5), 60, 470)
            else:  # VQAv2, OKVQA, A-OKVQA, RefCOCO: several short answers on one image
                conv = self.turns(r.randint(2, 12), 45, 8, VQA_SUFFIX)
            return {"id": f"{n:012d}", "image": f"coco/train2017/{n:012d}.jpg", "conversations": conv}
        if source == "vg":
            folder = "VG_100K" if r.random() < 0.6 else "VG_100K_2"
            prompt = "Please provide the bounding box coordinate of the region this sentence describes: "
            conv = self.turns(r.randint(3, 12), 30, 26, "")
            conv[0]["value"] = conv[0]["value"].replace("<image>\n", "<image>\n" + prompt)
            return {"id": f"VG_{n}", "image": f"vg/{folder}/{n}.jpg", "conversations": conv}
        if source == "gqa":  # integer ids (P1)
            return {"id": n, "image": f"gqa/images/{n}.jpg", "conversations": self.turns(r.randint(3, 14), 45, 6, VQA_SUFFIX)}
        if source == "ocr_vqa":
            asin = f"{n:09d}" + r.choice("0123456789X")
            return {"id": asin, "image": f"ocr_vqa/images/{asin}.jpg", "conversations": self.turns(5, 30, 24, VQA_SUFFIX)}
        if source == "textvqa":
            prompt = "\nProvide a one-sentence caption for the provided image.\nReference OCR token: "
            return {"id": f"{n:016x}", "image": f"textvqa/train_images/{n:016x}.jpg",
                    "conversations": self.turns(1, 40, 90, prompt)}
        return {"id": f"sg{n:07x}_{r.randint(0, 4)}", "conversations": self.turns(r.randint(1, 6), 300, 1500, image=False)}


def generate(path: Path, records: int = TOTAL, seed: int = 665) -> Path:
    """Write a mix665k-shaped JSON array of `records` records: image sources shuffled, text-only at the tail."""
    synth = Synth(seed)
    scale = records / TOTAL
    counts = {s: round(c * scale) for s, c in SOURCES.items()}
    counts["coco"] += records - sum(counts.values())
    image_sources = [s for s, c in counts.items() if s != "text" for _ in range(c)]
    synth.rng.shuffle(image_sources)
    order = image_sources + ["text"] * counts["text"]
    tmp = path.with_suffix(".part")
    with open(tmp, "w", encoding="utf-8") as out:
        out.write("[")
        for n, source in enumerate(order):
            out.write(",\n" if n else "\n")
            out.write(json.dumps(synth.record(source, 1_000_000 + n), ensure_ascii=False))
        out.write("\n]\n")
    os.replace(tmp, path)
    return path


# ------------------------------------------------------------------------------------------- the two runs


def run_mmcorpus(json_path: Path, workdir: Path) -> dict:
    from mmcorpus.normalize.runner import normalize_dataset
    from mmcorpus.registry import Registry

    spec = Registry.load().get("llava_instruct")
    root = workdir / "root"
    downloads = root / "downloads" / spec.name
    downloads.mkdir(parents=True, exist_ok=True)
    link = downloads / spec.files["mix665k"].filename
    if not link.exists():
        link.symlink_to(json_path.resolve())
    report = normalize_dataset(spec, root, subsets=["mix665k"])
    sub = report["subsets"]["mix665k"]
    return {"rows": sub["rows"], "rejected": sub["rejected"], "processes": sub["parts"]}


def run_baseline(json_path: Path, workdir: Path) -> dict:
    import pyarrow as pa
    import pyarrow.parquet as pq

    with open(json_path, encoding="utf-8") as f:
        records = json.load(f)
    for record in records:
        record["id"] = str(record["id"])  # from_pylist refuses mixed int/str ids
    table = pa.Table.from_pylist(records)
    pq.write_table(table, workdir / "baseline.parquet")
    return {"rows": table.num_rows, "rejected": None, "processes": 1}


def child_main(which: str, json_path: str, workdir: str) -> None:
    start = time.perf_counter()
    result = {"mmcorpus": run_mmcorpus, "baseline": run_baseline}[which](Path(json_path), Path(workdir))
    result["seconds"] = time.perf_counter() - start
    import resource

    # Worker processes run at the same time as this one: count each at the peak of the largest.
    own = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    workers = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    result["peak_rss_mb"] = (own + (result["processes"] - 1) * workers) / 1024  # KiB on Linux
    print(json.dumps(result))


def tree_pss_kib(pid: int) -> int:
    """Proportional set size of a process and its descendants (shared pages split between them)."""
    total, todo = 0, [pid]
    while todo:
        current = todo.pop()
        try:
            for line in open(f"/proc/{current}/smaps_rollup"):
                if line.startswith("Pss:"):
                    total += int(line.split()[1])
            for task in os.listdir(f"/proc/{current}/task"):
                todo += [int(c) for c in open(f"/proc/{current}/task/{task}/children").read().split()]
        except (OSError, ValueError):
            continue  # the process ended between two reads
    return total


def sample_peak(pid: int, stop: threading.Event, out: dict, every: float = 0.5) -> None:
    while not stop.wait(every):
        out["peak"] = max(out.get("peak", 0), tree_pss_kib(pid))


def measure(which: str, json_path: Path, workdir: Path) -> dict:
    """Run one side in a fresh interpreter. Peak RSS: the child's own (plus its workers', summed as if all
    peaked at once: an upper bound); CPU seconds include the workers (wait4 rusage)."""
    proc = subprocess.Popen([sys.executable, __file__, "--child", which, str(json_path), str(workdir)],
                            stdout=subprocess.PIPE, text=True)
    stop, sampled = threading.Event(), {}
    sampler = threading.Thread(target=sample_peak, args=(proc.pid, stop, sampled), daemon=True)
    sampler.start()
    out = proc.stdout.read()
    stop.set()
    sampler.join()
    _, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode != 0:
        raise SystemExit(f"{which} run failed with exit code {proc.returncode}")
    result = json.loads(out.strip().splitlines()[-1])
    result["cpu_seconds"] = usage.ru_utime + usage.ru_stime  # all CPUs; wall time is "seconds"
    result["peak_pss_mb"] = sampled.get("peak", 0) / 1024
    return result


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "--child":
        return child_main(*sys.argv[2:5])
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--records", type=int, default=TOTAL, help="records to generate (default: %(default)s)")
    parser.add_argument("--workdir", type=Path, help="where the JSON and outputs go (default: a temp folder)")
    parser.add_argument("--keep", action="store_true", help="keep the work folder")
    parser.add_argument("--repeat", type=int, default=1, help="run both sides this many times, alternating "
                        "(on a shared machine the load changes between runs; the medians are printed)")
    args = parser.parse_args()
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="bench_prepare_"))
    workdir.mkdir(parents=True, exist_ok=True)
    json_path = workdir / f"mix665k_synthetic_{args.records}.json"
    if not json_path.exists():
        start = time.perf_counter()
        generate(json_path, args.records)
        print(f"generated {json_path} ({json_path.stat().st_size / 1e9:.3f} GB, {args.records} records) "
              f"in {time.perf_counter() - start:.0f} s", file=sys.stderr)
    report(json_path, workdir, args.repeat)
    if not args.keep and args.workdir is None:
        import shutil

        shutil.rmtree(workdir)


def report(json_path: Path, workdir: Path, repeat: int = 1) -> None:
    import statistics
    print(f"file: {json_path.stat().st_size:,} bytes, python {sys.version.split()[0]}, CPUs: {os.cpu_count()}")
    print(f"{'':10} {'wall s':>8} {'CPU s':>8} {'peak RSS MB':>12} {'peak PSS MB':>12} {'rows':>9}")
    keys = ("seconds", "cpu_seconds", "peak_rss_mb", "peak_pss_mb")
    ratios = []
    for run in range(repeat):
        load = os.getloadavg()[0]
        ours = measure("mmcorpus", json_path, workdir)
        base = measure("baseline", json_path, workdir)
        for name, r in (("mmcorpus", ours), ("baseline", base)):
            print(f"{name:10} {r['seconds']:8.1f} {r['cpu_seconds']:8.1f} {r['peak_rss_mb']:12.0f} "
                  f"{r['peak_pss_mb']:12.0f} {r['rows']:9}   {r['processes']} process(es)")
        ratios.append({key: ours[key] / base[key] for key in keys})
        print_ratio(f"ratio", ratios[-1], f"load average before run {run + 1}: {load:.1f}; "
                                          f"mmcorpus rejected {ours['rejected']}")
    if repeat > 1:
        print_ratio("median", {key: statistics.median(r[key] for r in ratios) for key in keys}, f"of {repeat} runs")
    print("target: <= 0.5x wall time, <= 0.1x peak memory")
    parse_only(json_path)


def print_ratio(label: str, ratio: dict, note: str) -> None:
    print(f"{label:10} {ratio['seconds']:7.2f}x {ratio['cpu_seconds']:7.2f}x {ratio['peak_rss_mb']:11.3f}x "
          f"{ratio['peak_pss_mb']:11.3f}x   {note}")


def parse_only(json_path: Path) -> None:
    """Why the normalizer does not use ijson: CPU seconds to parse the file record by record (ijson is not a
    dependency; the comparison runs when it is installed)."""
    from mmcorpus.normalize.jsonarray import iter_json_array

    parsers = [("json C scanner (mmcorpus)", lambda: iter_json_array(json_path))]
    try:
        import ijson

        parsers.append((f"ijson.items ({ijson.backend})", lambda: ijson.items(open(json_path, "rb"), "item")))
    except ImportError:
        print("parse only: ijson not installed, no comparison")
    for name, records in parsers:
        start = time.process_time()
        count = sum(1 for _ in records())
        print(f"parse only, {name}: {time.process_time() - start:.1f} s CPU for {count} records")


if __name__ == "__main__":
    main()
