"""Normalizers: real LLaVA/ShareGPT4V records, constructed shapes from the samples README (labelled), hostile
records and files; URL-list rows from status parquets; normalize_dataset end to end (resolver, report, shards)."""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from helpers import SAMPLES

from mmcorpus.errors import EXIT_USAGE, BadInputError
from mmcorpus.normalize.formats import normalizer_module
from mmcorpus.normalize.formats.llava import convert
from mmcorpus.normalize.formats.llava import normalize as normalize_llava
from mmcorpus.normalize.job import Job
from mmcorpus.normalize.jsonarray import iter_json_array, split_points
from mmcorpus.normalize.resolve import (
    ImageResolver,
    decode_escapes,
    is_unsafe_path,
    sniff_format,
)
from mmcorpus.normalize.runner import dataset_image_paths, normalize_dataset
from mmcorpus.registry import parse_spec
from mmcorpus.schema import STATUS_SCHEMA, UNIFIED_SCHEMA


def llava_rows(path: Path, prefix: str = "", captions: bool = False, subset: str = "s") -> tuple[list[dict], Job]:
    job = Job(dataset="d", subset=subset, path=path, image_prefix=prefix, captions=captions)
    return [row for batch in normalize_llava(job) for row in batch.to_pylist()], job


def write_json(tmp_path: Path, records, name: str = "f.json") -> Path:
    path = tmp_path / name
    path.write_text(json.dumps(records), encoding="utf-8")
    return path


def turn(role: str, value: str) -> dict:
    return {"from": role, "value": value}


# ------------------------------------------------------------------------------------------ real records


def test_instruct150k_record_gets_coco_prefix_and_mapped_roles():
    rows, job = llava_rows(SAMPLES / "llava_instruct_sample.json", prefix="coco/train2017")
    (row,) = rows
    assert row["sample_id"] == "d/s/0" and row["source_id"] == "000000033471"
    assert row["image_path"] == "coco/train2017/000000033471.jpg"
    assert [t["role"] for t in row["conversations"]] == ["user", "assistant"] * 3
    assert row["conversations"][0]["content"].startswith("<image>\nWhat are the colors")
    assert row["caption"] is None and job.rejects.total == 0


def test_mix665k_record_keeps_its_own_prefix():
    (row,), _ = llava_rows(SAMPLES / "llava_mix665k_sample.json")
    assert row["image_path"] == "coco/train2017/000000033471.jpg"


def test_pretrain_records_fill_caption_with_suffix_image_token():
    rows, job = llava_rows(SAMPLES / "llava_pretrain_558k_sample.json", "llava/llava_pretrain/images", captions=True)
    assert [r["image_path"] for r in rows][0] == "llava/llava_pretrain/images/00453/004539375.jpg"
    assert rows[0]["caption"] == "select luxury furniture 3 - inch gel memory foam mattress topper"
    assert rows[0]["conversations"][0]["content"].endswith("\n<image>")  # kept as published (suffix form)
    assert [r["sample_id"] for r in rows] == ["d/s/0", "d/s/1", "d/s/2"]


def test_595k_chat_has_prefix_and_suffix_tokens():
    rows, job = llava_rows(SAMPLES / "llava_cc3m_595k_chat_sample.json", "llava_cc3m_595k/images", captions=True)
    assert len(rows) == 4 and job.rejects.total == 0
    assert rows[1]["conversations"][0]["content"].startswith("<image>\n")
    assert rows[1]["caption"] == "3d vector deluxe alphabet of randomly rotated thin golden symbols ."


def test_sharegpt4v_cap100k_long_caption():
    (row,), _ = llava_rows(SAMPLES / "sharegpt4v_cap100k_sample.json", captions=True)
    assert row["caption"].startswith("In the center of the image, a vibrant blue lunch tray")
    assert "\n\n" in row["caption"]


# ----------------------------------------------------------------------- constructed shapes (samples README)


