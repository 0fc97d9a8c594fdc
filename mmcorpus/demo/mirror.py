"""Build the demo's sample mirror: the internet of every registered dataset, in a folder.

For every file a built-in spec names, the mirror holds a small real-format stand-in at the path its URL
maps to (`<folder>/<scheme>/<host>/<path>`, so two `--mirror` rules, `http://` and `https://`, point every
URL at one local server): TSV and JSON annotation files made of the real sample records (plus records
constructed from documented shapes, see data/constructed.json), archives laid out like the real ones
(`train2017/…`, `data/wikiart/images/…`, shard folders at the root), and the web images of the CC3M/CC12M
sample lines. Some links are broken on purpose, as on the real web: missing images (404), a server error,
a truncated JPEG, an HTML page, an X-Robots-Tag opt-out, a Google Drive confirm page, a dead primary URL
that falls back to a mirror.

The demo's specs are the built-in YAML files with size and checksums replaced by those of these stand-ins;
the commands, downloaders and normalizers are the real ones.
"""

from __future__ import annotations

import hashlib
import io
import json
import random
import re
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import unquote, urlsplit

import yaml
from PIL import Image, ImageDraw

from mmcorpus.demo.localmirror import ROUTES_FILE
from mmcorpus.fetch.urls import gdrive_download_url
from mmcorpus.registry import FileSpec, Registry, Spec, builtin_config_dir

DATA = Path(__file__).parent / "data"

# (dataset, file key) -> bundled real sample file; constructed records are added from data/constructed.json.
REAL_SAMPLES = {
    ("cc3m", "train"): "cc3m_sample.tsv",
    ("cc3m", "validation"): "cc3m_validation_sample.tsv",
    ("cc3m", "labels"): "cc3m_image_labels_sample.tsv",
    ("cc12m", "train"): "cc12m_sample.tsv",
    ("llava_instruct", "instruct150k"): "llava_instruct_sample.json",
    ("llava_instruct", "mix665k"): "llava_mix665k_sample.json",
    ("llava_pretrain", "558k"): "llava_pretrain_558k_sample.json",
    ("llava_cc3m_595k", "chat"): "llava_cc3m_595k_chat_sample.json",
    ("sharegpt4v", "cap100k"): "sharegpt4v_cap100k_sample.json",
}
# The component files of LLaVA-Instruct are parts of instruct150k: the demo serves them as its records.
SAME_AS = {("llava_instruct", k): ("llava_instruct", "instruct150k")
           for k in ("instruct80k", "conversation58k", "detail23k", "complex_reasoning77k")}
GDRIVE_CONFIRM = "https://drive.usercontent.google.com/download"
# Collection archives whose primary URL is dead in the demo, so the downloader falls back to the next mirror.
DEAD_PRIMARY = {"coco_train2017"}
# Images that the demo leaves out of their collection: referenced, but missing, as in the real SAM data.
MISSING_IMAGES = {"sam/images/sa_411432.jpg"}
# Planted web faults, by CC3M train line index: what the URL engine must report.
WEB_FAULTS = {1: "http_error", 2: "corrupt", 3: "not_image", 5: "opted_out", 8: "not_found", 17: "not_found",
              26: "not_found", 35: "not_found", 44: "not_found"}


@dataclass
class MirrorPlan:
    folder: Path
    specs_dir: Path
    files: dict[str, list[str]] = field(default_factory=dict)  # spec name -> file keys served
    web_images: int = 0
    web_faults: dict[str, str] = field(default_factory=dict)  # url -> expected error
    routes: dict[str, list[dict]] = field(default_factory=dict)


