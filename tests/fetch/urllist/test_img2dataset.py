"""--engine img2dataset without img2dataset: planning, the conversion of img2dataset 1.47's output into our
layout, resume, the error mapping. `i2d_writer` stands in for img2dataset.download() and writes exactly what
1.47 writes with output_format="files" (writer.FilesSampleWriter, downloader.compute_key, logger.write_stats;
the error texts are those 1.47 produced against the local mirror). The real thing runs in
tests/img2dataset_e2e (scripts/ci/test_img2dataset.sh)."""

from __future__ import annotations

import hashlib
import io
import json
import math
import sys
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from helpers.urllist import status_rows as urllist_status_rows
from PIL import Image

from mmcorpus import layout
from mmcorpus.errors import UsageError
from mmcorpus.fetch.urllist.executors import run_url_list
from mmcorpus.fetch.urllist.img2dataset import (
    download_arguments,
    fetch_with_img2dataset,
    map_error,
    refused,
)
from mmcorpus.fetch.urllist.native import fetch_url_list
from mmcorpus.fetch.urllist.plan import UrlListOptions
from mmcorpus.registry import Spec

CC12M = Spec(name="cc12m", kind="dataset", source=Path("cc12m.yaml"), format_columns=("url", "caption"))
BASE = "http://images.example.org"


def options(**overrides) -> UrlListOptions:
    values = dict(workers=2, threads=4, shard_size=4, progress=False, shard=(0, 1))
    values.update(overrides)
    return UrlListOptions(**values)


def jpeg(size: tuple[int, int]) -> bytes:
    out = io.BytesIO()
    Image.new("RGB", size, (size[0] % 256, 40, 90)).save(out, "JPEG", quality=90)
    return out.getvalue()


# What img2dataset 1.47 reports per URL name: (status, error_message, image bytes)
OUTCOMES = {
    "missing": ("failed_to_download", "HTTP Error 404: Not Found", None),
    "gone": ("failed_to_download", "HTTP Error 410: Gone", None),
    "broken": ("failed_to_download", "HTTP Error 500: Internal Server Error", None),
    "page": ("failed_to_resize", "Image decoding error", None),
    "noai": ("failed_to_download", "Use of image disallowed by X-Robots-Tag directive", None),
    "slow": ("failed_to_download", "timed out", None),
    "cut": ("failed_to_download", "IncompleteRead(100 bytes read, 551 more expected)", None),
}


class I2dWriter:
    """img2dataset.download() as far as our engine sees it: reads the parquet input folder, writes 1.47's
    output_format="files" layout. `unfinished`: img2dataset shard ids left without their stats file."""

    def __init__(self, unfinished: frozenset[int] = frozenset()):
        self.unfinished = unfinished
        self.calls: list[dict] = []
        self.urls: list[str] = []

    def __call__(self, **kw) -> None:
        self.calls.append(kw)
        print("Starting the downloading of this file")  # img2dataset talks on stdout
        assert kw["input_format"] == "parquet" and kw["output_format"] == "files"
        out = Path(kw["output_folder"])
        out.mkdir()
        per_shard, oom_shards = kw["number_sample_per_shard"], kw["oom_shard_count"]
        oom_samples = math.ceil(math.log10(per_shard))
        shard_id = 0
        for input_file in sorted(Path(kw["url_list"]).glob("*.parquet")):
            table = pq.read_table(input_file).rename_columns(["url", "caption", *kw["save_additional_columns"]])
            columns = [*kw["save_additional_columns"], "caption", "url"]  # reader.column_list
            rows = table.select(columns).to_pylist()
            for start in range(0, len(rows), per_shard):
                self._shard(out, shard_id, rows[start:start + per_shard], oom_samples, oom_shards)
                shard_id += 1

    def _shard(self, out: Path, shard_id: int, rows: list[dict], oom_samples: int, oom_shards: int) -> None:
        name = f"{shard_id:0{oom_shards}d}"
        (out / name).mkdir()
        metas = []
        for i, sample in enumerate(reversed(rows)):  # completion order, not input order
            i = len(rows) - 1 - i
            self.urls.append(sample["url"])
            key = f"{10**oom_samples * shard_id + i:0{oom_samples + oom_shards}d}"
            status, error, data = OUTCOMES.get(sample["url"].rsplit("/", 1)[-1], ("success", None, None))
            meta = {**sample, "key": key, "status": status, "error_message": error, "width": None, "height": None,
                    "original_width": None, "original_height": None}
            if status == "success":
                data = jpeg((30 + i, 20 + i))
                meta.update(width=30 + i, height=20 + i, original_width=30 + i, original_height=20 + i)
                (out / name / f"{key}.jpg").write_bytes(data)
                (out / name / f"{key}.txt").write_text(sample["caption"])
                (out / name / f"{key}.json").write_text(json.dumps(meta, indent=4))
            metas.append(meta)
        schema = pa.schema([("mm_index", pa.int64()), ("mm_url", pa.string()), ("caption", pa.string()),
                            ("url", pa.string()), ("key", pa.string()), ("status", pa.string()),
                            ("error_message", pa.string()), ("width", pa.int32()), ("height", pa.int32()),
                            ("original_width", pa.int32()), ("original_height", pa.int32())])
        pq.write_table(pa.Table.from_pylist(metas, schema), out / f"{name}.parquet")
        if shard_id not in self.unfinished:
            (out / f"{name}_stats.json").write_text(json.dumps({"count": len(rows), "successes": 0}))


