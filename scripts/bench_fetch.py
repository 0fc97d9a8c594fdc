#!/usr/bin/env python3
"""Benchmark the URL-list engine against img2dataset 1.47 on the same machine, corpus and server.

    python scripts/bench_fetch.py [--n 10000] [--workers 2] [--install-img2dataset] [--modes resize,original,...]

What it does:
1. Generates (once, cached under --work) a synthetic corpus of web-typical JPEGs, 320x240 to 1600x1200,
   ~100 KB mean, plus a few % faulty URLs: 404s, 410s, truncated JPEGs (corrupt) and HTML pages (not_image).
2. Serves it on 127.0.0.1 with nginx when installed (`apt-get install -y nginx`), else with
   mmcorpus.demo.localmirror (much slower: the figures are then bounded by the server).
3. Times, in the same run, `img2dataset` (from its own venv, --i2d-venv; `--install-img2dataset` creates it
   with `pip install img2dataset==1.47`, never in this environment: it pins old packages) and mmcorpus,
   both with --workers processes, with resize 256 (shorter side, aspect kept: img2dataset's keep_ratio) and
   with the original bytes (mmcorpus once with its default decode check, once with `--image-check
   structure`; img2dataset decodes every image either way). Wall time of each whole command, process start
   included, and the CPU time it and the server used (user + system): on a shared machine the CPU figure is
   the steadier of the two. Rounds alternate which tool goes first.
4. Checks that mmcorpus classified every faulty URL as expected and every good one as ok.
Prints one table; `--json FILE` writes the figures.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import random
import resource
import shutil
import socket
import statistics
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

FAULTS = {  # share of the corpus -> the error mmcorpus must report
    "missing": ("not_found", 0.01),
    "gone": ("not_found", 0.005),  # nginx answers 410 under /gone/
    "truncated": ("corrupt", 0.01),
    "html": ("not_image", 0.01),
}
SIZES = [(320, 240), (480, 360), (640, 480), (800, 600), (1024, 768), (1280, 960), (1600, 1200), (600, 800), (768, 1024)]
SIZE_WEIGHTS = [8, 12, 20, 22, 16, 10, 6, 4, 2]
DISTINCT_IMAGES = 240  # generated pictures; each file is still unique (a JPEG comment carries its index)


# ------------------------------------------------------------------------------------------------- corpus


def _picture(rng: random.Random, width: int, height: int) -> bytes:
    """A photo-like JPEG: smooth colour fields, shapes and sensor-like noise (compresses like a photo)."""
    import numpy as np
    from PIL import Image, ImageDraw

    nrng = np.random.default_rng(rng.randrange(1 << 30))
    small = nrng.integers(0, 255, (max(2, height // 60), max(2, width // 60), 3), dtype=np.uint8)
    base = Image.fromarray(small).resize((width, height), Image.Resampling.BICUBIC)
    draw = ImageDraw.Draw(base)
    for _ in range(20):
        x, y, r = rng.randrange(width), rng.randrange(height), rng.randrange(5, max(6, width // 4))
        draw.ellipse([x - r, y - r, x + r, y + r], fill=tuple(rng.randrange(256) for _ in range(3)))
    noisy = np.asarray(base).astype(np.int16) + nrng.normal(0, 6, (height, width, 3)).astype(np.int16)
    out = io.BytesIO()
    Image.fromarray(noisy.clip(0, 255).astype(np.uint8)).save(out, "JPEG", quality=rng.choice([80, 85, 88, 90]))
    return out.getvalue()


def _with_comment(jpeg: bytes, text: str) -> bytes:
    payload = text.encode()
    return jpeg[:2] + b"\xff\xfe" + (len(payload) + 2).to_bytes(2, "big") + payload + jpeg[2:]


def build_corpus(work: Path, n: int, seed: int = 0) -> dict:
    """Files under work/www-N-SEED, the URL list (paths) and the expected outcome of each row (cached)."""
    www = work / f"www-{n}-{seed}"
    manifest_path = www / "manifest.json"
    if manifest_path.exists():
        return json.loads(manifest_path.read_text())
    rng = random.Random(seed)
    shutil.rmtree(www, ignore_errors=True)
    (www / "img").mkdir(parents=True)
    (www / "gone").mkdir()
    print(f"generating {DISTINCT_IMAGES} pictures for {n} files ...", file=sys.stderr, flush=True)
    pictures = [_picture(rng, *rng.choices(SIZES, SIZE_WEIGHTS)[0]) for _ in range(DISTINCT_IMAGES)]
    rows, expected, total = [], [], 0
    for i in range(n):
        kind = _kind(rng)
        name = f"{i:06d}.jpg"
        data = _with_comment(pictures[rng.randrange(len(pictures))], f"bench {i}")
        if kind == "missing":
            path = f"/img/missing-{name}"
        elif kind == "gone":
            path = f"/gone/{name}"
        else:
            path = f"/img/{name}"
            if kind == "truncated":
                data = data[: len(data) // 2]
            elif kind == "html":
                data = b"<!DOCTYPE html><html><body>This page has moved</body></html>\n"
            (www / "img" / name).write_bytes(data)
            total += len(data) if kind == "ok" else 0
        rows.append(path)
        expected.append(FAULTS[kind][0] if kind in FAULTS else "ok")
    mean = total / max(1, expected.count("ok"))
    manifest = {"paths": rows, "expected": expected, "mean_bytes": mean, "www": str(www)}
    manifest_path.write_text(json.dumps(manifest))
    return manifest


def _kind(rng: random.Random) -> str:
    draw, edge = rng.random(), 0.0
    for kind, (_, share) in FAULTS.items():
        edge += share
        if draw < edge:
            return kind
    return "ok"


def write_lists(work: Path, manifest: dict, base_url: str) -> tuple[Path, Path]:
    """CC3M-style list for mmcorpus (caption TAB url, no header); the same with a header for img2dataset."""
    ours, theirs = work / "list.tsv", work / "list_i2d.tsv"
    lines = [f"synthetic picture {i}\t{base_url}{path}" for i, path in enumerate(manifest["paths"])]
    ours.write_text("\n".join(lines) + "\n")
    theirs.write_text("caption\turl\n" + "\n".join(lines) + "\n")
    return ours, theirs


# ------------------------------------------------------------------------------------------------- server

NGINX_CONF = """
worker_processes {workers};
pid {work}/nginx.pid;
error_log {work}/nginx-error.log error;
events {{ worker_connections 4096; }}
http {{
    access_log off;
    sendfile on;
    tcp_nopush on;
    keepalive_requests 1000000;
    keepalive_timeout 60s;
    types {{ image/jpeg jpg; }}
    default_type application/octet-stream;
    client_body_temp_path {work}/tmp;
    proxy_temp_path {work}/tmp;
    fastcgi_temp_path {work}/tmp;
    uwsgi_temp_path {work}/tmp;
    scgi_temp_path {work}/tmp;
    server {{
        listen 127.0.0.1:{port} backlog=4096;
        root {www};
        location /gone/ {{ return 410; }}
    }}
}}
"""


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class Server:
    """nginx on a free port when installed, else mmcorpus.demo.localmirror (with a warning)."""

    def __init__(self, work: Path, www: Path, manifest: dict, nginx_workers: int):
        self.work, self.port, self.process, self.mirror = work, free_port(), None, None
        nginx = shutil.which("nginx") or ("/usr/sbin/nginx" if Path("/usr/sbin/nginx").exists() else None)
        if nginx:
            (work / "tmp").mkdir(exist_ok=True)
            conf = work / "nginx.conf"
            conf.write_text(NGINX_CONF.format(workers=nginx_workers, work=work, port=self.port, www=www))
            self.process = subprocess.Popen([nginx, "-c", str(conf), "-p", str(work), "-g", "daemon off;"])
            self.kind = f"nginx ({nginx_workers} worker processes)"
        else:
            from mmcorpus.demo.localmirror import LocalMirror, Route

            print("nginx not found (apt-get install -y nginx): using mmcorpus.demo.localmirror", file=sys.stderr)
            self.mirror = LocalMirror(www, port=self.port).start()
            self.kind = "mmcorpus.demo.localmirror (nginx not installed)"
            for path in manifest["paths"]:  # localmirror has no location rules: script the 410s one by one
                if path.startswith("/gone/"):
                    self.mirror.add(path, Route(status=410))
        self._wait_ready()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def _wait_ready(self) -> None:
        for _ in range(100):
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=0.2).close()
                return
            except OSError:
                time.sleep(0.05)
        raise SystemExit("the benchmark server did not start")

    def cpu_seconds(self) -> float:
        """CPU time used so far by the nginx processes (0 for the in-process mirror)."""
        if self.process is None:
            return 0.0
        pids = [self.process.pid] + [int(p) for p in subprocess.run(
            ["ps", "--ppid", str(self.process.pid), "-o", "pid="], capture_output=True, text=True).stdout.split()]
        ticks = 0
        for pid in pids:
            try:
                fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            ticks += int(fields[11]) + int(fields[12])  # utime + stime
        return ticks / os.sysconf("SC_CLK_TCK")

    def stop(self) -> None:
        if self.process is not None:
            self.process.terminate()
            self.process.wait(10)
        if self.mirror is not None:
            self.mirror.stop()


# --------------------------------------------------------------------------------------------------- runs

MMCORPUS_RUN = """
import json, sys
from pathlib import Path
from mmcorpus.registry import Spec
from mmcorpus.fetch.urllist.native import fetch_url_list
from mmcorpus.fetch.urllist.plan import UrlListOptions
args = json.loads(sys.argv[1])
spec = Spec(name="bench", kind="dataset", source=Path("bench"), format_columns=("caption", "url"))
options = UrlListOptions(workers=args["workers"], threads=args["threads"], resize=args["resize"],
                         image_check=args["image_check"],
                         shard_size=args["shard_size"], mirror_hosts=frozenset({"127.0.0.1"}), progress=False,
                         host_connections=args["threads"])
