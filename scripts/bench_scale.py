#!/usr/bin/env python3
"""Images/s of each executor and engine on the same corpus, server and machine, in the same run.

    python scripts/bench_scale.py [--n 4000] [--threads 32] [--resize none|256] [--modes local-1,local-2,ray-2,img2dataset-2]
                                  [--i2d-venv DIR] [--install-img2dataset] [--json FILE]

Modes (every one through mmcorpus.fetch.urllist.executors.run_url_list, into a fresh root):
- local-1        --executor local --workers 1
- local-2        --executor local --workers 2
- ray-2          --executor ray, 2 tasks on a local Ray instance (ray.init(num_cpus=2)); its start-up
                 (and two warm-up tasks) is timed apart, not counted in images/s: a cluster is up before a run
- img2dataset-2  --engine img2dataset --workers 2 (multiprocessing distributor), from the venv
                 --i2d-venv (img2dataset 1.47 + mmcorpus; --install-img2dataset creates it); skipped
                 when that venv does not exist
The corpus and the server are scripts/bench_fetch.py's (synthetic web-like JPEGs plus 404/410/truncated/HTML
rows, nginx when installed); each run's status parquets are checked against the corpus's truth.
Images/s = images stored / seconds of the fetch call (in the process that ran it).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "scripts"))
sys.path.insert(0, str(REPO))

import bench_fetch  # noqa: E402  (the corpus, the server, img2dataset's venv: shared, not copied)

RUN = """
import json, sys, time
from pathlib import Path
args = json.loads(sys.argv[1])
from mmcorpus.fetch.urllist.plan import UrlListOptions
from mmcorpus.fetch.urllist.executors import run_url_list
from mmcorpus.registry import Spec
spec = Spec(name="bench", kind="dataset", source=Path("bench"), format_columns=("caption", "url"))
options = UrlListOptions(workers=args["workers"], threads=args["threads"], host_connections=args["threads"],
                         resize=args["resize"], shard_size=args["shard_size"], shard=(0, 1), progress=False,
                         mirror_hosts=frozenset({"127.0.0.1"}), timeout=30.0)
startup = 0.0
if args["executor"] == "ray":
    import ray
    started = time.monotonic()
    ray.init(num_cpus=args["tasks"], include_dashboard=False, log_to_driver=False, logging_level="ERROR")
    warm = ray.remote(lambda: __import__("mmcorpus.fetch.urllist.native"))  # workers up, as on a running cluster
    ray.get([warm.remote() for _ in range(args["tasks"])])
    startup = time.monotonic() - started
started = time.monotonic()
summary = run_url_list(spec, "train", args["tsv"], args["root"], options, executor=args["executor"],
                       engine=args["engine"], tasks=args["tasks"])
seconds = time.monotonic() - started
print(json.dumps({"seconds": seconds, "startup": startup, "ok": summary.ok, "failed": summary.failed}))
"""

MODES = {  # name -> (label, python, executor, engine, workers, tasks)
    "local-1": ("--executor local --workers 1", "main", "local", "native", 1, None),
    "local-2": ("--executor local --workers 2", "main", "local", "native", 2, None),
    "ray-2": ("--executor ray, 2 tasks", "main", "ray", "native", 1, 2),
    "img2dataset-2": ("--engine img2dataset --workers 2", "i2d", "local", "img2dataset", 2, None),
}


def run_mode(server, python: str, tsv: Path, root: Path, executor: str, engine: str, workers: int,
             tasks: int | None, threads: int, resize: int | None, shard_size: int) -> dict:
    shutil.rmtree(root, ignore_errors=True)
    args = dict(tsv=str(tsv), root=str(root), executor=executor, engine=engine, workers=workers, tasks=tasks,
                threads=threads, resize=resize, shard_size=shard_size)
    env = {**os.environ, "NO_ALBUMENTATIONS_UPDATE": "1"}
    done, wall, cpu = bench_fetch.timed(server, [python, "-c", RUN, json.dumps(args)], cwd=REPO, env=env)
    result = json.loads(done.stdout.strip().splitlines()[-1])
    result.update(wall=wall, cpu_seconds=cpu, images_per_s=round(result["ok"] / result["seconds"], 1))
    return result


def install_i2d_venv(venv: Path) -> None:
    """bench_fetch's img2dataset venv, plus mmcorpus itself (the engine runs inside that venv)."""
    bench_fetch.install_img2dataset(venv)
    subprocess.run([str(venv / "bin" / "pip"), "install", "-q", "-e", str(REPO)], check=True)