def write_list(path: Path) -> Path:
    """CC12M layout (url TAB caption): 14 lines, shards of 4: [0-3] [4-7] [8-11] [12-13]."""
    names = ["a", "missing", "b", "gone", "broken", None, "page", "c", "noai", "slow", "private", "cut", "d", "e"]
    lines = [f"{BASE}/{n}\tcaption {i} \"quoted\", with comma" if n else "no tab here" for i, n in enumerate(names)]
    lines[10] = "http://10.0.0.7/private.jpg\tcaption 10"
    path.write_text("\n".join(lines) + "\n")
    return path


def status_rows(root: Path) -> list[dict]:
    return urllist_status_rows(root, "cc12m")  # every status parquet, its schema checked


def test_output_converted_into_our_layout(tmp_path, root, capfd):
    tsv = write_list(tmp_path / "list.tsv")
    writer = I2dWriter()
    summary = fetch_with_img2dataset(CC12M, "train", tsv, root, options(), download=writer)

    rows = status_rows(root)
    assert [r["key"] for r in rows] == [f"{i:09d}" for i in range(14) if i != 5]
    outcome = {r["url"].rsplit("/", 1)[-1]: (r["status"], r["error"], r["http_status"]) for r in rows}
    assert outcome == {
        "a": ("ok", None, 200), "b": ("ok", None, 200), "c": ("ok", None, 200), "d": ("ok", None, 200),
        "e": ("ok", None, 200), "missing": ("failed", "not_found", 404), "gone": ("failed", "not_found", 410),
        "broken": ("failed", "http_error", 500), "page": ("failed", "not_image", 200),
        "noai": ("failed", "opted_out", 200), "slow": ("failed", "timeout", None),
        "cut": ("failed", "connection", None), "private.jpg": ("failed", "blocked_url", None),
    }
    assert "http://10.0.0.7/private.jpg" not in writer.urls  # refused before img2dataset sees it
    for row in rows:
        assert row["caption"] == f"caption {int(row['key'])}" + ("" if row["key"].endswith("10") else ' "quoted", with comma')
        if row["status"] == "ok":
            assert row["image_path"] == f"cc12m/train/{int(row['key']) // 4:05d}/{row['key']}.jpg"
            data = (root / "images" / row["image_path"]).read_bytes()
            assert hashlib.sha256(data).hexdigest() == row["sha256"] and row["bytes"] == len(data)
            assert Image.open(io.BytesIO(data)).size == (row["width"], row["height"])
    markers = {p.name: json.loads(p.read_text()) for p in (root / "images" / "cc12m" / "train").glob("*.done")}
    assert sorted(markers) == ["00000.done", "00001.done", "00002.done", "00003.done"]
    assert markers["00001.done"]["malformed"] == [[6, "no_tab"]] and markers["00001.done"]["end"] == 8
    assert markers["00003.done"]["engine"] == "img2dataset"
    assert (summary.rows, summary.ok, summary.shards_done, summary.malformed) == (13, 5, [0, 1, 2, 3], {"no_tab": 1})
    assert summary.failed == {"not_found": 2, "http_error": 1, "not_image": 1, "opted_out": 1, "timeout": 1,
                              "connection": 1, "blocked_url": 1}
    assert not layout.img2dataset_work(root).exists()
    captured = capfd.readouterr()
    assert "Starting the downloading" not in captured.out and "Starting the downloading" in captured.err

    again = fetch_with_img2dataset(CC12M, "train", tsv, root, options(), download=I2dWriter())
    assert (again.shards_skipped, again.fetched, again.ok) == ([0, 1, 2, 3], 0, 5)


