"""Progress of a URL-list run: a tqdm bar when a person watches (stderr is a TTY), else one plain line every
`interval` seconds on stderr (cron and Slurm logs must not fill up with carriage-return bar redraws)."""

from __future__ import annotations

import sys
import time
from typing import TextIO


class Progress:
    def __init__(self, label: str, total: int | None = None, enabled: bool = True,
                 stream: TextIO | None = None, interval: float = 10.0):
        self.label, self.enabled, self.interval = label, enabled, interval
        self.stream = stream or sys.stderr
        self.ok = self.failed = self.bytes = 0
        self.started = self._last_line = time.monotonic()
        self._bar = None
        if enabled and _isatty(self.stream):
            from tqdm import tqdm

            self._bar = tqdm(total=total, desc=label, unit="img", file=self.stream, dynamic_ncols=True, smoothing=0.1)

    @property
    def done(self) -> int:
        return self.ok + self.failed

    def update(self, ok: int, failed: int, nbytes: int) -> None:
        self.ok, self.failed, self.bytes = self.ok + ok, self.failed + failed, self.bytes + nbytes
        if not self.enabled:
            return
        if self._bar is not None:
            self._bar.update(ok + failed)
            self._bar.set_postfix_str(f"ok {self._rate():.1%}, {self.bytes / 1e6:,.0f} MB", refresh=False)
        elif time.monotonic() - self._last_line >= self.interval:
            self._line()

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
        elif self.enabled and self.done:
            self._line()

    def _rate(self) -> float:
        return self.ok / self.done if self.done else 0.0

    def _line(self) -> None:
        self._last_line = now = time.monotonic()
        speed = self.ok / max(now - self.started, 1e-9)
        print(f"{self.label}: {self.done:,} rows, {self.ok:,} ok ({self._rate():.1%}), {speed:,.1f} images/s, "
              f"{self.bytes / 1e6:,.1f} MB", file=self.stream, flush=True)


def _isatty(stream: TextIO) -> bool:
    try:
        return stream.isatty()
    except (AttributeError, ValueError):
        return False
