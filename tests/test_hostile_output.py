"""What leaves the process under hostile input, through the real CLI: no credential of a URL in any output or
record, no raw terminal control byte from an untrusted name, and a full disk as one line that a re-run gets past.

A full disk is made without root: the CLI runs under RLIMIT_FSIZE with SIGXFSZ ignored, so a write beyond the
limit fails with EFBIG, which mmcorpus treats like ENOSPC and EDQUOT.
"""

from __future__ import annotations

import base64
import hashlib
import io
import json
import random
import subprocess
import sys
from pathlib import Path

from helpers.archives import zip_bytes
from helpers.cli import ENV, mmcorpus, one_line_error
from helpers.urllist import jpeg, status_rows, url_list_spec
from PIL import Image

from mmcorpus.demo.localmirror import Route

CONTROL_BYTES = ("\x1b", "\x07")


def _everything_written(result, root: Path, log_file: Path | None = None) -> str:
    texts = [result.stdout, result.stderr, *(p.read_text() for p in sorted((root / "runs").glob("*.json")))]
    if log_file is not None:
        texts.append(log_file.read_text())
    return "\n".join(texts)


# ------------------------------------------------------------------------------------- credentials


def test_credentials_of_a_spec_url_appear_in_no_output_log_or_record(mirror, tmp_path):
    mirror.add("missing.json", Route(status=404))
    url = f"http://user:s3cret@127.0.0.1:{mirror.port}/missing.json?token=abc&X-Amz-Signature=def"
    specs = tmp_path / "specs"
    specs.mkdir()
    (specs / "mine.yaml").write_text(f"name: mine\nkind: dataset\nfiles:\n  main:\n    url: {url}\n"
                                     "    filename: data.json\nformat: {type: llava}\n")
    root, log_file = tmp_path / "root", tmp_path / "fetch.log"
    args = ["--root", str(root), "--config-dir", str(specs), "--log-file", str(log_file)]

    fetched = mmcorpus(*args, "fetch", "mine")
    assert fetched.returncode == 1, fetched.stderr
    assert "HTTP 404" in fetched.stderr and "http://***@127.0.0.1" in fetched.stderr
    # The request itself had the credentials: requests sends basic auth from the userinfo.
    hit = mirror.hits("missing.json")[0]
    assert hit.headers.get("Authorization") == "Basic " + base64.b64encode(b"user:s3cret").decode()

    outputs = [fetched, mmcorpus(*args, "fetch", "mine", "--json"), mmcorpus(*args, "status"),
               mmcorpus(*args, "status", "--json"), mmcorpus(*args, "info", "mine"),
               mmcorpus(*args, "info", "mine", "--json"), mmcorpus(*args, "fetch", "mine", "--dry-run", "--json")]
    assert json.loads(outputs[3].stdout)["items"]["mine"]["last_run"]["ok"] is False
    assert "token=***" in outputs[4].stdout
    for result in outputs:
        written = _everything_written(result, root, log_file)
        for secret in ("s3cret", "abc", "def"):
            assert secret not in written, (secret, result.args, written)


# ------------------------------------------------------------------------------ control characters


def test_control_characters_of_an_archive_member_reach_the_terminal_escaped(mirror, tmp_path):
    data = zip_bytes({"top/ok.jpg": jpeg(), "top/../\x1b[31mevil\x07.jpg": jpeg()})
    url = mirror.put("parts/part.zip", data)
    specs = tmp_path / "specs"
    specs.mkdir()
    (specs / "parts.yaml").write_text("\n".join([
        "name: parts", "kind: collection", "path: parts/images", "archives:", f"  - url: {url}",
        f"    sha256: {hashlib.sha256(data).hexdigest()}", "    strip: top/"]) + "\n")
    root, log_file = tmp_path / "root", tmp_path / "fetch.log"
    result = mmcorpus("--root", str(root), "--config-dir", str(specs), "--log-file", str(log_file),
                      "fetch", "parts")
    assert result.returncode != 0 and "Traceback" not in result.stderr
    written = _everything_written(result, root, log_file)
    assert "\\x1b[31mevil\\x07" in written  # the name is shown, escaped
    assert not any(byte in result.stdout + result.stderr + log_file.read_text() for byte in CONTROL_BYTES)


def test_control_characters_of_a_path_in_an_error_line_and_the_report_are_escaped(tmp_path):
    specs = tmp_path / "specs"
    specs.mkdir()
    # A double-quoted YAML string: \e is ESC, \a is BEL.
    (specs / "mine.yaml").write_text('name: mine\nkind: dataset\nfiles:\n  main:\n'
                                     f'    url: "{tmp_path}/\\e[31mgone\\a.json"\n'
                                     '    filename: data.json\nformat: {type: llava}\n')
    args = ["--root", str(tmp_path / "root"), "--config-dir", str(specs)]
    for result in (mmcorpus(*args, "fetch", "mine"), mmcorpus(*args, "info", "mine")):
        assert "\\x1b[31mgone\\x07.json" in result.stdout + result.stderr, result.args
        assert not any(byte in result.stdout + result.stderr for byte in CONTROL_BYTES), result.args


# --------------------------------------------------------------------------------------- disk full


LIMIT = 64_000  # bytes per file: the list, small images and status files fit, the big image does not


