"""Kill -9 at random points, then re-run: the result equals an uninterrupted run (tests/helpers/killsafe.py).

Applied to archive extraction (zip and tar.gz), to the single-file downloader against the local mirror, to
both together (a collection fetch), and to `mmcorpus prepare` (normalize + stage + exports). The URL-list
engine's kill -9 test is in tests/fetch/urllist/test_native.py.
"""

from __future__ import annotations

import hashlib
import io
import json
import random
import sys
import tarfile
import zipfile
from pathlib import Path

import pytest
from helpers.killsafe import check_kill_safe, run_and_kill, run_to_completion

from mmcorpus.demo.localmirror import Route

SEEDS = (1, 2, 3)

EXTRACT = """
import sys
from pathlib import Path
from mmcorpus.fetch.archives import Mapping, extract_archive
run = Path(sys.argv[1])
extract_archive(run / "in" / sys.argv[2], run / "images" / "pics", Mapping(strip="pics/"))
"""

DOWNLOAD = """
import sys
from pathlib import Path
from mmcorpus.fetch.files import DownloadOptions, download_file
from mmcorpus.registry import FileSpec
run, url, size, sha256 = Path(sys.argv[1]), sys.argv[2], int(sys.argv[3]), sys.argv[4]
spec = FileSpec(key="big", url=url, filename="big.bin", size=size, sha256=sha256)
download_file(spec, run / "downloads" / "big", DownloadOptions(backoff=0.005, max_backoff=0.005, retries=10_000))
"""

FETCH_COLLECTION = """
import sys
from pathlib import Path
from mmcorpus.fetch.collections import fetch_collection
from mmcorpus.fetch.files import DownloadOptions, download_file
from mmcorpus.registry import parse_spec
run, url = Path(sys.argv[1]), sys.argv[2]
spec = parse_spec({"name": "pics", "kind": "collection", "path": "pics", "archives": [{"url": url, "strip": "pics/"}]},
                  Path("pics.yaml"))
options = DownloadOptions(backoff=0.005, max_backoff=0.005, retries=10_000)
fetch_collection(spec, run, lambda archive, dest: download_file(archive, dest, options).path)
"""


def members(count: int = 200, size: int = 16_000) -> dict[str, bytes]:
    rng = random.Random(0)
    return {f"pics/{i % 7}/{i:05d}.jpg": rng.randbytes(size) for i in range(count)}


