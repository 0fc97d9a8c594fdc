"""Exports of a prepared stage, read back from its parquet shards (bounded memory, streamed).

- LLaVA training JSON (`--format llava`): one JSON array of {"id", "sample_id", "image", "conversations": [{"from":
  "human"|"gpt", "value"}]}, `<image>` moved to the front of the first human turn ("<image>\\n..."), image paths
  relative to <root>/images, so LLaVA's `--data_path <this file> --image_folder <root>/images` works unchanged.
  Caption rows (no conversation) get a brief-description instruction drawn with the seed from LLaVA's
  11-prompt list; text-only rows have no "image" key (LLaVA feeds a zero image for them).
- WebDataset (`--format webdataset`): tar shards of `<key>.jpg`, `<key>.json` (the row) and `<key>.txt` (the
  caption, else the first answer) for open_clip-style loaders. Keys come from sample ids, so they are the same
  on every run; text-only rows are skipped (an image-text loader cannot use them). Non-JPEG images are
  converted to JPEG.
"""

from __future__ import annotations

import io
import json
import re
import tarfile
from pathlib import Path
from typing import Iterator

import pyarrow.parquet as pq
from PIL import Image

from mmcorpus import layout
from mmcorpus.core.imaging import JPEG_QUALITY, sniff, to_rgb
from mmcorpus.stage.dedup import IMAGE_TOKEN
from mmcorpus.stage.sampling import priority

# LLaVA paper's "brief description" list (reference/datasets.md §2.4).
BRIEF_PROMPTS = (
    "Describe the image concisely.",
    "Provide a brief description of the given image.",
    "Offer a succinct explanation of the picture presented.",
    "Summarize the visual content of the image.",
    "Give a short and clear explanation of the subsequent image.",
    "Share a concise interpretation of the image provided.",
    "Present a compact description of the photo's key features.",
    "Relay a brief, clear account of the picture shown.",
    "Render a clear and concise summary of the photo.",
    "Write a terse but informative summary of the picture.",
    "Create a compact narrative representing the image presented.",
)
ROLES = {"user": "human", "assistant": "gpt"}
TAR_MTIME = 0  # fixed, so the same stage gives byte-identical tars


def stage_rows(parquet_files: list[Path], batch_size: int = 4096) -> Iterator[dict]:
    for path in parquet_files:
        for batch in pq.ParquetFile(path).iter_batches(batch_size=batch_size):
            yield from batch.to_pylist()


# ------------------------------------------------------------------------------------------------- LLaVA


def brief_prompt(seed: int, sample_id: str) -> str:
    # hashed apart from random:N's priority, so which rows were sampled does not skew the prompts they get
    return BRIEF_PROMPTS[priority(seed, "prompt:" + sample_id) % len(BRIEF_PROMPTS)]


def llava_record(row: dict, seed: int) -> dict:
    """One unified-schema row as a LLaVA training record: `id` as the source wrote it (int or str; caption rows,
    which have no source record, get the sample id), `sample_id` the row's unique id in the root."""
    has_image = row.get("image_path") is not None
    turns = [{"from": ROLES.get(t["role"], t["role"]), "value": t["content"] or ""} for t in row.get("conversations") or ()]
    source_id = row.get("source_id_int")
    if source_id is None:
        source_id = row.get("source_id") if turns else None
    if not turns:
        turns = [
            {"from": "human", "value": brief_prompt(seed, row["sample_id"])},
            {"from": "gpt", "value": row.get("caption") or ""},
        ]
    if has_image:
        first = turns[0]["value"].replace(IMAGE_TOKEN, "").strip()
        turns[0] = {"from": turns[0]["from"], "value": f"{IMAGE_TOKEN}\n{first}"}
    record = {"id": row["sample_id"] if source_id is None else source_id, "sample_id": row["sample_id"]}
    if has_image:
        record["image"] = row["image_path"]
    record["conversations"] = turns
    return record


def with_turns(row: dict, seed: int) -> dict:
    """The row with conversations for every sample: a caption row gets the two turns the LLaVA export gives it
    (`<image>` and a brief-description instruction, then the caption), so loaders see one shape everywhere."""
    if row.get("conversations"):
        return row
    turns = [{"role": "user", "content": f"{IMAGE_TOKEN}\n{brief_prompt(seed, row['sample_id'])}"},
             {"role": "assistant", "content": row.get("caption") or ""}]
    return {**row, "conversations": turns}


