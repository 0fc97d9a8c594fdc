"""Stage mixes and prepare_stage: validation, usable-image filtering, duplicates, sampling, no-op re-runs and
atomic rebuilds. Normalized inputs are written directly in UNIFIED_SCHEMA, with real images made by PIL."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import yaml
from helpers import SAMPLES
from helpers.stage import (
    caption_row,
    cc_rows,
    chat_row,
    make_image,
    row,
    write_normalized,
)

from mmcorpus import __version__
from mmcorpus.core.locks import hold_lock
from mmcorpus.errors import (
    EXIT_LOCKED,
    EXIT_USAGE,
    BadInputError,
    ConfigError,
    LockedError,
    UsageError,
)
from mmcorpus.schema import UNIFIED_SCHEMA
from mmcorpus.stage.imagecheck import POOL_MIN, ImageCheck, ImageChecker
from mmcorpus.stage.mix import load_mix, resolve_mix, stage_files
from mmcorpus.stage.report import format_stage_summary
from mmcorpus.stage.prepare import prepare_stage, prepared_stages, read_manifest
from mmcorpus.stage.sampling import Rule, parse_rule



def stage_rows(root: Path, stage: str) -> list[dict]:
    files = sorted((root / "stages" / stage / "data").glob("*.parquet"))
    return [r for f in files for r in pq.read_table(f).to_pylist()]


def write_mix(tmp_path: Path, entries: list[dict], **top) -> Path:
    path = tmp_path / "mymix.yaml"
    path.write_text(yaml.safe_dump({"name": "mine", "datasets": entries, **top}), encoding="utf-8")
    return path


# ------------------------------------------------------------------------------------------------ mixes


def test_builtin_mixes_name_the_agreed_datasets(registry):
    files = stage_files()
    assert {"pretrain", "finetune"} <= set(files)
    _, pretrain = resolve_mix(registry, "pretrain", None)
    assert [e.label for e in pretrain.entries] == [
        "cc3m/train", "cc12m/train", "llava_pretrain/558k", "llava_cc3m_595k/chat", "sharegpt4v/pt", "sharegpt4v/cap100k",
    ]
    assert pretrain.text_only == "drop"
    _, finetune = resolve_mix(registry, "finetune", None)
    assert [e.label for e in finetune.entries] == ["llava_instruct/mix665k", "sharegpt4v/sft"]
    assert finetune.text_only == "keep"


@pytest.mark.parametrize(
    "text, rule",
    [("all", Rule("all")), ("first:10", Rule("first", n=10)), ("random:5", Rule("random", n=5)),
     ("weight:0.5", Rule("weight", weight=0.5)), ("weight:2", Rule("weight", weight=2.0))],
)
def test_sampling_rules_parse(text, rule):
    assert parse_rule(text) == rule
    assert str(parse_rule(text)) == text


@pytest.mark.parametrize("text", ["random:0", "random:-3", "first:x", "weight:0", "weight:-1", "weight:nan", "some", "all:3", 5])
def test_impossible_sampling_rules_say_what_to_write(text):
    with pytest.raises(ValueError) as info:
        parse_rule(text)
    assert "all, first:N, random:N or weight:W" in str(info.value)


@pytest.mark.parametrize(
    "entry, top, key, words",
    [
        ({"dataset": "cc3m", "subset": "train", "sampel": "all"}, {}, "datasets[0].sampel", "not a known key"),
        ({"dataset": "cc3n", "subset": "train"}, {}, "datasets[0].dataset", "did you mean cc3m"),
        ({"dataset": "coco_train2017", "subset": "train"}, {}, "datasets[0].dataset", "not a dataset"),
        ({"dataset": "cc3m", "subset": "tran"}, {}, "datasets[0].subset", "known: train, validation"),
        ({"dataset": "cc3m", "subset": "labels"}, {}, "datasets[0].subset", "unknown subset 'labels'"),
        ({"dataset": "cc3m", "subset": "train", "sample": "random:0"}, {}, "datasets[0].sample", "positive sample count"),
        ({"dataset": "cc3m", "subset": "train"}, {"text_only": "maybe"}, "text_only", "one of keep|drop; got 'maybe'"),
        ({"dataset": "cc3m", "subset": "train"}, {"text_only": True}, "text_only", "got true (YAML reads yes/no"),
        ({"dataset": "cc3m", "subset": "train"}, {"colour": "red"}, "colour", "not a known key"),
    ],
)
def test_bad_mix_is_a_usage_error_naming_file_and_key(tmp_path, registry, entry, top, key, words):
    path = write_mix(tmp_path, [entry], **top)
    with pytest.raises(ConfigError) as info:
        load_mix(path, registry)
    message = str(info.value)
    assert str(path) in message and f"'{key}'" in message and words in message
    assert "\n" not in message and info.value.exit_code == EXIT_USAGE


def test_a_mix_lists_each_subset_once(tmp_path, registry):
    path = write_mix(tmp_path, [{"dataset": "cc3m", "subset": "train"}, {"dataset": "cc3m", "subset": "train"}])
    with pytest.raises(ConfigError, match="repeats cc3m/train"):
        load_mix(path, registry)


def test_unknown_stage_and_format_are_usage_errors(root, registry):
    with pytest.raises(UsageError, match="unknown stage 'pretrian'.*--mix FILE"):
        prepare_stage(registry, root, "pretrian")
    with pytest.raises(UsageError, match="unknown format 'tfrecord'"):
        prepare_stage(registry, root, "pretrain", formats=["tfrecord"])


# ------------------------------------------------------------------------------------- nothing on disk


def test_nothing_fetched_exits_2_with_the_fetch_command(root, registry):
    with pytest.raises(UsageError) as info:
        prepare_stage(registry, root, "finetune")
    assert str(info.value) == "nothing fetched for stage finetune: run mmcorpus fetch llava_instruct sharegpt4v (then prepare again)"
    assert info.value.exit_code == EXIT_USAGE
    assert not (root / "stages" / "finetune").exists()


# ---------------------------------------------------------------------------------------- pretrain


@pytest.fixture
def pretrain_root(root):
    """cc3m (10 rows) and cc12m (6 rows) sharing one URL, plus one row of each kind of unusable sample."""
    shared = "https://img.example.com/shared.jpg"
    cc3m = cc_rows(root, "cc3m", 10, urls=[f"https://a.example/{i}" for i in range(9)] + [shared])
    cc3m.append(caption_row("cc3m", "train", 10, None, "link rot", url="https://gone.example/1"))  # failed download
    cc3m.append(caption_row("cc3m", "train", 11, "cc3m/train/00000/000000011.jpg", "never stored", url="https://c/11"))
    write_normalized(root, "cc3m", "train", cc3m)
    cc12m = cc_rows(root, "cc12m", 4, urls=[shared, " https://b.example/1 ", "https://b.example/2", "https://b.example/3"])
    empty = root / "images" / "cc12m/train/00000/empty.jpg"
    empty.write_bytes(b"")
    corrupt = root / "images" / "cc12m/train/00000/corrupt.jpg"
    corrupt.write_bytes(b"\xff\xd8\xff\xe0 this is not a jpeg")
    cc12m += [
        caption_row("cc12m", "train", 4, "cc12m/train/00000/empty.jpg", "empty", url="https://b.example/4"),
        caption_row("cc12m", "train", 5, "cc12m/train/00000/corrupt.jpg", "corrupt", url="https://b.example/5"),
        caption_row("cc12m", "train", 6, "../../etc/passwd", "escape", url="https://b.example/6"),
    ]
    write_normalized(root, "cc12m", "train", cc12m)
    llava = [chat_row("llava_pretrain", "558k", 0, make_image(root, "llava/llava_pretrain/images/00000/000000000.jpg"),
                      "<image>\nDescribe the image concisely.", "a red square"),
             row("llava_pretrain", "558k", 1, conversations=[{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}])]
    write_normalized(root, "llava_pretrain", "558k", llava)
    return root


def test_pretrain_keeps_usable_unique_samples_and_counts_every_drop(pretrain_root, registry):
    manifest = prepare_stage(registry, pretrain_root, "pretrain")
    by_label = {f"{d['dataset']}/{d['subset']}": d for d in manifest["datasets"]}
    assert by_label["cc3m/train"]["kept"] == 10
    assert by_label["cc3m/train"]["dropped"] == {"image_missing": 1, "image_not_downloaded": 1}
    assert by_label["cc12m/train"]["kept"] == 3
    assert by_label["cc12m/train"]["dropped"] == {
        "bad_image_path": 1, "duplicate_url": 1, "image_empty": 1, "image_undecodable": 1,
    }
    assert by_label["llava_pretrain/558k"]["dropped"] == {"text_only": 1}
    assert manifest["total"]["kept"] == 14 and manifest["total"]["rows"] == 21
    assert [m["dataset"] for m in manifest["missing"]] == ["llava_cc3m_595k", "sharegpt4v", "sharegpt4v"]
    assert manifest["spec_versions"] == {"cc3m": 1, "cc12m": 1, "llava_pretrain": 1}
    assert manifest["mmcorpus_version"] == __version__

    rows = stage_rows(pretrain_root, "pretrain")
    assert len(rows) == 14 and len({r["sample_id"] for r in rows}) == 14
    urls = [r["image_url"] for r in rows if r["image_url"]]
    assert urls.count("https://img.example.com/shared.jpg") == 1
    shared = next(r for r in rows if r["image_url"] == "https://img.example.com/shared.jpg")
    assert shared["dataset"] == "cc3m"  # the entry listed first keeps it
    assert all((pretrain_root / "images" / r["image_path"]).is_file() for r in rows)
    assert all((r["width"], r["height"]) == (64, 48) for r in rows)  # filled in from the image header
    on_disk = json.loads((pretrain_root / "stages/pretrain/manifest.json").read_text())
    assert on_disk == {k: v for k, v in manifest.items() if k != "unchanged"} == read_manifest(pretrain_root, "pretrain")


def test_stage_parquet_is_the_unified_schema_with_metadata(pretrain_root, registry):
    prepare_stage(registry, pretrain_root, "pretrain")
    (path,) = (pretrain_root / "stages/pretrain/data").glob("*.parquet")
    schema = pq.read_schema(path)
    assert schema.remove_metadata().equals(UNIFIED_SCHEMA)
    meta = {k.decode(): v.decode() for k, v in schema.metadata.items()}
    assert meta["stage"] == "pretrain" and meta["mmcorpus_version"] == __version__
    assert {d["dataset"] for d in json.loads(meta["datasets"])} == {"cc3m", "cc12m", "llava_pretrain"}
    assert "Google" in json.loads(meta["datasets"])[0]["license"]


def test_shards_hold_whole_row_groups(root, registry):
    write_normalized(root, "cc3m", "train", cc_rows(root, "cc3m", 45))
    manifest = prepare_stage(registry, root, "pretrain", samples_per_shard=20, row_group_rows=10)
    files = sorted((root / "stages/pretrain/data").glob("*.parquet"))
    assert [f.name for f in files] == ["pretrain-00000.parquet", "pretrain-00001.parquet", "pretrain-00002.parquet"]
    groups = [[pq.ParquetFile(f).metadata.row_group(i).num_rows for i in range(pq.ParquetFile(f).num_row_groups)] for f in files]
    assert groups == [[10, 10], [10, 10], [5]]
    assert [f["rows"] for f in manifest["outputs"]["parquet"]["files"]] == [20, 20, 5]
    assert sorted(p.name for p in (root / "stages/pretrain/data").iterdir()) == [f.name for f in files]  # no temporaries


# ---------------------------------------------------------------------------------------- finetune


def test_finetune_keeps_text_only_and_drops_identical_records(root, registry):
    coco = make_image(root, "coco/train2017/000000033471.jpg")
    mix665k = [
        chat_row("llava_instruct", "mix665k", 0, coco, "<image>\nWhat are the colors of the bus?", "White and red."),
        chat_row("llava_instruct", "mix665k", 1, coco, "What is in the image?\n<image>", "A bus."),
        row("llava_instruct", "mix665k", 2, conversations=[{"role": "user", "content": "Tell a joke."},
                                                           {"role": "assistant", "content": "No."}]),
    ]
    write_normalized(root, "llava_instruct", "mix665k", mix665k)
    sft = [
        chat_row("sharegpt4v", "sft", 0, coco, "What are the colors of the bus?\n<image>", "White and red."),  # same record
        chat_row("sharegpt4v", "sft", 1, coco, "<image>\nDescribe the image in detail.", "A long caption."),
        row("sharegpt4v", "sft", 2, conversations=[{"role": "user", "content": "Tell a joke. "},
                                                   {"role": "assistant", "content": "No."}]),  # same text-only record
    ]
    write_normalized(root, "sharegpt4v", "sft", sft)
    manifest = prepare_stage(registry, root, "finetune", formats=["parquet", "webdataset"])
    assert manifest["total"]["kept"] == 4
    assert manifest["total"]["dropped"] == {"duplicate_record": 2}
    # the WebDataset export says what it left out (an image-text loader cannot use a text-only row)
    assert "4 tar shard(s)" not in format_stage_summary(manifest)
    assert "1 tar shard(s) in webdataset/ (3 samples, skipped 1 text-only rows)" in format_stage_summary(manifest)
    ids = sorted(r["sample_id"] for r in stage_rows(root, "finetune"))  # shards hold a shuffle of the mix
    assert ids == ["llava_instruct/mix665k/0", "llava_instruct/mix665k/1", "llava_instruct/mix665k/2", "sharegpt4v/sft/1"]


# ---------------------------------------------------------------------------------------- sampling


def sampled_ids(root, registry, tmp_path, rule, seed=None, entry_seed=None) -> list[str]:
    """The ids the rule kept, in row order (the stage itself holds them shuffled)."""
    entry = {"dataset": "cc3m", "subset": "train", "sample": rule}
    if entry_seed is not None:
        entry["seed"] = entry_seed
    mix = write_mix(tmp_path, [entry])
    prepare_stage(registry, root, mix_file=mix, seed=seed, force=True)
    return sorted((r["sample_id"] for r in stage_rows(root, "mine")), key=row_order)


def row_order(sample_id: str) -> tuple:
    """cc3m/train/2 before cc3m/train/10, cc3m/train/0 before its copy cc3m/train/0#1."""
    base, _, copy = sample_id.partition("#")
    prefix, _, index = base.rpartition("/")
    return prefix, int(index), int(copy or 0)


