"""Image paths of dataset files against <root>/images: escapes decoded only where wikiart needs them, every
decoded path checked again, an unsafe one a counted reject (issue 11)."""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from mmcorpus import layout
from mmcorpus.normalize.job import Rejects
from mmcorpus.normalize.resolve import ImageResolver, resolve_images
from mmcorpus.normalize.runner import normalize_dataset
from mmcorpus.registry import parse_spec

JPEG = b"\xff\xd8\xff\xe0" + b"\x00" * 8
UP = "#U002e#U002e/"  # decodes to '../'


@pytest.fixture
def images(tmp_path) -> Path:
    """<tmp>/root/images with a wikiart image, and a file outside the images root."""
    folder = tmp_path / "root/images"
    (folder / "wikiart/images").mkdir(parents=True)
    (folder / "wikiart/images/arnold-bã¶cklin_soldiers.jpg").write_bytes(JPEG)
    (tmp_path / "root/outside.jpg").write_bytes(JPEG)
    return folder


def test_wikiart_escapes_are_still_decoded(images):
    resolver = ImageResolver(images)
    found = resolver.resolve("wikiart/images/arnold-b#U00e3#U00b6cklin_soldiers.jpg")
    assert found == "wikiart/images/arnold-bã¶cklin_soldiers.jpg"


@pytest.mark.parametrize("path", [
    "wikiart/images/" + UP * 3 + "outside.jpg",  # ../../../outside.jpg: one folder above <root>/images
    "wikiart/images/x#U0000/a.jpg",  # a NUL in a folder name (os.scandir raised ValueError)
    "wikiart/images/a#U0000.jpg",
    "wikiart/images/" + UP + UP + ".mmcorpus/wikiart.zip.done",
])
def test_a_path_unsafe_once_decoded_is_refused(images, path):
    with pytest.raises(layout.UnsafePath):
        ImageResolver(images).resolve(path)


def test_escapes_outside_wikiart_are_not_decoded(images, tmp_path):
    outside = tmp_path / "root/outside.jpg"
    absolute = "#U002f" + str(outside)[1:]  # decodes to the absolute path of a file that exists
    resolver = ImageResolver(images)
    assert resolver.resolve(absolute) is None
    assert resolver.resolve("coco/" + UP * 2 + "outside.jpg") is None
    assert resolver.report()["found"] == 0 and resolver.report()["missing"] == 2


def test_resolve_images_drops_and_counts_unsafe_records(images):
    paths = ["wikiart/images/arnold-b#U00e3#U00b6cklin_soldiers.jpg", "wikiart/images/" + UP * 3 + "outside.jpg",
             None, "wikiart/images/a#U0000.jpg", "wikiart/images/gone.jpg"]
    batch = pa.RecordBatch.from_pydict({"sample_id": [f"d/s/{10 + i}" for i in range(len(paths))],
                                        "image_path": pa.array(paths, pa.string())})
    rejects = Rejects()
    out = resolve_images(batch, ImageResolver(images), rejects)
    assert out.column("sample_id").to_pylist() == ["d/s/10", "d/s/12", "d/s/14"]
    assert out.column("image_path").to_pylist() == ["wikiart/images/arnold-bã¶cklin_soldiers.jpg", None,
                                                    "wikiart/images/gone.jpg"]
    assert rejects.as_dict() == {"bad_image_path": {"count": 2, "examples": [11, 13]}}


def test_normalize_rejects_an_escaped_path_that_leaves_the_images_root(images):
    """End to end through normalize_dataset (the runner calls resolve_images)."""
    root = images.parent
    spec = parse_spec({"name": "sharegpt4v", "kind": "dataset", "stages": ["pretrain"], "format": {"type": "llava"},
                       "files": {"cap": {"url": "https://example.org/cap.json"}}}, Path("test.yaml"))
    cap = [{"from": "human", "value": "<image>\nDescribe."}, {"from": "gpt", "value": "A painting."}]
    records = [{"id": "ok", "image": "wikiart/images/arnold-b#U00e3#U00b6cklin_soldiers.jpg", "conversations": cap},
               {"id": "up", "image": "wikiart/images/" + UP * 3 + "outside.jpg", "conversations": cap},
               {"id": "nul", "image": "wikiart/images/x#U0000/a.jpg", "conversations": cap}]
    (root / "downloads/sharegpt4v").mkdir(parents=True)
    (root / "downloads/sharegpt4v/cap.json").write_text(json.dumps(records), encoding="utf-8")
    sub = normalize_dataset(spec, root)["subsets"]["cap"]
    assert (sub["records"], sub["rows"], sub["rejected"]) == (3, 1, 2)
    assert sub["rejects"] == {"bad_image_path": {"count": 2, "examples": [1, 2]}}
    table = pq.read_table(root / "normalized/sharegpt4v/cap-00000.parquet")
    assert table.column("image_path").to_pylist() == ["wikiart/images/arnold-bã¶cklin_soldiers.jpg"]
