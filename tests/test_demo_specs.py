"""The demo's specs describe the demo's stand-in files: their sizes, checksums and record counts."""

from __future__ import annotations

import json

from mmcorpus.demo.mirror import build_mirror
from mmcorpus.registry import Registry


def test_demo_specs_count_the_demo_records_so_progress_bars_are_true(tmp_path):
    build_mirror(tmp_path / "mirror", tmp_path / "specs")
    demo = Registry.load([tmp_path / "specs"])
    builtin = Registry.load()
    cc3m = demo.get("cc3m").files["train"]
    assert builtin.get("cc3m").files["train"].records == 3_318_333
    served = next((tmp_path / "mirror").rglob(cc3m.url.rsplit("/", 1)[1])).read_bytes()
    assert cc3m.records == len(served.decode().strip().splitlines()) < 1000
    mix = demo.get("llava_instruct").files["mix665k"]
    assert mix.records == len(json.loads(next((tmp_path / "mirror").rglob(mix.url.rsplit("/", 1)[1])).read_bytes()))
