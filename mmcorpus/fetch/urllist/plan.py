"""The URL-list plan both engines share: options, the run summary, the cut into shard jobs, and the rules of
what an earlier run already did (a finished shard's marker, an earlier status row worth keeping).

The native engine (mmcorpus.fetch.urllist.native) and the img2dataset engine (mmcorpus.fetch.urllist.img2dataset)
both plan with `shard_jobs` and `shard_already_done`, keep rows with `keep_previous`, and write the same status
rows (`failed_row`) and done markers (`shard_stats`).
"""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable, Iterator

from mmcorpus import layout
from mmcorpus.core.imaging import CHECKS, DEFAULT_MAX_PIXELS, MIN_RESIZE
from mmcorpus.errors import UsageError
from mmcorpus.fetch.urllist.fetcher import FetchPolicy
from mmcorpus.fetch.urllist.reader import Malformed, Row, read_rows
from mmcorpus.fetch.urllist.shards import ShardPaths, key_for, read_marker
from mmcorpus.registry import Spec
from mmcorpus.schema import is_transient

MALFORMED_LINES_KEPT = 20  # line numbers reported per reason; the counts are always complete


# ----------------------------------------------------------------------------------------------- options


def shard_from_env(environ: dict | None = None) -> tuple[int, int]:
    """(I, N) from a Slurm job array, else (0, 1). Arrays may start at any index (--array=1-8)."""
    env = os.environ if environ is None else environ
    if "SLURM_ARRAY_TASK_ID" in env and "SLURM_ARRAY_TASK_COUNT" in env:
        index = int(env["SLURM_ARRAY_TASK_ID"]) - int(env.get("SLURM_ARRAY_TASK_MIN", 0))
        return index, int(env["SLURM_ARRAY_TASK_COUNT"])
    return 0, 1


@dataclass(frozen=True)
class UrlListOptions:
    workers: int = field(default_factory=lambda: os.cpu_count() or 1)  # processes; 1 = run in this process
    threads: int = 64  # per process
    host_connections: int = 16  # concurrent requests to one host, per process
    timeout: float = 20.0  # total seconds per image, retries included
    max_bytes: int = 20 * 1024 * 1024
    max_pixels: int = DEFAULT_MAX_PIXELS
    resize: int | None = None  # shorter side -> SIZE, aspect kept, JPEG; None keeps the original bytes
    image_check: str = "decode"  # how kept original bytes are proven sound: mmcorpus.core.imaging.CHECKS
    shard_size: int = 10_000
    limit: int | None = None  # only rows with index < limit
    shard: tuple[int, int] | None = None  # (I, N); None: from SLURM_ARRAY_TASK_ID/COUNT, else (0, 1)
    retry_failed: bool = False
    retries: int = 2
    backoff: float = 0.5
    max_redirects: int = 10
    allow_private_hosts: bool = False
    rewrite: Callable[[str], str] | None = None  # picklable, e.g. mmcorpus.fetch.urls.UrlRewriter
    mirror_hosts: frozenset[str] = frozenset()  # hosts allowed although loopback/private (mirror targets)
    respect_opt_out: bool = True
    progress: bool = True
    total_hint: int | None = None  # rows expected (e.g. FileSpec.records), for the progress bar

    def fetch_policy(self) -> FetchPolicy:
        return FetchPolicy(
            timeout=self.timeout, max_bytes=self.max_bytes, max_redirects=self.max_redirects,
            retries=self.retries, backoff=self.backoff, respect_opt_out=self.respect_opt_out,
            host_connections=self.host_connections, allowed_hosts=frozenset(self.mirror_hosts),
            allow_private_hosts=self.allow_private_hosts,
        )

    def policy(self) -> dict:
        """What decided `blocked_url` and `opted_out` rows, recorded in each done marker: when it loosens,
        those rows are fetched again (DESIGN.md 6.1)."""
        return {"allow_private_hosts": self.allow_private_hosts, "mirror_hosts": sorted(self.mirror_hosts),
                "respect_opt_out": self.respect_opt_out}

    def check(self) -> None:
        for name, value in (("--workers", self.workers), ("--threads", self.threads),
                            ("the per-host connection cap", self.host_connections), ("the shard size", self.shard_size),
                            ("the byte cap", self.max_bytes)):
            if value < 1:
                raise UsageError(f"{name} must be at least 1, got {value}")
        if not self.timeout > 0:
            raise UsageError(f"--timeout must be a positive number of seconds, got {self.timeout}")
        if self.resize is not None and self.resize < MIN_RESIZE:
            raise UsageError(f"--resize expects a size in pixels (>= {MIN_RESIZE}) or 'none', got {self.resize}")
        if self.image_check not in CHECKS:
            raise UsageError(f"--image-check must be one of {', '.join(CHECKS)}, got {self.image_check!r}")
        index, count = self.shard or (0, 1)
        if not (count >= 1 and 0 <= index < count):
            raise UsageError(f"--shard {index}/{count}: need 0 <= I < N")


