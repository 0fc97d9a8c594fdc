"""hf:// URLs against a real local fake Hub: revisions, paged trees, LFS metadata, tokens, 429, gated repos."""

from __future__ import annotations

import hashlib

import pytest

from mmcorpus.demo.fakehub import FakeHub
from mmcorpus.errors import DownloadError, UsageError
from mmcorpus.fetch.hub import HubClient, parse_hf_url

BIG = {f"cc3m-train-{i:04d}.tar": bytes([i]) * 5000 for i in range(5)}
FILES = {"README.md": b"# card\n", "data/chat.json": b"[]" * 1000, **{f"wds/{k}": v for k, v in BIG.items()}}


@pytest.fixture
def hub(tmp_path):
    with FakeHub(tmp_path / "hub", page_size=2) as server:
        yield server


def client(hub, **kw) -> HubClient:
    slept = []
    made = HubClient(endpoint=hub.url, sleep=slept.append, **kw)
    made.slept = slept
    return made


@pytest.mark.parametrize("url, parts", [
    ("hf://datasets/liuhaotian/LLaVA-Instruct-150K@abc/llava_v1_5_mix665k.json",
     ("datasets", "liuhaotian/LLaVA-Instruct-150K", "abc", "llava_v1_5_mix665k.json")),
    ("hf://datasets/pixparse/cc3m-wds/cc3m-train-*.tar", ("datasets", "pixparse/cc3m-wds", "main", "cc3m-train-*.tar")),
])
def test_hf_urls_parse_into_repository_revision_and_path(url, parts):
    parsed = parse_hf_url(url)
    assert (parsed.repo_type, parsed.repo, parsed.revision, parsed.path) == parts


@pytest.mark.parametrize("url", ["hf://models/a/b/x.bin", "hf://datasets/a/x.json", "hf://datasets/a/b@main/../x",
                                 "hf://datasets/a/b//x", "hf://datasets/../b/x", "hf://datasets/a/b@main/"])
def test_bad_hf_urls_are_refused(url):
    with pytest.raises(ValueError):
        parse_hf_url(url)


def test_a_revision_is_resolved_once_per_fetch_and_files_come_from_its_commit(hub):
    commit = hub.add_repo("o/r", FILES)
    api = client(hub)
    small, = api.files("hf://datasets/o/r@main/README.md")
    lfs, = api.files("hf://datasets/o/r/data/chat.json")
    assert small.commit == lfs.commit == commit
    assert small.url == f"{hub.url}/datasets/o/r/resolve/{commit}/README.md"
    assert (small.size, small.sha256) == (len(FILES["README.md"]), None)  # a git file: no sha256 published
    assert (lfs.size, lfs.sha256) == (2000, hashlib.sha256(FILES["data/chat.json"]).hexdigest())
    assert len(hub.hits("/api/datasets/o/r/revision/")) == 1
    hub.add_repo("o/r", {**FILES, "README.md": b"# moved\n"})  # main moves on: this fetch keeps its commit
    assert api.files("hf://datasets/o/r/README.md")[0].commit == commit
    assert client(hub).files("hf://datasets/o/r/README.md")[0].commit != commit  # the next fetch sees the move


def test_a_glob_expands_through_every_tree_page_in_path_order(hub):
    commit = hub.add_repo("pixparse/cc3m-wds", FILES)
    found = client(hub).files(f"hf://datasets/pixparse/cc3m-wds@{commit}/wds/cc3m-train-*.tar")
    assert [f.path for f in found] == [f"wds/{k}" for k in sorted(BIG)]
    assert [f.sha256 for f in found] == [hashlib.sha256(BIG[k]).hexdigest() for k in sorted(BIG)]
    assert len(hub.hits("/api/datasets/pixparse/cc3m-wds/tree/")) == 3  # 5 entries, 2 per page
    assert not hub.hits("/api/datasets/pixparse/cc3m-wds/revision/")  # a commit needs no lookup
    with pytest.raises(DownloadError, match="no file .* matches"):
        client(hub).files("hf://datasets/pixparse/cc3m-wds/wds/cc12m-*.tar")


def test_the_token_goes_to_the_endpoint_only(hub):
    hub.add_repo("o/gated", FILES, token="hf_secret")
    with pytest.raises(DownloadError, match="HF_TOKEN") as refused:
        client(hub, token=None).files("hf://datasets/o/gated/README.md")
    assert "401" in str(refused.value) and "accept" in str(refused.value)
    before = len(hub.requests)
    found = client(hub, token="hf_secret").files("hf://datasets/o/gated/data/chat.json")
    assert found[0].sha256 and all(r.headers.get("authorization") == "Bearer hf_secret" for r in hub.requests[before:])
    assert HubClient(endpoint="http://hub.example.org", token="t").auth("http://hub.example.org/x") == {}
    assert HubClient(endpoint="https://hub.example.org", token="t").auth("https://cdn.example.org/x") == {}
    assert HubClient(endpoint="https://hub.example.org", token="t").auth("https://hub.example.org/x")


def test_429_is_retried_after_the_servers_delay(hub):
    hub.add_repo("o/r", FILES)
    api = client(hub)
    hub.throttle(2)
    assert api.files("hf://datasets/o/r/README.md")[0].size == len(FILES["README.md"])
    assert api.slept == [0.0, 0.0]  # Retry-After: 0, twice


def test_unknown_revision_and_repository_are_usage_errors(hub):
    hub.add_repo("o/r", FILES)
    with pytest.raises(UsageError, match="no revision 'v9'"):
        client(hub).files("hf://datasets/o/r@v9/README.md")
    with pytest.raises(UsageError, match="no such dataset repository"):
        client(hub).files("hf://datasets/o/missing/README.md")