def has_engine(venv: Path) -> bool:
    python = venv / "bin" / "python"
    return python.exists() and subprocess.run(
        [str(python), "-c", "import img2dataset, mmcorpus.fetch.urllist.executors"], capture_output=True,
        env={**os.environ, "NO_ALBUMENTATIONS_UPDATE": "1"}).returncode == 0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n", type=int, default=4000)
    parser.add_argument("--threads", type=int, default=32, help="per process / task")
    parser.add_argument("--shard-size", type=int, default=500)
    parser.add_argument("--resize", default="none", help="none (original bytes) or SIZE")
    parser.add_argument("--nginx-workers", type=int, default=1)
    parser.add_argument("--work", type=Path, default=Path("/tmp/mmcorpus-bench-scale"))
    parser.add_argument("--out", type=Path, default=Path("/dev/shm/mmcorpus-bench-scale") if Path("/dev/shm").is_dir()
                        else None, help="where the runs write (default: tmpfs, so that the disk is not measured)")
    parser.add_argument("--i2d-venv", type=Path, default=REPO / ".venv-img2dataset",
                        help="img2dataset 1.47 + mmcorpus (scripts/ci/test_img2dataset.sh makes this one)")
    parser.add_argument("--install-img2dataset", action="store_true")
    parser.add_argument("--modes", default=",".join(MODES), help="comma-separated subset of: " + ", ".join(MODES))
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    resize = None if args.resize == "none" else int(args.resize)
    args.work.mkdir(parents=True, exist_ok=True)
    out = args.out or args.work
    out.mkdir(parents=True, exist_ok=True)
    if args.install_img2dataset:
        install_i2d_venv(args.i2d_venv)
    pythons = {"main": sys.executable, "i2d": str(args.i2d_venv / "bin" / "python") if has_engine(args.i2d_venv) else None}
    if pythons["i2d"] is None:
        print(f"no img2dataset venv with mmcorpus at {args.i2d_venv} (--install-img2dataset): engine skipped",
              file=sys.stderr)

    manifest = bench_fetch.build_corpus(args.work, args.n)
    server = bench_fetch.Server(args.work, Path(manifest["www"]), manifest, args.nginx_workers)
    results: dict = {"n": args.n, "threads": args.threads, "resize": args.resize, "cpus": os.cpu_count(),
                     "server": server.kind, "mean_jpeg_bytes": round(manifest["mean_bytes"]),
                     "load_before": " ".join(Path("/proc/loadavg").read_text().split()[:3]), "modes": {}}
    try:
        tsv, _ = bench_fetch.write_lists(args.work, manifest, server.url)
        for path in (Path(manifest["www"]) / "img").iterdir():  # warm the page cache: the same start for all
            path.read_bytes()
        for name in args.modes.split(","):
            label, python, executor, engine, workers, tasks = MODES[name]
            if pythons[python] is None:
                continue
            root = out / "root"
            entry = run_mode(server, pythons[python], tsv, root, executor, engine, workers, tasks, args.threads,
                             resize, args.shard_size)
            entry["mismatches"] = bench_fetch.check_classification(root, manifest)
            results["modes"][label] = entry
            print(f"{label}: {entry['images_per_s']} images/s", file=sys.stderr, flush=True)
    finally:
        server.stop()
        shutil.rmtree(out / "root", ignore_errors=True)
    report(results)
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))


def report(results: dict) -> None:
    print(f"N={results['n']}  threads={results['threads']}  resize={results['resize']}  cpus={results['cpus']}  "
          f"server={results['server']}  mean JPEG {results['mean_jpeg_bytes'] / 1000:.0f} KB")
    print(f"load average before the run: {results['load_before']}")
    print(f"| {'mode':<34} | {'images/s':>8} | {'fetch s':>7} | {'start-up s':>10} | {'ok':>5} | classification |")
    print(f"|{'-' * 36}|{'-' * 9}:|{'-' * 8}:|{'-' * 11}:|{'-' * 6}:|{'-' * 16}|")
    for name, entry in results["modes"].items():
        wrong = entry["mismatches"]
        verdict = "all as expected" if not wrong else f"{len(wrong)} differ, e.g. {wrong[0]}"
        print(f"| {name:<34} | {entry['images_per_s']:>8} | {entry['seconds']:>7.1f} | {entry['startup']:>10.1f} | "
              f"{entry['ok']:>5} | {verdict} |")


if __name__ == "__main__":
    main()