def test_first_n_takes_the_first_usable_rows(root, registry, tmp_path):
    rows = cc_rows(root, "cc3m", 8)
    rows[1]["image_path"] = "cc3m/train/00000/missing.jpg"
    write_normalized(root, "cc3m", "train", rows)
    assert sampled_ids(root, registry, tmp_path, "first:3") == ["cc3m/train/0", "cc3m/train/2", "cc3m/train/3"]
    summary = read_manifest(root, "mine")["datasets"][0]
    assert (summary["kept"], summary["dropped"], summary["not_sampled"], summary["rows"]) == (3, {"image_missing": 1}, 4, 8)


def test_random_n_is_fixed_by_the_seed_not_by_file_layout(root, registry, tmp_path):
    rows = cc_rows(root, "cc3m", 40)
    write_normalized(root, "cc3m", "train", rows)
    first = sampled_ids(root, registry, tmp_path, "random:7", seed=1)
    assert len(first) == 7 and first == sampled_ids(root, registry, tmp_path, "random:7", seed=1)
    assert first != sampled_ids(root, registry, tmp_path, "random:7", seed=2)
    os.remove(root / "normalized/cc3m/train-00000.parquet")
    write_normalized(root, "cc3m", "train", rows[:13], shard=0)
    write_normalized(root, "cc3m", "train", rows[13:], shard=1)
    assert sampled_ids(root, registry, tmp_path, "random:7", seed=1) == first


