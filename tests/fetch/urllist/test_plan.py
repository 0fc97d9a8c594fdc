"""The plan's rules of what an earlier run already did, through the command line: a refusal made by a policy is
fetched again once the policy allows it (DESIGN.md 6.1); other final failures stay final."""

from __future__ import annotations

import json

from helpers.cli import mmcorpus
from helpers.urllist import url_list_spec

from mmcorpus.demo.localmirror import Route


def images(result) -> dict:
    assert result.returncode in (0, 1), result.stderr
    return json.loads(result.stdout)["targets"][0]["images"][0]


def test_blocked_rows_are_fetched_again_after_allow_private_hosts(tmp_path, mirror):
    args = ["--root", str(tmp_path / "root"), *url_list_spec(tmp_path / "specs", mirror, rows=4), "fetch", "mine",
            "--json", "--workers", "1"]
    first = images(mmcorpus(*args))
    assert first["ok"] == 0 and first["failed"] == {"blocked_url": 4}
    text = mmcorpus(*[a for a in args if a != "--json"]).stdout
    assert "4 URLs refused by the address policy" in text and "--allow-private-hosts" in text
    again = images(mmcorpus(*args))  # same policy: nothing to do, nothing fetched
    assert again["failed"] == {"blocked_url": 4} and again["fetched"] == 0
    allowed = images(mmcorpus(*args, "--allow-private-hosts"))
    assert allowed["ok"] == 4 and allowed["fetched"] == 4
    assert len(mirror.hits("img/0.jpg")) == 1


def test_opted_out_rows_are_fetched_again_after_ignore_opt_out_and_404_stays_final(tmp_path, mirror):
    specs = url_list_spec(tmp_path / "specs", mirror, rows=3)
    mirror.add("img/0.jpg", Route(headers={"X-Robots-Tag": "noai"}))
    mirror.add("img/1.jpg", Route(status=404))
    args = ["--root", str(tmp_path / "root"), *specs, "fetch", "mine", "--json", "--workers", "1",
            "--allow-private-hosts"]
    first = images(mmcorpus(*args))
    assert first["failed"] == {"opted_out": 1, "not_found": 1}
    ignoring = images(mmcorpus(*args, "--ignore-opt-out"))
    assert ignoring["ok"] == 2 and ignoring["failed"] == {"not_found": 1}
    assert len(mirror.hits("img/1.jpg")) == 1  # the 404 was not asked again
