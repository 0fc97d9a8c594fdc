"""Executors (mmcorpus.fetch.urllist.executors): --shard I/N slices cover a run exactly once, and --executor ray leaves the
same tree on disk as a local run (status parquets, images, done markers), against a local Ray instance."""

from __future__ import annotations

import hashlib
import io
import json
import sys
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from PIL import Image

from mmcorpus.demo.localmirror import Route
from mmcorpus.errors import MMCorpusError, UsageError
from mmcorpus.fetch.urllist.executors import (
    check_available,
    merge_summaries,
    run_url_list,
    task_shards,
)
from mmcorpus.fetch.urllist.native import fetch_url_list
from mmcorpus.fetch.urllist.plan import UrlListOptions, UrlListSummary
from mmcorpus.registry import Spec

CC3M = Spec(name="cc3m", kind="dataset", source=Path("cc3m.yaml"), format_columns=("caption", "url"))
ROWS = 23  # 6 shards of 4 rows, the last one short


def options(**overrides) -> UrlListOptions:
    values = dict(workers=1, threads=4, timeout=5.0, backoff=0.01, retries=1, shard_size=4,
                  mirror_hosts=frozenset({"127.0.0.1"}), progress=False, shard=(0, 1))
    values.update(overrides)
    return UrlListOptions(**values)


def jpeg(i: int) -> bytes:
    out = io.BytesIO()
    Image.new("RGB", (40 + i, 30 + i), (i * 10 % 256, 80, 160)).save(out, "JPEG", quality=90)
    return out.getvalue()


@pytest.fixture
def url_list(tmp_path, mirror) -> Path:
    """ROWS lines: images, a 404, a 410, an HTML page, a duplicate URL and two malformed lines."""
    lines = []
    for i in range(ROWS):
        if i == 5:
            lines.append(f"missing {i}\t{mirror.url}/missing.jpg")
        elif i == 9:
            mirror.add("gone.jpg", Route(status=410))
            lines.append(f"gone {i}\t{mirror.url}/gone.jpg")
        elif i == 13:
            mirror.add("page.jpg", Route(html=True))
            lines.append(f"page {i}\t{mirror.url}/page.jpg")
        elif i == 17:
            lines.append(f"duplicate {i}\t{mirror.url}/img-3.jpg")
        elif i == 11:
            lines.append("a line without a tab")
        elif i == 20:
            lines.append("")
        else:
            mirror.put(f"img-{i}.jpg", jpeg(i))
            lines.append(f"picture {i}\t{mirror.url}/img-{i}.jpg")
    path = tmp_path / "list.tsv"
    path.write_text("\n".join(lines) + "\n")
    return path


def tree(root: Path) -> dict:
    """Everything a run leaves under <root>/images/cc3m/train: status rows, image hashes, done markers."""
    base = root / "images" / "cc3m" / "train"
    out: dict = {"status": {}, "images": {}, "markers": {}}
    for parquet in sorted(base.glob("*.parquet")):
        out["status"][parquet.name] = pq.read_table(parquet).to_pylist()
    for image in sorted(base.glob("*/*")):
        out["images"][str(image.relative_to(base))] = hashlib.sha256(image.read_bytes()).hexdigest()
    for marker in sorted(base.glob("*.done")):
        out["markers"][marker.name] = json.loads(marker.read_text())
    return out


def union(*trees: dict) -> dict:
    out: dict = {"status": {}, "images": {}, "markers": {}}
    for part in trees:
        for kind, entries in part.items():
            assert not set(entries) & set(out[kind]), f"two slices wrote the same {kind}"
            out[kind].update(entries)
    return out


# ------------------------------------------------------------------------------------------- --shard I/N


def test_two_slices_together_equal_one_run(tmp_path, url_list):
    """DESIGN §5: N machines with --shard I/N cover the work exactly once (each with its own root, or one
    shared root)."""
    single = fetch_url_list(CC3M, "train", url_list, tmp_path / "single", options())
    slices = [fetch_url_list(CC3M, "train", url_list, tmp_path / f"slice{i}", options(shard=(i, 2)))
              for i in range(2)]
    assert single.shards_done == [0, 1, 2, 3, 4, 5]
    assert [s.shards_done for s in slices] == [[0, 2, 4], [1, 3, 5]]
    expected = tree(tmp_path / "single")
    assert union(tree(tmp_path / "slice0"), tree(tmp_path / "slice1")) == expected
    assert len(expected["status"]) == 6 and sum(len(rows) for rows in expected["status"].values()) == ROWS - 2

    shared = tmp_path / "shared"  # both slices into one root: the same tree, and each shard written once
    for i in range(2):
        fetch_url_list(CC3M, "train", url_list, shared, options(shard=(i, 2)))
    assert tree(shared) == expected

    merged = merge_summaries("cc3m", "train", slices)
    for name in ("rows", "ok", "failed", "bytes", "malformed", "malformed_lines", "shards_done"):
        assert getattr(merged, name) == getattr(single, name), name
    assert merged.failed == {"not_found": 2, "not_image": 1}