def _mmcorpus_with_file_size_limit(*args: str) -> subprocess.CompletedProcess:
    """The CLI as under `ulimit -f`: a write beyond LIMIT fails with EFBIG (SIGXFSZ ignored, as a shell
    would not kill the job), in this process and in the worker processes it forks."""
    wrapper = ("import resource, runpy, signal, sys; signal.signal(signal.SIGXFSZ, signal.SIG_IGN); "
               f"resource.setrlimit(resource.RLIMIT_FSIZE, ({LIMIT}, {LIMIT})); "
               "sys.argv = ['mmcorpus', *sys.argv[1:]]; runpy.run_module('mmcorpus', run_name='__main__')")
    return subprocess.run([sys.executable, "-c", wrapper, *args], check=False, capture_output=True, text=True,
                          env={**ENV, "PYTHONDONTWRITEBYTECODE": "1"}, timeout=120)


def _big_jpeg() -> bytes:
    noise = random.Random(0).randbytes(300 * 300 * 3)
    out = io.BytesIO()
    Image.frombytes("RGB", (300, 300), noise).save(out, "JPEG", quality=95)
    assert len(out.getvalue()) > LIMIT
    return out.getvalue()


def _url_list_with_a_big_image(mirror, folder: Path) -> list[str]:
    return url_list_spec(folder, mirror, images=[_big_jpeg() if i == 5 else jpeg(40 + i, 30) for i in range(8)])


def _images(root: Path) -> dict[str, bytes]:
    folder = root / "images" / "mine"
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()
            and p.suffix != ".done"}


def test_full_disk_while_writing_images_is_one_line_and_a_rerun_finishes_the_same(mirror, tmp_path):
    specs = _url_list_with_a_big_image(mirror, tmp_path / "specs")
    root = tmp_path / "root"
    fetch = ["--root", str(root), *specs, "fetch", "mine", "--allow-private-hosts", "--workers", "2"]

    full = _mmcorpus_with_file_size_limit(*fetch)
    assert full.returncode == 1, full.stderr
    line = one_line_error(full)
    assert line.startswith("mmcorpus: error: disk full writing ") and "000000005.jpg" in line
    assert "free space and re-run; finished shards are kept" in line
    shard = root / "images" / "mine" / "train"
    assert not (shard / "00000" / "000000005.jpg").exists()
    assert not (shard / "00000.done").exists() and not (shard / "00000.parquet").exists()
    assert not [p for p in root.rglob("*") if p.name.endswith(".mmpart")]  # no half-written temporary left
    record = json.loads((root / "runs" / "mine.json").read_text())
    assert record["ok"] is False and "disk full" in record["error"]

    again = mmcorpus(*fetch)  # space freed
    assert again.returncode == 0, again.stderr
    uninterrupted = tmp_path / "uninterrupted"
    assert mmcorpus("--root", str(uninterrupted), *fetch[2:]).returncode == 0
    assert status_rows(root, "mine") == status_rows(uninterrupted, "mine")
    assert [r["status"] for r in status_rows(root, "mine")] == ["ok"] * 8
    assert _images(root) == _images(uninterrupted)


def test_full_disk_while_downloading_a_file_is_one_line_and_recorded(mirror, tmp_path):
    big = _big_jpeg() * 2
    url = mirror.put("files/big.json", big)
    specs = tmp_path / "specs"
    specs.mkdir()
    (specs / "mine.yaml").write_text(f"name: mine\nkind: dataset\nfiles:\n  main:\n    url: {url}\n"
                                     f"    filename: data.json\n    size: {len(big)}\nformat: {{type: llava}}\n")
    root = tmp_path / "root"
    result = _mmcorpus_with_file_size_limit("--root", str(root), "--config-dir", str(specs), "fetch", "mine")
    assert result.returncode == 1, result.stderr
    line = one_line_error(result)
    assert line.startswith("mmcorpus: error: disk full writing ") and "mine" in line
    assert "File too large" in line and "free space and re-run" in line
    assert "disk full" in json.loads((root / "runs" / "mine.json").read_text())["error"]


def test_full_disk_anywhere_in_a_command_is_one_line(tmp_path):
    rows = random.Random(0)
    records = [{"id": i, "conversations": [{"from": "human", "value": rows.randbytes(200).hex()},
                                           {"from": "gpt", "value": rows.randbytes(200).hex()}]} for i in range(2000)]
    (tmp_path / "data.json").write_text(json.dumps(records))
    specs = tmp_path / "specs"
    specs.mkdir()
    (specs / "mine.yaml").write_text(f"name: mine\nkind: dataset\nstages: [finetune]\nfiles:\n  main:\n"
                                     f"    url: {tmp_path / 'data.json'}\n    filename: data.json\n"
                                     "format: {type: llava}\n")
    args = ["--root", str(tmp_path / "root"), "--config-dir", str(specs)]
    assert mmcorpus(*args, "fetch", "mine").returncode == 0
    # The normalized parquet outgrows the limit: an OSError far from any fetch step, caught by the CLI.
    result = _mmcorpus_with_file_size_limit(*args, "prepare", "--stage", "finetune", "--datasets", "mine")
    assert result.returncode == 1, result.stderr
    line = one_line_error(result)
    assert line.startswith("mmcorpus: error: disk full writing ") and str(tmp_path / "root") in line
    assert "File too large" in line and line.endswith("free space and re-run")
