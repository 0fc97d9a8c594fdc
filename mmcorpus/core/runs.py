"""Run records: `<root>/runs/<name>.json`, the summary of the last run of each name (what `status` shows and
what a cron wrapper reads to alert)."""

from __future__ import annotations

import os
import socket
import time
from pathlib import Path

from mmcorpus.core.atomicio import read_json, write_json_atomic
from mmcorpus.core.redact import redact_data
from mmcorpus.layout import run_record


def record_run(root: Path, name: str, summary: dict) -> Path:
    """Write `<root>/runs/<name>.json`: the summary of the run that just ended, plus when and where.

    `summary` is the run's report; `status` shows its `result` (a short word), else `ok` (bool) as ok/failed,
    else `exit_code`, and its `error` when the run failed.
    Written to a unique temporary name and renamed: a reader never sees half a record, and two runs
    finishing at once leave one whole record, not a mix. URLs in it are redacted (no password or token of
    a spec or mirror URL lands on disk, where cron wrappers and dashboards read it).
    """
    path = run_record(root, name)
    record = {**summary, "name": name, "finished_at": time.time(), "host": socket.gethostname(), "pid": os.getpid()}
    record = redact_data(record)
    write_json_atomic(path, record, indent=1, sort_keys=True)
    return path


def read_run(root: Path, name: str) -> dict | None:
    return read_json(run_record(root, name))
