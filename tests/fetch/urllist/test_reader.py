"""The URL list reader: TSV column order, stray tabs, limits, bounded memory on long lines."""

from __future__ import annotations

import pytest

from mmcorpus.fetch.urllist.reader import ColumnLayout, read_rows

# ------------------------------------------------------------------------------------------------- tsv


def _read(tmp_path, data: bytes, columns=("caption", "url"), **kwargs):
    path = tmp_path / "list.tsv"
    path.write_bytes(data)
    problems = []
    rows = list(read_rows(path, columns, problems.append, **kwargs))
    return rows, [(p.line, p.reason) for p in problems]


def test_tsv_column_order_and_stray_tabs(tmp_path):
    rows, problems = _read(tmp_path, b"a caption\thttp://x/1.jpg\nwith\ttab\thttp://x/2.jpg\n")
    assert [(r.index, r.caption, r.url) for r in rows] == [(0, "a caption", "http://x/1.jpg"),
                                                            (1, "with\ttab", "http://x/2.jpg")]
    rows, _ = _read(tmp_path, b"http://x/1.jpg\tCaption, with\ttab\n", columns=("url", "caption"))
    assert (rows[0].url, rows[0].caption) == ("http://x/1.jpg", "Caption, with\ttab")
    assert problems == []


def test_tsv_no_trailing_newline_and_limit(tmp_path):
    rows, _ = _read(tmp_path, b"a\thttp://x/1\nb\thttp://x/2\nc\thttp://x/3", stop=2)
    assert [r.caption for r in rows] == ["a", "b"]
    rows, _ = _read(tmp_path, b"a\thttp://x/1\nb\thttp://x/2\nc\thttp://x/3")
    assert rows[-1].url == "http://x/3"


def test_tsv_unwanted_rows_are_not_parsed(tmp_path):
    rows, problems = _read(tmp_path, b"a\thttp://x/1\nbroken\nc\thttp://x/3\n", wanted=lambda i: i != 1)
    assert [r.index for r in rows] == [0, 2] and problems == []


def test_tsv_long_line_drained_in_bounded_memory(tmp_path):
    rows, problems = _read(tmp_path, b"a" * 5000 + b"\thttp://x/1\nb\thttp://x/2\n", max_line=1000)
    assert [r.index for r in rows] == [1] and problems == [(1, "too_long")]


def test_tsv_column_layout_errors():
    layout = ColumnLayout(["caption", "url", "labels"])
    assert layout.split("only") == "no_tab" and layout.split("a\tb") == "missing_columns"
    assert layout.split("a\tb\tc\td") == "extra_columns"
    with pytest.raises(ValueError):
        ColumnLayout(["caption", "link"])