def test_random_n_skips_unusable_rows_and_takes_all_when_short(root, registry, tmp_path):
    rows = cc_rows(root, "cc3m", 6)
    rows[0]["image_path"] = "cc3m/train/00000/missing.jpg"
    write_normalized(root, "cc3m", "train", rows)
    assert sampled_ids(root, registry, tmp_path, "random:100") == [f"cc3m/train/{i}" for i in range(1, 6)]


def test_entry_seed_overrides_the_mix_seed(root, registry, tmp_path):
    write_normalized(root, "cc3m", "train", cc_rows(root, "cc3m", 30))
    mixed = sampled_ids(root, registry, tmp_path, "random:5", seed=3)
    assert sampled_ids(root, registry, tmp_path, "random:5", seed=9, entry_seed=3) == mixed


def test_weight_repeats_or_thins_samples(root, registry, tmp_path):
    write_normalized(root, "cc3m", "train", cc_rows(root, "cc3m", 200))
    doubled = sampled_ids(root, registry, tmp_path, "weight:2")
    assert len(doubled) == 400 and len(set(doubled)) == 400
    assert doubled[:4] == ["cc3m/train/0", "cc3m/train/0#1", "cc3m/train/1", "cc3m/train/1#1"]
    summary = read_manifest(root, "mine")["datasets"][0]
    assert (summary["kept"], summary["repeats"], summary["dropped"]) == (400, 200, {})
    half = sampled_ids(root, registry, tmp_path, "weight:0.5")
    assert 70 < len(half) < 130 and half == sampled_ids(root, registry, tmp_path, "weight:0.5")