def test_unfinished_shard_is_fetched_again_and_transient_failures_retried(tmp_path, root):
    tsv = write_list(tmp_path / "list.tsv")
    first = fetch_with_img2dataset(CC12M, "train", tsv, root, options(), download=I2dWriter(frozenset({2})))
    assert first.shards_done == [0, 1, 3]  # img2dataset's shard 2 (our shard 2) has no stats file
    assert not (root / "images" / "cc12m" / "train" / "00002.parquet").exists()

    writer = I2dWriter()
    second = fetch_with_img2dataset(CC12M, "train", tsv, root, options(), download=writer)
    assert (second.shards_done, second.shards_skipped) == ([2], [0, 1, 3])
    assert sorted(u.rsplit("/", 1)[-1] for u in writer.urls) == ["cut", "noai", "slow"]  # 10.0.0.7 blocked here

    writer = I2dWriter()
    third = fetch_with_img2dataset(CC12M, "train", tsv, root, options(retry_failed=True), download=writer)
    assert sorted(u.rsplit("/", 1)[-1] for u in writer.urls) == ["broken", "cut", "slow"]  # transient only
    assert third.shards_done == [1, 2] and third.rows == 13


def test_limit_and_shard_slice(tmp_path, root):
    tsv = write_list(tmp_path / "list.tsv")
    writer = I2dWriter()
    other_slice = layout.img2dataset_work(root) / "cc12m-train-shard-0-of-2" / "input"  # machine 0 at work on a shared root
    other_slice.mkdir(parents=True)
    summary = fetch_with_img2dataset(CC12M, "train", tsv, root, options(limit=10, shard=(1, 2)), download=writer)
    assert summary.shards_done == [1] and summary.rows == 3
    assert other_slice.is_dir() and "cc12m-train-shard-1-of-2" in writer.calls[0]["output_folder"]
    assert sorted(u.rsplit("/", 1)[-1] for u in writer.urls) == ["broken", "c", "page"]


def test_mirror_rewrite_is_applied_and_the_original_url_recorded(tmp_path, root):
    from mmcorpus.fetch.urls import MirrorRule, UrlRewriter

    tsv = write_list(tmp_path / "list.tsv")
    writer = I2dWriter()
    rewrite = UrlRewriter([MirrorRule(BASE, "http://127.0.0.1:9/mirror")])
    fetch_with_img2dataset(CC12M, "train", tsv, root, download=writer,
                           options=options(limit=4, rewrite=rewrite, mirror_hosts=frozenset(rewrite.mirror_hosts())))
    assert writer.urls and all(u.startswith("http://127.0.0.1:9/mirror/") for u in writer.urls)
    assert all(r["url"].startswith(BASE) for r in status_rows(root))


@pytest.mark.parametrize("status, message, expected", [
    ("failed_to_download", "HTTP Error 404: Not Found", ("not_found", 404)),
    ("failed_to_download", "HTTP Error 410: Gone", ("not_found", 410)),
    ("failed_to_download", "HTTP Error 403: Forbidden", ("http_error", 403)),
    ("failed_to_download", "HTTP Error 429: Too Many Requests", ("http_error", 429)),
    ("failed_to_download", "HTTP Error 302: The HTTP server returned a redirect error that would lead to an "
                           "infinite loop.\nThe last 30x error message was:\nFound", ("too_many_redirects", 302)),
    ("failed_to_download", "timed out", ("timeout", None)),
    ("failed_to_download", "The read operation timed out", ("timeout", None)),
    ("failed_to_download", "<urlopen error timed out>", ("timeout", None)),
    ("failed_to_download", "Use of image disallowed by X-Robots-Tag directive", ("opted_out", 200)),
    ("failed_to_download", "<urlopen error [Errno 111] Connection refused>", ("connection", None)),
    ("failed_to_download", "<urlopen error [Errno -2] Name or service not known>", ("connection", None)),
    ("failed_to_download", "IncompleteRead(100 bytes read, 551 more expected)", ("connection", None)),
    ("failed_to_download", "Remote end closed connection without response", ("connection", None)),
    ("failed_to_download", "<urlopen error unknown url type: ftp>", ("blocked_url", None)),
    ("failed_to_resize", "Image decoding error", ("not_image", 200)),
    ("failed_to_resize", "image area too large", ("too_large", 200)),
    ("failed_to_resize", "OpenCV(4.9.0) error: (-215:Assertion failed)", ("corrupt", 200)),
])
def test_error_mapping(status, message, expected):
    assert map_error(status, message) == expected


