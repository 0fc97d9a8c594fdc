"""The command line as users run it: real processes, real exit codes, one-line errors, a real local server."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest
from helpers.cli import mmcorpus, one_line_error  # noqa: E402

from mmcorpus.demo.localmirror import Route


def write_spec(folder: Path, name: str, url: str, data: bytes, **extra) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    lines = [f"name: {name}", "kind: dataset", "files:", "  main:", f"    url: {url}", "    filename: data.json",
             f"    size: {len(data)}", f"    sha256: {hashlib.sha256(data).hexdigest()}", "format: {type: llava}"]
    lines += [f"{k}: {v}" for k, v in extra.items()]
    path = folder / f"{name}.yaml"
    path.write_text("\n".join(lines) + "\n")
    return path


def test_list_shows_every_dataset_and_collection_as_text_and_json():
    text = mmcorpus("list")
    assert text.returncode == 0
    rows = json.loads(mmcorpus("list", "--json").stdout)
    names = {r["name"] for r in rows}
    expected = {"cc3m", "cc12m", "llava_instruct", "llava_pretrain", "llava_cc3m_595k", "sharegpt4v",
                "coco_train2017", "gqa", "ocr_vqa", "textvqa", "vg", "llava_pretrain_images",
                "llava_cc3m_595k_images", "sam", "wikiart", "web_celebrity", "web_landmark", "share_textvqa"}
    assert expected <= names
    for name in expected:
        assert name in text.stdout


def test_info_json_has_spec_and_disk_state(tmp_path):
    result = mmcorpus("--root", str(tmp_path), "info", "cc3m", "--json")
    info = json.loads(result.stdout)
    assert info["files"]["train"]["sha256"].startswith("eab84e5e")
    assert info["on_disk"]["train"]["present"] is False


def test_unknown_name_exits_2_with_a_suggestion():
    result = mmcorpus("info", "cc3n")
    assert result.returncode == 2
    assert "unknown dataset or collection 'cc3n'" in one_line_error(result)
    assert "cc3m" in result.stderr
    assert mmcorpus("fetch", "no_such_thing", "--dry-run").returncode == 2


def test_spec_with_unknown_key_exits_2_naming_file_and_key(tmp_path):
    write_spec(tmp_path / "specs", "mine", "https://example.org/a.json", b"[]", colections="[coco]")
    result = mmcorpus("--config-dir", str(tmp_path / "specs"), "info", "mine")  # `list` sets it aside
    assert result.returncode == 2
    line = one_line_error(result)
    assert "mine.yaml" in line and "'colections'" in line


def test_broken_yaml_exits_2_naming_the_line(tmp_path):
    folder = tmp_path / "specs"
    folder.mkdir()
    (folder / "bad.yaml").write_text("name: bad\nkind: dataset\nfiles: [unclosed\n")
    result = mmcorpus("info", "bad", env={"MMCORPUS_CONFIG_DIR": str(folder)})
    assert result.returncode == 2
    assert "bad.yaml" in one_line_error(result) and "line" in result.stderr


def test_bad_option_values_exit_2(tmp_path):
    assert mmcorpus("fetch", "cc3m", "--shard", "3/2", "--dry-run").returncode == 2
    assert mmcorpus("fetch", "cc3m", "--resize", "huge", "--dry-run").returncode == 2
    assert mmcorpus("fetch", "cc3m", "--mirror", "nonsense", "--dry-run").returncode == 2
    assert mmcorpus("fetch", "cc3m:nosuchfile", "--dry-run").returncode == 2
    bad_check = mmcorpus("fetch", "cc3m", "--image-check", "header", "--dry-run")
    assert bad_check.returncode == 2 and "--image-check" in one_line_error(bad_check)


def test_fetch_then_refetch_is_idempotent(mirror, tmp_path):
    data = json.dumps([{"id": 1, "conversations": [{"from": "human", "value": "hi"},
                                                   {"from": "gpt", "value": "hello"}]}]).encode()
    url = mirror.put("files/data.json", data)
    write_spec(tmp_path / "specs", "mine", url, data)
    args = ["--root", str(tmp_path / "root"), "--config-dir", str(tmp_path / "specs")]
    first = mmcorpus(*args, "fetch", "mine", "--json")
    assert first.returncode == 0, first.stderr
    report = json.loads(first.stdout)
    assert report["targets"][0]["files"][0]["status"] == "downloaded"
    assert (tmp_path / "root" / "downloads" / "mine" / "data.json").read_bytes() == data
    second = json.loads(mmcorpus(*args, "fetch", "mine", "--json").stdout)
    assert second["targets"][0]["files"][0]["status"] == "present"
    assert len(mirror.hits("files/data.json")) == 1


def test_failed_download_exits_1_and_leaves_nothing(mirror, tmp_path):
    data = b"[]"
    mirror.put("files/data.json", b"[1]")  # the wrong bytes: checksum mismatch
    write_spec(tmp_path / "specs", "mine", f"{mirror.url}/files/data.json", data)
    result = mmcorpus("--root", str(tmp_path / "root"), "--config-dir", str(tmp_path / "specs"), "fetch", "mine")
    assert result.returncode == 1
    assert "Traceback" not in result.stderr and "sha256 mismatch" in result.stderr or "size" in result.stderr
    assert not (tmp_path / "root" / "downloads" / "mine" / "data.json").exists()


def test_404_exits_1_with_the_reason(mirror, tmp_path):
    mirror.add("gone.json", Route(status=404))
    write_spec(tmp_path / "specs", "mine", f"{mirror.url}/gone.json", b"[]")
    result = mmcorpus("--root", str(tmp_path / "root"), "--config-dir", str(tmp_path / "specs"), "fetch", "mine")
    assert result.returncode == 1
    assert "HTTP 404" in result.stdout + result.stderr


def test_dry_run_shows_rewritten_urls_and_sizes(tmp_path):
    result = mmcorpus("--root", str(tmp_path), "fetch", "cc3m", "--dry-run", "--json",
                      "--mirror", "https://storage.googleapis.com/=http://mirror.internal/gcc/")
    plan = json.loads(result.stdout)["targets"][0]
    assert plan["files"][0]["url"] == "http://mirror.internal/gcc/gcc-data/Train/GCC-training.tsv"
    assert plan["bytes"] == 564607502 + 2603670
    assert not (tmp_path / "downloads").exists()


def test_root_from_environment_and_after_the_command(tmp_path):
    env_root = json.loads(mmcorpus("info", "cc3m", "--json", env={"MMCORPUS_ROOT": str(tmp_path / "a")}).stdout)
    assert env_root["on_disk"]["train"]["path"].startswith(str(tmp_path / "a"))
    late = json.loads(mmcorpus("info", "cc3m", "--json", "--root", str(tmp_path / "b")).stdout)
    assert late["on_disk"]["train"]["path"].startswith(str(tmp_path / "b"))


@pytest.mark.timeout(300)
def test_demo_runs_offline_end_to_end(tmp_path):
    result = mmcorpus("demo", "--out", str(tmp_path / "demo"))
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    root = tmp_path / "demo" / "root"
    assert (root / "downloads" / "cc3m" / "Train_GCC-training.tsv").is_file()
    assert (root / "images" / "coco" / "train2017" / "000000033471.jpg").is_file()
    assert (root / "images" / "wikiart" / "images").is_dir()
    assert "Demo finished" in result.stdout
    for fault in ("not_found", "corrupt", "http_error", "not_image", "opted_out"):
        assert fault in result.stdout
    for stage in ("pretrain", "finetune"):
        assert (root / "stages" / stage / "report.html").is_file()
        assert json.loads((root / "stages" / stage / "manifest.json").read_text())["stage"] == stage
    assert (root / "stages" / "pretrain" / "llava" / "pretrain.json").is_file()

    # Nothing changed: prepare re-normalizes nothing and leaves the stage alone.
    args = ["--root", str(root), "--config-dir", str(tmp_path / "demo" / "specs")]
    again = mmcorpus(*args, "prepare", "--stage", "pretrain", "--format", "llava", "--format", "webdataset", "--json")
    assert again.returncode == 0, again.stderr
    result = json.loads(again.stdout)
    assert {r["status"] for r in result["normalize"].values()} == {"unchanged"}
    assert result["manifest"]["unchanged"] is True


def test_own_dataset_joins_a_stage_by_its_spec(mirror, tmp_path):
    """DESIGN.md 6.1: `--datasets` takes any registered dataset whose spec lists the stage in `stages:`."""
    records = json.dumps([{"id": i, "conversations": [{"from": "human", "value": f"Question {i}?"},
                                                       {"from": "gpt", "value": f"Answer {i}."}]}
                          for i in range(3)]).encode()
    specs = tmp_path / "specs"
    write_spec(specs, "mine", mirror.put("mine.json", records), records, stages="[finetune]")
    write_spec(specs, "other", mirror.put("other.json", records), records, stages="[pretrain]")
    args = ["--root", str(tmp_path / "root"), "--config-dir", str(specs)]
    assert mmcorpus(*args, "fetch", "mine", "other").returncode == 0
    result = mmcorpus(*args, "prepare", "--stage", "finetune", "--datasets", "mine", "--json")
    assert result.returncode == 0, result.stderr
    manifest = json.loads(result.stdout)["manifest"]
    assert [(d["dataset"], d["subset"]) for d in manifest["datasets"]] == [("mine", "main")]
    assert manifest["total"]["kept"] == 3

    refused = mmcorpus(*args, "prepare", "--stage", "finetune", "--datasets", "other")
    assert refused.returncode == 2
    line = one_line_error(refused)
    assert "'other' is not in mix 'finetune'" in line and "stages:" in line and "--mix" in line


@pytest.mark.parametrize("option,value", [("--timeout", "-1"), ("--workers", "0"), ("--threads", "0"),
                                          ("--limit", "0"), ("--tasks", "0")])
def test_a_bad_number_names_its_option(tmp_path, option, value):
    result = mmcorpus("fetch", "cc3m", option, value, "--dry-run", "--root", str(tmp_path))
    assert result.returncode == 2
    assert option in one_line_error(result)


def test_verify_of_an_empty_root_says_nothing_was_fetched(tmp_path):
    root = tmp_path / "no-such-root"
    everything = mmcorpus("verify", "--root", str(root))
    assert everything.returncode == 0
    assert f"nothing fetched under {root}" in everything.stdout and "all verified" not in everything.stdout
    asked = mmcorpus("verify", "cc3m", "--root", str(root), "--json")
    assert asked.returncode == 1  # asked about a name that is not there
    report = json.loads(asked.stdout)
    assert report["fetched"] == [] and report["ok"] is False and report["root"] == str(root)


def test_the_log_file_records_why_a_run_ended_and_its_summary(tmp_path):
    log = tmp_path / "run.log"
    failed = mmcorpus("--log-file", str(log), "fetch", "cc3n", "--root", str(tmp_path / "root"))
    assert failed.returncode == 2
    error = one_line_error(failed)
    assert error in log.read_text()  # the console line, once, in the log too
    assert failed.stderr.count(error) == 1
    done = mmcorpus("--log-file", str(log), "verify", "--root", str(tmp_path / "root"))
    assert done.returncode == 0 and "summary:" in log.read_text()
    assert f"nothing fetched under {tmp_path / 'root'}" in log.read_text()


@pytest.mark.parametrize("where", ["missing/run.log", "a-file/run.log"])
def test_a_log_file_that_cannot_be_opened_is_one_line(tmp_path, where):
    (tmp_path / "a-file").write_text("")
    result = mmcorpus("--log-file", str(tmp_path / where), "list")
    assert result.returncode == 2
    assert f"--log-file {tmp_path / where}: cannot open it" in one_line_error(result)


def test_a_root_that_is_a_file_is_one_line(tmp_path):
    (tmp_path / "root").write_text("")
    for args in (["fetch", "llava_instruct"], ["prepare", "--stage", "finetune"], ["status"]):
        result = mmcorpus(*args, "--root", str(tmp_path / "root"))
        assert result.returncode != 0, args
        assert f"--root {tmp_path / 'root'} is not a directory" in one_line_error(result)


def test_a_root_that_cannot_be_written_is_one_line():
    """/proc refuses new folders even to root (tests may run as root, for whom chmod 555 changes nothing)."""
    root = "/proc/mmcorpus-test-root"
    result = mmcorpus("fetch", "llava_instruct", "--root", root)
    assert result.returncode == 1
    assert f"cannot write {root}" in one_line_error(result) and "--root" in result.stderr


def test_status_names_what_is_on_disk_but_unknown_and_info_without_a_title_has_no_dangling_colon(tmp_path, mirror):
    from helpers.urllist import url_list_spec

    config = url_list_spec(tmp_path / "specs", mirror, rows=2)
    root = tmp_path / "root"
    assert mmcorpus(*config, "fetch", "mine", "--root", str(root), "--allow-private-hosts").returncode == 0
    info = mmcorpus(*config, "info", "mine", "--root", str(root))
    assert info.stdout.splitlines()[0] == "mine (dataset)"  # the spec has no title
    known = mmcorpus(*config, "status", "--root", str(root))
    assert "no loaded spec" not in known.stdout
    forgotten = mmcorpus("status", "--root", str(root))  # cron without MMCORPUS_CONFIG_DIR
    assert forgotten.returncode == 0
    assert "on disk, but no loaded spec has these names: mine (your own specs? pass --config-dir" in forgotten.stdout


def test_dry_run_shows_the_collections_a_json_dataset_may_need_and_the_web_images_of_a_url_list(tmp_path):
    text = mmcorpus("fetch", "llava_instruct", "cc3m", "--dry-run", "--limit", "1000", "--root", str(tmp_path)).stdout
    assert "coco_train2017 (collection, if llava_instruct's records use it): 1 files, ~18.0 GB" in text
    assert "  train2017.zip" in text and "~9.0 GB" in text  # vg's images.zip: approx_size, not '?'
    assert "by hand:" in text and "(mmcorpus info ocr_vqa)" in text  # a collection with no headless download
    assert "  + up to 2,000 images from the web" in text  # cc3m's two TSVs, cut at --limit
    assert text.splitlines()[-1].startswith("total: ~") and text.splitlines()[-1].endswith("+ the web images")
    no_images = mmcorpus("fetch", "llava_instruct", "--dry-run", "--no-images", "--root", str(tmp_path)).stdout
    assert "coco_train2017" not in no_images


def test_an_approximate_size_takes_a_unit_and_a_bad_one_names_its_key(tmp_path):
    spec = write_spec(tmp_path / "specs", "mine", "https://example.org/a.json", b"[]")
    spec.write_text(spec.read_text().replace("    size: 2\n", "    approx_size: 18 parsecs\n"))
    result = mmcorpus("--config-dir", str(tmp_path / "specs"), "info", "mine")
    assert result.returncode == 2
    assert "approx_size" in one_line_error(result) and "'18 GB'" in result.stderr
