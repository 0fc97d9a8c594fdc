"""Stage outputs as trainers read them: the parquet through pyarrow, DuckDB and HF datasets; the LLaVA JSON as
LLaVA's loader reads it; WebDataset tars as webdataset/open_clip group them."""

from __future__ import annotations

import io
import json
import re
import shutil
import tarfile
from pathlib import Path

import pyarrow.dataset as pads
import pytest
from helpers import SAMPLES
from helpers.stage import (
    caption_row,
    cc_rows,
    chat_row,
    make_image,
    row,
    write_normalized,
)
from PIL import Image

from mmcorpus.normalize.runner import normalize_dataset
from mmcorpus.schema import UNIFIED_SCHEMA
from mmcorpus.stage.exports import BRIEF_PROMPTS, llava_record, wds_key
from mmcorpus.stage.prepare import prepare_stage



@pytest.fixture
def finetune_root(root):
    """Conversations with <image> as prefix and suffix, a caption-only row, a PNG image and a text-only row."""
    coco = make_image(root, "coco/train2017/000000033471.jpg")
    png = make_image(root, "gqa/images/2354786.png", fmt="PNG", colour=(10, 200, 30))
    rows = [
        chat_row("llava_instruct", "mix665k", 0, coco, "<image>\nWhat color is the bus?", "White and red.",
                 more_turns=[("Where is it?", "On the street.")]),
        chat_row("llava_instruct", "mix665k", 1, png, "Is the sky blue?\n<image>", "Yes."),
        row("llava_instruct", "mix665k", 2, conversations=[{"role": "user", "content": "Write a haiku."},
                                                           {"role": "assistant", "content": "Old pond, a frog."}]),
    ]
    write_normalized(root, "llava_instruct", "mix665k", rows)
    write_normalized(root, "sharegpt4v", "sft", [caption_row("sharegpt4v", "sft", 0, coco, "A bus on a street.")])
    return root


# ------------------------------------------------------------------------------------------------- parquet


def test_parquet_reads_with_pyarrow_dataset(finetune_root, registry):
    prepare_stage(registry, finetune_root, "finetune")
    table = pads.dataset(finetune_root / "stages/finetune/data", format="parquet").to_table()
    assert table.schema.remove_metadata().equals(UNIFIED_SCHEMA)
    assert table.num_rows == 4
    turns = dict(zip(table.column("sample_id").to_pylist(), table.column("conversations").to_pylist()))
    assert turns["llava_instruct/mix665k/0"][2] == {"role": "user", "content": "Where is it?"}


def test_parquet_reads_with_duckdb(finetune_root, registry):
    duckdb = pytest.importorskip("duckdb")
    prepare_stage(registry, finetune_root, "finetune")
    glob = str(finetune_root / "stages/finetune/data/*.parquet")
    rows = duckdb.connect().execute(
        f"SELECT dataset, count(*) AS n, sum(len(conversations)) AS turns FROM read_parquet('{glob}') "
        "GROUP BY dataset ORDER BY dataset"
    ).fetchall()
    assert rows == [("llava_instruct", 3, 8), ("sharegpt4v", 1, 0)]
    first = duckdb.connect().execute(
        f"SELECT conversations[1].content FROM read_parquet('{glob}') WHERE sample_id = 'llava_instruct/mix665k/1'"
    ).fetchall()
    assert first == [("Is the sky blue?\n<image>",)]


def test_parquet_reads_with_hf_datasets(finetune_root, registry, tmp_path, monkeypatch):
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    datasets = pytest.importorskip("datasets")
    prepare_stage(registry, finetune_root, "finetune")
    files = sorted(str(p) for p in (finetune_root / "stages/finetune/data").glob("*.parquet"))
    loaded = datasets.load_dataset("parquet", data_files={"train": files}, split="train", cache_dir=str(tmp_path / "hf"))
    assert loaded.num_rows == 4
    assert set(loaded.column_names) == set(UNIFIED_SCHEMA.names)
    by_id = {r["sample_id"]: r for r in loaded}
    assert by_id["sharegpt4v/sft/0"]["caption"] == "A bus on a street."
    assert by_id["llava_instruct/mix665k/2"]["image_path"] is None


# --------------------------------------------------------------------------------------------------- LLaVA