def test_mixed_int_and_str_ids_and_text_only_record(tmp_path):
    records = [
        # constructed from the README's partial GQA record: integer id, several Q/A pairs
        {"id": 2327515, "image": "gqa/images/2327515.jpg", "conversations": [
            turn("human", "<image>\nAre there scarves or hats that are yellow?\nAnswer the question using a single word or phrase."),
            turn("gpt", "Yes"), turn("human", "Does the man wear shorts?"), turn("gpt", "No")]},
        # constructed OCR-VQA shape: ASIN id ending in X
        {"id": "140031996X", "image": "ocr_vqa/images/140031996X.jpg", "conversations": [
            turn("human", "<image>\nWho is the author of this book?"), turn("gpt", "H. Jackson Brown")]},
        # constructed ShareGPT text-only record: no image key at all
        {"id": "i6IyJda_0", "conversations": [turn("human", "hello"), turn("gpt", "hi")]},
    ]
    rows, job = llava_rows(write_json(tmp_path, records), captions=True)
    assert [r["source_id"] for r in rows] == ["2327515", "140031996X", "i6IyJda_0"]
    assert rows[2]["image_path"] is None and rows[2]["caption"] is None
    assert rows[0]["caption"] is None  # four turns: not a caption record
    assert rows[1]["caption"] == "H. Jackson Brown"  # two turns + image in a pretrain-stage dataset


def test_suffix_image_token_record(tmp_path):
    # constructed: the cat record of LLaVA-Instruct-150K (verbatim conversation, image name inferred)
    record = {"id": "000000052846", "image": "000000052846.jpg", "conversations": [
        turn("human", "Where is the cat positioned in the image?\n<image>"),
        turn("gpt", "The cat is positioned on top of the back of the couch in the living room."),
        turn("human", "What is the cat doing in the image?"),
        turn("gpt", "The cat is coming out from some curtains onto the couch and is sitting or standing on top of it.")]}
    (row,), job = llava_rows(write_json(tmp_path, [record]), prefix="coco/train2017")
    assert row["conversations"][0]["content"] == "Where is the cat positioned in the image?\n<image>"
    assert row["image_path"] == "coco/train2017/000000052846.jpg"


GOOD = [turn("human", "<image>\nq"), turn("gpt", "a")]


BROKEN = [
    ("just a string", "not_an_object"),
    ({"id": 1, "image": "a.jpg"}, "missing_conversations"),
    ({"id": 1, "image": "a.jpg", "conversations": []}, "missing_conversations"),
    ({"id": 1, "image": "a.jpg", "conversations": "hi"}, "bad_type"),
    ({"id": 1.5, "image": "a.jpg", "conversations": GOOD}, "bad_type"),
    ({"id": 1, "image": ["a.jpg"], "conversations": GOOD}, "bad_type"),
    ({"id": 1, "image": "a.jpg", "conversations": [turn("human", "<image>"), turn("gpt", 3)]}, "bad_type"),
    ({"id": 1, "image": "a.jpg", "conversations": [turn("human", "<image>\nq"), turn("system", "x")]}, "unknown_role"),
    ({"id": 1, "image": "a.jpg", "conversations": [turn("gpt", "<image>\nq"), turn("human", "a")]}, "role_order"),
    ({"id": 1, "image": "a.jpg", "conversations": [turn("human", "<image>\nq"), turn("human", "a")]}, "role_order"),
    ({"id": 1, "image": "a.jpg", "conversations": [turn("human", "<image>\nq")]}, "role_order"),
    ({"id": 1, "image": "a.jpg", "conversations": [turn("human", "q"), turn("gpt", "a")]}, "image_token_count"),
    ({"id": 1, "conversations": GOOD}, "image_token_count"),
    ({"id": 1, "image": "a.jpg", "conversations": [turn("human", "<image><image>"), turn("gpt", "a")]}, "image_token_count"),
    ({"id": 1, "image": "a.jpg", "conversations": [turn("human", "q"), turn("gpt", "a"), turn("human", "<image>"),
                                                   turn("gpt", "b")]}, "image_token_position"),
    ({"id": 1, "image": "/etc/passwd", "conversations": GOOD}, "bad_image_path"),
    ({"id": 1, "image": "../../x.jpg", "conversations": GOOD}, "bad_image_path"),
    ({"id": 1, "image": "a\u0000.jpg", "conversations": GOOD}, "bad_image_path"),
    ({"id": 1, "image": "coco\\a.jpg", "conversations": GOOD}, "bad_image_path"),
    ({"id": 1, "image": "", "conversations": GOOD}, "bad_image_path"),
    ({"id": 1, "image": "a.jpg", "conversations": [[["from", "human"], ["value", "<image>"]]]}, "bad_type"),
]