def test_datasets_option_picks_entries_of_the_mix(pretrain_root, registry):
    manifest = prepare_stage(registry, pretrain_root, "pretrain", datasets=["cc12m"])
    assert [d["dataset"] for d in manifest["datasets"]] == ["cc12m"]
    assert manifest["datasets"][0]["dropped"].get("duplicate_url") is None  # cc3m is not in this run
    with pytest.raises(UsageError, match="'coco' is not in mix 'pretrain'"):
        prepare_stage(registry, pretrain_root, "pretrain", datasets=["coco"])


# ------------------------------------------------------------------------------- re-runs and failures


def test_rerun_with_nothing_changed_does_nothing(pretrain_root, registry):
    lines = []
    first = prepare_stage(registry, pretrain_root, "pretrain", log=lines.append)
    assert lines[:2] == ["stage pretrain: cc3m/train (all)", "stage pretrain: cc12m/train (all)"]
    data = pretrain_root / "stages/pretrain/data/pretrain-00000.parquet"
    inode = data.stat().st_ino
    again = prepare_stage(registry, pretrain_root, "pretrain")
    assert again["unchanged"] is True and first["unchanged"] is False
    assert again["fingerprint"] == first["fingerprint"] and data.stat().st_ino == inode


def test_changed_input_or_options_rebuild(pretrain_root, registry):
    first = prepare_stage(registry, pretrain_root, "pretrain")
    write_normalized(pretrain_root, "cc3m", "train", cc_rows(pretrain_root, "cc3m", 3))
    second = prepare_stage(registry, pretrain_root, "pretrain")
    assert not second["unchanged"] and second["fingerprint"] != first["fingerprint"]
    assert second["datasets"][0]["rows"] == 3
    third = prepare_stage(registry, pretrain_root, "pretrain", formats=["parquet", "llava"])
    assert not third["unchanged"] and (pretrain_root / "stages/pretrain/llava/pretrain.json").is_file()
    marker = pretrain_root / "images/llava/llava_pretrain/images/.mmcorpus/images.zip.done"
    marker.parent.mkdir(parents=True)
    marker.write_text("{}")  # a collection finished extracting: more images may be usable now
    assert not prepare_stage(registry, pretrain_root, "pretrain", formats=["parquet", "llava"])["unchanged"]