# ----------------------------------------------------------------------------------------------- summary


@dataclass
class UrlListSummary:
    """What a run did. Counts cover every row of the selected shards, including those finished before."""

    dataset: str
    subset: str
    rows: int = 0
    ok: int = 0
    failed: dict[str, int] = field(default_factory=dict)  # error word -> rows
    bytes: int = 0  # stored bytes of the ok rows
    fetched: int = 0  # rows fetched in this run (not kept from an earlier run)
    fetched_ok: int = 0
    seconds: float = 0.0
    malformed: dict[str, int] = field(default_factory=dict)  # reason -> lines
    malformed_lines: dict[str, list[int]] = field(default_factory=dict)  # reason -> first line numbers (1-based)
    shards_done: list[int] = field(default_factory=list)  # finished by this run
    shards_skipped: list[int] = field(default_factory=list)  # already finished, left alone

    @property
    def images_per_s(self) -> float:
        """Images stored per second in this run."""
        return self.fetched_ok / self.seconds if self.seconds > 0 else 0.0

    @property
    def success_rate(self) -> float:
        return self.ok / self.rows if self.rows else 0.0

    def add_shard(self, stats: dict) -> None:
        self.rows += stats["rows"]
        self.ok += stats["ok"]
        self.bytes += stats["bytes"]
        for error, count in stats["failed"].items():
            self.failed[error] = self.failed.get(error, 0) + count
        self.fetched += stats.get("fetched", 0)
        self.fetched_ok += stats.get("fetched_ok", 0)

    def add_malformed(self, item: Malformed) -> None:
        self.malformed[item.reason] = self.malformed.get(item.reason, 0) + 1
        lines = self.malformed_lines.setdefault(item.reason, [])
        if len(lines) < MALFORMED_LINES_KEPT:
            lines.append(item.line)

    def to_dict(self) -> dict:
        out = asdict(self)
        out["images_per_s"] = round(self.images_per_s, 2)
        out["success_rate"] = round(self.success_rate, 4)
        out["seconds"] = round(self.seconds, 3)
        return out


# ------------------------------------------------------------------------------------------------- jobs


@dataclass
class ShardJob:
    paths: ShardPaths
    end: int = 0  # one past the highest row index of the shard seen in the input (valid or malformed)
    rows: list[Row] = field(default_factory=list)
    malformed: list[Malformed] = field(default_factory=list)

    def add(self, item: Row | Malformed) -> None:
        (self.rows if isinstance(item, Row) else self.malformed).append(item)
        self.end = max(self.end, item.index + 1)