def load_llava(root: Path, stage: str) -> list[dict]:
    return json.loads((root / "stages" / stage / "llava" / f"{stage}.json").read_text(encoding="utf-8"))


def test_llava_json_is_what_llava_trains_on(finetune_root, registry):
    manifest = prepare_stage(registry, finetune_root, "finetune", formats=["llava"])
    records = sorted(load_llava(finetune_root, "finetune"), key=lambda r: r["sample_id"])  # the stage is shuffled
    assert manifest["outputs"]["llava"] == {"file": "finetune.json", "records": 4, "folder": "llava"}
    assert [r["sample_id"] for r in records] == ["llava_instruct/mix665k/0", "llava_instruct/mix665k/1", "llava_instruct/mix665k/2", "sharegpt4v/sft/0"]
    # the source ids (helpers.stage.row: str(index)); the caption row has no source record: its sample id
    assert [r["id"] for r in records] == ["0", "1", "2", "sharegpt4v/sft/0"]
    for record in records:
        turns = record["conversations"]
        assert [t["from"] for t in turns] == ["human", "gpt"] * (len(turns) // 2)
        text = "".join(t["value"] for t in turns)
        if "image" in record:
            assert turns[0]["value"].startswith("<image>\n") and text.count("<image>") == 1
            assert (finetune_root / "images" / record["image"]).is_file()  # --image_folder <root>/images
        else:
            assert "<image>" not in text
    assert records[1]["conversations"][0]["value"] == "<image>\nIs the sky blue?"  # suffix moved to the front
    assert records[0]["conversations"][2] == {"from": "human", "value": "Where is it?"}
    assert "image" not in records[2]
    caption = records[3]["conversations"]
    assert caption[0]["value"].removeprefix("<image>\n") in BRIEF_PROMPTS
    assert caption[1] == {"from": "gpt", "value": "A bus on a street."}


def test_caption_prompts_are_drawn_with_the_seed(root, registry):
    write_normalized(root, "cc3m", "train", cc_rows(root, "cc3m", 60))

    def prompts(seed):
        prepare_stage(registry, root, "pretrain", formats=["llava"], seed=seed)
        return [r["conversations"][0]["value"].removeprefix("<image>\n") for r in load_llava(root, "pretrain")]

    first = prompts(0)
    assert set(first) <= set(BRIEF_PROMPTS) and len(set(first)) >= 8  # drawn from the list, not one prompt
    assert prompts(0) == first and prompts(1) != first


def test_llava_round_trip_of_real_records(root, registry):
    """Real mix665k / 595K records, through the real normalizer, come out as LLaVA loads them."""
    for name, subset, sample, folder in [
        ("llava_instruct", "mix665k", "llava_mix665k_sample.json", ""),
        ("llava_cc3m_595k", "chat", "llava_cc3m_595k_chat_sample.json", "llava/llava_cc3m_595k/images/"),
    ]:
        spec = registry.get(name)
        target = root / "downloads" / name / spec.files[subset].filename
        target.parent.mkdir(parents=True)
        shutil.copy(SAMPLES / sample, target)
        for record in json.loads((SAMPLES / sample).read_text()):
            make_image(root, folder + record["image"])
        normalize_dataset(spec, root, [subset])
    prepare_stage(registry, root, "finetune", formats=["llava"])
    (exported,) = load_llava(root, "finetune")
    (original,) = json.loads((SAMPLES / "llava_mix665k_sample.json").read_text())
    assert exported["image"] == original["image"] and exported["conversations"] == original["conversations"]

    prepare_stage(registry, root, "pretrain", formats=["llava"])
    originals = json.loads((SAMPLES / "llava_cc3m_595k_chat_sample.json").read_text())
    by_image = {r["image"]: r for r in load_llava(root, "pretrain")}  # the stage is shuffled
    assert len(by_image) == len(originals)
    for original in originals:
        exported = by_image["llava/llava_cc3m_595k/images/" + original["image"]]
        question = original["conversations"][0]["value"].replace("<image>", "").strip()
        assert exported["conversations"][0]["value"] == "<image>\n" + question
        assert exported["conversations"][1] == original["conversations"][1]


def test_llava_record_of_a_caption_row_without_image_token():
    record = llava_record(row("cc3m", "train", 5, image_path="cc3m/train/00000/000000005.jpg", caption="a dog"), seed=0)
    assert record["conversations"][0]["value"].startswith("<image>\n")
    assert record["conversations"][1] == {"from": "gpt", "value": "a dog"}


# ---------------------------------------------------------------------------------------------- WebDataset


def read_tars(folder: Path) -> dict[str, dict[str, bytes]]:
    """Group tar members the way webdataset does: key = name up to the first dot of the base name."""
    samples: dict[str, dict[str, bytes]] = {}
    for tar_path in sorted(folder.glob("*.tar")):
        with tarfile.open(tar_path) as tar:
            for member in tar:
                key, ext = re.match(r"^((?:.*/|)[^./]+)\.([^/]*)$", member.name).groups()
                samples.setdefault(key, {})[ext] = tar.extractfile(member).read()
    return samples


def test_webdataset_shards_group_jpg_json_txt_per_sample(finetune_root, registry):
    manifest = prepare_stage(registry, finetune_root, "finetune", formats=["webdataset"], samples_per_shard=2)
    out = manifest["outputs"]["webdataset"]
    assert [s["file"] for s in out["shards"]] == ["finetune-00000.tar", "finetune-00001.tar"]
    assert out["samples"] == 3 and out["skipped"] == {"text_only": 1}
    samples = read_tars(finetune_root / "stages/finetune/webdataset")
    assert sorted(samples) == ["llava_instruct--mix665k--0", "llava_instruct--mix665k--1", "sharegpt4v--sft--0"]
    for key, members in samples.items():
        assert set(members) == {"jpg", "json", "txt"}
        assert Image.open(io.BytesIO(members["jpg"])).format == "JPEG"  # the PNG was converted
        assert wds_key(json.loads(members["json"])["sample_id"]) == key
    assert samples["llava_instruct--mix665k--1"]["txt"] == b"Yes."
    assert samples["sharegpt4v--sft--0"]["txt"] == b"A bus on a street."
    assert not list((finetune_root / "stages/finetune/webdataset").glob("*.tmp"))
    # One shape for every sample (HF datasets' webdataset reader infers one schema): the caption row carries
    # the turns the LLaVA export gives it.
    metas = {key: json.loads(members["json"]) for key, members in samples.items()}
    assert len({tuple(sorted(meta)) for meta in metas.values()}) == 1
    caption = metas["sharegpt4v--sft--0"]["conversations"]
    assert [t["role"] for t in caption] == ["user", "assistant"] and caption[1]["content"] == "A bus on a street."
    assert caption[0]["content"].startswith("<image>\n") and caption[0]["content"][8:] in BRIEF_PROMPTS


def test_webdataset_tars_are_identical_on_rebuild(finetune_root, registry):
    prepare_stage(registry, finetune_root, "finetune", formats=["webdataset"])
    tar = finetune_root / "stages/finetune/webdataset/finetune-00000.tar"
    first = tar.read_bytes()
    prepare_stage(registry, finetune_root, "finetune", formats=["webdataset"], force=True)
    assert tar.read_bytes() == first


def test_webdataset_keys_have_no_dots_or_slashes_and_never_collide():
    ids = ["cc3m/train/12", "a.b/sub.set/3#1", "a_b/sub_set/3#1", "a_b/sub.set/3--1", "x/y z/0", "x/y_z/0",
           "a--b/x/1", "a/-b/x/1", "a/b/x/1", "é/x/1", "-xc3-xa9/x/1", "a-m/x/1", "a-/x/1"]
    keys = [wds_key(i) for i in ids]
    assert all("." not in key and "/" not in key for key in keys)
    assert len(set(keys)) == len(ids)
    assert wds_key("cc3m/train/000000012#1") == "cc3m--train--000000012-h1"


def test_webdataset_jpeg_of_a_transparent_png_is_white_not_black(tmp_path):
    import io as _io

    from PIL import Image

    from mmcorpus.stage.exports import jpeg_bytes

    path = tmp_path / "clear.png"
    Image.new("RGBA", (8, 8), (0, 0, 0, 0)).save(path)
    with Image.open(_io.BytesIO(jpeg_bytes(path))) as image:
        assert image.format == "JPEG" and image.convert("L").getextrema()[0] > 240
    jpeg = tmp_path / "a.jpg"
    Image.new("RGB", (8, 8), (10, 20, 30)).save(jpeg)
    assert jpeg_bytes(jpeg) == jpeg.read_bytes()  # JPEGs are passed through untouched