def build_mirror(folder: Path, specs_dir: Path) -> MirrorPlan:
    """Write the mirror tree and the demo specs; deterministic, so every demo run serves the same bytes."""
    registry = Registry.load()
    plan = MirrorPlan(folder, specs_dir)
    constructed = json.loads((DATA / "constructed.json").read_text())
    overrides: dict[str, dict[str, dict]] = {}
    image_paths: list[str] = []
    for spec in registry.datasets():
        for file in spec.files.values():
            content = _annotation_bytes(spec, file, constructed)
            if content is None:
                continue
            overrides.setdefault(spec.name, {})[file.key] = _serve(plan, file, content)
            plan.files.setdefault(spec.name, []).append(file.key)
            if spec.format_type == "llava" and file.role == "annotations":
                image_paths += _json_image_paths(content, file.image_prefix)
            if spec.images_from == "url" and file.role == "annotations":
                _serve_web_images(plan, spec, file, content)
    for spec in registry.collections():
        for archive in spec.archives:
            content = _archive_bytes(spec, archive, image_paths)
            if content is None:
                continue
            dead = spec.name in DEAD_PRIMARY and len(archive.urls) > 1
            overrides.setdefault(spec.name, {})[archive.key] = _serve(plan, archive, content, skip_primary=dead)
            plan.files.setdefault(spec.name, []).append(archive.key)
    (folder / ROUTES_FILE).write_text(json.dumps(plan.routes, indent=1))
    _write_demo_specs(registry, overrides, specs_dir)
    return plan


# ------------------------------------------------------------------------------------ annotation files


def _annotation_bytes(spec: Spec, file: FileSpec, constructed: dict) -> bytes | None:
    source = SAME_AS.get((spec.name, file.key), (spec.name, file.key))
    real = REAL_SAMPLES.get(source)
    extra = constructed.get(f"{source[0]}/{source[1]}", [])
    if real is None and not extra:
        return None
    if real and real.endswith(".tsv"):
        return (DATA / real).read_bytes()
    records = (json.loads((DATA / real).read_text()) if real else []) + extra
    return json.dumps(records, indent=1, ensure_ascii=False).encode()


def _json_image_paths(content: bytes, prefix: str) -> list[str]:
    paths = []
    for record in json.loads(content):
        image = record.get("image")
        if isinstance(image, str):
            paths.append(f"{prefix}/{image}" if prefix else image)
    return paths


def _serve_web_images(plan: MirrorPlan, spec: Spec, file: FileSpec, content: bytes) -> None:
    """An image for every URL of a CC3M/CC12M sample, with the planted faults of WEB_FAULTS."""
    columns = file.columns or spec.format_columns
    url_col = columns.index("url")
    planted = WEB_FAULTS if (spec.name, file.key) == ("cc3m", "train") else {}
    for index, line in enumerate(content.decode().splitlines()):
        url = line.split("\t")[url_col]
        fault = planted.get(index)
        local = _mirror_path(url)
        if fault:
            plan.web_faults[url] = fault
        if fault == "not_found":
            continue
        data = _image_bytes(url, "JPEG")
        if fault == "corrupt":
            data = data[: len(data) // 2]
        elif fault in ("http_error", "not_image", "opted_out"):
            plan.routes["/" + local] = [_FAULT_ROUTES[fault]]
        _write(plan.folder / local, data)
        plan.web_images += 1


_FAULT_ROUTES = {
    "http_error": {"status": 503},
    "not_image": {"html": True},
    "opted_out": {"headers": {"X-Robots-Tag": "noai, noimageai"}},
}


# ----------------------------------------------------------------------------------------------- archives


def _archive_bytes(spec: Spec, archive: FileSpec, image_paths: list[str]) -> bytes | None:
    """A zip laid out like the real archive: members `strip + <path under into>` for every referenced image."""
    if archive.url is None or archive.filename.endswith((".tar", ".tar.gz")):
        return None
    base = "/".join(p for p in (spec.path, archive.into) if p) + "/"
    members = sorted({p[len(base):] for p in image_paths if p.startswith(base) and p not in MISSING_IMAGES})
    if not members:
        return None
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_STORED) as zf:
        for name in members:
            on_disk = _unescape_wikiart(name)
            # OCR-VQA: files named .jpg are often GIF or PNG (P9); the demo keeps one such file.
            fmt = "GIF" if spec.name == "ocr_vqa" else "JPEG"
            info = zipfile.ZipInfo(archive.strip + on_disk, date_time=(2023, 10, 6, 0, 0, 0))
            zf.writestr(info, _image_bytes(base + on_disk, fmt))
    return buffer.getvalue()


def _unescape_wikiart(name: str) -> str:
    """wikiart names in the JSON carry `#Uxxxx` escapes of the real file names (P11)."""
    return re.sub(r"#U([0-9a-fA-F]{4})", lambda m: chr(int(m.group(1), 16)), name)


