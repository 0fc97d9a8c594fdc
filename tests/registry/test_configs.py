"""The built-in specs (configs/*.yaml) against the dataset reference, and the loader's errors on bad specs."""

from __future__ import annotations

import hashlib
import itertools
from pathlib import Path
from urllib.parse import urlsplit

import pytest
from helpers.cli import mmcorpus

from mmcorpus.demo.localmirror import Route
from mmcorpus.errors import ConfigError
from mmcorpus.registry import Registry

DATASETS = {"cc3m", "cc12m", "llava_instruct", "llava_pretrain", "llava_cc3m_595k", "sharegpt4v"}
COLLECTIONS = {
    "coco_train2017", "gqa", "ocr_vqa", "textvqa", "vg", "llava_pretrain_images", "llava_cc3m_595k_images",
    "sam", "wikiart", "web_celebrity", "web_landmark", "share_textvqa",
}
# name -> (folder, size, sha256) of the four ShareGPT4V WebData zips (reference 10.9)
WEB_ZIPS = {
    "wikiart": ("wikiart", 185443242, "132b7393f970692385b47214a17462f39f73492545a3eeb9d8ab80ac029b1a20"),
    "web_celebrity": ("web-celebrity", 103216303, "cac22138f1a0602219026cca0173d104b3d57d981c94409d2e689a8d0d7ad395"),
    "web_landmark": ("web-landmark", 227426263, "0fa9f2184dda8badb740aaa39fe66fd4d840b009041ff63f4fed7fcf5f0ec199"),
    "share_textvqa": ("share_textvqa", 126417739, "6967fddcbbef7ea8ebd401b99b765d480933c48c92f8a8fc4d95988b2681cba6"),
}
# Every exact byte count the reference gives. Sizes are enforced on download, so any other `size` in a spec is a
# rounded or documented figure that would reject a good file (P17).
EXACT_SIZES = {
    ("cc3m", "train"): 564607502,
    ("cc3m", "validation"): 2603670,
    ("cc3m", "labels"): 1282463277,
    ("cc12m", "train"): 2707204412,
    ("llava_instruct", "mix665k"): 1029887963,
    ("sam", "sam_images_share-sft.zip"): 8869030186,
    **{(name, f"{folder}.zip"): size for name, (folder, size, _) in WEB_ZIPS.items()},
}


@pytest.fixture(scope="module")
def registry() -> Registry:
    with pytest.MonkeyPatch.context() as mp:
        mp.delenv("MMCORPUS_CONFIG_DIR", raising=False)  # the built-in specs only
        return Registry.load()


def all_files(registry: Registry):
    for spec in registry:
        for f in spec.downloads:
            yield spec, f


# ------------------------------------------------------------------------------------------ built-in specs


def test_every_reference_entry_is_registered_with_its_kind(registry):
    assert {s.name for s in registry.datasets()} >= DATASETS
    assert {s.name for s in registry.collections()} >= COLLECTIONS


def test_every_spec_has_its_descriptive_fields(registry):
    for spec in registry:
        for key in ("title", "description", "license", "homepage", "citation"):
            assert getattr(spec, key).strip(), f"{spec.name}: empty {key}"
        assert urlsplit(spec.homepage).scheme == "https", spec.name


def test_datasets_name_existing_collections_and_stages(registry):
    for spec in registry.datasets():
        assert spec.stages, spec.name
        if spec.format_type == "llava":
            assert spec.collections, f"{spec.name}: JSON dataset without image collections"
        else:
            assert spec.images_from == "url", spec.name
        for name in spec.collections:
            assert registry.get(name).kind == "collection", (spec.name, name)


def test_sharegpt4v_needs_every_collection_its_paths_point_into(registry):
    assert set(registry.get("sharegpt4v").collections) == {
        "coco_train2017", "llava_pretrain_images", "sam", "wikiart", "web_celebrity", "web_landmark",
        "share_textvqa", "gqa", "ocr_vqa", "textvqa", "vg",
    }
    assert set(registry.get("llava_instruct").collections) == {"coco_train2017", "gqa", "ocr_vqa", "textvqa", "vg"}