@pytest.fixture(scope="module")
def archives(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("archives")
    with zipfile.ZipFile(folder / "pics.zip", "w", zipfile.ZIP_DEFLATED) as zf:
        for name, data in members().items():
            zf.writestr(name, data)
    with tarfile.open(folder / "pics.tar.gz", "w:gz", compresslevel=1) as tf:
        for name, data in members().items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tf.addfile(info, io.BytesIO(data))
    return folder


@pytest.mark.parametrize("archive", ["pics.zip", "pics.tar.gz"])
def test_extraction_killed_at_random_points_ends_like_an_uninterrupted_one(archives, tmp_path, archive):
    def setup(run_dir: Path) -> None:
        (run_dir / "in").mkdir()
        (run_dir / "in" / archive).hardlink_to(archives / archive)

    results = check_kill_safe(
        lambda run_dir: [sys.executable, "-c", EXTRACT, str(run_dir), archive],
        workdir=tmp_path, setup=setup, seeds=SEEDS,
        ready=lambda run_dir: (run_dir / "images" / "pics").exists(),
    )
    assert any(r.interrupted for r in results), "no kill landed while the extraction was running"


@pytest.fixture
def big_file(mirror) -> tuple[str, int, str]:
    """1.5 MB behind a server that cuts every response after 64 KB: the download advances by Range requests,
    so a kill lands mid-download at any delay."""
    data = random.Random(1).randbytes(1_500_000)
    url = mirror.put("big.bin", data)
    mirror.add("big.bin", Route(cut_after=65_536))
    return url, len(data), hashlib.sha256(data).hexdigest()


def download_cmd(big_file):
    url, size, sha256 = big_file
    return lambda run_dir: [sys.executable, "-c", DOWNLOAD, str(run_dir), url, str(size), sha256]


def test_download_killed_at_random_points_ends_like_an_uninterrupted_one(big_file, tmp_path):
    results = check_kill_safe(
        download_cmd(big_file), workdir=tmp_path, seeds=SEEDS,
        ready=lambda run_dir: (run_dir / "downloads" / "big" / "big.bin.part").exists(),
    )
    assert any(r.interrupted for r in results), "no kill landed while the download was running"


def test_download_resumes_after_kill_instead_of_restarting(big_file, mirror, tmp_path):
    command = download_cmd(big_file)(tmp_path)
    part = tmp_path / "downloads" / "big" / "big.bin.part"
    # Kill once a few Range steps are done: those bytes must not be fetched again.
    assert run_and_kill(command, 0.0, ready=lambda: part.is_file() and part.stat().st_size >= 3 * 65_536)
    have = part.stat().st_size
    before = len(mirror.hits("big.bin"))
    run_to_completion(command)
    assert mirror.hits("big.bin")[before].headers["Range"] == f"bytes={have}-"
    assert hashlib.sha256((tmp_path / "downloads/big/big.bin").read_bytes()).hexdigest() == big_file[2]


def test_collection_fetch_killed_at_random_points_ends_like_an_uninterrupted_one(archives, mirror, tmp_path):
    url = mirror.put("pics.zip", (archives / "pics.zip").read_bytes())
    mirror.add("pics.zip", Route(cut_after=1 << 20))  # download in 1 MB Range steps, then extraction
    results = check_kill_safe(
        lambda run_dir: [sys.executable, "-c", FETCH_COLLECTION, str(run_dir), url],
        workdir=tmp_path, seeds=SEEDS, ready=lambda run_dir: (run_dir / "downloads").exists(),
    )
    assert any(r.interrupted for r in results), "no kill landed while the fetch was running"


def test_extraction_resumes_after_kill_without_rewriting_finished_members(archives, tmp_path):
    (tmp_path / "in").mkdir()
    (tmp_path / "in" / "pics.zip").hardlink_to(archives / "pics.zip")
    command = [sys.executable, "-c", EXTRACT, str(tmp_path), "pics.zip"]
    dest = tmp_path / "images" / "pics"

    def finished() -> list[Path]:
        return list(dest.rglob("*.jpg"))  # final names only: temporaries end in .mmpart

    assert run_and_kill(command, 0.0, ready=lambda: len(finished()) >= 20)
    before = {p: p.stat().st_ino for p in finished()}
    run_to_completion(command)
    marker = json.loads((dest / ".mmcorpus" / "pics.zip.done").read_text())
    assert marker["already_present"] == len(before) and marker["extracted"] == len(members()) - len(before)
    assert all(p.stat().st_ino == ino for p, ino in before.items())  # not rewritten


# ---------------------------------------------------------------------------------------------- prepare

PREPARE_VOLATILE = ("*.mmcorpus/*", "runs/*.json", "root/stages/*/manifest.json", "root/stages/*/report.html",
                    "root/normalized/*/_*.json", "specs/*")  # specs name their run folder


def prepare_inputs(run_dir: Path) -> None:
    """A fetched LLaVA-format dataset (JSON + images) and a mix, as `mmcorpus prepare` finds them."""
    from PIL import Image

    root = run_dir / "root"
    images = root / "images" / "pics"
    images.mkdir(parents=True)
    for i in range(40):
        buffer = io.BytesIO()
        Image.new("RGB", (32 + i, 24), (6 * i, 90, 200)).save(buffer, "JPEG")
        (images / f"{i}.jpg").write_bytes(buffer.getvalue())
    records = [{"id": i, "image": f"{i % 45}.jpg", "conversations": [
        {"from": "human", "value": f"<image>\nQuestion {i}?"}, {"from": "gpt", "value": f"Answer {i}."}]}
        for i in range(3000)]  # ids 40-44 name images that are missing: dropped by the stage
    data = json.dumps(records).encode()
    (root / "downloads" / "qa").mkdir(parents=True)
    (root / "downloads" / "qa" / "qa.json").write_bytes(data)
    specs = run_dir / "specs"
    specs.mkdir()
    (specs / "qa.yaml").write_text(
        "name: qa\nkind: dataset\nstages: [finetune]\nformat: {type: llava}\n"
        f"files:\n  main:\n    url: {root / 'downloads' / 'qa' / 'qa.json'}\n    filename: qa.json\n"
        "    image_prefix: pics\n")
    (run_dir / "mix.yaml").write_text("name: qa_mix\ndatasets:\n  - {dataset: qa, subset: main, sample: all}\n")


def test_prepare_killed_at_random_points_ends_like_an_uninterrupted_one(tmp_path):
    results = check_kill_safe(
        lambda run: [sys.executable, "-m", "mmcorpus", "--root", str(run / "root"), "--config-dir",
                     str(run / "specs"), "prepare", "--mix", str(run / "mix.yaml"), "--format", "llava",
                     "--format", "webdataset"],
        setup=prepare_inputs, workdir=tmp_path, seeds=SEEDS, volatile=PREPARE_VOLATILE, timeout=120,
        env={"MMCORPUS_CONFIG_DIR": ""},
    )
    assert any(r.interrupted for r in results)
    stage = tmp_path / "seed1" / "root" / "stages" / "qa_mix"
    assert json.loads((stage / "manifest.json").read_text())["stage"] == "qa_mix"
