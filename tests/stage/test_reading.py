"""mmcorpus.open_stage: a prepared stage read from Python as dicts, as a Hugging Face dataset whose images decode,
and as a torch IterableDataset split across DataLoader workers and ranks without duplicates."""

from __future__ import annotations

import subprocess
import sys
from collections import Counter
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from helpers.stage import (
    caption_row,
    cc_rows,
    chat_row,
    make_image,
    row,
    write_normalized,
)

import mmcorpus
from mmcorpus import layout
from mmcorpus.errors import UsageError
from mmcorpus.schema import UNIFIED_SCHEMA
from mmcorpus.stage.prepare import prepare_stage
from mmcorpus.stage.reading import (
    Unit,
    assign,
    row_group_units,
    with_images,
)



@pytest.fixture
def finetune_root(root, registry):
    """A prepared finetune stage: two image conversations, a text-only one and a caption row."""
    coco = make_image(root, "coco/train2017/000000033471.jpg")
    png = make_image(root, "gqa/images/2354786.png", fmt="PNG", colour=(10, 200, 30))
    write_normalized(root, "llava_instruct", "mix665k", [
        chat_row("llava_instruct", "mix665k", 0, coco, "<image>\nWhat color is the bus?", "White and red."),
        chat_row("llava_instruct", "mix665k", 1, png, "Is the sky blue?\n<image>", "Yes."),
        row("llava_instruct", "mix665k", 2, conversations=[{"role": "user", "content": "Write a haiku."},
                                                           {"role": "assistant", "content": "Old pond, a frog."}]),
    ])
    write_normalized(root, "sharegpt4v", "sft", [caption_row("sharegpt4v", "sft", 0, coco, "A bus on a street.")])
    prepare_stage(registry, root, "finetune")
    return root


# ------------------------------------------------------------------------------------------ dicts, roots


def test_iterating_gives_the_unified_columns_and_absolute_image_paths(finetune_root):
    stage = mmcorpus.open_stage("finetune", root=finetune_root)
    samples = list(stage)
    assert len(stage) == len(samples) == 4
    assert all(set(s) == set(UNIFIED_SCHEMA.names) | {"images"} for s in samples)
    by_id = {s["sample_id"]: s for s in samples}
    assert by_id["llava_instruct/mix665k/2"]["images"] == []  # text-only
    png = by_id["llava_instruct/mix665k/1"]["images"]
    assert png == [str(finetune_root / "images" / "gqa/images/2354786.png")] and Path(png[0]).is_file()
    assert by_id["sharegpt4v/sft/0"]["caption"] == "A bus on a street."
    assert by_id["llava_instruct/mix665k/0"]["conversations"][1] == {"role": "assistant", "content": "White and red."}


def test_the_root_comes_from_the_argument_the_environment_or_the_cli_default(finetune_root, monkeypatch):
    monkeypatch.setenv("MMCORPUS_ROOT", str(finetune_root))
    assert len(mmcorpus.open_stage("finetune")) == 4
    assert layout.resolve_root("/elsewhere") == Path("/elsewhere")
    monkeypatch.delenv("MMCORPUS_ROOT")
    monkeypatch.setenv("HOME", str(finetune_root))
    assert layout.resolve_root() == finetune_root / "mmcorpus-data"  # the one rule the CLI and open_stage use
    with pytest.raises(UsageError, match="mmcorpus-data"):
        mmcorpus.open_stage("finetune")


def test_a_stage_not_prepared_names_the_folder_and_the_command(root):
    with pytest.raises(UsageError) as error:
        mmcorpus.open_stage("finetune", root=root)
    message = str(error.value)
    assert str(root / "stages" / "finetune") in message and "mmcorpus prepare --stage finetune" in message


def test_image_paths_of_multi_image_rows_are_used_when_the_column_exists(tmp_path):
    table = pa.table({"sample_id": ["a", "b", "c", "d"],
                      "image_path": ["x/1.jpg", None, "y/1.jpg", None],
                      "image_paths": [["x/1.jpg", "x/2.jpg"], [], ["y/1.jpg"], None]})
    images = with_images(table, tmp_path).column("images").to_pylist()
    assert images == [[f"{tmp_path}/x/1.jpg", f"{tmp_path}/x/2.jpg"], [], [f"{tmp_path}/y/1.jpg"], []]
    single = with_images(table.drop_columns(["image_paths"]), tmp_path).column("images").to_pylist()
    assert single == [[f"{tmp_path}/x/1.jpg"], [], [f"{tmp_path}/y/1.jpg"], []]