def test_file_urls_are_downloadable_http_addresses(registry):
    for spec, f in all_files(registry):
        if f.url is None:
            assert f.manual, f"{spec.name}:{f.key} has neither url nor manual"
            continue
        for url in f.urls:
            assert urlsplit(url).scheme in ("http", "https"), (spec.name, f.key, url)
            # /blob/ is Hugging Face's HTML viewer page, not the file (P16)
            assert "/blob/" not in url, (spec.name, f.key, url)
        assert f.filename not in ("view", "uc", "download", ""), (spec.name, f.key)


def test_sizes_only_where_the_reference_gives_exact_values(registry):
    sized = {(spec.name, f.key): f.size for spec, f in all_files(registry) if f.size is not None}
    assert sized == EXACT_SIZES


def test_key_checksums(registry):
    mix = registry.get("llava_instruct").files["mix665k"]
    assert mix.sha256 == "ce959ce6e23073ee1cd1a8a2ef1c633768c10d4174327b8b2dc7113b91af6cf8"
    assert registry.get("coco_train2017").archives[0].md5 == "cced6f7f71b7629ddf16f17bbcfab6b2"
    cc3m = registry.get("cc3m").files
    assert cc3m["train"].sha256 == "eab84e5ebc713a41a6b1f6ae6fa3d6617821a13b03fe24e16004cc4aac189635"
    assert registry.get("cc12m").files["train"].sha256 == (
        "892b549d493c7e75ade10d46c88c9ddabb097790d912b74cfc0ea4ff035ec2c3"
    )
    sft = registry.get("sam").archives[0]
    assert sft.key == "sam_images_share-sft.zip"
    assert sft.sha256 == "07c7feb230f7eb38ee90a0988084e5989d70d6aa9e8638807a3bf0f4d1d93fcb"


@pytest.mark.parametrize("name", sorted(WEB_ZIPS))
def test_web_zips(registry, name):
    folder, size, sha256 = WEB_ZIPS[name]
    spec = registry.get(name)
    assert spec.path == f"{folder}/images"
    (archive,) = spec.archives
    assert (archive.filename, archive.size, archive.sha256) == (f"{folder}.zip", size, sha256)
    assert archive.strip == f"data/{folder}/images/"  # the zips nest data/<name>/images/ (P12)
    assert archive.url.startswith("https://drive.google.com/file/d/")
    assert any(m.startswith("https://huggingface.co/datasets/") for m in archive.mirrors)


def test_sam_sft_zip_keeps_both_drive_ids_and_tars_are_manual(registry):
    sam = registry.get("sam")
    assert sam.manual
    sft, *tars = sam.archives
    ids = " ".join(sft.urls)
    assert "1dKumdOKSXtV7lIXdrG7jsIK_z2vZv2gs" in ids and "16_5S-l4X01Kv7AUPFzfJ2LZjpw1-lLVF" in ids  # P22
    assert not sft.optional
    assert [t.filename for t in tars] == [f"sa_{i:06d}.tar" for i in range(51)]
    assert all(t.url is None and t.manual and t.optional for t in tars)


def test_image_prefixes_land_inside_a_collection_of_the_dataset(registry):
    """A prefixed JSON path must resolve under <root>/images/<collection path>/ of a collection it names."""
    for spec in registry.datasets():
        paths = [registry.get(c).path for c in spec.collections]
        for f in spec.files.values():
            if f.image_prefix:
                assert any(f.image_prefix == p or f.image_prefix.startswith(p + "/") for p in paths), (
                    spec.name, f.key, f.image_prefix,
                )


def test_image_prefixes_follow_the_shared_layout(registry):
    instruct = registry.get("llava_instruct").files
    assert instruct["mix665k"].image_prefix == ""  # paths already carry coco/train2017/, gqa/images/, ...
    for key in ("instruct150k", "instruct80k", "conversation58k", "detail23k", "complex_reasoning77k"):
        assert instruct[key].image_prefix == "coco/train2017", key
    assert registry.get("llava_pretrain").files["558k"].image_prefix == "llava/llava_pretrain/images"
    chat = registry.get("llava_cc3m_595k").files["chat"]
    assert chat.image_prefix == registry.get("llava_cc3m_595k_images").path
    assert all(f.image_prefix == "" for f in registry.get("sharegpt4v").files.values())


