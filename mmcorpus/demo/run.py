"""`mmcorpus demo`: build the sample mirror, serve it on 127.0.0.1, run the real commands against it.

Each step is the real CLI in a subprocess (`python -m mmcorpus ...`) with `--mirror` rules and the demo
specs (`--config-dir`): nothing in the downloaders or normalizers knows it is a demo.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

from mmcorpus import layout
from mmcorpus.demo.localmirror import LocalMirror
from mmcorpus.demo.mirror import build_mirror

URL_LIST = ["cc3m", "cc12m"]
JSON_DATASETS = ["llava_instruct", "llava_pretrain", "llava_cc3m_595k", "sharegpt4v"]
# OCR-VQA has no headless download; its community zip is an opt-in archive, named explicitly.
OPT_IN = ["ocr_vqa:ocr_vqa_images_llava_v15.zip"]


def demo_steps(mirror_args: list[str]) -> list[tuple[str, list[str]]]:
    """(title, mmcorpus arguments) of every step, in order."""
    return [
        ("Registry", ["list"]),
        ("URL-list datasets: TSV files, then their web images", ["fetch", *URL_LIST, *mirror_args]),
        ("JSON datasets: annotation files, then the image collections they need",
         ["fetch", *JSON_DATASETS, *OPT_IN, *mirror_args]),
        ("A second fetch does nothing but verify", ["fetch", *URL_LIST, *JSON_DATASETS, "--quiet", *mirror_args]),
        ("Pretrain stage: normalize, mix, deduplicate, export", ["prepare", "--stage", "pretrain", "--format", "llava",
                                                                  "--format", "webdataset"]),
        ("Finetune stage", ["prepare", "--stage", "finetune", "--format", "llava"]),
        ("What is on disk", ["status"]),
    ]


def run_demo(out: Path, serve: bool = False) -> int:
    started = time.monotonic()
    out.mkdir(parents=True, exist_ok=True)
    root, mirror_dir, specs_dir = out / "root", out / "mirror", out / "specs"
    shutil.rmtree(mirror_dir, ignore_errors=True)
    plan = build_mirror(mirror_dir, specs_dir)
    _say(f"mmcorpus demo: sample mirror of {sum(map(len, plan.files.values()))} files and "
         f"{plan.web_images} web images in {mirror_dir}")
    failures = []
    with LocalMirror(mirror_dir) as server:
        mirror_args = ["--mirror", f"http://={server.url}/http/", "--mirror", f"https://={server.url}/https/"]
        _say(f"serving it at {server.url}; every URL is rewritten there by two --mirror rules\n")
        for title, args in demo_steps(mirror_args):
            code = _run_step(title, args, root, specs_dir)
            if code != 0:
                failures.append((title, code))
        if serve:
            _say(f"\nmirror still serving at {server.url} (Ctrl-C to stop)")
            _wait_forever()
    _summary(root, out, plan, failures, time.monotonic() - started)
    return 1 if failures else 0


def _run_step(title: str, args: list[str], root: Path, specs_dir: Path) -> int:
    command = [sys.executable, "-m", "mmcorpus", "--root", str(root), "--config-dir", str(specs_dir), *args]
    shown = " ".join(a if not a.startswith("http") else "…" for a in ["mmcorpus", *args])
    _say(f"=== {title}\n$ {shown}")
    env = {**os.environ, "NO_PROXY": "127.0.0.1,localhost", "no_proxy": "127.0.0.1,localhost"}
    env.pop("MMCORPUS_CONFIG_DIR", None)
    result = subprocess.run(command, env=env)
    _say(f"(exit {result.returncode})\n")
    return result.returncode


def _summary(root: Path, out: Path, plan, failures: list, seconds: float) -> None:
    _say("=== Where everything is")
    for label, path in (("raw files", root / layout.DOWNLOADS), ("images", layout.images_root(root)),
                        ("normalized", root / layout.NORMALIZED), ("stages", layout.stages_root(root))):
        if path.exists():
            count = sum(1 for p in path.rglob("*") if p.is_file() and layout.BOOKKEEPING not in p.parts)
            _say(f"  {label:11} {path}  ({count} files)")
    _say(f"  {'demo specs':11} {out / 'specs'}")
    for stage in ("pretrain", "finetune"):
        report = layout.stage_report(layout.stage_dir(root, stage))
        if report.exists():
            _say(f"  {stage + ' report':11} {report}  (open it in a browser)")
    faults = ", ".join(sorted(set(plan.web_faults.values())))
    _say(f"\nPlanted web faults the URL engine had to classify: {faults}.")
    if failures:
        _say("Demo FAILED at: " + "; ".join(f"{t} (exit {c})" for t, c in failures))
    else:
        _say(f"Demo finished in {seconds:.1f} s. Run it again: everything is verified and skipped.")


def _say(text: str) -> None:
    print(text, flush=True)


def _wait_forever() -> None:
    try:
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        pass
