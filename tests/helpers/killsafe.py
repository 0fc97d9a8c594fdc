"""Kill -9 at random points, run again, and compare with a run that was never interrupted (issue 5).

Reusable for any step that writes a tree (download, extraction, fetch, prepare):

    results = check_kill_safe(
        lambda run_dir: [sys.executable, "-c", CODE, str(run_dir)],  # the command, per run folder
        setup=lambda run_dir: ...,                                    # inputs (copied archives, ...)
        workdir=tmp_path, seeds=(1, 2, 3),
        ready=lambda run_dir: (run_dir / "out").exists(),            # "the work has started"
    )
    assert any(r.interrupted for r in results)

Per seed, in a fresh folder: start the command, wait until `ready`, sleep a random part of the time the
uninterrupted run took, SIGKILL; repeat `kills` times; then run it to completion. The final tree must equal
the uninterrupted one: same file list, same bytes (sha256), parquet files compared by rows (in order, so
duplicates show), and no temporary file left anywhere. Bookkeeping files whose content legitimately differs
between a resumed and an uninterrupted run (counts of "already present", timestamps) are compared by
presence only (VOLATILE).
"""

from __future__ import annotations

import fnmatch
import hashlib
import json
import os
import random
import signal
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from helpers import REPO

# Temporary names of every writer in mmcorpus: http.py (.part, .part.json, .part.tmp), archives.py (.mmpart),
# atomicio.py (.mmpart: archives, URL-list shards, JSON records), stages (.tmp-<pid> folders), locks.py (renamed stale locks).
TEMPORARY = ("*.part", "*.part.json", "*.tmp", "*.mmpart", "*.tmp-*", "*.lock.stale.*")
# Same presence, content may differ: verification cache and extraction markers (counts, times), shard done
# markers (stats with timings), run records.
VOLATILE = ("*.mmcorpus/*", "*.done", "runs/*.json")

Command = Callable[[Path], list[str]]


@dataclass
class SeedResult:
    seed: int
    delays: list[float] = field(default_factory=list)
    interrupted: bool = False  # at least one kill hit the process while it was still working


def check_kill_safe(command: Command, *, workdir: Path, setup: Callable[[Path], None] = lambda d: None,
                    seeds=(1, 2, 3), kills: int = 2, ready: Callable[[Path], bool] | None = None,
                    volatile=VOLATILE, env: dict | None = None, timeout: float = 60.0) -> list[SeedResult]:
    """Compare, for each seed, killed-then-resumed runs with an uninterrupted one; raise AssertionError with
    the differences. Returns what happened per seed (the caller asserts that kills did land mid-work)."""
    baseline = workdir / "uninterrupted"
    baseline.mkdir(parents=True)
    setup(baseline)
    span = run_to_completion(command(baseline), ready=lambda: ready is None or ready(baseline), env=env,
                             timeout=timeout)
    expected = snapshot(baseline, volatile)
    results = []
    for seed in seeds:
        run_dir = workdir / f"seed{seed}"
        run_dir.mkdir(parents=True)
        setup(run_dir)
        result = SeedResult(seed)
        rng = random.Random(seed)
        for _ in range(kills):
            delay = rng.uniform(0.0, span)
            result.delays.append(delay)
            result.interrupted |= run_and_kill(command(run_dir), delay,
                                               ready=lambda: ready is None or ready(run_dir), env=env)
        run_to_completion(command(run_dir), env=env, timeout=timeout)
        assert_same_tree(expected, snapshot(run_dir, volatile), f"seed {seed} (kills after {result.delays})")
        assert_no_temporaries(run_dir)
        results.append(result)
    return results


# ------------------------------------------------------------------------------------------ processes


def _popen(cmd: list[str], env: dict | None, **kwargs) -> subprocess.Popen:
    full_env = {**os.environ, "PYTHONPATH": str(REPO), **(env or {})}
    return subprocess.Popen(cmd, cwd=REPO, env=full_env, **kwargs)


def _wait_ready(proc: subprocess.Popen, ready: Callable[[], bool]) -> None:
    while proc.poll() is None and not ready():
        time.sleep(0.002)


def run_to_completion(cmd: list[str], *, ready: Callable[[], bool] = lambda: True, env: dict | None = None,
                      timeout: float = 60.0) -> float:
    """Run to the end (exit 0 required); return the seconds from `ready` to exit (the span kills aim at)."""
    proc = _popen(cmd, env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    _wait_ready(proc, ready)
    started = time.monotonic()
    output, _ = proc.communicate(timeout=timeout)
    assert proc.returncode == 0, f"{cmd} exited {proc.returncode}:\n{output.decode(errors='replace')[-3000:]}"
    return time.monotonic() - started


def run_and_kill(cmd: list[str], delay: float, *, ready: Callable[[], bool] = lambda: True,
                 env: dict | None = None) -> bool:
    """Start, wait for `ready`, sleep `delay`, SIGKILL. True when the process was still running then."""
    proc = _popen(cmd, env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    _wait_ready(proc, ready)
    time.sleep(delay)
    alive = proc.poll() is None
    if alive:
        proc.send_signal(signal.SIGKILL)
    proc.wait()
    return alive and proc.returncode == -signal.SIGKILL


# ---------------------------------------------------------------------------------------------- trees


def snapshot(folder: Path, volatile=VOLATILE) -> dict[str, object]:
    """relative path -> sha256 of the bytes; parquet -> its rows; volatile -> "present"."""
    out = {}
    for path in sorted(p for p in folder.rglob("*") if p.is_file()):
        rel = path.relative_to(folder).as_posix()
        if any(fnmatch.fnmatch(rel, pattern) for pattern in volatile):
            out[rel] = "present"
        elif path.suffix == ".parquet":
            out[rel] = parquet_rows(path)
        else:
            out[rel] = hashlib.sha256(path.read_bytes()).hexdigest()
    return out


def parquet_rows(path: Path) -> list[str]:
    import pyarrow.parquet as pq

    return [json.dumps(row, sort_keys=True, default=str) for row in pq.read_table(path).to_pylist()]


def assert_same_tree(expected: dict, actual: dict, label: str) -> None:
    missing = sorted(set(expected) - set(actual))
    extra = sorted(set(actual) - set(expected))
    differ = sorted(k for k in set(expected) & set(actual) if expected[k] != actual[k])
    assert not (missing or extra or differ), (
        f"{label}: tree differs from the uninterrupted run: missing {missing[:10]}, extra {extra[:10]}, "
        f"different content {differ[:10]}")


def assert_no_temporaries(folder: Path) -> None:
    left = [p.relative_to(folder).as_posix() for p in folder.rglob("*")
            if any(fnmatch.fnmatch(p.name, pattern) for pattern in TEMPORARY)]
    assert not left, f"temporary files left in {folder}: {left[:10]}"