def _image_bytes(key: str, fmt: str) -> bytes:
    """A small deterministic picture (colour field, shapes) seeded by `key`."""
    rng = random.Random(hashlib.sha256(key.encode()).digest())
    width, height = rng.choice([(320, 240), (240, 320), (256, 256), (400, 300), (300, 200)])
    image = Image.new("RGB", (width, height), tuple(rng.randrange(40, 220) for _ in range(3)))
    draw = ImageDraw.Draw(image)
    for _ in range(6):
        x, y = rng.randrange(width), rng.randrange(height)
        r = rng.randrange(10, 80)
        fill = tuple(rng.randrange(256) for _ in range(3))
        (draw.ellipse if rng.random() < 0.5 else draw.rectangle)((x - r, y - r, x + r, y + r), fill=fill)
    buffer = io.BytesIO()
    image.save(buffer, fmt, **({"quality": 85} if fmt == "JPEG" else {}))
    return buffer.getvalue()


# ------------------------------------------------------------------------------------ serving + specs


def _serve(plan: MirrorPlan, file: FileSpec, content: bytes, skip_primary: bool = False) -> dict:
    """Place `content` where the file's URL points (its first mirror when the primary is to be dead);
    return the spec fields (size, checksums) that describe it."""
    url = file.urls[1] if skip_primary else file.urls[0]
    url = gdrive_download_url(url)
    file_id = re.search(r"[?&]id=([^&]+)", url)
    if "drive.google.com" in url and file_id:
        # Google Drive serves every file from /uc?id=...: a confirm page first, then the bytes.
        # As on the real site, the page's form points at drive.usercontent.google.com.
        stored = f"gdrive/{file_id.group(1)}"
        plan.routes["/" + _mirror_path(url.split("?")[0]) + f"?id={file_id.group(1)}"] = [
            {"gdrive_confirm": True, "confirm_action": GDRIVE_CONFIRM, "file": stored}]
        plan.routes["/" + _mirror_path(GDRIVE_CONFIRM) + f"?id={file_id.group(1)}"] = [{"file": stored}]
        _write(plan.folder / stored, content)
    else:
        _write(plan.folder / _mirror_path(url), content)
    fields = {"size": len(content), "sha256": hashlib.sha256(content).hexdigest()}
    if file.md5:
        fields["md5"] = hashlib.md5(content).hexdigest()
    if file.records is not None:  # the progress bars count the demo's rows, not the real file's millions
        fields["records"] = _record_count(content)
    return fields


def _record_count(content: bytes) -> int:
    """Records of a stand-in annotation file: a JSON array's items, else a TSV's lines."""
    if content.lstrip()[:1] == b"[":
        return len(json.loads(content))
    return sum(1 for line in content.splitlines() if line.strip())


def _mirror_path(url: str) -> str:
    split = urlsplit(url)
    return f"{split.scheme}/{split.netloc}{unquote(split.path)}"


def _write(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)


def _write_demo_specs(registry: Registry, overrides: dict[str, dict[str, dict]], specs_dir: Path) -> None:
    """The built-in specs with the stand-ins' sizes and checksums (and the stand-ins only)."""
    specs_dir.mkdir(parents=True, exist_ok=True)
    for old in specs_dir.glob("*.yaml"):
        old.unlink()
    for spec in registry:
        if spec.source.parent != builtin_config_dir():
            continue
        raw = yaml.safe_load(spec.source.read_text())
        served = overrides.get(spec.name, {})
        if spec.kind == "dataset":
            for key, entry in raw["files"].items():
                _describe(entry, served.get(str(key)))
        else:
            for archive, loaded in zip(raw.get("archives", []), spec.archives):
                _describe(archive, served.get(loaded.key))
        raw["notes"] = "Demo spec: the built-in spec with the sizes and checksums of the demo mirror's files."
        (specs_dir / f"{spec.name}.yaml").write_text(yaml.safe_dump(raw, sort_keys=False, allow_unicode=True))


def _describe(entry: dict, fields: dict | None) -> None:
    for key in ("size", "approx_size", "sha256", "md5", "records"):
        entry.pop(key, None)
    if fields:
        entry.update(fields)