def test_another_format_set_keeps_the_data_shards_and_unchanged_exports(pretrain_root, registry):
    stage = pretrain_root / "stages/pretrain"
    first = prepare_stage(registry, pretrain_root, "pretrain", formats=["parquet", "webdataset"])
    data = stage / "data/pretrain-00000.parquet"
    inode = data.stat().st_ino
    lines = []
    plain = prepare_stage(registry, pretrain_root, "pretrain", log=lines.append)
    assert not plain["unchanged"] and data.stat().st_ino == inode  # the same file: not rewritten
    assert not (stage / "webdataset").exists() and lines == ["stage pretrain: data unchanged, updating the exports"]
    assert plain["total"] == first["total"] and plain["data_fingerprint"] == first["data_fingerprint"]
    assert set(plain["outputs"]) == {"parquet"} and plain["options"]["formats"] == ["parquet"]
    llava = prepare_stage(registry, pretrain_root, "pretrain", formats=["parquet", "llava"])
    export = stage / "llava/pretrain.json"
    assert data.stat().st_ino == inode and json.loads(export.read_text())
    export_inode = export.stat().st_ino
    both = prepare_stage(registry, pretrain_root, "pretrain", formats=["parquet", "llava", "webdataset"])
    assert data.stat().st_ino == inode and export.stat().st_ino == export_inode
    assert both["outputs"]["webdataset"]["shards"] and both["outputs"]["llava"] == llava["outputs"]["llava"]
    assert read_manifest(pretrain_root, "pretrain")["fingerprint"] == both["fingerprint"] != first["fingerprint"]
    assert prepare_stage(registry, pretrain_root, "pretrain", formats=["parquet", "llava", "webdataset"])["unchanged"]
    rebuilt = prepare_stage(registry, pretrain_root, "pretrain", force=True)  # --force still rebuilds everything
    assert data.stat().st_ino != inode and rebuilt["total"] == first["total"]


