"""`--format hf`: the stage as TRL's SFTTrainer and the Hub's vision-language datasets lay it out.

`<stage>/hf/data/train-NNNNN.parquet`, one row per sample:
    messages   list<struct<role, content: list<struct<type, text>>>>: content parts `{type: "image"}` (one per
               `<image>` placeholder, where it stood) and `{type: "text", text}` (the text around them,
               stripped; the placeholders removed)
    images     list<struct<bytes, path>>, the `Sequence(Image())` of `datasets` with the bytes embedded (so the
               folder can be pushed to the Hub as is); `path` is the image's path under <root>/images
    sample_id, dataset, source_id
The parquet schema carries the `datasets` features (key `huggingface`) so that `datasets` decodes `images` to
PIL images. They are spelled in the format every `datasets` release reads (`Sequence`, lists of dicts).
Caption rows (no conversation) get the turns the LLaVA export gives them (a brief-description prompt drawn with
the seed, the caption as answer). A sample whose image vanished since the stage was built, or whose
placeholders do not match its images, is left out and counted. Row groups are small (images are large).
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from mmcorpus import layout
from mmcorpus.core.atomicio import temporary_name
from mmcorpus.stage.dedup import IMAGE_TOKEN
from mmcorpus.stage.exports import ROLES, llava_record, stage_rows

ROW_GROUP_ROWS = 100  # what `datasets` writes for image columns: a row group of images stays a few MB

PART = pa.struct([pa.field("type", pa.string()), pa.field("text", pa.string())])
MESSAGE = pa.struct([pa.field("role", pa.string()), pa.field("content", pa.list_(PART))])
IMAGE = pa.struct([pa.field("bytes", pa.binary()), pa.field("path", pa.string())])
_STRING = {"dtype": "string", "_type": "Value"}
FEATURES = {
    "sample_id": _STRING,
    "dataset": _STRING,
    "source_id": _STRING,
    "messages": [{"role": _STRING, "content": [{"type": _STRING, "text": _STRING}]}],
    "images": {"feature": {"decode": True, "_type": "Image"}, "_type": "Sequence"},
}
SCHEMA = pa.schema([pa.field("sample_id", pa.string()), pa.field("dataset", pa.string()),
                    pa.field("source_id", pa.string()), pa.field("messages", pa.list_(MESSAGE)),
                    pa.field("images", pa.list_(IMAGE))],
                   metadata={"huggingface": json.dumps({"info": {"features": FEATURES}})})
_ROLE_OF = {v: k for k, v in ROLES.items()}  # LLaVA's human/gpt back to user/assistant


def image_paths(row: dict) -> list[str]:
    """The sample's images, relative to <root>/images: `image_paths` where the schema has it, else image_path."""
    if "image_paths" in row:
        return list(row["image_paths"] or [])
    return [row["image_path"]] if row.get("image_path") is not None else []


def content_parts(text: str) -> list[dict]:
    """'<image>\\nWhat is it?' -> [{type: image}, {type: text, text: 'What is it?'}]."""
    parts = []
    for piece in re.split(f"({re.escape(IMAGE_TOKEN)})", text or ""):
        if piece == IMAGE_TOKEN:
            parts.append({"type": "image", "text": None})
        elif piece.strip():
            parts.append({"type": "text", "text": piece.strip()})
    return parts


def messages(row: dict, seed: int) -> list[dict]:
    """The sample's turns as TRL messages; caption rows get the LLaVA export's prompt and answer."""
    turns = row.get("conversations") or []
    if not turns:
        turns = [{"role": _ROLE_OF.get(t["from"], t["from"]), "content": t["value"]}
                 for t in llava_record(row, seed)["conversations"]]
    return [{"role": t["role"], "content": content_parts(t["content"])} for t in turns]


def hf_record(row: dict, images_root: Path, seed: int) -> tuple[dict | None, str | None]:
    """(the row in the hf layout, None), or (None, why it is left out)."""
    paths = image_paths(row)
    turns = messages(row, seed)
    if sum(part["type"] == "image" for t in turns for part in t["content"]) != len(paths):
        return None, "image_count_mismatch"
    try:
        images = [{"bytes": (images_root / p).read_bytes(), "path": p} for p in paths]  # checked by the stage build
    except OSError:
        return None, "image_unreadable"
    return {"sample_id": row["sample_id"], "dataset": row["dataset"], "source_id": row.get("source_id"),
            "messages": turns, "images": images}, None


class _Shards:
    """`train-NNNNN.parquet` files of `per_shard` samples, each written under a temporary name and renamed."""

    def __init__(self, folder: Path, per_shard: int):
        self.folder, self.per_shard = folder, max(1, per_shard)
        self.files: list[dict] = []
        self.rows: list[dict] = []
        self.in_shard = 0
        self.writer: pq.ParquetWriter | None = None
        self.tmp: Path | None = None
        folder.mkdir(parents=True, exist_ok=True)

    def add(self, record: dict) -> None:
        self.rows.append(record)
        if len(self.rows) >= ROW_GROUP_ROWS or self.in_shard + len(self.rows) >= self.per_shard:
            self._flush()

    def _flush(self) -> None:
        if not self.rows:
            return
        if self.writer is None:
            self.tmp = temporary_name(layout.hf_shard(self.folder, len(self.files)))
            self.writer = pq.ParquetWriter(self.tmp, SCHEMA, compression="zstd")
        self.writer.write_table(pa.Table.from_pylist(self.rows, SCHEMA))
        self.in_shard += len(self.rows)
        self.rows = []
        if self.in_shard >= self.per_shard:
            self.close()

    def close(self) -> None:
        self._flush()
        if self.writer is None:
            return
        self.writer.close()
        final = layout.hf_shard(self.folder, len(self.files))
        self.tmp.replace(final)
        self.files.append({"file": final.name, "samples": self.in_shard})
        self.writer, self.tmp, self.in_shard = None, None, 0


def write_hf(parquet_files: list[Path], stage_folder: Path, images_root: Path, *, seed: int, per_shard: int) -> dict:
    """Stream the stage into hf/data/. Returns {"folder", "files": [{file, samples}], "samples", "skipped"}."""
    shards = _Shards(layout.stage_hf_dir(stage_folder), per_shard)
    skipped: dict[str, int] = {}
    for row in stage_rows(parquet_files):
        record, reason = hf_record(row, images_root, seed)
        if reason:
            skipped[reason] = skipped.get(reason, 0) + 1
        else:
            shards.add(record)
    shards.close()
    if not shards.files:  # readers still see the columns of an empty export
        pq.write_table(SCHEMA.empty_table(), layout.hf_shard(shards.folder, 0))
        shards.files.append({"file": layout.hf_shard(shards.folder, 0).name, "samples": 0})
    return {"folder": layout.STAGE_HF, "files": shards.files, "samples": sum(f["samples"] for f in shards.files),
            "skipped": skipped}