def test_import_mmcorpus_does_not_load_pyarrow():
    """The CLI imports the package for every --help: open_stage (and pyarrow) load on first use only."""
    code = ("import sys, mmcorpus; assert 'pyarrow' not in sys.modules, 'pyarrow loaded';"
            "assert callable(mmcorpus.open_stage) and 'pyarrow' in sys.modules")
    result = subprocess.run([sys.executable, "-c", code], check=False, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr


# --------------------------------------------------------------------------------------- Hugging Face


def test_to_hf_dataset_decodes_the_images(finetune_root, tmp_path, monkeypatch):
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    datasets = pytest.importorskip("datasets")
    data = mmcorpus.open_stage("finetune", root=finetune_root).to_hf_dataset(cache_dir=str(tmp_path / "hf"))
    assert isinstance(data, datasets.Dataset) and data.num_rows == 4
    assert data.features["images"] == datasets.Sequence(datasets.Image())
    by_id = {r["sample_id"]: r for r in data}
    (image,) = by_id["llava_instruct/mix665k/1"]["images"]
    assert image.size == (64, 48) and image.format == "PNG"
    assert by_id["llava_instruct/mix665k/2"]["images"] == []


def test_without_the_optional_libraries_the_methods_name_the_extra(finetune_root, monkeypatch):
    stage = mmcorpus.open_stage("finetune", root=finetune_root)
    monkeypatch.setitem(sys.modules, "datasets", None)  # what `import datasets` meets when it is not installed
    monkeypatch.setitem(sys.modules, "torch", None)
    with pytest.raises(UsageError, match=r"pip install 'mmcorpus\[hf\]'"):
        stage.to_hf_dataset()
    with pytest.raises(UsageError, match=r"pip install 'mmcorpus\[torch\]'"):
        stage.to_torch(shuffle_seed=0)


# ---------------------------------------------------------------------------------------------- torch


def test_readers_share_the_units_without_duplicates_or_gaps():
    units = [Unit(f, g, 0, 10) for f in range(3) for g in range(4)]  # 12 row groups
    for readers in (1, 2, 5, 12):
        for seed in (None, 7):
            parts = [assign(units, readers, r, seed) for r in range(readers)]
            assert sorted(u for part in parts for u in part) == sorted(units)
    assert assign(units, 3, 0, 1) == assign(units, 3, 0, 1) != assign(units, 3, 0, 2)
    assert assign(units, 3, 0, 1, epoch=0) != assign(units, 3, 0, 1, epoch=1)


def test_a_stage_with_fewer_row_groups_than_readers_still_feeds_every_reader():
    units = [Unit(0, 0, 0, 10), Unit(0, 1, 0, 3)]
    parts = [assign(units, 4, r, seed=0) for r in range(4)]
    assert all(parts)
    rows = Counter((u.file, u.group, i) for part in parts for u in part for i in range(u.start, u.stop))
    assert sorted(rows) == [(0, 0, i) for i in range(10)] + [(0, 1, i) for i in range(3)]
    assert set(rows.values()) == {1}


def test_units_are_the_row_groups_of_the_shards(tmp_path):
    table = pa.Table.from_pylist([row("d", "s", i) for i in range(25)], schema=UNIFIED_SCHEMA)
    pq.write_table(table, tmp_path / "a.parquet", row_group_size=10)
    pq.write_table(table.slice(0, 5), tmp_path / "b.parquet")
    metas = [pq.ParquetFile(tmp_path / name).metadata for name in ("a.parquet", "b.parquet")]
    assert row_group_units(metas) == [Unit(0, 0, 0, 10), Unit(0, 1, 0, 10), Unit(0, 2, 0, 5), Unit(1, 0, 0, 5)]


def sample_id(sample: dict) -> str:
    return sample["sample_id"]


@pytest.fixture
def many_groups_root(root, registry):
    write_normalized(root, "cc3m", "train", cc_rows(root, "cc3m", 40))
    prepare_stage(registry, root, "pretrain", samples_per_shard=12, row_group_rows=4)
    return root


def test_to_torch_dataloader_workers_and_ranks_read_each_sample_once(many_groups_root, monkeypatch):
    torch = pytest.importorskip("torch", reason="torch is not installed (pip install 'mmcorpus[torch]')")
    stage = mmcorpus.open_stage("pretrain", root=many_groups_root)
    ids = sorted(s["sample_id"] for s in stage)
    seen = []
    for rank in range(2):
        monkeypatch.setenv("RANK", str(rank))
        monkeypatch.setenv("WORLD_SIZE", "2")
        data = stage.to_torch(shuffle_seed=3, transform=sample_id)
        assert isinstance(data, torch.utils.data.IterableDataset)
        loader = torch.utils.data.DataLoader(data, batch_size=None, num_workers=2)
        seen += list(loader)
    assert sorted(seen) == ids
    monkeypatch.setenv("WORLD_SIZE", "1")
    monkeypatch.setenv("RANK", "0")
    one = [s["sample_id"] for s in stage.to_torch(shuffle_seed=3)]
    assert sorted(one) == ids and one == [s["sample_id"] for s in stage.to_torch(shuffle_seed=3)]
    assert one != [s["sample_id"] for s in stage.to_torch(shuffle_seed=4)]
    assert [s["sample_id"] for s in stage.to_torch()] == [s["sample_id"] for s in stage]  # no seed: stage order
    spawned = torch.utils.data.DataLoader(stage.to_torch(shuffle_seed=3), batch_size=None, num_workers=2,
                                          multiprocessing_context="spawn")  # the dataset pickled to new processes
    assert sorted(s["sample_id"] for s in spawned) == ids
