"""One form for everything a fetch was asked (`FetchOptions`), checked in one place (`check`).

The command line fills one FetchOptions; the mechanisms get their own settings derived from it, never copied
field by field: `file_options()` for single-file downloads (mmcorpus.fetch.files.DownloadOptions: retries,
timeouts, --mirror) and `url_list_options()` for the URL-list engines (mmcorpus.fetch.urllist.plan.UrlListOptions,
which derives the per-URL FetchPolicy in turn). An option the chosen engine cannot honour is refused here, with
one line, before anything is downloaded, instead of being silently ignored.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field, replace
from pathlib import Path

from mmcorpus.core.imaging import CHECKS, MIN_RESIZE
from mmcorpus.core.progress import is_quiet
from mmcorpus.errors import UsageError
from mmcorpus.fetch.files import DownloadOptions
from mmcorpus.fetch.urllist.executors import check_available
from mmcorpus.fetch.urllist.plan import UrlListOptions, shard_from_env
from mmcorpus.fetch.urls import UrlRewriter

# What the img2dataset engine cannot do as asked: (field, the value that is fine, why). It decodes every image
# with OpenCV itself, so how our kept bytes are checked is not its choice to make.
NOT_WITH_IMG2DATASET = (
    ("image_check", None, "--image-check is a native-engine option: img2dataset decodes every image with OpenCV "
                          "(drop --image-check, or use --engine native)"),
)


@dataclass
class FetchOptions:
    """`mmcorpus fetch`'s options. None means "the engine's default" (UrlListOptions' field defaults)."""

    root: Path
    rewrite: UrlRewriter = field(default_factory=UrlRewriter)  # --mirror FROM=TO rules (and HF_ENDPOINT)
    # files
    no_images: bool = False
    all_files: bool = False  # also the optional files (metadata, components, labels)
    dry_run: bool = False
    delete_archives: bool = False
    manual_source: Path | None = None
    wait_for_lock: bool = False
    # images of URL-list datasets
    workers: int | None = None
    threads: int | None = None
    limit: int | None = None
    resize: int | None = None
    image_check: str | None = None  # decode | structure (mmcorpus.core.imaging.CHECKS)
    timeout: float | None = None
    retry_failed: bool = False
    shard: tuple[int, int] | None = None  # this machine's slice I/N (also of a collection's archives)
    allow_private_hosts: bool = False
    respect_opt_out: bool = True
    engine: str = "native"  # native | img2dataset
    executor: str = "local"  # local | ray (| pyspark with the img2dataset engine): mmcorpus.fetch.urllist.executors
    ray_address: str | None = None
    tasks: int | None = None  # Ray tasks; None: the cluster's CPUs
    # transport of single files; tests shorten its backoff. --mirror is applied from `rewrite`.
    download: DownloadOptions = field(default_factory=DownloadOptions)

    def check(self) -> None:
        """Every rule of a fetch's options (UsageError, exit 2), before any download. The URL-list engine's rules
        are UrlListOptions.check's, so a value is judged the same whether it came from here or from a library call."""
        if self.image_check is not None and self.image_check not in CHECKS:
            raise UsageError(f"--image-check expects one of {', '.join(CHECKS)}, got {self.image_check!r}")
        if self.tasks is not None and self.tasks < 1:
            raise UsageError(f"--tasks must be at least 1, got {self.tasks}")
        if self.limit is not None and self.limit < 1:
            raise UsageError(f"--limit must be at least 1, got {self.limit}")
        self.url_list_options().check()
        if self.engine == "img2dataset":
            for name, fine, why in NOT_WITH_IMG2DATASET:
                if getattr(self, name) != fine:
                    raise UsageError(why)
        check_available(self.executor, self.engine)  # exit 2 when Ray / img2dataset is missing

    def file_options(self) -> DownloadOptions:
        """--timeout also sets the single-file throughput window (DownloadOptions.for_timeout)."""
        download = self.download if self.timeout is None else self.download.for_timeout(self.timeout)
        return replace(download, rewrite=self.rewrite)

    def url_list_options(self, total_hint: int | None = None) -> UrlListOptions:
        """The URL-list engine's settings: ours where given, its defaults elsewhere. The --mirror targets are
        what may reach private addresses without --allow-private-hosts: their origin, under their path only."""
        given = dict(workers=self.workers, threads=self.threads, limit=self.limit, image_check=self.image_check,
                     timeout=self.timeout, shard=self.shard)
        return UrlListOptions(
            **{name: value for name, value in given.items() if value is not None},
            resize=self.resize, retry_failed=self.retry_failed, allow_private_hosts=self.allow_private_hosts,
            respect_opt_out=self.respect_opt_out, rewrite=self.rewrite,
            mirror_hosts=frozenset(self.rewrite.mirror_targets()), progress=not is_quiet(), total_hint=total_hint,
        )


# ------------------------------------------------------------------------------------------ from the argv


def shard_from_text(text: str | None) -> tuple[int, int] | None:
    """`I/N` (0-based I), or from a Slurm job array (SLURM_ARRAY_TASK_ID - SLURM_ARRAY_TASK_MIN of
    SLURM_ARRAY_TASK_COUNT) when not given; None outside an array."""
    if text is None:
        if "SLURM_ARRAY_TASK_ID" not in os.environ or "SLURM_ARRAY_TASK_COUNT" not in os.environ:
            return None
        try:
            index, count = shard_from_env()
        except ValueError:
            raise UsageError("SLURM_ARRAY_TASK_ID/SLURM_ARRAY_TASK_COUNT are not numbers") from None
        text = f"{index}/{count}"
    index, sep, total = text.partition("/")
    if not (sep and index.isdigit() and total.isdigit() and 0 <= int(index) < int(total)):
        raise UsageError(f"--shard expects I/N with 0 <= I < N, got {text!r}")
    return int(index), int(total)


def resize_from_text(text: str | None) -> int | None:
    """`SIZE` or `none`; whether SIZE is acceptable is UrlListOptions.check's rule."""
    if text is None or text.lower() == "none":
        return None
    if not text.isdigit():
        raise UsageError(f"--resize expects a size in pixels (>= {MIN_RESIZE}) or 'none', got {text!r}")
    return int(text)
