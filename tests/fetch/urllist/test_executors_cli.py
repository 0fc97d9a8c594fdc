"""--executor / --engine through the command line (real processes, the local mirror)."""

from __future__ import annotations

import json

import pytest
from helpers.cli import mmcorpus, one_line_error
from helpers.urllist import url_list_spec


def test_executor_ray_from_the_command_line(tmp_path, mirror):
    pytest.importorskip("ray")
    specs = url_list_spec(tmp_path / "specs", mirror)
    common = ["fetch", "mine", "--allow-private-hosts", "--json", "--workers", "1"]
    local = mmcorpus("--root", str(tmp_path / "local"), *specs, *common)
    ray = mmcorpus("--root", str(tmp_path / "ray"), *specs, *common, "--executor", "ray", "--tasks", "2")
    assert local.returncode == 0 and ray.returncode == 0, ray.stderr
    images = lambda r: json.loads(r.stdout)["targets"][0]["images"][0]  # noqa: E731
    assert images(ray)["ok"] == images(local)["ok"] == 12


def test_unknown_executor_and_missing_engine_exit_2_before_any_download(tmp_path, mirror):
    specs = url_list_spec(tmp_path / "specs", mirror)
    bad = mmcorpus("--root", str(tmp_path / "root"), *specs, "fetch", "mine", "--executor", "dask")
    assert bad.returncode == 2 and "--executor" in one_line_error(bad)
    i2d = mmcorpus("--root", str(tmp_path / "root"), *specs, "fetch", "mine", "--engine", "img2dataset")
    assert i2d.returncode == 2 and "mmcorpus[img2dataset]" in one_line_error(i2d)
    assert not mirror.hits("files/list.tsv")