@pytest.mark.parametrize("record, reason", BROKEN)
def test_broken_records_are_rejected_with_reason(record, reason):
    assert convert(record) == reason


def test_broken_records_between_good_ones_in_one_batch(tmp_path):
    """The checks run over whole batches: each reject must land on its own record, and no good one."""
    good = {"id": "ok", "image": "a.jpg", "conversations": GOOD}
    records = [r for bad, _ in BROKEN for r in (good, bad)] + [good]
    rows, job = llava_rows(write_json(tmp_path, records))
    assert [r["sample_id"] for r in rows] == [f"d/s/{i}" for i in range(0, len(records), 2)]
    expected: dict[str, list[int]] = {}
    for i, (_, reason) in enumerate(BROKEN):
        expected.setdefault(reason, []).append(2 * i + 1)
    assert {r: job.rejects.examples[r] for r in job.rejects.counts} == {r: e[:5] for r, e in expected.items()}
    assert {r: n for r, n in job.rejects.counts.items()} == {r: len(e) for r, e in expected.items()}


def test_rejects_are_counted_with_examples_never_dropped_silently(tmp_path):
    good = {"id": "ok", "image": "a.jpg", "conversations": GOOD}
    bad = {"id": "bad", "image": "a.jpg", "conversations": [turn("gpt", "<image>"), turn("human", "x")]}
    records = [good, bad, good, bad, bad, 7]
    rows, job = llava_rows(write_json(tmp_path, records))
    assert [r["sample_id"] for r in rows] == ["d/s/0", "d/s/2"]  # indices are positions in the file
    assert job.rejects.as_dict() == {"not_an_object": {"count": 1, "examples": [5]},
                                     "role_order": {"count": 3, "examples": [1, 3, 4]}}


# ------------------------------------------------------------------------------------------- JSON files


def test_truncated_json_names_file_offset_and_record(tmp_path):
    path = write_json(tmp_path, [{"id": i, "conversations": [turn("human", "q"), turn("gpt", "a")]} for i in range(50)])
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(BadInputError, match=r"f\.json: truncated or invalid JSON at byte \d+ \(record 2[45]\)") as err:
        list(iter_json_array(path, chunk=64))
    assert err.value.exit_code == EXIT_USAGE


@pytest.mark.parametrize("text, message", [
    ('{"id": 1}', "not a JSON array"),
    ('[{"id": 1} {"id": 2}]', "expected ',' or ']'"),
    ('[{"id": 1}, {"id": 2,}]', r"byte 21 \(record 1\)"),
    ('[{"id": 1}] trailing', "after the end of the array"),
    ("", "not a JSON array"),
    ('[{"id": 1},', "file ends inside the array"),
])
def test_invalid_json_is_a_clear_error(tmp_path, text, message):
    path = tmp_path / "bad.json"
    path.write_text(text)
    with pytest.raises(BadInputError, match=message):
        list(iter_json_array(path, chunk=4))


def test_bad_utf8_is_a_clear_error(tmp_path):
    path = tmp_path / "bad.json"
    path.write_bytes(b'[{"value": "caf\xe9"}]')
    with pytest.raises(BadInputError, match="not UTF-8"):
        list(iter_json_array(path))


def test_tiny_chunks_and_layouts_parse_the_same(tmp_path):
    records = [{"id": i, "n": 12345 + i, "s": "é" * i + "\"]},{", "x": [True, None]} for i in range(30)]
    compact = tmp_path / "c.json"
    compact.write_text(json.dumps(records, separators=(",", ":"), ensure_ascii=False), encoding="utf-8")
    indented = tmp_path / "i.json"
    indented.write_text("\ufeff" + json.dumps(records, indent=2, ensure_ascii=False), encoding="utf-8")
    for path in (compact, indented):
        for chunk in (1, 3, 7, 1 << 20):
            assert list(iter_json_array(path, chunk=chunk)) == records
    (tmp_path / "e.json").write_text(" [ ] ")
    assert list(iter_json_array(tmp_path / "e.json")) == []