def test_urls_refused_before_handing_over():
    plain = options()
    assert refused("ftp://example.org/a.jpg", plain) and refused("http://127.0.0.1/a.jpg", plain)
    assert refused("http://169.254.169.254/latest/", plain) and refused("http://[::1]/a.jpg", plain)
    assert refused("http://example.org/a.jpg", plain) is None and refused("https://8.8.8.8/a.jpg", plain) is None
    assert refused("http://127.0.0.1/a.jpg", options(mirror_hosts=frozenset({"127.0.0.1"}))) is None
    assert refused("http://10.1.1.1/a.jpg", options(allow_private_hosts=True)) is None


def test_download_arguments_follow_our_options(tmp_path):
    keep = download_arguments(options(workers=3, threads=16, timeout=7.5), "multiprocessing", tmp_path / "in",
                              tmp_path / "out")
    assert (keep["resize_mode"], keep["skip_reencode"], keep["processes_count"], keep["thread_count"]) == \
        ("no", True, 3, 16)
    assert keep["timeout"] == 7.5 and keep["number_sample_per_shard"] == 4 and keep["disallowed_header_directives"] is None
    assert keep["save_additional_columns"] == ["mm_index", "mm_url"] and keep["output_format"] == "files"
    resized = download_arguments(options(resize=256, respect_opt_out=False), "ray", tmp_path / "in", tmp_path / "out")
    assert (resized["image_size"], resized["resize_mode"], resized["resize_only_if_bigger"]) == (256, "keep_ratio", True)
    assert resized["disallowed_header_directives"] == [] and resized["distributor"] == "ray"


def test_img2dataset_missing_is_one_clear_usage_error(tmp_path, root, monkeypatch):
    monkeypatch.setitem(sys.modules, "img2dataset", None)  # `import img2dataset` raises ImportError
    tsv = write_list(tmp_path / "list.tsv")
    with pytest.raises(UsageError) as caught:
        run_url_list(CC12M, "train", tsv, root, options(), engine="img2dataset")
    message = str(caught.value)
    assert "pip install 'mmcorpus[img2dataset]'" in message and "venv" in message and "\n" not in message
    assert caught.value.exit_code == 2
    with pytest.raises(UsageError, match="--executor"):
        run_url_list(CC12M, "train", tsv, root, options(), engine="img2dataset", executor="dask")


def test_same_status_parquets_and_markers_as_the_native_engine(tmp_path):
    """Rows decided without any network (refused URLs, malformed lines): both engines write the same files."""
    tsv = tmp_path / "list.tsv"
    tsv.write_text("".join(f"http://10.0.0.{i}/a.jpg\tcaption {i}\n" if i != 6 else "bad line\n" for i in range(10)))
    native, ours = tmp_path / "native", tmp_path / "i2d"
    fetch_url_list(CC12M, "train", tsv, native, options(workers=1, timeout=2.0))
    writer = I2dWriter()
    fetch_with_img2dataset(CC12M, "train", tsv, ours, options(), download=writer)
    assert not writer.calls  # nothing left to hand over
    assert status_rows(ours) == status_rows(native) and len(status_rows(ours)) == 9
    for marker in sorted((native / "images" / "cc12m" / "train").glob("*.done")):
        theirs = json.loads(marker.read_text())
        mine = json.loads((ours / "images" / "cc12m" / "train" / marker.name).read_text())
        assert mine.pop("engine") == "img2dataset" and mine == theirs
