"""The stage report: self-contained HTML that renders in headless Chromium with its thumbnails, untrusted
dataset text escaped; and the terminal summary."""

from __future__ import annotations

import base64
import io
import json
import re
import subprocess
from pathlib import Path

import pytest
from helpers.stage import caption_row, cc_rows, chat_row, make_image, write_normalized
from PIL import Image

from mmcorpus.stage.prepare import prepare_stage
from mmcorpus.stage.report import THUMB_SIZE, format_stage_summary

CHROMIUM = Path("/usr/bin/chromium")
EVIL = '<script>alert("x")</script><img src=x onerror=alert(1)> & "quotes"'



@pytest.fixture
def stage(root, registry):
    """A pretrain stage with two datasets, a duplicate, a missing image, upstream link rot and a hostile caption."""
    rows = cc_rows(root, "cc3m", 6, urls=[f"https://a.example/{i}" for i in range(5)] + ["https://shared.example/1"])
    rows.append(caption_row("cc3m", "train", 6, "cc3m/train/00000/gone.jpg", "missing", url="https://a.example/6"))
    rows[0]["caption"] = EVIL
    write_normalized(root, "cc3m", "train", rows)
    (root / "normalized/cc3m/_train.report.json").write_text(json.dumps(
        {"records": 12, "rejects": {}, "source": {"failed": {"not_found": 4, "timeout": 1}}}))
    write_normalized(root, "cc12m", "train", cc_rows(root, "cc12m", 3, urls=["https://shared.example/1", "u2", "u3"]))
    pretrain = [chat_row("llava_pretrain", "558k", i, make_image(root, f"llava/llava_pretrain/images/00000/{i:09d}.jpg", size=(400, 300)),
                         "<image>\nDescribe the image concisely.", "a long caption " * (i + 1) * 10) for i in range(3)]
    write_normalized(root, "llava_pretrain", "558k", pretrain)
    manifest = prepare_stage(registry, root, "pretrain")
    return root / "stages" / "pretrain", manifest


def test_terminal_summary_has_counts_drops_and_missing(stage):
    _, manifest = stage
    text = format_stage_summary(manifest)
    lines = text.splitlines()
    assert lines[0].startswith("stage pretrain: 11 samples from 13 rows")
    assert any(re.match(r"\s+cc12m/train\s+all\s+3\s+2\s+0\s+1$", line) for line in lines)
    assert any("duplicate_url" in line and "same image URL" in line for line in lines)
    assert any("image_missing" in line for line in lines)
    assert "before the stage, cc3m/train: not_found 4, timeout 1" in text
    assert "missing  sharegpt4v/pt: not fetched (mmcorpus fetch sharegpt4v)" in text
    first = manifest["missing"][0]
    rejected = {**manifest, "missing": [{**first, "reason": "all 5 records rejected (bad_role 5)"}]}
    assert (f"missing  {first['dataset']}/{first['subset']}: all 5 records rejected (bad_role 5) (mmcorpus fetch"
            in format_stage_summary(rejected))


def test_report_is_self_contained_and_escapes_dataset_text(stage):
    stage_dir, manifest = stage
    page = (stage_dir / "report.html").read_text(encoding="utf-8")
    assert not re.search(r'(?:src|href)\s*=\s*"(?!data:)', page)  # nothing fetched from anywhere
    assert "<link" not in page and "@import" not in page
    assert page.count("<script") == 1  # ours only
    assert "<script>alert" not in page and "<img src=x" not in page
    assert "&lt;script&gt;alert(&quot;x&quot;)&lt;/script&gt;" in page
    uris = re.findall(r'<img src="data:image/jpeg;base64,([A-Za-z0-9+/=]+)"', page)
    assert len(uris) == len([x for x in manifest["stats"]["examples"] if x["image_path"]]) >= 6
    for uri in uris:
        with Image.open(io.BytesIO(base64.b64decode(uri))) as thumb:
            assert thumb.format == "JPEG" and max(thumb.size) <= THUMB_SIZE
    for words in ("Samples per dataset", "Why samples were dropped", "caption length", "turns per conversation",
                  "Lost before this stage", "Not fetched yet", "cc3m/train", "duplicate_url"):
        assert words in page


@pytest.mark.skipif(not CHROMIUM.exists(), reason="needs Debian's chromium at /usr/bin/chromium (apt-get install chromium)")
def test_report_renders_in_headless_chromium_with_all_thumbnails(stage, tmp_path):
    stage_dir, manifest = stage
    command = [
        str(CHROMIUM), "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
        "--disable-component-update", "--disable-sync", "--no-first-run", f"--user-data-dir={tmp_path / 'profile'}",
        "--virtual-time-budget=10000", "--dump-dom", (stage_dir / "report.html").as_uri(),
    ]
    result = subprocess.run(command, capture_output=True, text=True, timeout=90)
    dom = result.stdout
    assert result.returncode == 0, result.stderr[-2000:]
    images = len([x for x in manifest["stats"]["examples"] if x["image_path"]])
    assert f'data-images-loaded="{images}/{images}"' in dom  # every <img> decoded: naturalWidth > 0
    assert dom.count('data-loaded="1"') == images and 'data-loaded="0"' not in dom
    assert "<svg" in dom and "samples kept" in dom
    assert "<script>alert" not in dom and '<img src="x"' not in dom


def test_thumbnail_of_a_transparent_image_is_white_not_black(tmp_path):
    from mmcorpus.stage.report import thumbnail_uri

    path = tmp_path / "clear.png"
    Image.new("RGBA", (64, 64), (0, 0, 0, 0)).save(path)
    uri = thumbnail_uri(path)
    with Image.open(io.BytesIO(base64.b64decode(uri.split(",", 1)[1]))) as thumb:
        assert thumb.convert("L").getextrema()[0] > 240
