"""The URL-list engine end to end, against the local mirror: every error word, redirects, duplicates,
malformed lines, column order of the real CC3M/CC12M samples, shards, --limit, --retry-failed, kill -9."""

from __future__ import annotations

import hashlib
import io
import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from helpers import SAMPLES
from helpers.urllist import bomb_png, jpeg, status_rows
from PIL import Image

from mmcorpus import USER_AGENT
from mmcorpus.demo.localmirror import Route
from mmcorpus.errors import DiskFullError, UsageError
from mmcorpus.fetch.urllist.native import fetch_url_list
from mmcorpus.fetch.urllist.plan import UrlListOptions, shard_from_env
from mmcorpus.fetch.urls import MirrorRule, UrlRewriter
from mmcorpus.registry import Spec
from mmcorpus.schema import ERRORS

CC3M = Spec(name="cc3m", kind="dataset", source=Path("cc3m.yaml"), format_columns=("caption", "url"))
CC12M = Spec(name="cc12m", kind="dataset", source=Path("cc12m.yaml"), format_columns=("url", "caption"))
from helpers import REPO


def options(**overrides) -> UrlListOptions:
    """Fast test defaults: in-process, short deadline, tiny backoff, the mirror's host allowed."""
    values = dict(workers=1, threads=4, timeout=3.0, backoff=0.01, retries=1, shard_size=100,
                  mirror_hosts=frozenset({"127.0.0.1"}), progress=False, shard=(0, 1))
    values.update(overrides)
    return UrlListOptions(**values)


def write_tsv(path: Path, rows: list[tuple[str, str]]) -> Path:
    """CC3M layout: caption TAB url."""
    path.write_text("".join(f"{caption}\t{url}\n" for caption, url in rows), encoding="utf-8")
    return path


def by_caption(root: Path, dataset: str = "cc3m") -> dict[str, dict]:
    return {row["caption"]: row for row in status_rows(root, dataset)}


# ------------------------------------------------------------------------------------------ error classes


