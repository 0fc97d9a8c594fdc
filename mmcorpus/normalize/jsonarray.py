"""Stream the elements of a top-level JSON array with bounded memory, at the speed of the `json` C scanner.

LLaVA-style files are one JSON array of ~1 GB (P6). `json.load` needs ~5 GB of RAM for it. ijson keeps memory
flat and its C backend (yajl2_c) parses as fast as this reader (docs/benchmarks.md), but it cannot start at a
record boundary in the middle of the file, which is what lets several processes share one file
(`split_points`), and its pure-Python fallback is ~10x slower. This reader keeps a sliding text buffer of 1 MB
and hands each element to json's C scanner, so only one buffer and one record are held at a time.

Errors (truncated file, invalid JSON, not an array, bad UTF-8) raise BadInputError naming the file, the byte
offset and the index of the record, never a traceback.
"""

from __future__ import annotations

import codecs
import json
import json.scanner
import re
from pathlib import Path
from typing import Callable, Iterator

from mmcorpus.errors import BadInputError

CHUNK = 1 << 20
MAX_RECORD = 256 << 20  # no real record is near this; a larger "record" is a broken file, not a reason to OOM
_WS = re.compile(r"[ \t\n\r]*")
_WS_CHARS = " \t\n\r"
_SEPARATOR = re.compile(r"[ \t\n\r]*,[ \t\n\r]*")


class _Buffer:
    """A window onto the decoded file: `text[pos:]` is unread, `base` counts the bytes dropped before it."""

    def __init__(self, path: Path, chunk: int, start: int = 0, end: int | None = None):
        self.path, self.chunk = path, chunk
        self.file = open(path, "rb")
        self.file.seek(start)
        self.left = None if end is None else end - start  # bytes of the range not read yet
        self.decoder = codecs.getincrementaldecoder("utf-8-sig" if start == 0 else "utf-8")()  # tolerate a BOM
        self.text, self.pos, self.base, self.eof = "", 0, start, False

    def more(self) -> bool:
        """Append the next chunk (dropping what was read); False at end of file."""
        if self.eof:
            return False
        data = self.file.read(self.chunk if self.left is None else min(self.chunk, self.left))
        if self.left is not None:
            self.left -= len(data)
        self.eof = not data
        try:
            new = self.decoder.decode(data, final=self.eof)
        except UnicodeDecodeError as exc:
            raise BadInputError(f"{self.path}: not UTF-8 near byte {self.offset(len(self.text)) + exc.start}") from None
        self.base += len(self.text[: self.pos].encode("utf-8"))
        self.text, self.pos = self.text[self.pos :] + new, 0
        return not self.eof or bool(new)

    def offset(self, pos: int | None = None) -> int:
        """Byte offset in the file of text position `pos` (default: the read position)."""
        pos = self.pos if pos is None else pos
        return self.base + len(self.text[:pos].encode("utf-8"))

    def skip_ws(self) -> str:
        """Skip whitespace and return the next character ('' at end of file)."""
        while True:
            self.pos = _WS.match(self.text, self.pos).end()
            if self.pos < len(self.text):
                return self.text[self.pos]
            if not self.more():
                return ""

    def close(self) -> None:
        self.file.close()


def iter_json_array(path: str | Path, start: int = 0, end: int | None = None, *, chunk: int = CHUNK,
                    max_record: int = MAX_RECORD) -> Iterator[object]:
    """Yield the elements of the JSON array in `path`, one at a time, in file order.

    With `start`/`end` (byte offsets from `split_points`), yield only the elements of that range: `start` is
    the first byte of an element, and a range that is not the last ends just after a ',' separator.
    """
    path = Path(path)
    buf = _Buffer(path, chunk, start, end)
    try:
        if start == 0:
            if buf.skip_ws() != "[":
                raise BadInputError(f"{path}: not a JSON array (byte {buf.offset()} is not '[')")
            buf.pos += 1
            if buf.skip_ws() == "]":
                buf.pos += 1
                return _check_end(buf)
        closed = yield from _elements(buf, max_record, last=end is None)
        if closed:
            _check_end(buf)
    finally:
        buf.close()


def _check_end(buf: _Buffer) -> None:
    if buf.skip_ws() != "":
        raise BadInputError(f"{buf.path}: unexpected data after the end of the array at byte {buf.offset()}")


