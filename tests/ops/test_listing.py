"""`mmcorpus list` as users read it: a table that fits 100 columns; --json keeps every value whole."""

from __future__ import annotations

import json

from helpers.cli import mmcorpus


def test_the_list_fits_100_columns_and_json_keeps_the_whole_license():
    text = mmcorpus("list")
    assert text.returncode == 0
    lines = text.stdout.splitlines()
    assert lines[0].split() == ["NAME", "KIND", "STAGES", "FILES", "SIZE", "LICENSE"] and len(lines) > 18
    assert max(len(line) for line in lines) <= 100
    rows = {r["name"]: r for r in json.loads(mmcorpus("list", "--json").stdout)}
    assert rows["cc3m"]["license"].startswith("The dataset may be freely used for any purpose")
    assert len(rows["cc3m"]["license"]) > 60 and "…" not in rows["cc3m"]["license"]
