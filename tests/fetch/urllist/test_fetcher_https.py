"""The URL engine over TLS: certificates verified, keep-alive over https, redirects between schemes.

The server is mmcorpus.demo.localmirror with a certificate for 127.0.0.1 and localhost from a throwaway CA made by
trustme; the fetcher trusts it through SSL_CERT_FILE, as a user behind a company CA would.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from helpers.urllist import jpeg

from mmcorpus.demo.localmirror import LocalMirror, Route
from mmcorpus.fetch.urllist.native import fetch_url_list
from mmcorpus.fetch.urllist.plan import UrlListOptions
from mmcorpus.registry import Spec

trustme = pytest.importorskip("trustme")  # in the test extra; skipped only outside it

CC3M = Spec(name="cc3m", kind="dataset", source=Path("cc3m.yaml"), format_columns=("caption", "url"))


@pytest.fixture(scope="module")
def authority():
    return trustme.CA()


@pytest.fixture
def https_mirror(tmp_path_factory, authority):
    """A real https server on 127.0.0.1, its certificate signed by `authority`."""
    import ssl

    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    authority.issue_cert("127.0.0.1", "localhost").configure_cert(context)
    with LocalMirror(tmp_path_factory.mktemp("https-mirror"), tls=context) as server:
        yield server


@pytest.fixture
def trusted(authority, tmp_path, monkeypatch):
    """Make the test CA the fetcher's trust store (read when the fetcher is made)."""
    ca_file = tmp_path / "ca.pem"
    authority.cert_pem.write_to_path(str(ca_file))
    monkeypatch.setenv("SSL_CERT_FILE", str(ca_file))
    return ca_file


def _fetch(tmp_path, root, rows, **overrides):
    tsv = tmp_path / "list.tsv"
    tsv.write_text("".join(f"{caption}\t{url}\n" for caption, url in rows), encoding="utf-8")
    values = dict(workers=1, threads=2, timeout=5.0, backoff=0.01, retries=0, shard_size=100, progress=False,
                  mirror_hosts=frozenset({"127.0.0.1", "localhost"}), shard=(0, 1))
    values.update(overrides)
    fetch_url_list(CC3M, "train", tsv, root, UrlListOptions(**values))
    import pyarrow.parquet as pq

    rows = pq.read_table(root / "images/cc3m/train/00000.parquet").to_pylist()
    return {row["caption"]: row for row in rows}


def test_images_over_https_with_a_verified_certificate(tmp_path, root, https_mirror, trusted):
    pictures = {f"{i}.jpg": jpeg(40 + i, 30) for i in range(6)}
    for name, data in pictures.items():
        https_mirror.put(name, data)
    https_mirror.add("moved.jpg", Route(redirect="/0.jpg"))
    https_mirror.add("missing-page.jpg", Route(status=404))
    rows = [(name, f"{https_mirror.url}/{name}") for name in [*pictures, "moved.jpg", "missing-page.jpg"]]

    got = _fetch(tmp_path, root, rows)

    assert https_mirror.url.startswith("https://")
    for name, data in pictures.items():
        assert got[name]["status"] == "ok"
        assert (root / "images" / got[name]["image_path"]).read_bytes() == data
    assert (got["moved.jpg"]["status"], got["moved.jpg"]["width"]) == ("ok", 40)
    assert (got["missing-page.jpg"]["error"], got["missing-page.jpg"]["http_status"]) == ("not_found", 404)


def test_https_redirect_to_plain_http_on_another_host_is_followed(tmp_path, root, https_mirror, other_host_mirror,
                                                                  trusted):
    data = jpeg(50, 20)
    other_host_mirror.put("plain.jpg", data)
    https_mirror.add("down.jpg", Route(redirect=f"{other_host_mirror.host_url}/plain.jpg"))
    got = _fetch(tmp_path, root, [("down", f"{https_mirror.url}/down.jpg")])
    assert got["down"]["status"] == "ok" and (root / "images" / got["down"]["image_path"]).read_bytes() == data


def test_an_untrusted_certificate_is_a_connection_failure_not_a_download(tmp_path, root, https_mirror):
    https_mirror.put("a.jpg", jpeg())
    got = _fetch(tmp_path, root, [("a", f"{https_mirror.url}/a.jpg")])  # no test CA: the system store only
    assert (got["a"]["status"], got["a"]["error"]) == ("failed", "connection")
    assert https_mirror.hits("a.jpg") == []  # the request never reached the server