def test_failed_prepare_keeps_the_previous_stage(pretrain_root, registry, monkeypatch):
    prepare_stage(registry, pretrain_root, "pretrain")
    before = sorted(p.name for p in (pretrain_root / "stages/pretrain").rglob("*"))
    write_normalized(pretrain_root, "cc3m", "train", cc_rows(pretrain_root, "cc3m", 3))

    def broken(*args, **kwargs):
        raise RuntimeError("disk full")

    monkeypatch.setattr("mmcorpus.stage.prepare.write_report", broken)
    with pytest.raises(RuntimeError, match="disk full"):
        prepare_stage(registry, pretrain_root, "pretrain")
    assert sorted(p.name for p in (pretrain_root / "stages/pretrain").rglob("*")) == before
    assert read_manifest(pretrain_root, "pretrain")["total"]["kept"] == 14
    assert [p.name for p in (pretrain_root / "stages").iterdir()] == ["pretrain"]


def test_a_swap_interrupted_between_renames_is_undone(pretrain_root, registry):
    first = prepare_stage(registry, pretrain_root, "pretrain")
    stages = pretrain_root / "stages"
    os.rename(stages / "pretrain", stages / ".pretrain.old-999")  # killed after "rename old aside"
    (stages / ".pretrain.tmp-999").mkdir()  # ... with its half-built folder left behind
    again = prepare_stage(registry, pretrain_root, "pretrain")
    assert again["unchanged"] and again["fingerprint"] == first["fingerprint"]
    assert [p.name for p in stages.iterdir()] == ["pretrain"]