def split_points(path: str | Path, parts: int, is_element: Callable[[object], bool]) -> list[int]:
    """Byte offsets cutting the array into about `parts` ranges of whole elements: [0, s1, ..., None].

    Each cut is the first '{' after k/parts of the file that parses as an element (`is_element`) and sits
    between separators (',' before, ',' or ']' after). A cut inside a string would need a raw '"' there, which
    JSON strings cannot hold, so misplaced cuts are practically impossible; the range parser still detects one
    (the range before it then ends inside an element) and the caller falls back to one range.
    """
    path = Path(path)
    size = path.stat().st_size
    cuts = [0]
    with open(path, "rb") as f:
        for k in range(1, parts):
            cut = _cut_near(f, size * k // parts, is_element)
            if cut is not None and cut > cuts[-1]:
                cuts.append(cut)
    return cuts + [None]


def _cut_near(f, guess: int, is_element: Callable[[object], bool], window: int = 1 << 20) -> int | None:
    f.seek(guess)
    data = f.read(window)
    decode = json.JSONDecoder().raw_decode
    pos = data.find(b"{")
    while pos >= 0:
        text = data[pos:].decode("utf-8", errors="ignore")
        try:
            value, end = decode(text)
        except json.JSONDecodeError:
            value, end = None, 0
        if end and is_element(value) and text[end:].lstrip()[:1] in (",", "]"):
            if data[:pos].rstrip()[-1:] in (b",", b"["):
                return guess + pos
        pos = data.find(b"{", pos + 1)
    return None


def _elements(buf: _Buffer, max_record: int, last: bool) -> Iterator[object]:
    """Yield elements until ']' (returns True) or, for a range that is not the last, its end (False)."""
    # json's C scanner called directly (JSONDecoder.raw_decode is this call behind one more Python frame);
    # it raises StopIteration(pos) where raw_decode says "Expecting value".
    scan_once = json.scanner.make_scanner(json.JSONDecoder())
    index = 0
    while True:
        if (buf.pos >= len(buf.text) or buf.text[buf.pos] in _WS_CHARS) and buf.skip_ws() == "":
            if not last and index:
                return False  # the range ended after a separator: the next range starts here
            raise _truncated(buf, index, "file ends inside the array")
        try:
            try:
                value, end = scan_once(buf.text, buf.pos)
            except StopIteration as stop:
                raise json.JSONDecodeError("Expecting value", buf.text, stop.value) from None
        except json.JSONDecodeError as exc:
            if not _may_continue(exc, len(buf.text)):
                raise _truncated(buf, index, exc.msg, buf.offset(exc.pos)) from None
            value, end, error = None, None, exc
        # A value touching the buffer's end may continue in the next chunk (a cut string fails to parse, but a
        # cut number like 12|3 parses): read more and parse again whenever the buffer end was reached.
        if end is None or end >= len(buf.text):
            if len(buf.text) - buf.pos > max_record:
                raise BadInputError(f"{buf.path}: record {index} at byte {buf.offset()} is invalid JSON or larger "
                                    f"than {max_record >> 20} MB")
            if buf.more():
                continue
            if end is None:
                raise _truncated(buf, index, error.msg, buf.offset(error.pos))
        buf.pos = end
        yield value
        index += 1
        separator = _SEPARATOR.match(buf.text, end)  # fast path: one regex call between two records
        if separator is not None and separator.end() < len(buf.text):
            buf.pos = separator.end()
            continue
        separator = buf.skip_ws()
        if separator == "]":
            buf.pos += 1
            return True
        if separator != ",":
            raise _truncated(buf, index, f"expected ',' or ']' after record {index - 1}")
        buf.pos += 1


def _may_continue(error: json.JSONDecodeError, size: int) -> bool:
    """Whether a parse error can be the buffer's end cutting a valid record (then more data may fix it).
    An error well inside the buffer is final: reading on would only grow the buffer to `max_record`."""
    return error.msg.startswith("Unterminated string") or error.pos >= size - 8


def _truncated(buf: _Buffer, index: int, what: str, offset: int | None = None) -> BadInputError:
    offset = buf.offset() if offset is None else offset
    return BadInputError(f"{buf.path}: truncated or invalid JSON at byte {offset} (record {index}): {what}")
