"""A --mirror target lets the URL-list engine reach that private server, and nothing else of it (issue 11 item 1):
its origin (scheme, host, port) under its path, what a rewrite produces. Another port of the same loopback host
plays the private service (a Redis, an admin page) that a row or a redirect must not reach. Through the CLI with
real servers."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest
from helpers.cli import mmcorpus
from helpers.urllist import jpeg

from mmcorpus.demo.localmirror import LocalMirror, Route
from mmcorpus.fetch.urllist.img2dataset import refused
from mmcorpus.fetch.urllist.plan import UrlListOptions

SOURCE = "http://images.example/"  # never resolved: every row under it is rewritten to the mirror


@pytest.fixture
def service(tmp_path_factory):
    """The private service on another port of 127.0.0.1: it must get no request at all."""
    with LocalMirror(tmp_path_factory.mktemp("service")) as server:
        server.put("secret.jpg", jpeg(color=(0, 0, 200)))
        yield server


def spec_with_rows(folder: Path, mirror, urls: list[str]) -> list[str]:
    """A URL-list dataset `mine` whose TSV (served by `mirror`) lists `urls`; returns its --config-dir args."""
    data = "".join(f"picture {i}\t{url}\n" for i, url in enumerate(urls)).encode()
    url = mirror.put("files/list.tsv", data)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "mine.yaml").write_text("\n".join([
        "name: mine", "kind: dataset", "files:", "  train:", f"    url: {url}", "    filename: list.tsv",
        f"    size: {len(data)}", f"    sha256: {hashlib.sha256(data).hexdigest()}",
        "format: {type: tsv, columns: [caption, url]}", "images: {from: url}"]) + "\n")
    return ["--config-dir", str(folder)]


def fetch(tmp_path: Path, specs: list[str], *args: str) -> dict:
    result = mmcorpus("--root", str(tmp_path / "root"), *specs, "fetch", "mine", "--json", "--workers", "1",
                      "--threads", "1", *args)
    assert result.returncode in (0, 1), result.stderr
    return json.loads(result.stdout)["targets"][0]["images"][0]


def test_a_mirror_target_does_not_open_the_other_ports_of_its_host(tmp_path, mirror, service):
    mirror.put("img/0.jpg", jpeg())
    mirror.add("img/moved.jpg", Route(redirect=f"{service.url}/secret.jpg"))
    specs = spec_with_rows(tmp_path / "specs", mirror, [
        f"{SOURCE}img/0.jpg",  # rewritten to the mirror: fetched
        f"{service.url}/secret.jpg",  # the same host, another port, named by the row
        f"{SOURCE}img/moved.jpg",  # the mirror itself redirects there
    ])
    images = fetch(tmp_path, specs, "--mirror", f"{SOURCE}={mirror.url}/")
    assert images["ok"] == 1 and images["failed"] == {"blocked_url": 2}
    assert service.requests == []


def test_a_mirror_target_with_a_path_does_not_open_the_other_paths_of_its_origin(tmp_path, mirror):
    mirror.put("pub/0.jpg", jpeg())
    mirror.put("private/secret.jpg", jpeg(color=(0, 0, 200)))
    mirror.add("pub/moved.jpg", Route(redirect="/private/secret.jpg"))  # on the kept-alive connection of /pub/
    specs = spec_with_rows(tmp_path / "specs", mirror, [
        f"{SOURCE}0.jpg",
        f"{mirror.url}/private/secret.jpg",
        f"{SOURCE}moved.jpg",
        f"{SOURCE}../private/secret.jpg",  # rewritten to /pub/../private/: the server would resolve the `..`
        f"{SOURCE}%2e%2e/private/secret.jpg",
    ])
    images = fetch(tmp_path, specs, "--mirror", f"{SOURCE}={mirror.url}/pub/")
    assert images["ok"] == 1 and images["failed"] == {"blocked_url": 4}
    assert {r.path for r in mirror.requests} == {"/files/list.tsv", "/pub/0.jpg", "/pub/moved.jpg"}


def test_a_new_mirror_target_fetches_the_rows_it_blocked_again(tmp_path, mirror, service):
    """The done marker records the mirror targets as origin + path (DESIGN.md 6.1: a new --mirror re-tries the
    rows the address policy refused)."""
    mirror.put("img/0.jpg", jpeg())
    specs = spec_with_rows(tmp_path / "specs", mirror, [f"{SOURCE}img/0.jpg", f"{service.url}/secret.jpg"])
    first = fetch(tmp_path, specs, "--mirror", f"{SOURCE}={mirror.url}/")
    assert first["ok"] == 1 and first["failed"] == {"blocked_url": 1} and service.requests == []
    again = fetch(tmp_path, specs, "--mirror", f"{SOURCE}={mirror.url}/")
    assert again["fetched"] == 0 and again["failed"] == {"blocked_url": 1}
    allowed = fetch(tmp_path, specs, "--mirror", f"{SOURCE}={mirror.url}/",
                    "--mirror", f"http://service.example/={service.url}/")
    assert allowed["ok"] == 2 and allowed["fetched"] == 1
    assert len(service.hits("secret.jpg")) == 1


def test_the_img2dataset_planner_allows_the_mirror_origin_only():
    """img2dataset's rows are refused before it gets them, by the same rule (it follows redirects itself)."""
    options = UrlListOptions(workers=1, mirror_hosts=frozenset({"http://127.0.0.1:8000/pub/"}))
    assert refused("http://127.0.0.1:8000/pub/a.jpg", options) is None
    assert refused("http://127.0.0.1:6379/pub/a.jpg", options)
    assert refused("http://127.0.0.1:8000/private/a.jpg", options)
    assert refused("http://127.0.0.1:8000/pub/../private/a.jpg", options)