summary = fetch_url_list(spec, "train", args["tsv"], args["root"], options)
print(json.dumps(summary.to_dict()))
"""


def timed(server: Server, command: list[str], **kwargs) -> tuple[subprocess.CompletedProcess, float, float]:
    """Run a command; its wall seconds and the CPU seconds it and the server used (user + system)."""
    before, server_before = resource.getrusage(resource.RUSAGE_CHILDREN), server.cpu_seconds()
    started = time.monotonic()
    done = subprocess.run(command, check=True, capture_output=True, text=True, **kwargs)
    seconds = time.monotonic() - started
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return done, seconds, cpu + server.cpu_seconds() - server_before


def run_mmcorpus(server: Server, tsv: Path, root: Path, workers: int, threads: int, resize: int | None, shard_size: int,
                 image_check: str = "decode") -> dict:
    shutil.rmtree(root, ignore_errors=True)
    args = dict(tsv=str(tsv), root=str(root), workers=workers, threads=threads, resize=resize, shard_size=shard_size,
                image_check=image_check)
    out, seconds, cpu = timed(server, [sys.executable, "-c", MMCORPUS_RUN, json.dumps(args)], cwd=REPO)
    summary = json.loads(out.stdout.strip().splitlines()[-1])
    return {"seconds": seconds, "cpu_seconds": cpu, "ok": summary["ok"], "failed": summary["failed"]}


def run_img2dataset(server: Server, venv: Path, tsv: Path, out: Path, workers: int, threads: int, resize: int | None,
                    shard_size: int) -> dict:
    shutil.rmtree(out, ignore_errors=True)
    resize_args = (["--image_size", str(resize), "--resize_mode", "keep_ratio"] if resize
                   else ["--resize_mode", "no", "--skip_reencode", "True"])
    command = [str(venv / "bin" / "img2dataset"), "--url_list", str(tsv), "--input_format", "tsv",
               "--url_col", "url", "--caption_col", "caption", "--output_format", "files",
               "--output_folder", str(out), "--processes_count", str(workers), "--thread_count", str(threads),
               "--number_sample_per_shard", str(shard_size), "--timeout", "10", "--retries", "0",
               "--enable_wandb", "False", "--distributor", "multiprocessing", *resize_args]
    env = {**os.environ, "NO_ALBUMENTATIONS_UPDATE": "1"}
    _, seconds, cpu = timed(server, command, env=env)
    ok = sum(json.loads(p.read_text()).get("successes", 0) for p in out.glob("*_stats.json"))
    return {"seconds": seconds, "cpu_seconds": cpu, "ok": ok, "command": " ".join(command)}


def install_img2dataset(venv: Path) -> None:
    """img2dataset 1.47 in its own venv: it pins old packages that must not touch this environment."""
    if (venv / "bin" / "img2dataset").exists():
        return
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    subprocess.run([str(venv / "bin" / "pip"), "install", "-q", "img2dataset==1.47"], check=True)


def check_classification(root: Path, manifest: dict) -> list[str]:
    """Every row's outcome against the corpus's truth; returns the mismatches."""
    import pyarrow.parquet as pq

    got = {}
    for parquet in (root / "images" / "bench" / "train").glob("*.parquet"):
        for row in pq.read_table(parquet, columns=["key", "status", "error"]).to_pylist():
            got[int(row["key"])] = "ok" if row["status"] == "ok" else row["error"]
    return [f"row {i}: expected {want}, got {got.get(i)}"
            for i, want in enumerate(manifest["expected"]) if got.get(i) != want]


# ----------------------------------------------------------------------------------------------------- main


MODES = {  # mode -> (resize, mmcorpus --image-check); img2dataset runs the same command for both original modes
    "resize": (256, "decode"),
    "original": (None, "decode"),
    "original-structure": (None, "structure"),
}


def measure_round(args, server: Server, manifest: dict, ours_tsv: Path, their_tsv: Path, out: Path,
                  have_i2d: bool, number: int) -> dict:
    """Every mode once, both tools back to back; odd rounds start with mmcorpus, even ones with img2dataset, and
    each run starts with the other tool's output deleted (same free memory, no order advantage)."""
    round_ = {"load_before": " ".join(Path("/proc/loadavg").read_text().split()[:3]), "modes": {}}
    i2d_by_resize: dict = {}
    for mode in args.modes.split(","):
        resize, image_check = MODES[mode]
        entry = {}

        def theirs() -> None:
            if not have_i2d:
                return
            if resize not in i2d_by_resize:  # one img2dataset run serves both original modes of a round
                shutil.rmtree(out / "mm", ignore_errors=True)
                i2d_by_resize[resize] = run_img2dataset(server, args.i2d_venv, their_tsv, out / "i2d", args.workers,
                                                        args.threads, resize, args.shard_size)
            entry["img2dataset"] = dict(i2d_by_resize[resize])

        def ours() -> None:
            shutil.rmtree(out / "i2d", ignore_errors=True)
            entry["mmcorpus"] = run_mmcorpus(server, ours_tsv, out / "mm", args.workers, args.threads, resize,
                                             args.shard_size, image_check)
            entry["mmcorpus"]["mismatches"] = check_classification(out / "mm", manifest)

        for run in ((ours, theirs) if number % 2 else (theirs, ours)):
            run()
        for tool in entry.values():
            tool["images_per_s"] = round(tool["ok"] / tool["seconds"], 1)
            tool["cpu_ms_per_image"] = round(tool["cpu_seconds"] / tool["ok"] * 1000, 2)
        if have_i2d:
            ours_, theirs_ = entry["mmcorpus"], entry["img2dataset"]
            entry["ratio"] = round(ours_["images_per_s"] / theirs_["images_per_s"], 2)
            entry["cpu_ratio"] = round(theirs_["cpu_ms_per_image"] / ours_["cpu_ms_per_image"], 2)
        round_["modes"][mode] = entry
    return round_


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n", type=int, default=10_000)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--threads", type=int, default=64, help="per process, for both tools")
    parser.add_argument("--shard-size", type=int, default=1000, help="rows per shard, for both tools")
    parser.add_argument("--modes", default="resize,original,original-structure",
                        help=f"comma-separated, of: {', '.join(MODES)}")
    parser.add_argument("--repeat", type=int, default=1, help="measure every mode this many times (medians shown)")
    parser.add_argument("--nginx-workers", type=int, default=1)
    parser.add_argument("--work", type=Path, default=Path("/tmp/mmcorpus-bench"))
    parser.add_argument("--out", type=Path, default=Path("/dev/shm/mmcorpus-bench-out") if Path("/dev/shm").is_dir()
                        else None, help="where both tools write (default: tmpfs, so that the disk is not measured)")
    parser.add_argument("--i2d-venv", type=Path, default=Path("/tmp/i2d-venv"))
    parser.add_argument("--install-img2dataset", action="store_true")
    parser.add_argument("--skip-img2dataset", action="store_true")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    args.work.mkdir(parents=True, exist_ok=True)
    out = args.out or args.work
    out.mkdir(parents=True, exist_ok=True)

    manifest = build_corpus(args.work, args.n)
    have_i2d = False
    if not args.skip_img2dataset:
        if args.install_img2dataset:
            try:
                install_img2dataset(args.i2d_venv)
            except subprocess.CalledProcessError as exc:
                print(f"img2dataset could not be installed: {exc}", file=sys.stderr)
        have_i2d = (args.i2d_venv / "bin" / "img2dataset").exists()
        if not have_i2d:
            print("img2dataset not available (use --install-img2dataset): mmcorpus figures only", file=sys.stderr)

    server = Server(args.work, Path(manifest["www"]), manifest, args.nginx_workers)
    results: dict = {"n": args.n, "workers": args.workers, "threads": args.threads, "server": server.kind,
                     "cpus": os.cpu_count(), "mean_jpeg_bytes": round(manifest["mean_bytes"]),
                     "faulty": len(manifest["expected"]) - manifest["expected"].count("ok"), "runs": []}
    try:
        ours_tsv, their_tsv = write_lists(args.work, manifest, server.url)
        for path in (Path(manifest["www"]) / "img").iterdir():  # warm the page cache: same start for both tools
            path.read_bytes()
        for number in range(1, args.repeat + 1):
            results["runs"].append(measure_round(args, server, manifest, ours_tsv, their_tsv, out, have_i2d, number))
    finally:
        server.stop()
        for leftover in ("i2d", "mm"):
            shutil.rmtree(out / leftover, ignore_errors=True)
    report(results)
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))


