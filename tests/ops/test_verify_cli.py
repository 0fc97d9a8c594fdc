"""`mmcorpus verify` as users run it: the hash recorded at download is the reference where the spec has none,
--quiet is quiet, and --repair takes fetch's network options and says what it moved and fetched again."""

from __future__ import annotations

import os
from pathlib import Path

from helpers.cli import mmcorpus
from helpers.urllist import url_list_spec


def _without_checksums(config: list[str]) -> list[str]:
    spec = Path(config[1]) / "mine.yaml"
    spec.write_text("".join(line + "\n" for line in spec.read_text().splitlines()
                            if not line.strip().startswith(("size:", "sha256:"))))
    return config


def test_a_file_without_a_published_checksum_is_checked_against_the_hash_taken_at_download(tmp_path, mirror):
    config = _without_checksums(url_list_spec(tmp_path / "specs", mirror, rows=3))
    root = tmp_path / "root"
    assert mmcorpus(*config, "fetch", "mine", "--root", str(root), "--allow-private-hosts").returncode == 0
    assert mmcorpus(*config, "verify", "mine", "--root", str(root)).returncode == 0
    tsv = root / "downloads" / "mine" / "list.tsv"
    data = tsv.read_bytes()
    tsv.write_bytes(data.replace(b"picture 0", b"picture X"))  # same size, other bytes

    for _ in range(2):  # and the modified hash is not recorded as the new truth by the first verify
        result = mmcorpus(*config, "verify", "mine", "--root", str(root))
        assert result.returncode == 1, result.stdout
        assert "modified since download" in result.stdout and "verification FAILED" in result.stdout


def test_verify_quiet_prints_only_the_outcome(tmp_path, mirror):
    config = url_list_spec(tmp_path / "specs", mirror, rows=3)
    root = tmp_path / "root"
    assert mmcorpus(*config, "fetch", "mine", "--root", str(root), "--allow-private-hosts").returncode == 0
    loud = mmcorpus(*config, "verify", "mine", "--root", str(root))
    quiet = mmcorpus(*config, "verify", "mine", "--root", str(root), "-q")
    assert "mine: 1/1 files ok" in loud.stdout
    assert quiet.returncode == 0 and quiet.stdout.splitlines() == [f"root: {root}", "all verified"]


def test_repair_takes_the_network_options_of_fetch_and_says_what_it_moved(tmp_path, mirror):
    config = url_list_spec(tmp_path / "specs", mirror, rows=4)
    root = tmp_path / "root"
    assert mmcorpus(*config, "fetch", "mine", "--root", str(root), "--allow-private-hosts").returncode == 0
    [broken, *_] = sorted((root / "images" / "mine" / "train").rglob("*.jpg"))
    broken.write_bytes(b"not a jpeg any more")

    result = mmcorpus(*config, "verify", "mine", "--repair", "--allow-private-hosts", "--root", str(root))
    assert result.returncode == 0, result.stdout + result.stderr
    out = result.stdout
    assert "verification FAILED: 1 bad" in out
    assert "moved aside into .rejected/ beside them: 1 files" in out and f"{broken.parent}{os.sep}.rejected" in out
    assert "repair: fetched again mine" in out and "mine (dataset): ok" in out
    assert out.splitlines()[-1] == "repaired: run mmcorpus verify again to check"  # not "all verified"
    assert broken.is_file()  # fetched again: the mirror is on 127.0.0.1, allowed as for the fetch
    assert mmcorpus(*config, "verify", "mine", "--root", str(root)).stdout.splitlines()[-1] == "all verified"