def test_a_running_prepare_holds_the_stage_lock(pretrain_root, registry):
    with hold_lock(pretrain_root, "stages.pretrain"):
        with pytest.raises(LockedError) as info:
            prepare_stage(registry, pretrain_root, "pretrain")
    assert info.value.exit_code == EXIT_LOCKED
    assert not (pretrain_root / "stages" / "pretrain").exists()
    prepare_stage(registry, pretrain_root, "pretrain")  # released: the next run goes ahead


def test_image_checks_in_the_process_pool_match_in_process(root):
    paths = [make_image(root, f"coco/train2017/{i:012d}.jpg", size=(30 + i, 20)) for i in range(5)]
    (root / "images/coco/train2017/empty.jpg").write_bytes(b"")
    paths += ["coco/train2017/empty.jpg", "/etc/passwd", "a/../../b.jpg"]
    paths += [f"coco/train2017/missing-{i}.jpg" for i in range(POOL_MIN)]
    with ImageChecker(root / "images", workers=1) as serial, ImageChecker(root / "images", workers=2) as pooled:
        pooled.prefetch(paths)
        assert pooled.pool is not None  # enough paths to use the pool
        assert [pooled.check(p) for p in paths] == [serial.check(p) for p in paths]
    assert serial.check(paths[3]) == ImageCheck(None, 33, 20)
    assert [serial.check(p).reason for p in paths[5:9]] == ["image_empty", "bad_image_path", "bad_image_path", "image_missing"]


def test_images_of_a_collection_never_fetched_cost_no_pool(root):
    """Every image of an absent folder (a collection not fetched) is missing: one stat of the folder decides."""
    make_image(root, "coco/train2017/1.jpg")
    paths = [f"ocr_vqa/images/{i}.jpg" for i in range(2 * POOL_MIN)] + ["../etc/passwd", "coco/train2017/1.jpg"]
    with ImageChecker(root / "images", workers=2) as checker:
        checker.prefetch(paths)
        assert checker.pool is None
        reasons = [checker.check(p).reason for p in paths]
    assert reasons == ["image_missing"] * (2 * POOL_MIN) + ["bad_image_path", None]


def test_prepared_stages_lists_manifests_for_status(pretrain_root, registry):
    assert prepared_stages(pretrain_root) == {}
    manifest = prepare_stage(registry, pretrain_root, "pretrain")
    (pretrain_root / "stages" / ".pretrain.tmp-1").mkdir()  # leftovers are not stages
    assert prepared_stages(pretrain_root) == {"pretrain": {k: v for k, v in manifest.items() if k != "unchanged"}}


def test_a_stage_where_nothing_is_usable_still_has_a_readable_shard_and_report(root, registry):
    write_normalized(root, "cc3m", "train", [caption_row("cc3m", "train", 0, "cc3m/train/00000/gone.jpg", "x", url="u")])
    manifest = prepare_stage(registry, root, "pretrain", formats=["llava", "webdataset"])
    assert manifest["total"]["kept"] == 0 and manifest["total"]["dropped"] == {"image_missing": 1}
    (shard,) = (root / "stages/pretrain/data").glob("*.parquet")
    assert pq.read_table(shard).num_rows == 0 and pq.read_schema(shard).remove_metadata().equals(UNIFIED_SCHEMA)
    assert json.loads((root / "stages/pretrain/llava/pretrain.json").read_text()) == []
    assert "samples kept" in (root / "stages/pretrain/report.html").read_text()