@pytest.fixture
def faults(mirror, other_host_mirror):
    """One row per error word, plus rows that must succeed. Returns (rows, expected outcome by caption)."""
    good = jpeg()
    mirror.put("ok.jpg", good)
    mirror.put("png.png", _png())
    mirror.add("gone.jpg", Route(status=410))
    mirror.add("forbidden.jpg", Route(status=403))
    mirror.add("broken.jpg", Route(status=500))
    mirror.add("slow.jpg", Route(delay=2.5))
    mirror.add("drip.jpg", Route(body=jpeg(400, 300) + b"\0" * 30_000, drip=0.05))
    mirror.add("cut.jpg", Route(body=good, cut_after=100))
    mirror.put("big.jpg", jpeg(1200, 900) + b"\0" * 300_000)
    mirror.add("page.jpg", Route(html=True))
    mirror.put("tiff.jpg", _tiff())
    mirror.add("truncated.jpg", Route(body=good[: len(good) // 2]))
    mirror.add("garbage.jpg", Route(body=b"\xff\xd8\xff\xe0" + os.urandom(2000)))
    mirror.put("bomb.png", _bomb_png())
    mirror.add("noai.jpg", Route(body=good, headers={"X-Robots-Tag": "noai"}))
    mirror.add("scoped.jpg", Route(body=good, headers={"X-Robots-Tag": "otherbot: noimageai"}))
    mirror.add("loop.jpg", Route(redirect="/loop.jpg"))
    mirror.add("moved.jpg", Route(redirect="/ok.jpg"))
    mirror.add("to-ftp.jpg", Route(redirect="ftp://127.0.0.1/ok.jpg"))
    mirror.add("to-localhost.jpg", Route(redirect=f"{other_host_mirror.host_url}/ok.jpg"))
    other_host_mirror.put("ok.jpg", good)
    base = mirror.url
    expected = {
        "ok": ("ok", 200), "png": ("ok", 200), "moved": ("ok", 200), "scoped": ("ok", 200),
        "missing": ("not_found", 404), "gone": ("not_found", 410),
        "forbidden": ("http_error", 403), "broken": ("http_error", 500),
        "slow": ("timeout", None), "drip": ("timeout", None),
        "cut": ("connection", None), "closed-port": ("connection", None),
        "big": ("too_large", 200), "bomb": ("too_large", 200),
        "page": ("not_image", 200), "tiff": ("not_image", 200),
        "truncated": ("corrupt", 200), "garbage": ("corrupt", 200),
        "noai": ("opted_out", 200),
        "ftp": ("blocked_url", None), "to-ftp": ("blocked_url", None), "private": ("blocked_url", None),
        "metadata": ("blocked_url", None), "to-localhost": ("blocked_url", None),
        "loop": ("too_many_redirects", 302),
    }
    urls = {name: f"{base}/{name}.jpg" for name in expected}
    urls.update(png=f"{base}/png.png", bomb=f"{base}/bomb.png", ftp="ftp://127.0.0.1/ok.jpg",
                private="http://10.1.2.3/a.jpg", metadata="http://169.254.169.254/latest/meta-data/",
                **{"closed-port": f"http://127.0.0.1:{_closed_port()}/x.jpg"})
    return [(name, urls[name]) for name in expected], expected


def test_every_error_word_of_the_vocabulary(tmp_path, root, mirror, faults):
    rows, expected = faults
    tsv = write_tsv(tmp_path / "list.tsv", rows)
    summary = fetch_url_list(CC3M, "train", tsv, root, options(timeout=1.0, max_bytes=200_000, max_redirects=3))

    got = by_caption(root)
    assert {name: (got[name]["error"] or "ok", got[name]["http_status"]) for name in expected} == expected
    assert {e for e, _ in expected.values()} - {"ok"} == set(ERRORS)  # the test covers the whole vocabulary
    assert summary.ok == 4 and summary.rows == len(rows)
    assert summary.failed["blocked_url"] == 5 and summary.failed["timeout"] == 2


def test_structure_check_classifies_the_vocabulary_like_the_decode_check(tmp_path, root, mirror, faults):
    rows, expected = faults
    tsv = write_tsv(tmp_path / "list.tsv", rows)
    fetch_url_list(CC3M, "train", tsv, root, options(timeout=1.0, max_bytes=200_000, max_redirects=3,
                                                     image_check="structure"))
    got = by_caption(root)
    assert {name: (got[name]["error"] or "ok", got[name]["http_status"]) for name in expected} == expected
    with pytest.raises(UsageError, match="--image-check"):
        fetch_url_list(CC3M, "train", tsv, root, options(image_check="header"))


def test_a_failing_store_stops_the_shard_without_hanging_the_fetch_threads(tmp_path, root, mirror, monkeypatch):
    """The network threads wait for room in the window that the storing thread frees; when storing fails
    (a full disk), the queued fetches must still end, or the worker never shuts down."""
    import mmcorpus.fetch.urllist.native as urllist

    def disk_full(path, data):
        time.sleep(0.5)  # meanwhile the fetches fill the window and the network threads wait for room
        raise OSError(28, "No space left on device")

    mirror.put("a.jpg", jpeg())
    monkeypatch.setattr(urllist, "write_bytes_atomic", disk_full)
    tsv = write_tsv(tmp_path / "list.tsv", [(f"row {i}", f"{mirror.url}/a.jpg?{i}") for i in range(40)])
    with pytest.raises(DiskFullError, match="disk full writing .*No space left.*finished shards are kept"):
        fetch_url_list(CC3M, "train", tsv, root, options(threads=2))
    assert not (root / "images/cc3m/train/00000.done").exists()


def test_ok_rows_are_complete_and_on_disk(tmp_path, root, mirror):
    data = jpeg(80, 60)
    mirror.put("a.jpg", data)
    tsv = write_tsv(tmp_path / "list.tsv", [("a red square", f"{mirror.url}/a.jpg?imgmax=800")])
    fetch_url_list(CC3M, "train", tsv, root, options())

    [row] = status_rows(root)
    assert row == dict(key="000000000", url=f"{mirror.url}/a.jpg?imgmax=800", caption="a red square", status="ok",
                       error=None, http_status=200, bytes=len(data), width=80, height=60,
                       image_path="cc3m/train/00000/000000000.jpg", sha256=hashlib.sha256(data).hexdigest(),
                       error_detail=None)
    assert (root / "images" / row["image_path"]).read_bytes() == data
    assert (root / "images/cc3m/train/00000.done").is_file()
    assert mirror.hits("a.jpg")[0].headers["User-Agent"] == USER_AGENT


def test_redirect_followed_and_transient_errors_retried(tmp_path, root, mirror):
    mirror.put("final.jpg", jpeg())
    mirror.add("hop1.jpg", Route(redirect="/hop2.jpg"))
    mirror.add("hop2.jpg", Route(redirect=f"{mirror.url}/final.jpg"))
    mirror.put("flaky.jpg", jpeg())
    mirror.add("flaky.jpg", Route(status=503, times=1))
    mirror.put("busy.jpg", jpeg())
    mirror.add("busy.jpg", Route(status=429, headers={"Retry-After": "0"}, times=1))
    mirror.add("missing.jpg", Route(status=404))
    tsv = write_tsv(tmp_path / "list.tsv", [(n, f"{mirror.url}/{n}.jpg") for n in ("hop1", "flaky", "busy", "missing")])
    fetch_url_list(CC3M, "train", tsv, root, options(retries=2))

    got = by_caption(root)
    assert [got[n]["status"] for n in ("hop1", "flaky", "busy")] == ["ok", "ok", "ok"]
    assert len(mirror.hits("flaky.jpg")) == 2 and len(mirror.hits("busy.jpg")) == 2
    assert len(mirror.hits("missing.jpg")) == 1  # a 404 is final: never retried


def test_urls_with_spaces_and_non_ascii_characters(tmp_path, root, mirror):
    mirror.put("caf\u00e9 cr\u00e8me.jpg", jpeg())
    tsv = write_tsv(tmp_path / "list.tsv", [("x", f"{mirror.url}/caf\u00e9 cr\u00e8me.jpg")])
    fetch_url_list(CC3M, "train", tsv, root, options())
    assert status_rows(root)[0]["status"] == "ok"
    assert mirror.requests[0].path == "/caf%C3%A9%20cr%C3%A8me.jpg"


def test_opt_out_can_be_turned_off(tmp_path, root, mirror):
    mirror.add("noai.jpg", Route(body=jpeg(), headers={"X-Robots-Tag": "noindex, noimageai"}))
    tsv = write_tsv(tmp_path / "list.tsv", [("x", f"{mirror.url}/noai.jpg")])
    fetch_url_list(CC3M, "train", tsv, root, options(respect_opt_out=False))
    assert status_rows(root)[0]["status"] == "ok"


def test_private_hosts_allowed_on_request(tmp_path, root, mirror):
    mirror.put("a.jpg", jpeg())
    tsv = write_tsv(tmp_path / "list.tsv", [("x", f"{mirror.url}/a.jpg")])
    fetch_url_list(CC3M, "train", tsv, root, options(mirror_hosts=frozenset()))
    assert status_rows(root)[0]["error"] == "blocked_url"  # loopback, not a mirror target
    fetch_url_list(CC3M, "train", tsv, tmp_path / "root2", options(mirror_hosts=frozenset(), allow_private_hosts=True))
    assert status_rows(tmp_path / "root2")[0]["status"] == "ok"


def test_duplicate_url_fetched_once_stored_for_each_row(tmp_path, root, mirror):
    data = jpeg()
    mirror.put("dup.jpg", data)
    tsv = write_tsv(tmp_path / "list.tsv", [("first", f"{mirror.url}/dup.jpg"), ("second", f"{mirror.url}/dup.jpg")])
    fetch_url_list(CC3M, "train", tsv, root, options())

    first, second = status_rows(root)
    assert (first["status"], second["status"]) == ("ok", "ok")
    assert first["sha256"] == second["sha256"] and first["image_path"] != second["image_path"]
    assert (root / "images" / second["image_path"]).read_bytes() == data
    assert len(mirror.hits("dup.jpg")) == 1


def test_resize_shorter_side_as_jpeg(tmp_path, root, mirror):
    mirror.put("wide.jpg", jpeg(800, 600))
    mirror.put("small.jpg", jpeg(100, 50))
    mirror.put("alpha.png", _png(mode="RGBA", size=(600, 900)))
    tsv = write_tsv(tmp_path / "list.tsv", [(n, f"{mirror.url}/{n}") for n in ("wide.jpg", "small.jpg", "alpha.png")])
    fetch_url_list(CC3M, "train", tsv, root, options(resize=256))

    got = by_caption(root)
    assert [(got[n]["width"], got[n]["height"]) for n in ("wide.jpg", "small.jpg", "alpha.png")] == \
        [(341, 256), (100, 50), (256, 384)]
    for row in got.values():
        assert row["image_path"].endswith(".jpg")
        with Image.open(root / "images" / row["image_path"]) as image:
            assert (image.format, image.size) == ("JPEG", (row["width"], row["height"]))


def test_rerun_with_another_resize_replaces_the_stored_images(tmp_path, root, mirror):
    mirror.put("wide.jpg", jpeg(800, 600))
    mirror.put("alpha.png", _png(mode="RGBA", size=(600, 900)))
    tsv = write_tsv(tmp_path / "list.tsv", [(n, f"{mirror.url}/{n}") for n in ("wide.jpg", "alpha.png")])
    fetch_url_list(CC3M, "train", tsv, root, options())
    original = by_caption(root)
    assert original["alpha.png"]["image_path"].endswith(".png")
    fetch_url_list(CC3M, "train", tsv, root, options(resize=256))
    resized = by_caption(root)
    assert [(resized[n]["width"], resized[n]["height"]) for n in ("wide.jpg", "alpha.png")] == [(341, 256), (256, 384)]
    assert not (root / "images" / original["alpha.png"]["image_path"]).exists()  # no stale original left
    assert len(mirror.hits("wide.jpg")) == 2


def test_a_resize_switch_cut_short_then_the_old_resize_fetches_again(tmp_path, root, mirror, monkeypatch):
    """Run 1 keeps the originals; run 2 (--resize 256) dies while storing; run 3 (no resize again) must not
    trust run 1's marker: the originals were deleted or replaced by run 2 under the same names."""
    import mmcorpus.fetch.urllist.native as urllist

    for name in ("a.jpg", "b.jpg"):
        mirror.put(name, jpeg(800, 600))
    tsv = write_tsv(tmp_path / "list.tsv", [(n, f"{mirror.url}/{n}") for n in ("a.jpg", "b.jpg")])
    fetch_url_list(CC3M, "train", tsv, root, options(threads=1))
    real_write = urllist.write_bytes_atomic
    written = []

    def dies_on_the_second(path, data):
        if written:
            raise KeyboardInterrupt  # killed
        written.append(path)
        real_write(path, data)

    monkeypatch.setattr(urllist, "write_bytes_atomic", dies_on_the_second)
    with pytest.raises(KeyboardInterrupt):
        fetch_url_list(CC3M, "train", tsv, root, options(threads=1, resize=256))
    monkeypatch.setattr(urllist, "write_bytes_atomic", real_write)

    summary = fetch_url_list(CC3M, "train", tsv, root, options(threads=1))
    assert summary.shards_skipped == [] and summary.ok == 2
    for row in status_rows(root):
        stored = root / "images" / row["image_path"]
        assert stored.stat().st_size == row["bytes"] and Image.open(stored).size == (800, 600)


# ----------------------------------------------------------------------------------------- TSV and columns


def test_malformed_lines_reported_and_never_fatal(tmp_path, root, mirror):
    mirror.put("a.jpg", jpeg())
    url = f"{mirror.url}/a.jpg"
    lines = [
        b"\xef\xbb\xbfwith bom\t" + url.encode() + b"\n",  # line 1: BOM stripped, row kept
        b"windows\t" + url.encode() + b"\r\n",  # 2: CRLF stripped, row kept
        b"no tab at all\n",  # 3
        b"empty url\t  \n",  # 4
        b"bad \xff\xfe utf8\t" + url.encode() + b"\n",  # 5
        b"x" * (1 << 20) + b"\t" + url.encode() + b"\n",  # 6: over 1 MB
        b"\n",  # 7
        b'"quoted, with ""csv"" quotes\t' + url.encode() + b"\n",  # 8: quotes are plain text
    ]
    tsv = tmp_path / "list.tsv"
    tsv.write_bytes(b"".join(lines))
    summary = fetch_url_list(CC3M, "train", tsv, root, options())

    assert summary.malformed_lines == {"bom": [1], "crlf": [2], "no_tab": [3], "empty_url": [4], "bad_utf8": [5],
                                       "too_long": [6], "empty_line": [7]}
    rows = status_rows(root)
    assert [(r["key"], r["caption"], r["url"], r["status"]) for r in rows] == [
        ("000000000", "with bom", url, "ok"), ("000000001", "windows", url, "ok"),
        ("000000007", '"quoted, with ""csv"" quotes', url, "ok")]
    assert json.loads((root / "images/cc3m/train/00000.done").read_text())["malformed"][2] == [3, "no_tab"]


@pytest.mark.parametrize("spec, sample, first_url, first_caption", [
    (CC3M, "cc3m_sample.tsv", "http://lh6.ggpht.com/-IvRtNLNcG8o/TpFyrudaT6I/AAAAAAAAM6o/_11MuAAKalQ/IMG_3422.JPG"
     "?imgmax=800", "a very typical bus station"),
    (CC12M, "cc12m_sample.tsv", "https://chairish-prod.freetls.fastly.net/image/product/sized/f8d905b6-6c37-4378-"
     "a1bd-946584db05ee/design-within-reach-ivory-slipper-chairs-a-pair-0773?aspect=fit&width=640&height=640",
     "Metal Design Within Reach Ivory Slipper Chairs - a Pair For Sale - Image 7 of 10"),
])
def test_column_order_of_the_real_samples(root, mirror, spec, sample, first_url, first_caption):
    """CC3M is caption TAB url, CC12M url TAB caption (P18); every sample URL is served by the mirror."""
    mirror.put("any.jpg", jpeg())
    summary = fetch_url_list(spec, "train", SAMPLES / sample, root,
                             options(rewrite=_AllTo(f"{mirror.url}/any.jpg"), limit=10))

    rows = status_rows(root, spec.name)
    assert (rows[0]["url"], rows[0]["caption"]) == (first_url, first_caption)
    assert summary.malformed == {} and summary.ok == len(rows) == min(10, _lines(SAMPLES / sample))
    assert all(r["url"].startswith(("http://", "https://")) for r in rows)
    assert {h.path for h in mirror.requests} == {"/any.jpg"}  # the real hosts were never contacted


def test_mirror_rewriter_pickles_into_workers_and_names_its_hosts():
    import pickle

    rewrite = UrlRewriter([MirrorRule.parse("http://lh6.ggpht.com/=http://10.0.0.5:8080/ggpht/"),
                           MirrorRule.parse("https://a/=https://b/")])
    copy = pickle.loads(pickle.dumps(rewrite))
    assert copy("http://lh6.ggpht.com/x.jpg?imgmax=800") == "http://10.0.0.5:8080/ggpht/x.jpg?imgmax=800"
    assert copy("https://elsewhere/x.jpg") == "https://elsewhere/x.jpg"
    assert rewrite.mirror_hosts() == {"10.0.0.5", "b"}


# ---------------------------------------------------------------------------------------- shards and resume


def test_shards_limit_and_slices(tmp_path, mirror):
    mirror.put("a.jpg", jpeg())
    tsv = write_tsv(tmp_path / "list.tsv", [(f"row {i}", f"{mirror.url}/a.jpg?{i}") for i in range(25)])
    root = tmp_path / "root"

    first = fetch_url_list(CC3M, "train", tsv, root, options(shard_size=10, limit=15))
    assert (first.shards_done, first.rows) == ([0, 1], 15)
    odd = fetch_url_list(CC3M, "train", tsv, root, options(shard_size=10, shard=(1, 2)))
    assert (odd.shards_done, odd.shards_skipped, odd.rows) == ([1], [], 10)  # shard 1 had only 5 of its rows
    hits = len(mirror.requests)
    assert hits == 20  # rows 0-14, then 15-19: the 5 rows already ok were kept
    rest = fetch_url_list(CC3M, "train", tsv, root, options(shard_size=10, shard=(0, 2)))
    assert (rest.shards_done, rest.shards_skipped, rest.rows, rest.ok) == ([2], [0], 15, 15)
    assert [r["key"] for r in status_rows(root)] == [f"{i:09d}" for i in range(25)]
    assert sorted(p.name for p in (root / "images/cc3m/train").iterdir()) == [
        "00000", "00000.done", "00000.parquet", "00001", "00001.done", "00001.parquet",
        "00002", "00002.done", "00002.parquet"]


def test_shard_from_slurm_environment():
    assert shard_from_env({}) == (0, 1)
    assert shard_from_env({"SLURM_ARRAY_TASK_ID": "3", "SLURM_ARRAY_TASK_COUNT": "8"}) == (3, 8)
    assert shard_from_env({"SLURM_ARRAY_TASK_ID": "4", "SLURM_ARRAY_TASK_COUNT": "4", "SLURM_ARRAY_TASK_MIN": "1"}) == (3, 4)


def test_retry_failed_refetches_only_transient_failures(tmp_path, root, mirror):
    mirror.put("unstable.jpg", jpeg())
    mirror.add("unstable.jpg", Route(status=503, times=2))  # both attempts of the first run fail
    mirror.add("dead.jpg", Route(status=404))
    mirror.add("denied.jpg", Route(status=403))
    mirror.put("fine.jpg", jpeg())
    names = ("unstable", "dead", "denied", "fine")
    tsv = write_tsv(tmp_path / "list.tsv", [(n, f"{mirror.url}/{n}.jpg") for n in names])

    fetch_url_list(CC3M, "train", tsv, root, options(retries=1))
    assert by_caption(root)["unstable"]["error"] == "http_error"
    again = fetch_url_list(CC3M, "train", tsv, root, options(retries=1))
    assert again.shards_skipped == [0] and again.fetched == 0
    retried = fetch_url_list(CC3M, "train", tsv, root, options(retries=1, retry_failed=True))

    got = by_caption(root)
    assert [got[n]["error"] or "ok" for n in names] == ["ok", "not_found", "http_error", "ok"]
    assert retried.fetched == 1 and retried.shards_done == [0]
    assert [len(mirror.hits(f"{n}.jpg")) for n in names] == [3, 1, 1, 1]


def test_pool_of_worker_processes(tmp_path, mirror):
    """workers=2: same result as in-process, shards spread over processes."""
    mirror.put("a.jpg", jpeg())
    tsv = write_tsv(tmp_path / "list.tsv", [(f"r{i}", f"{mirror.url}/a.jpg?{i}") for i in range(30)] +
                    [("missing", f"{mirror.url}/missing.jpg")])
    summary = fetch_url_list(CC3M, "train", tsv, tmp_path / "pool", options(workers=2, shard_size=8))
    fetch_url_list(CC3M, "train", tsv, tmp_path / "here", options(shard_size=8))
    assert (summary.ok, summary.failed, summary.shards_done) == (30, {"not_found": 1}, [0, 1, 2, 3])
    assert status_rows(tmp_path / "pool") == status_rows(tmp_path / "here")


def test_progress_line_on_non_tty(tmp_path, root, mirror, caplog):
    """Without a terminal the progress goes to the log (stderr lines with times, and --log-file), no bar."""
    mirror.put("a.jpg", jpeg())
    tsv = write_tsv(tmp_path / "list.tsv", [("x", f"{mirror.url}/a.jpg")])
    with caplog.at_level("INFO", logger="mmcorpus"):
        summary = fetch_url_list(CC3M, "train", tsv, root, options(progress=True))
    lines = [r.getMessage() for r in caplog.records if r.name == "mmcorpus"]
    assert any("cc3m/train: 1 rows, 1 ok (100.0%)" in line and "images/s" in line for line in lines), lines
    as_dict = summary.to_dict()
    assert json.loads(json.dumps(as_dict)) == as_dict and as_dict["success_rate"] == 1.0


KILL_RUN = """
import json, sys
from pathlib import Path
from mmcorpus.fetch.urllist.native import fetch_url_list
from mmcorpus.fetch.urllist.plan import UrlListOptions
from mmcorpus.registry import Spec
args = json.loads(sys.argv[1])
spec = Spec(name="cc3m", kind="dataset", source=Path("cc3m.yaml"), format_columns=("caption", "url"))
fetch_url_list(spec, "train", args["tsv"], args["root"], UrlListOptions(
    workers=1, threads=2, shard_size=10, mirror_hosts=frozenset({"127.0.0.1"}), progress=False, shard=(0, 1)))
"""


def test_kill_9_then_resume_gives_the_uninterrupted_result(tmp_path, mirror):
    rows = []
    for i in range(60):
        mirror.put(f"{i}.jpg", jpeg(32 + i, 32, (i * 4, 0, 0)))
        mirror.add(f"{i}.jpg", Route(file=f"{i}.jpg", delay=0.05))
        rows.append((f"row {i}", f"{mirror.url}/{i}.jpg" if i % 7 else f"{mirror.url}/missing-{i}.jpg"))
    tsv = write_tsv(tmp_path / "list.tsv", rows)
    killed = tmp_path / "killed"
    process = subprocess.Popen([sys.executable, "-c", KILL_RUN, json.dumps({"tsv": str(tsv), "root": str(killed)})],
                               cwd=REPO)
    first_marker = killed / "images/cc3m/train/00000.done"
    for _ in range(600):
        if first_marker.exists() or process.poll() is not None:
            break
        time.sleep(0.01)
    os.kill(process.pid, signal.SIGKILL)
    process.wait()
    assert not (killed / "images/cc3m/train/00005.done").exists()  # it really was interrupted

    fetch_url_list(CC3M, "train", tsv, killed, options(shard_size=10))
    fetch_url_list(CC3M, "train", tsv, tmp_path / "clean", options(shard_size=10))
    assert status_rows(killed) == status_rows(tmp_path / "clean")
    assert _tree(killed) == _tree(tmp_path / "clean")


FULL_DISK_RUN = """
import json, resource, signal, sys
from pathlib import Path
from mmcorpus.errors import DiskFullError
from mmcorpus.fetch.urllist.native import fetch_url_list
from mmcorpus.fetch.urllist.plan import UrlListOptions
from mmcorpus.registry import Spec
args = json.loads(sys.argv[1])
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # as under `ulimit -f`: the write fails with EFBIG
resource.setrlimit(resource.RLIMIT_FSIZE, (args["limit"], args["limit"]))
spec = Spec(name="cc3m", kind="dataset", source=Path("cc3m.yaml"), format_columns=("caption", "url"))
try:
    fetch_url_list(spec, "train", args["tsv"], args["root"], UrlListOptions(
        workers=1, threads=2, shard_size=3, mirror_hosts=frozenset({"127.0.0.1"}), progress=False, shard=(0, 1)))
except DiskFullError as exc:
    print(exc)
"""


def test_full_disk_keeps_the_finished_shards_and_a_rerun_completes_them(tmp_path, mirror):
    """A write beyond RLIMIT_FSIZE fails with EFBIG, the stand-in for ENOSPC that needs no root."""
    noise = Image.frombytes("RGB", (300, 300), random.Random(0).randbytes(300 * 300 * 3))
    big = io.BytesIO()
    noise.save(big, "JPEG", quality=95)
    rows = []
    for i in range(9):
        mirror.put(f"{i}.jpg", big.getvalue() if i == 7 else jpeg(32 + i, 32))
        rows.append((f"row {i}", f"{mirror.url}/{i}.jpg"))
    tsv = write_tsv(tmp_path / "list.tsv", rows)
    full = tmp_path / "full"
    run = subprocess.run([sys.executable, "-c", FULL_DISK_RUN, json.dumps(
        {"tsv": str(tsv), "root": str(full), "limit": len(big.getvalue()) // 2})], cwd=REPO, capture_output=True,
        text=True, timeout=120, check=False)
    shards = full / "images/cc3m/train"
    assert run.stdout.startswith(f"disk full writing {shards / '00002' / '000000007.jpg'}: File too large; ")
    assert run.stdout.strip().endswith("free space and re-run; finished shards are kept"), run.stderr
    assert [p.name for p in sorted(shards.glob("*.done"))] == ["00000.done", "00001.done"]
    assert not (shards / "00002.parquet").exists() and not (shards / "00002" / "000000007.jpg").exists()
    assert not [p for p in full.rglob("*") if p.name.endswith(".mmpart")]

    again = fetch_url_list(CC3M, "train", tsv, full, options(shard_size=3))
    assert (again.shards_skipped, again.shards_done) == ([0, 1], [2])
    fetch_url_list(CC3M, "train", tsv, tmp_path / "clean", options(shard_size=3))
    assert status_rows(full) == status_rows(tmp_path / "clean")
    assert _tree(full) == _tree(tmp_path / "clean")


# ------------------------------------------------------------------------------------------------ helpers


class _AllTo:
    """A rewrite sending every URL to one mirror file (the tests never touch the internet)."""

    def __init__(self, target: str):
        self.target = target

    def __call__(self, url: str) -> str:
        return self.target


def _tree(root: Path) -> dict[str, str]:
    """Every file under root (parquet files by content, since their metadata may differ)."""
    out = {}
    for path in sorted(root.rglob("*")):
        if path.is_file():
            rel = str(path.relative_to(root))
            out[rel] = (str(pq.read_table(path).to_pylist()) if path.suffix == ".parquet"
                        else hashlib.sha256(path.read_bytes()).hexdigest())
    return out


def _lines(path: Path) -> int:
    return len(path.read_bytes().splitlines())


def _png(mode: str = "RGB", size=(40, 30)) -> bytes:
    out = io.BytesIO()
    Image.new(mode, size, (10, 200, 10, 128) if mode == "RGBA" else (10, 200, 10)).save(out, "PNG")
    return out.getvalue()


def _tiff() -> bytes:
    out = io.BytesIO()
    Image.new("RGB", (20, 20)).save(out, "TIFF")
    return out.getvalue()


def _bomb_png() -> bytes:
    """A PNG claiming 30,000 x 30,000 pixels (900 MP) in a few bytes: refused from the header."""
    return bomb_png(30_000, 30_000)


def _closed_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]
