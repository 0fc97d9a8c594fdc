"""Single-file downloads under hostile servers (issue 11, items 7, 11, 12 and two leaks), through the CLI with
real servers on 127.0.0.1: a gzip bomb stops at the spec's size and leaves nothing, a slow drip is cut and
resumed, HF_TOKEN never travels over plain http, only Google Drive's own pages steer the downloader, and no
credential of a spec URL is stored in `.part.json` or in the normalized parquet files.

Oversize writes are caught without measuring the disk: the bomb tests run the CLI under RLIMIT_FSIZE (SIGXFSZ
ignored), so a file written past the limit ends the run with "disk full" instead of the refusal expected.
"""

from __future__ import annotations

import hashlib
import json
import os
import socket
import ssl
import subprocess
import sys
import zlib
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from helpers.cli import ENV, mmcorpus, one_line_error

from mmcorpus.demo.localmirror import LocalMirror, Route
from mmcorpus.errors import DownloadError
from mmcorpus.fetch.files import DownloadOptions, download_file
from mmcorpus.fetch.hub import endpoint_auth
from mmcorpus.registry import FileSpec

DATA = os.urandom(300_000)
SHA = hashlib.sha256(DATA).hexdigest()


def spec_dir(tmp_path: Path, url: str, *, size: int | None = len(DATA), sha256: str | None = SHA,
             filename: str = "data.bin", extra: str = "format: {type: llava}\n") -> Path:
    specs = tmp_path / "specs"
    specs.mkdir(exist_ok=True)
    lines = [f"    url: {url}", f"    filename: {filename}"]
    lines += [f"    size: {size}"] if size is not None else []
    lines += [f"    sha256: {sha256}"] if sha256 else []
    (specs / "mine.yaml").write_text("name: mine\nkind: dataset\n" + extra + "files:\n  main:\n"
                                     + "\n".join(lines) + "\n")
    return specs


