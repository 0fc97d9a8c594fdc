"""Every `# snippet:` block of the README runs against a small prepared stage, as a user would paste it.

A block whose library is not installed is skipped with the reason (torch is not a test extra: it is large)."""

from __future__ import annotations

import importlib.util
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from helpers.stage import caption_row, chat_row, make_image, row, write_normalized

from mmcorpus.stage.prepare import prepare_stage

README = Path(__file__).resolve().parents[1] / "README.md"
BLOCKS = re.findall(r"```python\n(# snippet: (\w+).*?)```", README.read_text(encoding="utf-8"), re.S)
NEEDS = {"datasets": "datasets", "duckdb": "duckdb", "polars": "polars", "webdataset": "webdataset", "torch": "torch"}


@pytest.fixture(scope="module")
def stage_root(tmp_path_factory, registry) -> Path:
    root = tmp_path_factory.mktemp("snippets")
    coco = make_image(root, "coco/train2017/000000033471.jpg")
    png = make_image(root, "gqa/images/2354786.png", fmt="PNG", colour=(10, 200, 30))
    write_normalized(root, "llava_instruct", "mix665k", [
        chat_row("llava_instruct", "mix665k", 0, coco, "<image>\nWhat color is the bus?", "White and red."),
        chat_row("llava_instruct", "mix665k", 1, png, "Is the sky blue?\n<image>", "Yes."),
        row("llava_instruct", "mix665k", 2, conversations=[{"role": "user", "content": "Write a haiku."},
                                                           {"role": "assistant", "content": "Old pond."}]),
    ])
    write_normalized(root, "sharegpt4v", "sft", [caption_row("sharegpt4v", "sft", 0, coco, "A bus on a street.")])
    prepare_stage(registry, root, "finetune", formats=["parquet", "llava", "webdataset", "hf"])
    return root


def test_the_readme_has_the_snippets_the_issue_asks_for():
    assert sorted(name for _, name in BLOCKS) == sorted(NEEDS)


@pytest.mark.parametrize("code,name", BLOCKS, ids=[name for _, name in BLOCKS])
def test_readme_snippet_runs(stage_root, tmp_path, code, name):
    if importlib.util.find_spec(NEEDS[name]) is None:
        pytest.skip(f"{NEEDS[name]} is not installed: the README's {name} snippet was not run")
    env = {**os.environ, "MMCORPUS_ROOT": str(stage_root), "HF_DATASETS_CACHE": str(tmp_path / "hf-cache"),
           "HF_HUB_OFFLINE": "1"}
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, cwd=tmp_path,
                            timeout=120)
    assert result.returncode == 0, result.stderr[-3000:]
    out = result.stdout
    expected = {
        "datasets": "4 ",  # the stage's 4 rows, then the hf images feature
        "duckdb": "llava_instruct",
        "polars": "sharegpt4v",
        "webdataset": "3 samples",  # the text-only row has no image: not in the tars
        "torch": "4 samples",
    }[name]
    assert expected in out, out
    if name == "datasets":
        assert "Image(" in out
    if name == "webdataset":
        assert out.count("sharegpt4v/sft/0 2") == 1  # the caption row carries its two turns