def test_collection_folders_do_not_overlap(registry):
    paths = sorted(c.path for c in registry.collections())
    for a, b in itertools.pairwise(paths):
        assert a != b and not b.startswith(a + "/"), (a, b)


def test_vg_parts_land_in_their_own_folders(registry):
    vg = registry.get("vg")
    assert vg.path == "vg"
    assert [(a.filename, a.into, a.strip) for a in vg.archives] == [
        ("images.zip", "VG_100K", "VG_100K/"),
        ("images2.zip", "VG_100K_2", "VG_100K_2/"),
    ]


def test_optional_and_metadata_files(registry):
    instruct = registry.get("llava_instruct").files
    assert not instruct["instruct150k"].optional and not instruct["mix665k"].optional
    assert all(instruct[k].optional for k in ("instruct80k", "conversation58k", "detail23k", "complex_reasoning77k"))
    for name, key in (("llava_pretrain", "meta"), ("llava_cc3m_595k", "metadata"), ("cc3m", "labels")):
        f = registry.get(name).files[key]
        assert f.role == "metadata" and f.optional, (name, key)
    assert not any(f.optional for f in registry.get("sharegpt4v").files.values())
    assert registry.get("ocr_vqa").manual and all(a.optional for a in registry.get("ocr_vqa").archives)


def test_tsv_column_orders(registry):
    assert registry.get("cc3m").format_columns == ("caption", "url")
    assert registry.get("cc12m").format_columns == ("url", "caption")  # reversed (P18)


# ------------------------------------------------------------------------------------------------ bad specs

GOOD = """\
name: mine
kind: dataset
stages: [pretrain]
files:
  train:
    url: https://example.org/mine.tsv
    size: 10
format: {type: tsv, columns: [caption, url]}
images: {from: url}
"""


@pytest.fixture
def user_dir(tmp_path: Path, monkeypatch) -> Path:
    monkeypatch.setenv("MMCORPUS_CONFIG_DIR", str(tmp_path))
    return tmp_path


def load_error(user_dir: Path, filename: str, text: str) -> str:
    """The error a command about the spec in `filename` (by its file name) meets."""
    (user_dir / filename).write_text(text, encoding="utf-8")
    with pytest.raises(ConfigError) as info:
        Registry.load().get(Path(filename).stem)
    return str(info.value)


def test_a_good_user_spec_loads_and_may_override_a_builtin(user_dir):
    (user_dir / "mine.yaml").write_text(GOOD, encoding="utf-8")
    (user_dir / "cc3m.yaml").write_text(GOOD.replace("name: mine", "name: cc3m"), encoding="utf-8")
    registry = Registry.load()
    assert registry.get("mine").files["train"].size == 10
    assert registry.get("cc3m").source == user_dir / "cc3m.yaml"
    assert "coco_train2017" in registry.specs  # the built-ins are still there


def test_unknown_key_names_file_and_key(user_dir):
    message = load_error(user_dir, "typo.yaml", GOOD.replace("    size: 10", "    size: 10\n    sha265: abc"))
    assert str(user_dir / "typo.yaml") in message
    assert "files.train.sha265" in message and "not a known key" in message


def test_every_unknown_key_is_named_at_once_with_the_nearest_known_key(user_dir):
    text = GOOD.replace("    size: 10", "    size: 10\n    sha265: abc\n    filname: x.tsv").replace("stages:", "stage:")
    message = load_error(user_dir, "typo.yaml", text)
    assert "3 unknown keys" in message and "\n" not in message
    assert "'files.train.sha265' (did you mean 'sha256'?)" in message
    assert "'files.train.filname' (did you mean 'filename'?)" in message and "'stage' (did you mean 'stages'?)" in message


@pytest.mark.parametrize("old, new, expected", [
    ("size: 10", 'size: "10"', "must be a number without quotes (write 10, not '10')"),
    ("format: {type: tsv, columns: [caption, url]}", "format: {type: yes}", "(YAML reads yes/no/on/off as true/false)"),
])
def test_type_errors_say_what_to_write(user_dir, old, new, expected):
    assert expected in load_error(user_dir, "mine.yaml", GOOD.replace(old, new))