def fetch(tmp_path: Path, specs: Path, *args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    return mmcorpus("--root", str(tmp_path / "root"), "--config-dir", str(specs), "fetch", "mine", *args, env=env)


def fetch_with_file_size_limit(tmp_path: Path, specs: Path, limit: int) -> subprocess.CompletedProcess:
    """`fetch` where writing a file past `limit` bytes fails (EFBIG: the CLI's "disk full" line)."""
    wrapper = ("import resource, runpy, signal, sys; signal.signal(signal.SIGXFSZ, signal.SIG_IGN); "
               f"resource.setrlimit(resource.RLIMIT_FSIZE, ({limit}, {limit})); "
               "sys.argv = ['mmcorpus', *sys.argv[1:]]; runpy.run_module('mmcorpus', run_name='__main__')")
    return subprocess.run([sys.executable, "-c", wrapper, "--root", str(tmp_path / "root"), "--config-dir",
                           str(specs), "fetch", "mine"], check=False, capture_output=True, text=True, env=ENV,
                          timeout=120)


def downloads(tmp_path: Path) -> list[Path]:
    """Every file under the downloads folder, bookkeeping and .rejected/ included."""
    return sorted(p for p in (tmp_path / "root" / "downloads").rglob("*") if p.is_file())


def gzip_of_zeros(size: int) -> bytes:
    packer = zlib.compressobj(9, zlib.DEFLATED, 31)  # wbits 31: a gzip stream
    block = bytes(1 << 20)
    out = [packer.compress(block) for _ in range(size >> 20)]
    return b"".join(out) + packer.flush()


# ------------------------------------------------------------------------------- item 11: size caps


def test_a_gzip_bomb_stops_at_the_specs_size_and_leaves_nothing(mirror, tmp_path):
    bomb = gzip_of_zeros(300 << 20)  # ~300 KB on the wire, 300 MB decoded
    assert len(bomb) < 400_000
    mirror.add("bomb.bin", Route(body=bomb, headers={"Content-Encoding": "gzip"}))
    specs = spec_dir(tmp_path, f"{mirror.url}/bomb.bin", size=1000, sha256="a" * 64)

    result = fetch_with_file_size_limit(tmp_path, specs, limit=1 << 20)  # the old code wrote 300 MB

    assert result.returncode == 1, result.stderr
    line = one_line_error(result)
    assert "more than 1000 bytes arrived" in line and "Content-Encoding gzip" in line, line
    assert "partial file deleted" in line and "not kept in .rejected/" in line, line
    assert "disk full" not in line
    assert [p for p in downloads(tmp_path) if not p.name.endswith(".json")] == []  # no .part, no reject
    assert mirror.hits("bomb.bin")[0].headers.get("Accept-Encoding") == "identity"


def test_a_gzip_bomb_without_a_size_in_the_spec_stops_at_the_compression_ratio(mirror, tmp_path):
    bomb = gzip_of_zeros(64 << 20)  # ~64 KB that decode to 64 MB: the cap is 100x + 1 MiB, about 7.4 MB
    mirror.add("bomb.bin", Route(body=bomb, headers={"Content-Encoding": "gzip"}))
    specs = spec_dir(tmp_path, f"{mirror.url}/bomb.bin", size=None, sha256=None)

    result = fetch_with_file_size_limit(tmp_path, specs, limit=16 << 20)  # the old code wrote 64 MB

    assert result.returncode == 1, result.stderr
    line = one_line_error(result)
    assert "Content-Encoding gzip" in line and "decode to more than 100x" in line, line
    assert "disk full" not in line
    assert [p for p in downloads(tmp_path) if not p.name.endswith(".json")] == []


def test_a_body_announced_larger_than_the_spec_is_not_downloaded_nor_kept(mirror, tmp_path):
    url = mirror.put("big.bin", DATA)
    specs = spec_dir(tmp_path, url, size=1000, sha256=None)

    result = fetch(tmp_path, specs)

    assert result.returncode == 1, result.stderr
    line = one_line_error(result)
    assert f"the server announces {len(DATA)} bytes, more than the spec's size 1000" in line, line
    assert not (tmp_path / "root/downloads/mine/.rejected").exists()
    assert [p for p in downloads(tmp_path) if not p.name.endswith(".json")] == []


# --------------------------------------------------------------------------- item 12: minimum rate


def test_a_slow_drip_is_cut_after_the_window_and_resumed(mirror, tmp_path):
    """--timeout 0.5: a window of 1.5 s must bring 1 MiB; the drip (20 KB/s) is cut, the retry resumes."""
    url = mirror.put("slow.bin", DATA)
    mirror.add("slow.bin", Route(drip=0.05, times=1))
    specs = spec_dir(tmp_path, url)

    result = fetch(tmp_path, specs, "--timeout", "0.5")

    assert result.returncode == 0, result.stderr
    assert "slower than 683 KB/s for 1.5 s" in result.stderr, result.stderr
    assert (tmp_path / "root/downloads/mine/data.bin").read_bytes() == DATA
    first, second = mirror.hits("slow.bin")
    assert "Range" not in first.headers and second.headers["Range"].startswith("bytes=")
    assert second.headers["Range"] != "bytes=0-"  # resumed where the drip was cut, not from the start


def test_a_server_that_stays_slow_gives_up_with_one_clear_line(mirror, tmp_path):
    url = mirror.put("slow.bin", DATA)
    mirror.add("slow.bin", Route(drip=0.05))
    sleeps: list[float] = []
    options = DownloadOptions(retries=1, backoff=0.01, sleep=sleeps.append).for_timeout(0.2)
    spec = FileSpec(key="f", url=url, filename="slow.bin", size=len(DATA), sha256=SHA)
    with pytest.raises(DownloadError) as failed:
        download_file(spec, tmp_path, options)
    message = str(failed.value)
    assert "slower than 1707 KB/s for 0.6 s" in message and "gave up after 2 attempts" in message, message
    assert len(mirror.hits("slow.bin")) == 2 and len(sleeps) == 1
    assert "\n" not in message


# --------------------------------------------------------------------------- item 7: HF_TOKEN, Drive


@pytest.fixture
def https_and_http(tmp_path_factory):
    """One port that speaks https and plain http (as huggingface.co:443 and :80 are one host to the old rule):
    a TLS ClientHello is answered with TLS, anything else as plain http. Returns (server, CA bundle)."""
    trustme = pytest.importorskip("trustme")
    authority = trustme.CA()
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    authority.issue_cert("127.0.0.1").configure_cert(context)
    bundle = tmp_path_factory.mktemp("ca") / "ca.pem"
    authority.cert_pem.write_to_path(str(bundle))
    server = LocalMirror(tmp_path_factory.mktemp("dual"))
    accept = server._server.get_request

    def get_request():
        sock, address = accept()
        sock.settimeout(10)
        if sock.recv(1, socket.MSG_PEEK) == b"\x16":  # the first byte of a TLS handshake record
            sock = context.wrap_socket(sock, server_side=True)
        sock.settimeout(None)
        return sock, address

    server._server.get_request = get_request
    with server:
        yield server, bundle


def test_hf_token_is_not_sent_when_the_endpoint_redirects_to_plain_http(https_and_http, tmp_path):
    server, bundle = https_and_http
    server.put("lfs/data.bin", DATA)
    server.add("datasets/x/resolve/main/data.bin", Route(redirect=f"http://127.0.0.1:{server.port}/lfs/data.bin"))
    specs = spec_dir(tmp_path, "https://huggingface.co/datasets/x/resolve/main/data.bin")
    env = {"HF_ENDPOINT": f"https://127.0.0.1:{server.port}", "HF_TOKEN": "hf_secret", "REQUESTS_CA_BUNDLE": str(bundle)}

    result = fetch(tmp_path, specs, env=env)

    assert result.returncode == 0, result.stderr
    assert (tmp_path / "root/downloads/mine/data.bin").read_bytes() == DATA
    assert server.hits("datasets/x/resolve/main/data.bin")[0].headers["Authorization"] == "Bearer hf_secret"
    plain = server.hits("lfs/data.bin")
    assert len(plain) == 1 and "Authorization" not in plain[0].headers


def test_the_token_rule_is_the_hub_clients_rule():
    token = "hf_secret"
    assert endpoint_auth("https://hf.example/x", "https://hf.example", token) == {"Authorization": "Bearer hf_secret"}
    assert endpoint_auth("http://hf.example/x", "http://hf.example", token) == {}  # plain http, not loopback
    assert endpoint_auth("http://hf.example/x", "https://hf.example", token) == {}  # a downgrade
    assert endpoint_auth("http://127.0.0.1:8/x", "http://127.0.0.1:8", token) != {}  # the tests' fake Hub


def test_a_drive_confirm_form_is_followed_only_from_google_drive(mirror, tmp_path):
    mirror.put("uc", DATA)
    mirror.add("uc", Route(gdrive_confirm=True))

    # Any page on any host can carry Drive's form: from 127.0.0.1 itself it is an HTML page, not followed.
    elsewhere = fetch(tmp_path, spec_dir(tmp_path, f"{mirror.url}/uc?export=download&id=FILEID"))
    assert elsewhere.returncode == 1, elsewhere.stderr
    line = one_line_error(elsewhere)
    assert "sent an HTML page instead of the file" in line and "not Google Drive: not followed" in line, line
    assert len(mirror.hits("uc")) == 1
    assert not (tmp_path / "root/downloads/mine/data.bin").exists()

    # The same server standing for Google Drive (--mirror): Drive's form is followed.
    drive = spec_dir(tmp_path, "https://drive.google.com/file/d/FILEID/view")
    followed = fetch(tmp_path, drive, "--mirror", f"https://drive.google.com/={mirror.url}/")
    assert followed.returncode == 0, followed.stderr
    assert (tmp_path / "root/downloads/mine/data.bin").read_bytes() == DATA
    assert len(mirror.hits("uc")) == 3  # the page, then the file behind its form


def test_under_a_mirror_of_every_https_url_only_a_page_standing_for_drive_is_followed(mirror, tmp_path):
    """The demo's rule `https://=<mirror>/https/`: a page is Drive's when the URL it stands for is."""
    for host in ("drive.google.com", "evil.example"):
        mirror.put(f"https/{host}/uc", DATA)
        mirror.add(f"https/{host}/uc", Route(gdrive_confirm=True))
    rule = ["--mirror", f"https://={mirror.url}/https/"]

    evil = fetch(tmp_path, spec_dir(tmp_path, "https://evil.example/uc?export=download&id=X", filename="e.bin"),
                 *rule)
    assert evil.returncode == 1 and "not Google Drive: not followed" in one_line_error(evil), evil.stderr
    assert len(mirror.hits("https/evil.example/uc")) == 1

    drive = fetch(tmp_path, spec_dir(tmp_path, "https://drive.google.com/uc?export=download&id=X", filename="d.bin"),
                  *rule)
    assert drive.returncode == 0, drive.stderr
    assert (tmp_path / "root/downloads/mine/d.bin").read_bytes() == DATA


# ----------------------------------------------------------------------------------------- leaks


def test_resume_metadata_holds_no_credential_and_still_resumes(mirror, tmp_path):
    mirror.put("data.bin", DATA)
    mirror.add("data.bin", Route(cut_after=100_000, times=1), Route(status=404, times=1))
    url = f"http://user:s3cret@127.0.0.1:{mirror.port}/data.bin?token=t0ken&X-Amz-Signature=s1g"
    specs = spec_dir(tmp_path, url)

    cut = fetch(tmp_path, specs)  # cut mid-body, then a 404: the run ends with the partial file kept
    assert cut.returncode == 1, cut.stderr
    meta = (tmp_path / "root/downloads/mine/data.bin.part.json").read_text()
    for secret in ("s3cret", "t0ken", "s1g"):
        assert secret not in meta, meta
    assert json.loads(meta)["url"].startswith("http://***@127.0.0.1")

    again = fetch(tmp_path, specs)  # the redacted name still matches: the next run resumes
    assert again.returncode == 0, again.stderr
    assert (tmp_path / "root/downloads/mine/data.bin").read_bytes() == DATA
    assert mirror.hits("data.bin")[-1].headers["Range"] == "bytes=100000-"


def test_normalized_parquet_metadata_holds_no_credential(mirror, tmp_path):
    records = [{"id": i, "conversations": [{"from": "human", "value": f"q{i}"}, {"from": "gpt", "value": f"a{i}"}]}
               for i in range(3)]
    body = json.dumps(records).encode()
    mirror.put("data.json", body)
    url = f"http://user:s3cret@127.0.0.1:{mirror.port}/data.json?sig=s1g"
    specs = spec_dir(tmp_path, url, size=len(body), sha256=None, filename="data.json",
                     extra="stages: [finetune]\nformat: {type: llava}\n")
    args = ["--root", str(tmp_path / "root"), "--config-dir", str(specs)]
    assert mmcorpus(*args, "fetch", "mine").returncode == 0
    prepared = mmcorpus(*args, "prepare", "--stage", "finetune", "--datasets", "mine")
    assert prepared.returncode == 0, prepared.stderr

    shards = sorted((tmp_path / "root/normalized/mine").glob("*.parquet"))
    assert shards
    for shard in shards:
        urls = json.loads(pq.read_schema(shard).metadata[b"source_urls"])
        assert urls == [f"http://***@127.0.0.1:{mirror.port}/data.json?sig=***"], urls
