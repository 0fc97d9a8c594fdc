"""What loaders look for in a stage folder: the dataset card lets `datasets.load_dataset(<stage folder>)` read
data/*.parquet (not the JSON files beside it), and webdataset/sizes.json gives open_clip the samples per tar."""

from __future__ import annotations

import json
import os

import pytest
import yaml
from helpers.stage import caption_row, chat_row, make_image, row, write_normalized

from mmcorpus.schema import UNIFIED_SCHEMA
from mmcorpus.stage.card import card_body
from mmcorpus.stage.prepare import prepare_stage



@pytest.fixture
def finetune_root(root):
    coco = make_image(root, "coco/train2017/000000033471.jpg")
    write_normalized(root, "llava_instruct", "mix665k", [
        chat_row("llava_instruct", "mix665k", 0, coco, "<image>\nWhat color is the bus?", "White and red."),
        chat_row("llava_instruct", "mix665k", 1, make_image(root, "gqa/images/1.jpg"), "<image>\nSky?", "Blue."),
        row("llava_instruct", "mix665k", 2, conversations=[{"role": "user", "content": "Write a haiku."},
                                                           {"role": "assistant", "content": "Old pond, a frog."}]),
    ])
    write_normalized(root, "sharegpt4v", "sft", [caption_row("sharegpt4v", "sft", 0, coco, "A bus on a street.")])
    return root


@pytest.fixture
def hf_offline(monkeypatch, tmp_path):
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_DATASETS_CACHE", str(tmp_path / "hf-cache"))
    return pytest.importorskip("datasets")


def card(root, stage: str) -> tuple[dict, str]:
    text = (root / "stages" / stage / "README.md").read_text(encoding="utf-8")
    _, header, body = text.split("---\n", 2)
    return yaml.safe_load(header), body


def test_load_dataset_of_the_stage_folder_reads_the_parquet_shards(finetune_root, registry, hf_offline):
    prepare_stage(registry, finetune_root, "finetune", formats=["llava", "webdataset"])  # JSON files beside data/
    loaded = hf_offline.load_dataset(str(finetune_root / "stages/finetune"), split="train")
    assert loaded.num_rows == 4 and set(loaded.column_names) == set(UNIFIED_SCHEMA.names)
    assert sorted(loaded["sample_id"]) == ["llava_instruct/mix665k/0", "llava_instruct/mix665k/1",
                                           "llava_instruct/mix665k/2", "sharegpt4v/sft/0"]


def test_the_hf_export_is_a_second_config_of_the_card(finetune_root, registry, hf_offline):
    prepare_stage(registry, finetune_root, "finetune")
    header, _ = card(finetune_root, "finetune")
    assert [c["config_name"] for c in header["configs"]] == ["default"]
    prepare_stage(registry, finetune_root, "finetune", formats=["hf"])  # data unchanged: the re-export path
    header, _ = card(finetune_root, "finetune")
    assert header["configs"][1] == {"config_name": "hf", "data_files": [{"split": "train", "path": "hf/data/train-*.parquet"}]}
    loaded = hf_offline.load_dataset(str(finetune_root / "stages/finetune"), "hf", split="train")
    assert loaded.num_rows == 4 and "messages" in loaded.column_names
    assert hf_offline.load_dataset(str(finetune_root / "stages/finetune"), split="train").num_rows == 4


def test_the_card_says_counts_licenses_and_how_to_load(finetune_root, registry):
    manifest = prepare_stage(registry, finetune_root, "finetune", formats=["llava"])
    header, body = card(finetune_root, "finetune")
    assert header["configs"][0]["data_files"] == [{"split": "train", "path": "data/*.parquet"}]
    assert "| llava_instruct | mix665k | all | 3 |" in body and "| sharegpt4v | sft | all | 1 |" in body
    for dataset in ("llava_instruct", "sharegpt4v"):
        assert registry.specs[dataset].license.split(".")[0] in body
    assert "mmcorpus.open_stage('finetune')" in body and "llava/finetune.json" in body
    assert f"seed {manifest['options']['seed']}" in body


def test_names_from_user_configs_cannot_break_the_table():
    manifest = {"stage": "s", "created": "now", "mmcorpus_version": "0", "options": {"seed": 0},
                "total": {"kept": 1}, "outputs": {"parquet": {"files": [{"file": "s-00000.parquet", "rows": 1}]}},
                "datasets": [{"dataset": "a|b", "subset": "x\ny", "sample": "all", "kept": 1, "license": "L|M"}]}
    body = card_body(manifest)
    assert "| a\\|b | x y | all | 1 |" in body and "L\\|M" in body


def test_sizes_json_gives_open_clip_the_samples_per_tar(finetune_root, registry):
    manifest = prepare_stage(registry, finetune_root, "finetune", formats=["webdataset"], samples_per_shard=2)
    folder = finetune_root / "stages/finetune/webdataset"
    sizes = json.loads((folder / "sizes.json").read_text())
    assert sizes == {"finetune-00000.tar": 2, "finetune-00001.tar": 1}
    shards = sorted(str(p) for p in folder.glob("*.tar"))
    # open_clip's get_dataset_size: sizes.json beside the shards, keyed by base name
    total = sum(int(sizes[os.path.basename(s)]) for s in shards)
    assert total == manifest["outputs"]["webdataset"]["samples"] == 3