def write_llava_json(parquet_files: list[Path], out: Path, *, seed: int) -> dict:
    """Stream the stage into one LLaVA JSON array. Returns {"file", "records"}. Written in place: the whole
    stage is built in a temporary folder and swapped in (stages.prepare_stage)."""
    out.parent.mkdir(parents=True, exist_ok=True)
    count = 0
    with open(out, "w", encoding="utf-8") as f:
        f.write("[")
        for row in stage_rows(parquet_files):
            f.write(",\n" if count else "\n")
            f.write(json.dumps(llava_record(row, seed), ensure_ascii=False))
            count += 1
        f.write("\n]\n")
    return {"file": out.name, "records": count}


# --------------------------------------------------------------------------------------------- WebDataset


def wds_key(sample_id: str) -> str:
    """A WebDataset key: no dots (they split key from extension), no slashes (no folders in the tar), and
    distinct sample ids give distinct keys (equal keys would merge two samples): '-' is the escape character,
    '/' -> '--', '#' -> '-h', '-' -> '-m', any other character outside [A-Za-z0-9_] -> '-x' + its UTF-8 hex.
    So cc3m/train/000000012#1 -> cc3m--train--000000012-h1."""
    return re.sub(r"[^A-Za-z0-9_]", _escape, sample_id)


_ESCAPES = {"/": "--", "#": "-h", "-": "-m"}


def _escape(match: re.Match) -> str:
    char = match.group()
    return _ESCAPES.get(char) or "".join(f"-x{byte:02x}" for byte in char.encode("utf-8"))


def jpeg_bytes(path: Path) -> bytes:
    """The image as JPEG bytes: JPEGs as stored, others re-encoded (transparency on white, as the URL engine)."""
    data = path.read_bytes()
    if sniff(data) == "JPEG":
        return data
    with Image.open(io.BytesIO(data)) as image:
        buffer = io.BytesIO()
        to_rgb(image).save(buffer, "JPEG", quality=JPEG_QUALITY)
        return buffer.getvalue()


def caption_text(row: dict) -> str:
    if row.get("caption"):
        return row["caption"]
    answers = [t["content"] for t in row.get("conversations") or () if t["role"] == "assistant" and t["content"]]
    return answers[0] if answers else ""


def _add(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size, info.mtime, info.mode = len(data), TAR_MTIME, 0o644
    tar.addfile(info, io.BytesIO(data))


class _TarShards:
    """`<folder>/<stem>-NNNNN.tar`, each written as .tar.tmp and renamed when full or closed."""

    def __init__(self, folder: Path, stem: str, per_shard: int):
        self.folder, self.stem, self.per_shard = folder, stem, max(1, per_shard)
        self.tar: tarfile.TarFile | None = None
        self.in_shard = 0
        self.shards: list[dict] = []
        folder.mkdir(parents=True, exist_ok=True)

    def add(self, key: str, members: dict[str, bytes]) -> None:
        if self.tar is None:
            self.tar = tarfile.open(self._path(), "w", format=tarfile.USTAR_FORMAT)  # in the stage's temporary folder
            self.in_shard = 0
        for ext, data in members.items():
            _add(self.tar, f"{key}.{ext}", data)
        self.in_shard += 1
        if self.in_shard >= self.per_shard:
            self.close()

    def _path(self) -> Path:
        return layout.webdataset_shard(self.folder, self.stem, len(self.shards))

    def close(self) -> None:
        if self.tar is None:
            return
        self.tar.close()
        self.shards.append({"file": self._path().name, "samples": self.in_shard})
        self.tar = None


def write_webdataset(parquet_files: list[Path], folder: Path, images_root: Path, *, stem: str, per_shard: int,
                     seed: int = 0) -> dict:
    """Stream the stage into WebDataset tar shards. Returns {"shards": [...], "samples", "skipped": {reason: n}}.
    `seed` picks the caption rows' instructions, as in the LLaVA export."""
    shards = _TarShards(folder, stem, per_shard)
    skipped: dict[str, int] = {}
    samples = 0
    try:
        for row in stage_rows(parquet_files):
            reason = _webdataset_sample(row, images_root, shards, seed)
            if reason:
                skipped[reason] = skipped.get(reason, 0) + 1
            else:
                samples += 1
    finally:
        shards.close()
    return {"shards": shards.shards, "samples": samples, "skipped": skipped}


def _webdataset_sample(row: dict, images_root: Path, shards: _TarShards, seed: int) -> str | None:
    if row.get("image_path") is None:
        return "text_only"
    try:
        image = jpeg_bytes(images_root / row["image_path"])
    except (OSError, ValueError, Image.DecompressionBombError):  # vanished or changed since the stage was built
        return "image_unreadable"
    meta = json.dumps(with_turns(row, seed), ensure_ascii=False).encode("utf-8")
    shards.add(wds_key(row["sample_id"]), {"jpg": image, "json": meta, "txt": caption_text(row).encode("utf-8")})
    return None
