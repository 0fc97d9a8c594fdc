"""The single-file downloader against a real HTTP server on 127.0.0.1 (no mocked requests)."""

from __future__ import annotations

import hashlib
import os

import pytest

from mmcorpus.demo.localmirror import Route
from mmcorpus.errors import DownloadError, VerificationError
from mmcorpus.fetch.files import DownloadOptions, download_file
from mmcorpus.fetch.gdrive import gdrive_confirm_url
from mmcorpus.fetch.urls import MirrorRule, UrlRewriter
from mmcorpus.registry import FileSpec

DATA = os.urandom(300_000)
SHA = hashlib.sha256(DATA).hexdigest()


class SleepLog(list):
    """Records the delays the downloader asks for instead of waiting them out."""

    def __call__(self, seconds: float) -> None:
        self.append(seconds)


def options(**kw) -> DownloadOptions:
    kw.setdefault("sleep", SleepLog())
    kw.setdefault("backoff", 0.01)
    return DownloadOptions(**kw)


def spec_for(url: str, **kw) -> FileSpec:
    kw.setdefault("sha256", SHA)
    kw.setdefault("size", len(DATA))
    return FileSpec(key="f", url=url, filename="file.bin", **kw)


def test_downloads_verifies_and_second_run_skips(mirror, tmp_path):
    url = mirror.put("data/file.bin", DATA)
    result = download_file(spec_for(url), tmp_path, options())
    assert result.status == "downloaded"
    assert (tmp_path / "file.bin").read_bytes() == DATA
    assert not list(tmp_path.glob("*.part*"))
    again = download_file(spec_for(url), tmp_path, options())
    assert again.status == "present"
    assert len(mirror.hits("data/file.bin")) == 1  # verified from disk, not fetched again


def test_sidecars_of_a_download_killed_after_its_rename_are_removed(mirror, tmp_path):
    """The kill -9 window between `os.replace(part, final)` and the removal of the .part.json: the next run finds
    the file present and verified, and must not leave the sidecar forever (a newcomer's flaky kill test)."""
    url = mirror.put("data/file.bin", DATA)
    download_file(spec_for(url), tmp_path, options())
    (tmp_path / "file.bin.part.json").write_text('{"url": "x", "validator": null}')
    (tmp_path / "file.bin.part.tmp").write_text("{")  # its temporary (layout.part_meta_temp)
    again = download_file(spec_for(url), tmp_path, options())
    assert again.status == "present"
    assert sorted(p.name for p in tmp_path.iterdir() if not p.name.startswith(".")) == ["file.bin"]


def test_resumes_with_range_after_cut_mid_body(mirror, tmp_path):
    url = mirror.put("file.bin", DATA)
    mirror.add("file.bin", Route(cut_after=131_072, times=1))
    download_file(spec_for(url), tmp_path, options())
    assert (tmp_path / "file.bin").read_bytes() == DATA
    first, second = mirror.hits("file.bin")
    assert "Range" not in first.headers
    assert second.headers["Range"] == "bytes=131072-"


def test_resumes_across_runs(mirror, tmp_path):
    """A run that dies mid-file leaves a .part; the next run asks only for the rest."""
    url = mirror.put("file.bin", DATA)
    mirror.add("file.bin", Route(cut_after=65_536, times=1))
    with pytest.raises(DownloadError):
        download_file(spec_for(url), tmp_path, options(retries=0))
    assert not (tmp_path / "file.bin").exists()
    assert (tmp_path / "file.bin.part").stat().st_size == 65_536
    download_file(spec_for(url), tmp_path, options())
    assert (tmp_path / "file.bin").read_bytes() == DATA
    assert mirror.hits("file.bin")[-1].headers["Range"] == "bytes=65536-"


def test_server_ignoring_range_restarts_cleanly(mirror, tmp_path):
    url = mirror.put("file.bin", DATA)
    mirror.add("file.bin", Route(cut_after=65_536, times=1), Route(ignore_range=True))
    download_file(spec_for(url), tmp_path, options())
    assert (tmp_path / "file.bin").read_bytes() == DATA  # not 50 KB + the whole file again
    assert mirror.hits("file.bin")[1].headers["Range"] == "bytes=65536-"