def test_task_slices_split_the_run_slice_exactly():
    for run_slice in [(0, 1), (1, 3), (2, 3)]:
        for tasks in (1, 2, 5):
            owners = {}
            for index, count in task_shards(run_slice, tasks):
                for shard in range(60):
                    if shard % count == index:
                        assert shard not in owners
                        owners[shard] = index
            assert sorted(owners) == [s for s in range(60) if s % run_slice[1] == run_slice[0]]


def test_unknown_executor_and_engine_are_usage_errors(url_list, root):
    with pytest.raises(UsageError, match="--executor"):
        run_url_list(CC3M, "train", url_list, root, options(), executor="dask")
    with pytest.raises(UsageError, match="--engine"):
        run_url_list(CC3M, "train", url_list, root, options(), engine="wget")


def test_ray_missing_is_one_clear_usage_error(url_list, root, monkeypatch):
    monkeypatch.setitem(sys.modules, "ray", None)  # `import ray` raises ImportError, as without the extra
    with pytest.raises(UsageError) as caught:
        run_url_list(CC3M, "train", url_list, root, options(), executor="ray")
    assert "pip install 'mmcorpus[ray]'" in str(caught.value) and "\n" not in str(caught.value)
    assert caught.value.exit_code == 2
    with pytest.raises(UsageError, match="mmcorpus\\[ray\\]"):  # the CLI's check before any download
        check_available("ray", "native")
    check_available("local", "native")


# ---------------------------------------------------------------------------------------------------- ray


@pytest.fixture(scope="module")
def ray_instance():
    ray = pytest.importorskip("ray")
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, logging_level="ERROR")
    # the fault injector below lives in this test module, which Ray's workers cannot import by name
    ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])
    yield ray
    ray.shutdown()


def test_ray_executor_leaves_the_tree_of_a_local_run(tmp_path, url_list, ray_instance):
    local = run_url_list(CC3M, "train", url_list, tmp_path / "local", options(), executor="local")
    remote = run_url_list(CC3M, "train", url_list, tmp_path / "ray", options(workers=2), executor="ray", tasks=2)
    assert tree(tmp_path / "ray") == tree(tmp_path / "local")
    for name in ("rows", "ok", "failed", "bytes", "fetched", "fetched_ok", "malformed", "malformed_lines",
                 "shards_done"):
        assert getattr(remote, name) == getattr(local, name), name
    assert ray_instance.is_initialized()  # a Ray the caller started is left running

    again = run_url_list(CC3M, "train", url_list, tmp_path / "ray", options(), executor="ray", tasks=3)
    assert (again.shards_skipped, again.fetched, again.ok) == ([0, 1, 2, 3, 4, 5], 0, local.ok)


def test_ray_tasks_split_only_the_runs_own_slice(tmp_path, url_list, ray_instance):
    summary = run_url_list(CC3M, "train", url_list, tmp_path / "ray", options(shard=(1, 2)), executor="ray", tasks=2)
    fetch_url_list(CC3M, "train", url_list, tmp_path / "local", options(shard=(1, 2)))
    assert summary.shards_done == [1, 3, 5]
    assert tree(tmp_path / "ray") == tree(tmp_path / "local")


class FailFirstAttempt:
    """A --mirror-style rewrite that makes each task's first attempt fail (the flag file marks the first)."""

    def __init__(self, flags: Path):
        self.flags = flags

    def __call__(self, url: str) -> str:
        flag = self.flags / url.rsplit("/", 1)[-1]
        if not flag.exists():
            flag.write_text("failed once")
            raise RuntimeError(f"injected failure for {url}")
        return url


def test_ray_retries_a_failed_task(tmp_path, url_list, ray_instance):
    flags = tmp_path / "flags"
    flags.mkdir()
    fetch_url_list(CC3M, "train", url_list, tmp_path / "local", options())
    summary = run_url_list(CC3M, "train", url_list, tmp_path / "ray", options(rewrite=FailFirstAttempt(flags)),
                           executor="ray", tasks=2, max_retries=30)
    # shards finished by a failed attempt count as skipped in the attempt that succeeded
    assert sorted(summary.shards_done + summary.shards_skipped) == [0, 1, 2, 3, 4, 5]
    assert tree(tmp_path / "ray") == tree(tmp_path / "local")
    assert len(list(flags.iterdir())) > 2  # the failures really happened


def test_ray_task_failing_every_attempt_is_reported(tmp_path, url_list, ray_instance):
    with pytest.raises(MMCorpusError, match=r"2 of 2 tasks failed after 1 retries") as caught:
        run_url_list(CC3M, "train", tmp_path / "nowhere.tsv", tmp_path / "ray", options(), executor="ray",
                     tasks=2, max_retries=1)
    assert caught.value.exit_code == 1 and "not visible on this Ray node" in str(caught.value)


def test_merge_keeps_the_first_malformed_lines():
    parts = [UrlListSummary("d", "s", malformed={"no_tab": 25}, malformed_lines={"no_tab": list(range(1, 41, 2))[:20]}),
             UrlListSummary("d", "s", malformed={"no_tab": 25}, malformed_lines={"no_tab": list(range(2, 42, 2))[:20]})]
    merged = merge_summaries("d", "s", parts)
    assert merged.malformed == {"no_tab": 50} and merged.malformed_lines == {"no_tab": list(range(1, 21))}