def test_split_points_cut_between_whole_records(tmp_path):
    records = [{"id": i, "conversations": [turn("human", "{\"conversations\": [1]}, " * (i % 7)), turn("gpt", "a")]}
               for i in range(400)]
    path = tmp_path / "f.json"
    path.write_text(json.dumps(records, indent=1))
    cuts = split_points(path, 4, lambda v: isinstance(v, dict) and "conversations" in v)
    assert len(cuts) == 5 and cuts[0] == 0 and cuts[-1] is None
    parts = [list(iter_json_array(path, a, b, chunk=256)) for a, b in zip(cuts, cuts[1:])]
    assert [r for part in parts for r in part] == records


# ------------------------------------------------------------------------------------------- URL lists


def write_status(path: Path, rows: list[dict]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    full = [{name: row.get(name) for name in STATUS_SCHEMA.names} for row in rows]
    pq.write_table(pa.Table.from_pylist(full, schema=STATUS_SCHEMA), path)


def cc3m_status(root: Path) -> None:
    lines = (SAMPLES / "cc3m_validation_sample.tsv").read_text(encoding="utf-8").splitlines()
    rows = []
    for i, line in enumerate(lines):
        caption, url = line.split("\t")
        ok = i != 1
        rows.append({"key": f"{i:09d}", "url": url, "caption": caption, "status": "ok" if ok else "failed",
                     "error": None if ok else "not_found", "http_status": 200 if ok else 404,
                     "width": 640 if ok else None, "height": 480 if ok else None,
                     "image_path": f"cc3m/validation/00000/{i:09d}.jpg" if ok else None})
    write_status(root / "images/cc3m/validation/00000.parquet", rows[:3])
    write_status(root / "images/cc3m/validation/00001.parquet", rows[3:])


def test_urllist_rows_from_status_parquets(root):
    cc3m_status(root)
    job = Job(dataset="cc3m", subset="validation", root=root)
    rows = [row for batch in normalizer_module("tsv").normalize(job) for row in batch.to_pylist()]
    assert [r["sample_id"] for r in rows] == ["cc3m/validation/0", "cc3m/validation/2", "cc3m/validation/3",
                                              "cc3m/validation/4"]
    assert rows[0]["caption"] == "author : a life in photography -- in pictures"
    assert rows[0]["image_url"].startswith("https://i.pinimg.com/") and rows[0]["conversations"] == []
    assert (rows[0]["width"], rows[0]["height"]) == (640, 480)
    assert job.stats["failed"] == {"not_found": 1}


# ------------------------------------------------------------------------------------- resolve quirks


def test_unsafe_paths_and_escape_decoding():
    assert not is_unsafe_path("coco/train2017/1.jpg") and not is_unsafe_path("a/..b/c..jpg")
    assert is_unsafe_path("C:/x.jpg") and is_unsafe_path("a/..") and is_unsafe_path("a\\b")
    name = "arnold-b#U00e3#U00b6cklin_soldiers-amount-towards-a-mountain-fortress.jpg"
    assert decode_escapes(name) == "arnold-bã¶cklin_soldiers-amount-towards-a-mountain-fortress.jpg"


GIF = b"GIF89a\x01\x00\x01\x00\x00\x00\x00;"
PNG = b"\x89PNG\r\n\x1a\n" + b"\x00" * 8
JPEG = b"\xff\xd8\xff\xe0" + b"\x00" * 8


def test_resolver_finds_wikiart_escaped_names_and_sniffs_ocr_vqa(tmp_path):
    images = tmp_path / "images"
    (images / "wikiart/images").mkdir(parents=True)
    (images / "wikiart/images/arnold-bã¶cklin_soldiers.gif").write_bytes(GIF)
    (images / "ocr_vqa/images").mkdir(parents=True)
    (images / "ocr_vqa/images/140031996X.jpg").write_bytes(GIF)
    (images / "ocr_vqa/images/0001.jpg").write_bytes(JPEG)
    resolver = ImageResolver(images)
    assert resolver.resolve("wikiart/images/arnold-b#U00e3#U00b6cklin_soldiers.jpg") == \
        "wikiart/images/arnold-bã¶cklin_soldiers.gif"
    assert resolver.resolve("ocr_vqa/images/140031996X.jpg") == "ocr_vqa/images/140031996X.jpg"  # JSON name kept
    assert resolver.resolve("ocr_vqa/images/0001.jpg") == "ocr_vqa/images/0001.jpg"
    assert resolver.resolve("sam/images/sa_411432.jpg") is None
    report = resolver.report()
    assert (report["found"], report["missing"], report["renamed"]) == (3, 1, 1)
    assert report["format_mismatch"] == {"gif named .jpg": 1}
    assert report["missing_by_folder"] == {"sam/images": {"count": 1, "examples": ["sam/images/sa_411432.jpg"]}}
    assert [sniff_format(b) for b in (PNG, b"", b"RIFF\0\0\0\0WEBPVP8 ")] == ["png", "empty", "webp"]


# ------------------------------------------------------------------------------------ normalize_dataset


def dataset_spec(**overrides):
    data = {"name": "sharegpt4v", "kind": "dataset", "stages": ["pretrain"], "license": "CC BY-NC 4.0",
            "format": {"type": "llava"},
            "files": {"cap100k": {"url": "https://example.org/cap100k.json"},
                      "meta": {"url": "https://example.org/meta.json", "role": "metadata"}}}
    return parse_spec({**data, **overrides}, Path("test.yaml"))


def place(root: Path, spec, key: str, records) -> Path:
    path = root / "downloads" / spec.name / spec.files[key].filename
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(records), encoding="utf-8")
    return path