def shard_jobs(spec: Spec, subset: str, tsv_path: Path, root: Path, options: UrlListOptions,
               summary: UrlListSummary) -> Iterator[ShardJob]:
    """Cut the URL list into this task's shards (`--shard I/N`), in order, one at a time (bounded memory).
    Malformed lines are counted into `summary` and kept with their shard. Both engines plan with this.

    The column order is the file's `columns`, else the spec's `format.columns` (CC3M caption,url; CC12M
    url,caption)."""
    file_spec = spec.files.get(subset)
    columns = tuple((file_spec.columns if file_spec is not None else ()) or spec.format_columns)
    index, count = options.shard or shard_from_env()
    size = options.shard_size
    images_root = layout.images_root(root)
    reported: list[Malformed] = []  # malformed lines the reader reported since the last row it yielded

    def on_malformed(item: Malformed) -> None:
        summary.add_malformed(item)
        reported.append(item)

    def wanted(row_index: int) -> bool:
        return (row_index // size) % count == index

    current: ShardJob | None = None
    for row in _with_sentinel(read_rows(tsv_path, columns, on_malformed, stop=options.limit, wanted=wanted)):
        items: list[Row | Malformed] = reported + ([row] if row is not None else [])  # in line order
        reported.clear()
        for item in items:
            shard_index = item.index // size
            if current is not None and current.paths.shard != shard_index:
                yield current
                current = None
            if current is None:
                current = ShardJob(ShardPaths(images_root, spec.name, subset, shard_index))
            current.add(item)
    if current is not None:
        yield current


def _with_sentinel(items: Iterator[Row]) -> Iterator[Row | None]:
    """The rows, then None: malformed lines after the last row still reach their shard."""
    yield from items
    yield None


def shard_already_done(job, options: UrlListOptions) -> dict | None:
    """The shard's marker stats when nothing in it needs doing, else None (`job`: anything with `paths` and
    `end`; the img2dataset engine asks too)."""
    marker = read_marker(job.paths)
    if marker is None or marker.get("end", 0) < job.end:
        return None  # never finished, or finished for a shorter --limit
    if options.retry_failed and marker.get("transient", 0):
        return None
    if marker.get("resize") != options.resize:
        return None  # stored with another --resize: the images must be fetched again in the asked form
    if any(policy_refusal_lifted(error, marker_policy(marker), options) for error in marker.get("failed", {})):
        return None  # rows a stricter policy refused are now allowed
    return marker


DEFAULT_POLICY = {"allow_private_hosts": False, "mirror_hosts": [], "respect_opt_out": True}


def marker_policy(marker: dict | None) -> dict:
    """The policy a shard was fetched under (markers written before it was recorded: the defaults)."""
    return {**DEFAULT_POLICY, **((marker or {}).get("policy") or {})}


def recorded_policy(paths: ShardPaths) -> dict:
    return marker_policy(read_marker(paths))


def policy_refusal_lifted(error: str | None, recorded: dict, options: UrlListOptions) -> bool:
    """Whether a row that failed with `error` under the `recorded` policy may succeed under this run's:
    `blocked_url` after --allow-private-hosts or a new --mirror host, `opted_out` after --ignore-opt-out."""
    if error == "blocked_url":
        return (options.allow_private_hosts and not recorded["allow_private_hosts"]) or bool(
            set(options.mirror_hosts) - set(recorded["mirror_hosts"]))
    if error == "opted_out":
        return recorded["respect_opt_out"] and not options.respect_opt_out
    return False


def stored_with_same_resize(paths: ShardPaths, options: UrlListOptions) -> bool:
    """Whether the shard's earlier images were stored with this run's --resize (from its done marker).

    When not, the marker is removed at once, before keep_previous deletes any image: a run interrupted in
    the middle of the switch must not leave a marker that a run with the old --resize would trust while its
    images are gone or already replaced (keep_previous then finds out image by image)."""
    if (read_marker(paths) or {}).get("resize", options.resize) == options.resize:
        return True
    paths.marker.unlink(missing_ok=True)
    return False


def keep_previous(old: dict, images_root: Path, options: UrlListOptions, same_form: bool,
                  recorded: dict | None = None) -> bool:
    """An earlier status row that needs no new fetch (both engines' rule). `recorded`: the policy the row was
    fetched under (recorded_policy), so that a refusal the policy no longer makes is fetched again."""
    if old["status"] == "ok":
        stored = images_root / old["image_path"] if old["image_path"] else None
        if stored is not None and not same_form:  # another --resize: replace it (the extension may change)
            stored.unlink(missing_ok=True)
            return False
        # The file must still be the one the row describes: deleted by the user, or replaced by an
        # interrupted run with another --resize (same name, other bytes), it is fetched again.
        return stored is not None and _size(stored) == old["bytes"]
    if policy_refusal_lifted(old["error"], recorded or DEFAULT_POLICY, options):
        return False
    return not (options.retry_failed and is_transient(old["error"], old["http_status"]))


def _size(path: Path) -> int | None:
    try:
        return path.stat().st_size
    except OSError:
        return None



# ------------------------------------------------------------------------------------------ status rows


def failed_row(row: Row, error: str, http_status: int | None) -> dict:
    """The status row of a row that failed with `error` (a word of schema.ERRORS); both engines write these."""
    return dict(key=key_for(row.index), url=row.url, caption=row.caption, status="failed", error=error,
                http_status=http_status, bytes=None, width=None, height=None, image_path=None, sha256=None)


def shard_stats(shard: int, end: int, rows: list[dict], fetched: int, fetched_ok: int, malformed,
                resize: int | None, policy: dict | None = None) -> dict:
    """The done marker's content: counts by outcome of a shard's status rows (every engine writes this)."""
    failed: dict[str, int] = {}
    transient = 0
    for row in rows:
        if row["status"] != "ok":
            failed[row["error"]] = failed.get(row["error"], 0) + 1
            transient += is_transient(row["error"], row["http_status"])
    ok = len(rows) - sum(failed.values())
    return dict(
        shard=shard, end=end, rows=len(rows), ok=ok, failed=failed, transient=transient,
        bytes=sum(r["bytes"] or 0 for r in rows if r["status"] == "ok"), fetched=fetched, fetched_ok=fetched_ok,
        malformed=[[m.line, m.reason] for m in malformed], resize=resize, policy=policy or DEFAULT_POLICY,
    )
