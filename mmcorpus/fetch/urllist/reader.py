"""Streaming reader for URL-list TSV files (CC3M: caption TAB url; CC12M: url TAB caption).

The files have no header and no quoting: each line is split on the tab character, never with CSV rules,
because captions are free text with quotes in them (reference P19). The column order comes from the spec
and is never guessed (P18: scripts that prepend the wrong header to CC12M swap URL and caption).

Memory stays bounded for any file length and any line length: lines are read with a size limit and an
over-long line is drained in chunks, never held whole. A malformed line is reported (reason + line number)
and never stops the run: one bad line in 12.4M rows must not cost the other 12,399,999.

Row index = 0-based physical line number, so keys stay stable whether or not some lines are malformed.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, Callable, Iterator

MAX_LINE_BYTES = 1 << 20  # longer lines are garbage (a binary file, a missing newline), not a caption
BOM = b"\xef\xbb\xbf"
_DRAIN_CHUNK = 1 << 16

# Reasons a line is reported. "kept" ones are repaired and the row is still used.
KEPT_REASONS = ("bom", "crlf")
SKIPPED_REASONS = ("empty_line", "no_tab", "missing_columns", "extra_columns", "empty_url", "bad_utf8", "too_long")


@dataclass(frozen=True)
class Row:
    index: int  # 0-based line number: the row's key and the base of its shard
    url: str
    caption: str


@dataclass(frozen=True)
class Malformed:
    index: int  # 0-based row index of the line (line number - 1)
    reason: str  # one of KEPT_REASONS or SKIPPED_REASONS

    @property
    def line(self) -> int:
        return self.index + 1

    @property
    def kept(self) -> bool:
        return self.reason in KEPT_REASONS


class ColumnLayout:
    """Where url and caption sit in a line, from the spec's column list (e.g. ['caption', 'url'])."""

    def __init__(self, columns: tuple[str, ...] | list[str]):
        columns = tuple(columns)
        if "url" not in columns:
            raise ValueError(f"TSV columns {columns} name no 'url' column")
        self.width = len(columns)
        self.url = columns.index("url")
        self.caption = columns.index("caption") if "caption" in columns else None

    def split(self, text: str) -> list[str] | str:
        """The fields of a line, or the reason it is malformed. A caption in the first or last column
        absorbs stray tabs (the HF CC12M loader splits at the first tab only, for the same reason)."""
        if self.width == 2 and self.caption == 1:
            fields = text.split("\t", 1)
        elif self.width == 2 and self.caption == 0:
            fields = text.rsplit("\t", 1)
        else:
            fields = text.split("\t")
        if len(fields) == 1:
            return "no_tab"
        if len(fields) < self.width:
            return "missing_columns"
        if len(fields) > self.width:
            return "extra_columns"
        return fields


def read_rows(
    path: str | Path,
    columns: tuple[str, ...] | list[str],
    on_malformed: Callable[[Malformed], None] = lambda m: None,
    *,
    stop: int | None = None,
    wanted: Callable[[int], bool] = lambda index: True,
    max_line: int = MAX_LINE_BYTES,
) -> Iterator[Row]:
    """Yield the rows of a TSV file in order. `stop`: read no row with index >= stop (--limit).
    `wanted(index)`: rows for which it is False are only counted, not parsed (other machines' shards)."""
    layout = ColumnLayout(columns)
    with open(path, "rb") as handle:
        index = 0
        while stop is None or index < stop:
            raw = handle.readline(max_line + 1)
            if not raw:
                return
            if len(raw) > max_line and not raw.endswith(b"\n"):
                _drain_line(handle)
                if wanted(index):
                    on_malformed(Malformed(index, "too_long"))
            elif wanted(index):
                row = _parse(raw, index, layout, on_malformed)
                if row is not None:
                    yield row
            index += 1


def _drain_line(handle: BinaryIO) -> None:
    """Skip the rest of an over-long line without holding it in memory."""
    while True:
        chunk = handle.readline(_DRAIN_CHUNK)
        if not chunk or chunk.endswith(b"\n"):
            return


def _parse(raw: bytes, index: int, layout: ColumnLayout, on_malformed: Callable[[Malformed], None]) -> Row | None:
    if raw.endswith(b"\n"):
        raw = raw[:-1]
    if raw.endswith(b"\r"):  # a CRLF file (edited on Windows): the \r would end up inside the URL
        raw = raw[:-1]
        on_malformed(Malformed(index, "crlf"))
    if index == 0 and raw.startswith(BOM):  # a BOM would end up inside the first caption or URL
        raw = raw[len(BOM):]
        on_malformed(Malformed(index, "bom"))
    if not raw.strip():
        on_malformed(Malformed(index, "empty_line"))
        return None
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        on_malformed(Malformed(index, "bad_utf8"))
        return None
    fields = layout.split(text)
    if isinstance(fields, str):
        on_malformed(Malformed(index, fields))
        return None
    url = fields[layout.url].strip()
    if not url:
        on_malformed(Malformed(index, "empty_url"))
        return None
    caption = fields[layout.caption] if layout.caption is not None else ""
    return Row(index, url, caption)