def test_429_honours_retry_after(mirror, tmp_path):
    url = mirror.put("file.bin", DATA)
    mirror.add("file.bin", Route(status=429, headers={"Retry-After": "7"}, times=1))
    sleeps = SleepLog()
    download_file(spec_for(url), tmp_path, options(sleep=sleeps))
    assert sleeps == [7.0]
    assert (tmp_path / "file.bin").read_bytes() == DATA


def test_500_then_success_backs_off_exponentially(mirror, tmp_path):
    url = mirror.put("file.bin", DATA)
    mirror.add("file.bin", Route(status=500, times=2), Route(status=503, times=1))
    sleeps = SleepLog()
    download_file(spec_for(url), tmp_path, options(sleep=sleeps, backoff=1.0))
    assert len(sleeps) == 3 and len(mirror.hits("file.bin")) == 4
    assert 0.75 <= sleeps[0] <= 1.25 and 1.5 <= sleeps[1] <= 2.5 and 3.0 <= sleeps[2] <= 5.0


def test_gives_up_after_retries(mirror, tmp_path):
    url = mirror.put("file.bin", DATA)
    mirror.add("file.bin", Route(status=502))
    with pytest.raises(DownloadError, match="gave up after 3 attempts"):
        download_file(spec_for(url), tmp_path, options(retries=2))
    assert not (tmp_path / "file.bin").exists()


@pytest.mark.parametrize("status", [404, 403, 410])
def test_final_statuses_are_not_retried(mirror, tmp_path, status):
    url = mirror.put("file.bin", DATA)
    mirror.add("file.bin", Route(status=status))
    with pytest.raises(DownloadError, match=f"HTTP {status}") as info:
        download_file(spec_for(url), tmp_path, options())
    assert info.value.status == status
    assert len(mirror.hits("file.bin")) == 1
    assert not (tmp_path / "file.bin").exists()


def test_checksum_mismatch_moves_file_aside(mirror, tmp_path):
    url = mirror.put("file.bin", DATA)
    bad = spec_for(url, sha256="0" * 64)
    with pytest.raises(VerificationError, match="sha256"):
        download_file(bad, tmp_path, options())
    assert not (tmp_path / "file.bin").exists()
    assert [p.read_bytes() for p in (tmp_path / ".rejected").iterdir()] == [DATA]


def test_size_mismatch_and_md5(mirror, tmp_path):
    url = mirror.put("file.bin", DATA)
    with pytest.raises(VerificationError, match="size"):
        download_file(spec_for(url, size=len(DATA) + 1), tmp_path, options())
    good = FileSpec(key="f", url=url, filename="file.bin", md5=hashlib.md5(DATA).hexdigest())
    assert download_file(good, tmp_path, options()).digests["md5"] == hashlib.md5(DATA).hexdigest()


def test_corrupt_file_at_final_path_is_replaced(mirror, tmp_path):
    url = mirror.put("file.bin", DATA)
    (tmp_path / "file.bin").write_bytes(b"garbage")
    result = download_file(spec_for(url), tmp_path, options())
    assert result.status == "downloaded"
    assert (tmp_path / "file.bin").read_bytes() == DATA
    assert len(list((tmp_path / ".rejected").iterdir())) == 1


def test_html_page_instead_of_file_is_an_error(mirror, tmp_path):
    url = mirror.put("file.bin", DATA)
    mirror.add("file.bin", Route(html=True))
    with pytest.raises(VerificationError, match="HTML page"):
        download_file(spec_for(url), tmp_path, options())
    assert not (tmp_path / "file.bin").exists()


def test_html_without_checksum_is_still_refused(mirror, tmp_path):
    url = mirror.put("viewer/file.json", b"{}")
    mirror.add("viewer/file.json", Route(html=True))
    spec = FileSpec(key="f", url=url, filename="file.json")
    with pytest.raises(VerificationError, match="/resolve/"):
        download_file(spec, tmp_path, options())


def test_google_drive_confirm_page_is_followed(mirror, tmp_path):
    """The mirror stands for Google Drive (--mirror): only a Drive page's confirm form is followed."""
    mirror.put("uc", DATA)
    mirror.add("uc", Route(gdrive_confirm=True))
    rewrite = UrlRewriter([MirrorRule.parse(f"https://drive.google.com/={mirror.url}/")])
    download_file(spec_for("https://drive.google.com/file/d/FILEID/view"), tmp_path, options(rewrite=rewrite))
    assert (tmp_path / "file.bin").read_bytes() == DATA
    page_hit, file_hit = mirror.hits("uc")
    assert "Range" not in file_hit.headers