def sharegpt4v_records() -> list:
    real = json.loads((SAMPLES / "sharegpt4v_cap100k_sample.json").read_text(encoding="utf-8"))
    cap = [turn("human", "<image>\nDescribe."), turn("gpt", "A painting.")]
    return real + [  # constructed path shapes from the samples README
        {"id": "sa_545504", "image": "sam/images/sa_545504.jpg", "conversations": cap},
        {"id": "w1", "image": "wikiart/images/arnold-b#U00e3#U00b6cklin_soldiers.jpg", "conversations": cap},
        {"id": "bad", "image": "../../etc/passwd", "conversations": cap},
    ]


def test_normalize_dataset_writes_shards_report_and_metadata(root):
    spec = dataset_spec()
    place(root, spec, "cap100k", sharegpt4v_records())
    (root / "images/coco/train2017").mkdir(parents=True)
    (root / "images/coco/train2017/000000000009.jpg").write_bytes(JPEG)
    (root / "images/wikiart/images").mkdir(parents=True)
    (root / "images/wikiart/images/arnold-bã¶cklin_soldiers.jpeg").write_bytes(JPEG)
    report = normalize_dataset(spec, root)
    assert list(report["subsets"]) == ["cap100k"]  # the metadata file is not normalized
    sub = report["subsets"]["cap100k"]
    assert (sub["records"], sub["rows"], sub["rejected"]) == (4, 3, 1)
    assert sub["rejects"] == {"bad_image_path": {"count": 1, "examples": [3]}}
    assert sub["images"]["missing_by_folder"] == {"sam/images": {"count": 1, "examples": ["sam/images/sa_545504.jpg"]}}
    out = root / "normalized/sharegpt4v"
    assert json.loads((out / "_cap100k.report.json").read_text()) == sub
    table = pq.read_table(out / "cap100k-00000.parquet")
    assert table.schema.equals(UNIFIED_SCHEMA, check_metadata=False)
    assert table.column("image_path").to_pylist() == ["coco/train2017/000000000009.jpg", "sam/images/sa_545504.jpg",
                                                      "wikiart/images/arnold-bã¶cklin_soldiers.jpeg"]
    meta = pq.read_schema(out / "cap100k-00000.parquet").metadata
    assert meta[b"dataset"] == b"sharegpt4v" and meta[b"license"] == b"CC BY-NC 4.0"
    assert json.loads(meta[b"source_urls"]) == ["https://example.org/cap100k.json"] and b"mmcorpus_version" in meta