def test_a_broken_user_spec_names_itself_but_does_not_stop_other_names(tmp_path):
    specs = tmp_path / "specs"
    specs.mkdir()
    (specs / "mine.yaml").write_text(GOOD, encoding="utf-8")
    (specs / "broken.yaml").write_text("name: broken\nkind: dataset\nfiles: [\n", encoding="utf-8")
    args = ["--root", str(tmp_path / "root"), "--config-dir", str(specs)]
    other = mmcorpus(*args, "info", "mine")
    assert other.returncode == 0 and "broken.yaml: line 4: invalid YAML" in other.stderr
    assert mmcorpus(*args, "info", "cc3m").returncode == 0
    itself = mmcorpus(*args, "info", "broken")
    assert itself.returncode == 2 and "mmcorpus: error: " + str(specs / "broken.yaml") in itself.stderr


def test_wrong_type_names_file_and_key(user_dir):
    message = load_error(user_dir, "wrong.yaml", GOOD.replace("size: 10", "size: 1.2 GB"))
    assert str(user_dir / "wrong.yaml") in message
    assert "files.train.size" in message and "integer" in message


def test_broken_yaml_names_file_and_line(user_dir):
    message = load_error(user_dir, "broken.yaml", GOOD.replace("stages: [pretrain]", "stages: [pretrain"))
    assert str(user_dir / "broken.yaml") in message
    assert "invalid YAML" in message and "line" in message


def test_unknown_collection_reference_names_file_and_collection(user_dir):
    text = GOOD.replace("images: {from: url}", "images: {collections: [coco_train2017, no_such_images]}")
    message = load_error(user_dir, "ref.yaml", text)
    assert str(user_dir / "ref.yaml") in message
    assert "images.collections" in message and "no_such_images" in message


def test_a_dataset_is_not_a_collection_reference(user_dir):
    text = GOOD.replace("images: {from: url}", "images: {collections: [cc3m]}")
    assert "'cc3m'" in load_error(user_dir, "ref.yaml", text)


def test_duplicate_name_in_one_folder_names_both_files(user_dir):
    (user_dir / "a.yaml").write_text(GOOD, encoding="utf-8")
    message = load_error(user_dir, "b.yaml", GOOD)
    assert str(user_dir / "b.yaml") in message and str(user_dir / "a.yaml") in message
    assert "'mine'" in message


def test_file_stages_refine_the_dataset_stages(tmp_path, monkeypatch):
    spec = Registry.load().get("sharegpt4v")
    assert set(spec.stages) == {"pretrain", "finetune"}
    assert spec.files["sft"].stages == ("finetune",)
    assert spec.files["pt"].stages == ("pretrain",)
    folder = tmp_path / "specs"
    folder.mkdir()
    (folder / "bad.yaml").write_text("name: bad\nkind: dataset\nformat: {type: llava}\n"
                                     "files:\n  a:\n    url: https://x.org/a.json\n    stages: [midtrain]\n")
    monkeypatch.setenv("MMCORPUS_CONFIG_DIR", str(folder))
    with pytest.raises(ConfigError, match=r"bad.yaml: key 'files.a.stages' has unknown stage 'midtrain'"):
        Registry.load().get("bad")


# ------------------------------------------------------------------------ spec values that become paths

COLLECTION = """\
name: pics
kind: collection
path: pics
archives:
  - url: https://example.org/pics.zip
"""


def load_spec(user_dir: Path, text: str, filename: str = "spec.yaml"):
    (user_dir / filename).write_text(text, encoding="utf-8")
    return Registry.load().get(text.split("\n", 1)[0].split(": ", 1)[1])


@pytest.mark.parametrize("url, filename", [
    ("https://example.org/d/..%2F..%2Foutside%2Fvictim.json", "victim.json"),  # no way out of downloads/<name>/
    ("https://storage.googleapis.com/b/o/dir%2Fcc3m.tsv", "cc3m.tsv"),  # Google Cloud Storage object names
    ("https://example.org/d/%2E%2E", "train"),  # nothing usable: the key, as for Google Drive's /view
])
def test_a_file_name_from_a_url_is_its_last_decoded_component(user_dir, url, filename):
    spec = load_spec(user_dir, GOOD.replace("https://example.org/mine.tsv", url))
    assert spec.files["train"].filename == filename


