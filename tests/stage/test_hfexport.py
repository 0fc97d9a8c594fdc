"""`--format hf`: hf/data/train-NNNNN.parquet with TRL's `messages` (image and text parts, one image part per
placeholder where it stood) and `images` as Sequence(Image()) with the bytes embedded, read back by `datasets`."""

from __future__ import annotations

import pyarrow.parquet as pq
import pytest
from helpers.stage import caption_row, chat_row, make_image, row, write_normalized

from mmcorpus.stage.exports import BRIEF_PROMPTS
from mmcorpus.stage.hfexport import content_parts, write_hf
from mmcorpus.stage.prepare import prepare_stage



@pytest.fixture
def finetune_root(root):
    coco = make_image(root, "coco/train2017/000000033471.jpg")
    png = make_image(root, "gqa/images/2354786.png", size=(30, 20), fmt="PNG", colour=(10, 200, 30))
    write_normalized(root, "llava_instruct", "mix665k", [
        chat_row("llava_instruct", "mix665k", 0, coco, "<image>\nWhat color is the bus?", "White and red.",
                 more_turns=[("Where is it?", "On the street.")]),
        chat_row("llava_instruct", "mix665k", 1, png, "Is the sky blue?\n<image>", "Yes."),
        row("llava_instruct", "mix665k", 2, conversations=[{"role": "user", "content": "Write a haiku."},
                                                           {"role": "assistant", "content": "Old pond, a frog."}]),
    ])
    write_normalized(root, "sharegpt4v", "sft", [caption_row("sharegpt4v", "sft", 0, coco, "A bus on a street.")])
    return root


def text(value: str) -> dict:
    return {"type": "text", "text": value}


IMAGE = {"type": "image", "text": None}


def test_hf_export_loads_with_datasets_and_its_images_decode(finetune_root, registry, tmp_path, monkeypatch):
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    datasets = pytest.importorskip("datasets")
    manifest = prepare_stage(registry, finetune_root, "finetune", formats=["hf"])
    assert manifest["outputs"]["hf"] == {"folder": "hf", "files": [{"file": "train-00000.parquet", "samples": 4}],
                                         "samples": 4, "skipped": {}}
    files = [str(finetune_root / "stages/finetune/hf/data/train-00000.parquet")]
    loaded = datasets.load_dataset("parquet", data_files={"train": files}, split="train", cache_dir=str(tmp_path / "c"))
    assert loaded.features["images"] == datasets.Sequence(datasets.Image())
    assert set(loaded.column_names) == {"sample_id", "dataset", "source_id", "messages", "images"}
    by_id = {r["sample_id"]: r for r in loaded}

    bus = by_id["llava_instruct/mix665k/0"]
    assert bus["messages"] == [
        {"role": "user", "content": [IMAGE, text("What color is the bus?")]},
        {"role": "assistant", "content": [text("White and red.")]},
        {"role": "user", "content": [text("Where is it?")]},
        {"role": "assistant", "content": [text("On the street.")]},
    ]
    (image,) = bus["images"]
    assert image.size == (64, 48) and image.format == "JPEG"
    sky = by_id["llava_instruct/mix665k/1"]
    assert sky["messages"][0]["content"] == [text("Is the sky blue?"), IMAGE]  # the placeholder where it stood
    assert sky["images"][0].size == (30, 20) and sky["dataset"] == "llava_instruct" and sky["source_id"] == "1"
    haiku = by_id["llava_instruct/mix665k/2"]
    assert haiku["images"] == [] and all(p["type"] == "text" for m in haiku["messages"] for p in m["content"])
    caption = by_id["sharegpt4v/sft/0"]["messages"]  # the LLaVA export's turns for a caption row
    assert caption[0]["content"][0] == IMAGE and caption[0]["content"][1]["text"] in BRIEF_PROMPTS
    assert caption[1] == {"role": "assistant", "content": [text("A bus on a street.")]}


def test_image_bytes_are_embedded(finetune_root, registry):
    prepare_stage(registry, finetune_root, "finetune", formats=["hf"])
    table = pq.read_table(finetune_root / "stages/finetune/hf/data/train-00000.parquet")
    images = {r["sample_id"]: r["images"] for r in table.to_pylist()}
    (bus,) = images["llava_instruct/mix665k/0"]
    assert bus == {"bytes": (finetune_root / "images/coco/train2017/000000033471.jpg").read_bytes(),
                   "path": "coco/train2017/000000033471.jpg"}
    assert b"huggingface" in table.schema.metadata


def test_shards_of_samples_per_shard_and_a_vanished_image_counted(finetune_root, registry, tmp_path):
    manifest = prepare_stage(registry, finetune_root, "finetune", formats=["hf"], samples_per_shard=3)
    assert [f["samples"] for f in manifest["outputs"]["hf"]["files"]] == [3, 1]
    (finetune_root / "images/gqa/images/2354786.png").unlink()
    data = sorted((finetune_root / "stages/finetune/data").glob("*.parquet"))
    out = write_hf(data, tmp_path / "again", finetune_root / "images", seed=0, per_shard=10)
    assert out["samples"] == 3 and out["skipped"] == {"image_unreadable": 1}
    assert sorted(p.name for p in (tmp_path / "again/hf/data").iterdir()) == ["train-00000.parquet"]


def test_content_parts_split_at_each_placeholder():
    assert content_parts("<image>\nWhat is it?") == [IMAGE, text("What is it?")]
    assert content_parts("Compare <image> and <image>, please") == [text("Compare"), IMAGE, text("and"), IMAGE,
                                                                      text(", please")]
    assert content_parts("") == [] and content_parts("no image") == [text("no image")]