def test_rerun_replaces_old_shards_only_when_complete(root):
    spec = dataset_spec()
    records = [{"id": i, "image": f"coco/train2017/{i}.jpg", "conversations": GOOD} for i in range(25)]
    place(root, spec, "cap100k", records)
    out = root / "normalized/sharegpt4v"
    normalize_dataset(spec, root, rows_per_shard=10, row_group_size=4)
    assert sorted(p.name for p in out.glob("cap100k-*.parquet")) == [f"cap100k-0000{i}.parquet" for i in range(3)]
    assert pq.ParquetFile(out / "cap100k-00000.parquet").metadata.num_row_groups == 3
    path = place(root, spec, "cap100k", records[:5])
    normalize_dataset(spec, root, rows_per_shard=10)
    assert sorted(p.name for p in out.glob("cap100k-*.parquet")) == ["cap100k-00000.parquet"]
    # A broken input fails cleanly and leaves the previous output in place.
    path.write_text(path.read_text()[:-20])
    with pytest.raises(BadInputError):
        normalize_dataset(spec, root)
    assert pq.read_table(out / "cap100k-00000.parquet").num_rows == 5
    assert not [p for p in out.iterdir() if p.name.startswith(".")]


def test_stale_staging_of_a_killed_run_is_removed(root):
    spec = dataset_spec()
    place(root, spec, "cap100k", [{"id": 1, "image": "a.jpg", "conversations": GOOD}])
    stale = root / "normalized/sharegpt4v/.staging-cap100k-999999999"
    stale.mkdir(parents=True)
    (stale / "spill001-00000.arrow").write_bytes(b"x" * 100)
    normalize_dataset(spec, root)
    assert not stale.exists()


def test_parallel_ranges_give_the_same_rows_as_one_process(root, monkeypatch):
    import mmcorpus.normalize.runner as normalize_module

    monkeypatch.setattr(normalize_module, "MIN_SPLIT_BYTES", 0)
    spec = dataset_spec()
    records = [{"id": i, "image": f"coco/train2017/{i}.jpg",
                "conversations": GOOD if i % 9 else [turn("gpt", "x")]} for i in range(3000)]
    place(root, spec, "cap100k", records)
    one = normalize_dataset(spec, root, workers=1)["subsets"]["cap100k"]
    single = pq.read_table(root / "normalized/sharegpt4v").to_pylist()
    three = normalize_dataset(spec, root, workers=3, rows_per_shard=1000)["subsets"]["cap100k"]
    assert three["parts"] == 3 and one["parts"] == 1
    assert pq.read_table(root / "normalized/sharegpt4v").to_pylist() == single
    assert three["rejects"]["role_order"]["count"] == one["rejects"]["role_order"]["count"] == 334
    assert three["rejects"]["role_order"]["examples"] == [0, 9, 18, 27, 36]


def test_missing_inputs_are_reported(root):
    report = normalize_dataset(dataset_spec(), root)
    assert report["subsets"]["cap100k"]["status"] == "not_downloaded"
    cc3m = parse_spec({"name": "cc3m", "kind": "dataset", "format": {"type": "tsv", "columns": ["caption", "url"]},
                       "files": {"train": {"url": "https://example.org/t.tsv"}}}, Path("cc3m.yaml"))
    assert normalize_dataset(cc3m, root)["subsets"]["train"]["status"] == "not_downloaded"  # no status shards


def test_dataset_image_paths_for_fetch_by_need(root):
    spec = dataset_spec()
    place(root, spec, "cap100k", sharegpt4v_records())
    assert list(dataset_image_paths(spec, root)) == ["coco/train2017/000000000009.jpg", "sam/images/sa_545504.jpg",
                                                     "wikiart/images/arnold-b#U00e3#U00b6cklin_soldiers.jpg"]