def report(results: dict) -> None:
    print(f"N={results['n']}  workers={results['workers']}  threads={results['threads']}  cpus={results['cpus']}  "
          f"server={results['server']}  mean JPEG {results['mean_jpeg_bytes'] / 1000:.0f} KB  "
          f"faulty URLs {results['faulty']}")
    print(f"{'mode':<18} {'img2dataset':>23} {'mmcorpus':>23} {'ratio':>6} {'CPU ratio':>9}  classification")
    print(f"{'':<18} {'img/s  CPU ms/img':>23} {'img/s  CPU ms/img':>23}")
    for number, round_ in enumerate(results["runs"], 1):
        print(f"run {number}, load average before it: {round_['load_before']}")
        for mode, entry in round_["modes"].items():
            theirs, ours = entry.get("img2dataset"), entry["mmcorpus"]
            mismatches = ours["mismatches"]
            verdict = "all rows as expected" if not mismatches else f"{len(mismatches)} WRONG, e.g. {mismatches[:3]}"
            print(f"{mode:<18} {_cell(theirs):>23} {_cell(ours):>23} {entry.get('ratio', '-'):>6} "
                  f"{entry.get('cpu_ratio', '-'):>9}  {verdict}")
    if len(results["runs"]) > 1 and "ratio" in results["runs"][0]["modes"][next(iter(results["runs"][0]["modes"]))]:
        for mode in results["runs"][0]["modes"]:
            ratios = [r["modes"][mode]["ratio"] for r in results["runs"]]
            cpu = [r["modes"][mode]["cpu_ratio"] for r in results["runs"]]
            print(f"median {mode:<18} ratio {statistics.median(ratios):.2f}  CPU ratio {statistics.median(cpu):.2f}  "
                  f"(of {len(ratios)} runs)")
    print("targets: ratio >= 3 with resize 256, >= 5 with the original bytes (the issue's terms: mmcorpus' default "
          "check decodes like img2dataset; original-structure does not decode JPEGs)")


def _cell(tool: dict | None) -> str:
    return f"{tool['images_per_s']:>7} {tool['cpu_ms_per_image']:>9}" if tool else "-"


if __name__ == "__main__":
    main()
