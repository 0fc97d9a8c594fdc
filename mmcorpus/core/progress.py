"""Progress for people and for cron: a tqdm bar when stderr is a terminal, periodic log lines otherwise."""

from __future__ import annotations

import logging
import sys
import time

from mmcorpus.core.redact import safe_text

log = logging.getLogger("mmcorpus")

# Set by the CLI from --quiet; None means "bars when stderr is a TTY".
_bars_enabled: bool | None = None
_quiet = False
LOG_EVERY_S = 10.0


def set_bars(enabled: bool | None) -> None:
    global _bars_enabled
    _bars_enabled = enabled


def set_quiet(quiet: bool) -> None:
    """--quiet: no bars and no periodic progress lines, only errors and the final summary."""
    global _quiet
    _quiet = quiet
    set_bars(False if quiet else None)


def is_quiet() -> bool:
    return _quiet


def bars_enabled() -> bool:
    if _bars_enabled is not None:
        return _bars_enabled
    return sys.stderr.isatty()


def human_bytes(n: float | None) -> str:
    if n is None:
        return "?"
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if abs(n) < 1000 or unit == "TB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    return f"{n:.1f} TB"


class _Progress:
    """What both progress kinds share: a tqdm bar when bars are on, else a log line at most every LOG_EVERY_S."""

    def __init__(self, label: str, bar_options: dict | None):
        self.label = safe_text(label)  # a tqdm bar writes to the terminal without the log handlers' filter
        self.started = self.last_log = time.monotonic()
        self.bar = None
        if bar_options is not None and bars_enabled():
            from tqdm import tqdm

            self.bar = tqdm(desc=label, file=sys.stderr, dynamic_ncols=True, **bar_options)

    def describe(self) -> str:
        raise NotImplementedError

    def _log_now_and_then(self) -> None:
        now = time.monotonic()
        if now - self.last_log >= LOG_EVERY_S:
            self.last_log = now
            log.info("%s: %s", self.label, self.describe())

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


class ByteProgress(_Progress):
    """Bytes of one download: `update(n)` as chunks arrive, `close()` at the end."""

    def __init__(self, label: str, total: int | None, initial: int = 0):
        self.total, self.done, self.start_bytes = total, initial, initial
        super().__init__(label, dict(total=total, initial=initial, unit="B", unit_scale=True, unit_divisor=1000,
                                     leave=False))

    def update(self, n: int) -> None:
        self.done += n
        if self.bar is not None:
            self.bar.update(n)
        else:
            self._log_now_and_then()

    def rate(self) -> float:
        elapsed = max(time.monotonic() - self.started, 1e-6)
        return (self.done - self.start_bytes) / elapsed

    def describe(self) -> str:
        pct = f" ({100 * self.done / self.total:.0f}%)" if self.total else ""
        return f"{human_bytes(self.done)} / {human_bytes(self.total)}{pct} at {human_bytes(self.rate())}/s"


class CountProgress(_Progress):
    """Rows of a URL list: `update(ok, failed, bytes)` as they finish, `close()` at the end. A tqdm bar with
    images/s and the success rate on a terminal; otherwise a log line every LOG_EVERY_S (cron and Slurm logs,
    and --log-file, get lines, not carriage-return redraws). `enabled` False: counts only."""

    def __init__(self, label: str, total: int | None = None, enabled: bool = True):
        self.enabled = enabled
        self.ok = self.failed = self.bytes = 0
        super().__init__(label, dict(total=total, unit="img", smoothing=0.1) if enabled else None)

    @property
    def done(self) -> int:
        return self.ok + self.failed

    def update(self, ok: int, failed: int, nbytes: int) -> None:
        self.ok, self.failed, self.bytes = self.ok + ok, self.failed + failed, self.bytes + nbytes
        if self.bar is not None:
            self.bar.update(ok + failed)
            self.bar.set_postfix_str(f"ok {self.success_rate():.1%}, {human_bytes(self.bytes)}", refresh=False)
        elif self.enabled:
            self._log_now_and_then()

    def success_rate(self) -> float:
        return self.ok / self.done if self.done else 0.0

    def describe(self) -> str:
        speed = self.ok / max(time.monotonic() - self.started, 1e-9)
        return (f"{self.done:,} rows, {self.ok:,} ok ({self.success_rate():.1%}), {speed:,.1f} images/s, "
                f"{human_bytes(self.bytes)}")

    def close(self) -> None:
        if self.bar is None and self.enabled and self.done:
            log.info("%s: %s", self.label, self.describe())
        super().close()