def test_a_normalized_file_outside_the_schema_is_bad_input(pretrain_root, registry):
    prepare_stage(registry, pretrain_root, "pretrain")
    bad = pretrain_root / "normalized/cc12m/train-00001.parquet"
    pq.write_table(pa.table({"sample_id": ["cc12m/train/99"], "caption": ["no other columns"]}), bad)
    with pytest.raises(BadInputError) as info:
        prepare_stage(registry, pretrain_root, "pretrain")
    assert str(bad) in str(info.value) and "no column 'dataset'" in str(info.value)
    assert info.value.exit_code == EXIT_USAGE
    assert read_manifest(pretrain_root, "pretrain")["total"]["kept"] == 14  # the stage before is intact


def test_prepare_workers_also_size_the_image_check_pool(pretrain_root, registry, monkeypatch):
    import mmcorpus.stage.prepare as stages
    from mmcorpus.ops.prepare import prepare

    sizes = []

    class Recording(ImageChecker):
        def __init__(self, images_root, **kwargs):
            sizes.append(kwargs.get("workers"))
            super().__init__(images_root, **kwargs)

    monkeypatch.setattr(stages, "ImageChecker", Recording)
    prepare(registry, pretrain_root, stage="pretrain", workers=1)
    assert sizes == [1]


def test_a_normalize_killed_under_force_is_redone_by_the_next_prepare(root, registry, monkeypatch):
    import shutil

    import mmcorpus.ops.prepare as prepare_module
    from mmcorpus.ops.prepare import normalize_if_changed

    spec = registry.get("llava_pretrain")
    source = SAMPLES / "llava_pretrain_558k_sample.json"
    (root / "downloads" / "llava_pretrain").mkdir(parents=True)
    shutil.copy(source, root / "downloads" / "llava_pretrain" / spec.files["558k"].filename)
    assert normalize_if_changed(registry, root, "llava_pretrain", "558k")["status"] == "ok"
    assert normalize_if_changed(registry, root, "llava_pretrain", "558k") == {"status": "unchanged"}

    def killed(*args, **kwargs):
        raise KeyboardInterrupt  # kill -9 in the middle of publishing the new shards

    monkeypatch.setattr(prepare_module, "normalize_subset", killed)
    with pytest.raises(KeyboardInterrupt):
        normalize_if_changed(registry, root, "llava_pretrain", "558k", force=True)
    monkeypatch.undo()
    assert normalize_if_changed(registry, root, "llava_pretrain", "558k")["status"] == "ok"  # not "unchanged"


# ------------------------------------------------------------------- shard size, hf export, re-exports


def test_a_bad_samples_per_shard_is_a_usage_error(pretrain_root, registry):
    with pytest.raises(UsageError, match="--samples-per-shard must be a positive number of samples, got 0"):
        prepare_stage(registry, pretrain_root, "pretrain", samples_per_shard=0)


def test_a_reexport_keeps_the_hf_export_and_rewrites_the_card(pretrain_root, registry):
    stage = pretrain_root / "stages/pretrain"
    first = prepare_stage(registry, pretrain_root, "pretrain", formats=["parquet", "hf"])
    shard = stage / "hf/data/train-00000.parquet"
    inode = shard.stat().st_ino
    both = prepare_stage(registry, pretrain_root, "pretrain", formats=["parquet", "hf", "llava"])
    assert shard.stat().st_ino == inode and both["outputs"]["hf"] == first["outputs"]["hf"]
    assert both["data_fingerprint"] == first["data_fingerprint"]
    assert "llava/pretrain.json" in (stage / "README.md").read_text()
    resized = prepare_stage(registry, pretrain_root, "pretrain", formats=["parquet", "hf"], samples_per_shard=5)
    assert resized["data_fingerprint"] != first["data_fingerprint"]  # the shard size is the data's, not an export's
    assert [f["rows"] for f in resized["outputs"]["parquet"]["files"]] == [5, 5, 4]
    assert [f["samples"] for f in resized["outputs"]["hf"]["files"]] == [5, 5, 4]