def test_google_drive_quota_page_is_a_clear_error():
    page = '<html><p class="uc-error-subcaption">Too many users have viewed or downloaded this file recently.</p>'
    with pytest.raises(DownloadError, match="Too many users"):
        gdrive_confirm_url(page, "https://drive.google.com/uc?id=x")


def test_redirect_on_same_host_keeps_token_other_host_does_not(mirror, other_host_mirror, tmp_path):
    other_host_mirror.put("cdn/file.bin", DATA)
    mirror.add("datasets/x/resolve/main/file.bin", Route(redirect="/lfs/file.bin"))
    mirror.add("lfs/file.bin", Route(redirect=f"{other_host_mirror.host_url}/cdn/file.bin"))
    rewrite = UrlRewriter(hf_endpoint=mirror.url)
    spec = spec_for("https://huggingface.co/datasets/x/resolve/main/file.bin")
    download_file(spec, tmp_path, options(rewrite=rewrite, hf_token="secret-token"))
    assert (tmp_path / "file.bin").read_bytes() == DATA
    assert mirror.hits("datasets/x/resolve/main/file.bin")[0].headers["Authorization"] == "Bearer secret-token"
    assert mirror.hits("lfs/file.bin")[0].headers["Authorization"] == "Bearer secret-token"
    cdn = other_host_mirror.hits("cdn/file.bin")
    assert len(cdn) == 1 and "Authorization" not in cdn[0].headers


def test_token_never_sent_to_non_hf_hosts(mirror, tmp_path):
    url = mirror.put("file.bin", DATA)
    download_file(spec_for(url), tmp_path, options(hf_token="secret-token"))
    assert "Authorization" not in mirror.hits("file.bin")[0].headers


def test_redirect_to_non_http_scheme_is_refused(mirror, tmp_path):
    url = mirror.put("file.bin", DATA)
    mirror.add("file.bin", Route(redirect="file:///etc/passwd"))
    with pytest.raises(DownloadError, match="scheme 'file'"):
        download_file(spec_for(url), tmp_path, options())


def test_redirect_loop_is_bounded(mirror, tmp_path):
    mirror.add("loop", Route(redirect="/loop"))
    with pytest.raises(DownloadError, match="redirects"):
        download_file(spec_for(mirror.url + "/loop"), tmp_path, options(max_redirects=3))


def test_mirror_rule_rewrites_prefix(mirror, tmp_path):
    mirror.put("gcc-data/Train/file.bin", DATA)
    rewrite = UrlRewriter([MirrorRule.parse(f"https://storage.googleapis.com/={mirror.url}/")])
    download_file(spec_for("https://storage.googleapis.com/gcc-data/Train/file.bin"), tmp_path,
                  options(rewrite=rewrite))
    assert (tmp_path / "file.bin").read_bytes() == DATA


def test_falls_back_to_the_next_mirror(mirror, tmp_path):
    good = mirror.put("b/file.bin", DATA)
    spec = spec_for(mirror.url + "/a/file.bin", mirrors=(good,))
    result = download_file(spec, tmp_path, options())
    assert result.url == good


@pytest.mark.parametrize("as_uri", [True, False])
def test_local_copy_by_path_or_file_url(tmp_path, as_uri):
    source = tmp_path / "downloaded-by-hand.tsv"
    source.write_bytes(DATA)
    dest = tmp_path / "dest"
    spec = spec_for(source.as_uri() if as_uri else str(source))
    assert download_file(spec, dest, options()).status == "downloaded"
    assert (dest / "file.bin").read_bytes() == DATA


def test_missing_local_copy_is_a_clear_error(tmp_path):
    with pytest.raises(DownloadError, match="does not exist"):
        download_file(spec_for(str(tmp_path / "nope.tsv")), tmp_path / "dest", options())


def test_partial_file_of_another_url_is_not_spliced(mirror, tmp_path):
    url = mirror.put("file.bin", DATA)
    (tmp_path / "file.bin.part").write_bytes(b"x" * 1000)  # no .part.json: origin unknown
    download_file(spec_for(url), tmp_path, options())
    assert (tmp_path / "file.bin").read_bytes() == DATA
    assert "Range" not in mirror.hits("file.bin")[0].headers
