"""--engine img2dataset for real: img2dataset 1.47 downloads from the local mirror, its output becomes our layout.

Runs only in the venv made by scripts/ci/test_img2dataset.sh (img2dataset + mmcorpus), with
MMCORPUS_IMG2DATASET_E2E=1; the main suite skips it (img2dataset must not be installed next to our deps)."""

from __future__ import annotations

import hashlib
import io
import os
from pathlib import Path

import pytest
from helpers.urllist import status_rows
from PIL import Image

from mmcorpus.demo.localmirror import Route
from mmcorpus.fetch.urllist.executors import run_url_list
from mmcorpus.fetch.urllist.img2dataset import fetch_with_img2dataset
from mmcorpus.fetch.urllist.native import fetch_url_list
from mmcorpus.fetch.urllist.plan import UrlListOptions
from mmcorpus.registry import Spec

pytestmark = pytest.mark.skipif(os.environ.get("MMCORPUS_IMG2DATASET_E2E") != "1",
                                reason="img2dataset end-to-end: scripts/ci/test_img2dataset.sh runs it in its own venv")

CC3M = Spec(name="cc3m", kind="dataset", source=Path("cc3m.yaml"), format_columns=("caption", "url"))


def options(**overrides) -> UrlListOptions:
    values = dict(workers=2, threads=4, timeout=2.0, backoff=0.01, retries=0, shard_size=4,
                  mirror_hosts=frozenset({"127.0.0.1"}), progress=False, shard=(0, 1))
    values.update(overrides)
    return UrlListOptions(**values)


def picture(width: int, height: int, fmt: str = "JPEG") -> bytes:
    out = io.BytesIO()
    Image.new("RGB", (width, height), (width % 256, 90, height % 256)).save(out, fmt)
    return out.getvalue()


@pytest.fixture
def url_list(tmp_path, mirror) -> tuple[Path, dict]:
    """Rows whose outcome both engines agree on, by caption; plus a malformed line."""
    expected = {}
    lines = []
    for i in range(9):
        mirror.put(f"img-{i}.jpg", picture(60 + i, 40 + i))
        lines.append(f"picture {i}\t{mirror.url}/img-{i}.jpg")
        expected[f"picture {i}"] = ("ok", 200)
    mirror.add("gone.jpg", Route(status=410))
    mirror.add("broken.jpg", Route(status=500))
    mirror.add("page.jpg", Route(html=True))
    mirror.add("noai.jpg", Route(body=picture(50, 50), headers={"X-Robots-Tag": "noai"}))
    mirror.add("slow.jpg", Route(delay=4.0))
    cases = {"missing": ("not_found", 404), "gone": ("not_found", 410), "broken": ("http_error", 500),
             "page": ("not_image", 200), "noai": ("opted_out", 200), "slow": ("timeout", None)}
    for name, outcome in cases.items():
        lines.append(f"{name}\t{mirror.url}/{name}.jpg")
        expected[name] = outcome
    lines.append("a line without a tab")
    lines.append("private\thttp://10.1.2.3/a.jpg")
    expected["private"] = ("blocked_url", None)
    lines.append(f"duplicate\t{mirror.url}/img-2.jpg")
    expected["duplicate"] = ("ok", 200)
    path = tmp_path / "list.tsv"
    path.write_text("\n".join(lines) + "\n")
    return path, expected


def status(root: Path) -> list[dict]:
    return status_rows(root, "cc3m")  # every status parquet, its schema checked


def test_img2dataset_output_in_our_layout(tmp_path, mirror, url_list):
    tsv, expected = url_list
    root = tmp_path / "i2d"
    summary = run_url_list(CC3M, "train", tsv, root, options(), engine="img2dataset", executor="local")
    rows = status(root)
    assert {r["caption"]: (r["error"] or r["status"], r["http_status"]) for r in rows} == expected
    assert [r["key"] for r in rows] == [f"{i:09d}" for i in range(len(expected) + 1) if i != 15]  # line 16: no tab
    for row in rows:
        if row["status"] == "ok":
            data = (root / "images" / row["image_path"]).read_bytes()
            assert hashlib.sha256(data).hexdigest() == row["sha256"] and len(data) == row["bytes"]
            served = mirror.folder / row["url"].rsplit("/", 1)[-1]
            assert data == served.read_bytes()  # no --resize: JPEG bytes kept
            assert row["image_path"] == f"cc3m/train/{int(row['key']) // 4:05d}/{row['key']}.jpg"
    assert summary.ok == 10 and summary.malformed == {"no_tab": 1}
    assert sorted(p.name for p in (root / "images" / "cc3m" / "train").glob("*.done")) == \
        [f"{s:05d}.done" for s in range(5)]
    assert not (root / ".img2dataset-work").exists()

    native = tmp_path / "native"
    fetch_url_list(CC3M, "train", tsv, native, options())
    assert [(r["key"], r["status"], r["error"], r["sha256"]) for r in status(native)] == \
        [(r["key"], r["status"], r["error"], r["sha256"]) for r in rows]

    again = run_url_list(CC3M, "train", tsv, root, options(), engine="img2dataset")
    assert again.shards_skipped == [0, 1, 2, 3, 4] and again.fetched == 0 and again.ok == 10


def test_resize_and_retry_failed(tmp_path, mirror, url_list):
    tsv, _ = url_list
    root = tmp_path / "i2d"
    fetch_with_img2dataset(CC3M, "train", tsv, root, options(resize=32, limit=8))
    rows = status(root)
    assert len(rows) == 8
    for row in rows:
        image = Image.open(root / "images" / row["image_path"])
        assert min(image.size) == 32 and (image.width, image.height) == (row["width"], row["height"])
    mirror.routes.pop("/broken.jpg")  # the 5xx was transient: the file is served now
    mirror.put("broken.jpg", picture(70, 70))
    second = fetch_with_img2dataset(CC3M, "train", tsv, root, options(resize=32, retry_failed=True))
    assert second.fetched == 9  # shards 2-4: rows 8-17 but for the malformed line 16
    by_caption = {r["caption"]: r for r in status(root)}
    assert by_caption["broken"]["status"] == "ok" and by_caption["missing"]["error"] == "not_found"
