"""The command line as users run it: a real process, its exit code and its one-line error."""

from __future__ import annotations

import os
import subprocess
import sys

ENV = {**os.environ, "NO_PROXY": "127.0.0.1,localhost"}
ENV.pop("MMCORPUS_CONFIG_DIR", None)


def mmcorpus(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "mmcorpus", *args], capture_output=True, text=True,
                          env={**ENV, **(env or {})}, timeout=120)


def one_line_error(result: subprocess.CompletedProcess) -> str:
    lines = [line for line in result.stderr.splitlines() if "error" in line.lower()]
    assert "Traceback" not in result.stderr, result.stderr
    assert len(lines) == 1, result.stderr
    return lines[0]
