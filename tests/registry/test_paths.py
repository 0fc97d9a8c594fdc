"""The one path check (layout.safe_relative) every value that becomes a path goes through: spec values (the
registry), archive members, image paths of dataset files; its RE2 form; temporary names within NAME_MAX."""

from __future__ import annotations

import os
import re
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
import pytest

from mmcorpus import layout
from mmcorpus.core.atomicio import sweep_stale_temporaries, temporary_name

SAFE = {
    "coco/train2017/1.jpg": "coco/train2017/1.jpg",
    "./a//b/": "a/b",
    "a/./b": "a/b",
    "a..b/c..jpg": "a..b/c..jpg",
    "...": "...",
    "x.partial": "x.partial",
    "a/.mmcorpusx/b.jpg": "a/.mmcorpusx/b.jpg",
    "wikiart/images/#U002e#U002e/x.jpg": "wikiart/images/#U002e#U002e/x.jpg",  # escapes are not decoded here
}
ESCAPES = ["/etc/passwd", "C:/x.jpg", "c:x", "a\\b.jpg", "a\0b.jpg", "../x", "a/../b", "a/..", ".."]
NOT_OURS = ["", ".", "./", ".mmcorpus/x.zip.done", "a/.mmcorpus", "x.jpg.part", "x.part.json", "x.part.tmp",
            ".x.jpg.0a1b2c3d-1-2.mmpart", "a.done/b.jpg", "sub/.rejected/x.jpg"]


@pytest.mark.parametrize("path, normalised", SAFE.items())
def test_safe_paths_are_normalised(path, normalised):
    assert layout.safe_relative(path) == normalised


@pytest.mark.parametrize("path", ESCAPES + NOT_OURS)
def test_unsafe_paths_are_refused_saying_whether_they_escape(path):
    with pytest.raises(layout.UnsafePath) as info:
        layout.safe_relative(path)
    assert info.value.escapes == (path in ESCAPES)
    assert isinstance(info.value, ValueError) and repr(path) in str(info.value)


def test_the_pattern_is_the_same_rule_in_python_and_in_arrows_re2():
    paths = [*SAFE, *ESCAPES, *NOT_OURS, "\n:x", "::", "a/b.done", "a.mmpart/b"]
    refused = []
    for path in paths:
        try:
            layout.safe_relative(path)
            refused.append(False)
        except layout.UnsafePath:
            refused.append(True)
    assert [re.search(layout.UNSAFE_PATH_PATTERN, p) is not None for p in paths] == refused
    assert pc.match_substring_regex(pa.array(paths), layout.UNSAFE_PATH_PATTERN).to_pylist() == refused


@pytest.mark.parametrize("length", [1, 200, 220, 254, 255])
def test_temporary_names_fit_name_max_and_are_still_swept(tmp_path, length):
    final = tmp_path / ("n" * length)
    tmp = temporary_name(final)
    assert tmp.parent == final.parent and len(tmp.name.encode()) <= layout.NAME_MAX
    assert temporary_name(final) == tmp  # one writer, one name
    tmp.write_bytes(b"being written")  # the file system takes it
    dead = tmp.with_name(tmp.name.replace(f"-{os.getpid()}-", "-999999999-"))
    os.replace(tmp, dead)
    assert sweep_stale_temporaries(tmp_path) == 1 and not dead.exists()


def test_long_temporary_names_of_two_files_differ():
    a, b = Path("/x") / ("a" * 250), Path("/x") / ("a" * 249 + "b")
    assert temporary_name(a) != temporary_name(b)