def test_normalize_url_list_dataset(root):
    cc3m_status(root)
    spec = parse_spec({"name": "cc3m", "kind": "dataset", "stages": ["pretrain"],
                       "format": {"type": "tsv", "columns": ["caption", "url"]}, "images": {"from": "url"},
                       "files": {"validation": {"url": "https://example.org/v.tsv"}}}, Path("cc3m.yaml"))
    sub = normalize_dataset(spec, root)["subsets"]["validation"]
    assert (sub["rows"], sub["source"]["failed"]) == (4, {"not_found": 1})
    assert sub["images"]["missing"] == 4  # the status rows say ok, but no image file is on disk here
    table = pq.read_table(root / "normalized/cc3m/validation-00000.parquet")
    assert table.column("caption").to_pylist()[1] == "photograph of the sign being repaired by brave person"


def test_bad_cut_falls_back_to_one_process(root, monkeypatch):
    import mmcorpus.normalize.runner as normalize_module
    from mmcorpus.normalize.formats import llava

    monkeypatch.setattr(normalize_module, "MIN_SPLIT_BYTES", 0)
    spec = dataset_spec()
    records = [{"id": i, "image": f"coco/train2017/{i}.jpg", "conversations": GOOD} for i in range(100)]
    path = place(root, spec, "cap100k", records)
    inside_a_record = path.read_bytes().index(b'"conversations"', 2000)
    monkeypatch.setattr(llava, "split_points", lambda p, parts: [0, inside_a_record, None])
    sub = normalize_dataset(spec, root, workers=2)["subsets"]["cap100k"]
    assert (sub["parts"], sub["rows"]) == (1, 100)
    ids = pq.read_table(root / "normalized/sharegpt4v").column("sample_id").to_pylist()
    assert ids == [f"sharegpt4v/cap100k/{i}" for i in range(100)]


def test_truncated_file_in_parallel_mode_gives_the_canonical_error(root, monkeypatch):
    import mmcorpus.normalize.runner as normalize_module

    monkeypatch.setattr(normalize_module, "MIN_SPLIT_BYTES", 0)
    spec = dataset_spec()
    path = place(root, spec, "cap100k", [{"id": i, "conversations": GOOD} for i in range(300)])
    path.write_bytes(path.read_bytes()[:-100])
    with pytest.raises(BadInputError, match=r"truncated or invalid JSON at byte \d+ \(record 29\d\)"):
        normalize_dataset(spec, root, workers=3)
    assert not (root / "normalized/sharegpt4v").exists() or not list((root / "normalized/sharegpt4v").iterdir())


def test_image_token_counts_over_the_values_buffer():
    from mmcorpus.normalize.formats.llava import _token_counts

    values = ["<image>\nq", "a <ima", "ge> b", "", None, "<image><image>", "é<image>", "<image"]
    array = pa.array(values, pa.string())
    assert _token_counts(array).tolist() == [1, 0, 0, 0, 0, 2, 1, 0]  # no match across two values
    assert _token_counts(array.slice(5)).tolist() == [2, 1, 0]


def test_captions_follow_the_files_stages(root):
    """ShareGPT4V serves both stages, but its SFT file's two-turn VQA answers are not captions."""
    spec = dataset_spec(stages=["pretrain", "finetune"], files={
        "cap100k": {"url": "https://example.org/cap100k.json", "stages": ["pretrain"]},
        "sft": {"url": "https://example.org/sft.json", "stages": ["finetune"]}})
    qa = [{"id": 1, "image": "gqa/images/1.jpg",
           "conversations": [turn("human", "<image>\nIs it red?"), turn("gpt", "Yes")]}]
    place(root, spec, "cap100k", qa)
    place(root, spec, "sft", qa)
    normalize_dataset(spec, root)
    captions = {s: pq.read_table(root / f"normalized/sharegpt4v/{s}-00000.parquet").column("caption").to_pylist()
                for s in ("cap100k", "sft")}
    assert captions == {"cap100k": ["Yes"], "sft": [None]}