@pytest.mark.parametrize("edit, key, words", [
    (("https://example.org/mine.tsv", "https://example.org/a%00b.tsv"), "files.train.url", "NUL"),
    (("https://example.org/mine.tsv", "https://example.org/mine.tsv.part"), "files.train.url", "bookkeeping"),
    (("https://example.org/mine.tsv", "https://example.org/a%5C..%5Cb.tsv"), "files.train.url", "backslash"),
    (("  train:", "  ../escape:"), "files.../escape", "'/'"),
    (("  train:", "  .mmcorpus:"), "files..mmcorpus", "bookkeeping"),
    (("    size: 10", "    size: 10\n    filename: x.done"), "files.train.filename", "bookkeeping"),
    (("    size: 10", f"    size: 10\n    filename: {'n' * 240}"), "files.train.filename", "bytes"),
    (("    size: 10", "    size: 10\n    image_prefix: /etc"), "files.train.image_prefix", "absolute"),
])
def test_a_bad_path_value_names_the_spec_and_its_key(user_dir, edit, key, words):
    message = load_error(user_dir, "bad.yaml", GOOD.replace(*edit))
    assert message.startswith(f"{user_dir / 'bad.yaml'}: key '{key}'") and words in message
    assert "\n" not in message


@pytest.mark.parametrize("edit, key, words", [
    (("  - url: https://example.org/pics.zip", "  - url: https://example.org/pics.zip\n    name: ../x.zip"),
     "archives[0].name", "'/'"),
    (("  - url: https://example.org/pics.zip", "  - url: https://example.org/pics.zip\n    name: x.zip.mmpart"),
     "archives[0].name", "bookkeeping"),
    (("  - url: https://example.org/pics.zip", "  - url: https://example.org/..%2F.mmcorpus"),
     "archives[0].url", "bookkeeping"),
    (("path: pics", "path: /pics"), "path", "absolute"),
    (("path: pics", "path: ''"), "path", "empty"),
    (("  - url: https://example.org/pics.zip", "  - url: https://example.org/pics.zip\n    strip: a/../b"),
     "archives[0].strip", "'..'"),
])
def test_a_bad_collection_value_names_the_spec_and_its_key(user_dir, edit, key, words):
    message = load_error(user_dir, "bad.yaml", COLLECTION.replace(*edit))
    assert message.startswith(f"{user_dir / 'bad.yaml'}: key '{key}'") and words in message


def test_strip_is_a_folder_prefix(user_dir):
    text = COLLECTION.replace("  - url: https://example.org/pics.zip",
                              "  - url: https://example.org/pics.zip\n    strip: train2017")
    assert load_spec(user_dir, text).archives[0].strip == "train2017/"


def test_a_crafted_url_cannot_write_outside_the_root(tmp_path, mirror):
    """`..%2F` in the URL's last component once saved outside the root, and with a sha256 in the spec moved an
    existing file there to .rejected/ and replaced it."""
    body = b"[]"
    mirror.add("/d/..%2F..%2F..%2Fvictim.json", Route(body=body))
    victim = tmp_path / "victim.json"
    victim.write_bytes(b"precious")
    specs = tmp_path / "specs"
    specs.mkdir()
    (specs / "mine.yaml").write_text(
        "name: mine\nkind: dataset\nstages: [finetune]\nformat: {type: llava}\nfiles:\n  main:\n"
        f"    url: {mirror.url}/d/..%2F..%2F..%2Fvictim.json\n    sha256: {hashlib.sha256(body).hexdigest()}\n")
    root = tmp_path / "root"
    result = mmcorpus("--root", str(root), "--config-dir", str(specs), "fetch", "mine")
    assert result.returncode == 0, result.stderr
    assert victim.read_bytes() == b"precious" and not (tmp_path / ".rejected").exists()
    assert (root / "downloads/mine/victim.json").read_bytes() == body
