"""LLaVA-format JSON (LLaVA-Instruct, mix665k, LCS-558K, CC3M-595K chat.json, ShareGPT4V) -> unified rows.

Format: reference section 2. Per record:
- `id` (int or str, P1) becomes a string `source_id`; ids are not unique (P2), so `sample_id` is
  `<dataset>/<subset>/<record index in the file>`;
- roles human/gpt become user/assistant; they must alternate, start with human and end with gpt (P7);
- `<image>` may be a prefix or a suffix of the first human turn (P3): the text is kept as published, and the
  token must appear exactly once per image, in the first user turn;
- a record without an `image` key is text-only (P4): kept, with a null `image_path` and no `<image>`;
- the file's `image_prefix` is prepended to the image path, after checking the path is safe (no absolute path,
  drive letter, `..` component, NUL or backslash);
- caption rule: with `job.captions` (the dataset serves the pretrain stage), a record with exactly one user and
  one assistant turn and an image gets the assistant's text as `caption`. LLaVA's plain template learns
  exactly that text and drops the instruction (reference 2.3). Multi-turn and text-only records never get one;
- a job may cover a byte range of the file (`job.start`/`job.end`, from `split_points`); record indices then
  count from the range's first record, and normalize.py shifts them into file order when it merges the parts.

Reject reasons (counted with example record indices; one reason per record, the first of this list that
applies): not_an_object, missing_conversations, bad_type, unknown_role, role_order, bad_image_path,
image_token_count, image_token_position.

Speed: records are checked in batches with Arrow compute (the turns become Arrow arrays in one C++ call, as
the naive `Table.from_pylist` does), so Python does a few operations per record and none per turn. This is
what makes a 1 GB file normalize faster than json.load + from_pylist (docs/benchmarks.md).
"""

from __future__ import annotations

from typing import Iterator

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from mmcorpus.normalize import jsonarray
from mmcorpus.normalize.job import Job
from mmcorpus.normalize.jsonarray import iter_json_array
from mmcorpus.normalize.resolve import UNSAFE_PATH_PATTERN
from mmcorpus.schema import TURN_TYPE, UNIFIED_SCHEMA

BATCH = 2_000  # records per Arrow batch: ~10 MB of Python objects; the writer gathers row groups
IMAGE_TOKEN = "<image>"
RAW_TURNS = pa.list_(pa.struct([pa.field("from", pa.string()), pa.field("value", pa.string())]))
SOURCE_ROLES = pa.array(["human", "gpt"])
ROLES = pa.array(["user", "assistant"])
_DICTS = {dict}
_NO_IMAGE = object()


def has_input(job: Job) -> bool:
    return job.path is not None and job.path.is_file()


def split_points(path, parts: int) -> list[int]:
    """Byte ranges of whole records, for normalizing one big file in several processes."""
    return jsonarray.split_points(path, parts, lambda v: type(v) is dict and "conversations" in v)


def normalize(job: Job) -> Iterator[pa.RecordBatch]:
    """Stream one LLaVA JSON file as UNIFIED_SCHEMA record batches; rejects are counted in job.rejects."""
    batch = _Batch(job)
    for index, record in enumerate(iter_json_array(job.path, job.start, job.end)):
        batch.add(index, record)
        if len(batch.indices) >= BATCH:
            yield batch.finish()
            batch = _Batch(job)
    if batch.indices:
        yield batch.finish()


def convert(record: object, prefix: str = "", captions: bool = False) -> dict | str:
    """One record as a unified row (sample_id `d/s/0`), or its reject reason. For tests and tools."""
    job = Job(dataset="d", subset="s", image_prefix=prefix, captions=captions)
    batch = _Batch(job)
    batch.add(0, record)
    rows = batch.finish().to_pylist()
    return rows[0] if rows else next(iter(job.rejects.counts))


class _Batch:
    """Up to BATCH records: cheap per-record checks in Python, the rest vectorized in finish()."""

    def __init__(self, job: Job):
        self.job = job
        self.prefix = job.image_prefix.strip("/") + "/" if job.image_prefix else ""
        self.indices: list[int] = []
        self.ids: list[str | None] = []
        self.int_ids: list[int | None] = []  # the same ids where the source wrote an integer (source_id_int)
        self.images: list[str | None] = []
        self.conversations: list[list] = []

    def add(self, index: int, record: object) -> None:
        reason = self._check(record)
        if reason:
            self.job.rejects.add(reason, index)
            return
        source_id = record.get("id")
        image = record.get("image", _NO_IMAGE)  # the key's absence, not a null, marks a text-only record (P4)
        self.indices.append(index)
        self.ids.append(None if source_id is None else str(source_id))
        self.int_ids.append(source_id if type(source_id) is int and -2**63 <= source_id < 2**63 else None)
        self.images.append(None if image is _NO_IMAGE else image)
        self.conversations.append(record["conversations"])

    @staticmethod
    def _check(record: object) -> str | None:
        if type(record) is not dict:
            return "not_an_object"
        conversations = record.get("conversations")
        if not conversations:
            return "missing_conversations"
        if type(conversations) is not list or set(map(type, conversations)) != _DICTS:
            return "bad_type"
        source_id = record.get("id")
        if source_id is not None and type(source_id) is not int and type(source_id) is not str:
            return "bad_type"  # float, bool, list ids: no stable string form
        image = record.get("image", "")
        if type(image) is not str:
            return "bad_type"  # a null or a list of images: not the format of these files
        return None

    def finish(self) -> pa.RecordBatch:
        if not self.indices:
            return pa.RecordBatch.from_pylist([], schema=UNIFIED_SCHEMA)
        turns = self._turns_array()
        reasons = _reasons(turns, pa.array(self.images, pa.string()))
        keep = reasons == ""
        for position in np.flatnonzero(~keep):
            self.job.rejects.add(str(reasons[position]), self.indices[position])
        return self._unified(turns).filter(pa.array(keep))

    def _turns_array(self) -> pa.ListArray:
        try:
            return pa.array(self.conversations, RAW_TURNS)
        except (pa.ArrowTypeError, pa.ArrowInvalid):
            # A turn value that is not a string (rare): find the culprits one by one and give them no turns,
            # which _reasons reports as bad_type.
            converted = []
            for i, conversation in enumerate(self.conversations):
                try:
                    converted.append(pa.array([conversation], RAW_TURNS))
                except (pa.ArrowTypeError, pa.ArrowInvalid):
                    converted.append(pa.array([[]], RAW_TURNS))
            return pa.concat_arrays(converted)

    def _unified(self, turns: pa.ListArray) -> pa.RecordBatch:
        job, n = self.job, len(self.indices)
        roles = ROLES.take(pc.fill_null(pc.index_in(turns.values.field("from"), value_set=SOURCE_ROLES), 0))
        contents = turns.values.field("value")
        conversations = pa.ListArray.from_arrays(turns.offsets, pa.StructArray.from_arrays(
            [roles, contents], fields=list(TURN_TYPE)))
        images = [None if image is None else self.prefix + image for image in self.images]
        base = f"{job.dataset}/{job.subset}/"
        columns = {
            "sample_id": pa.array([base + str(i) for i in self.indices], pa.string()),
            "dataset": pa.array([job.dataset] * n, pa.string()),
            "subset": pa.array([job.subset] * n, pa.string()),
            "source_id": pa.array(self.ids, pa.string()),
            "source_id_int": pa.array(self.int_ids, pa.int64()),
            "image_path": pa.array(images, pa.string()),
            "image_url": pa.nulls(n, pa.string()),
            "caption": _captions(turns, images) if job.captions else pa.nulls(n, pa.string()),
            "conversations": conversations,
            "width": pa.nulls(n, pa.int32()),
            "height": pa.nulls(n, pa.int32()),
        }
        return pa.RecordBatch.from_arrays([columns[f.name] for f in UNIFIED_SCHEMA], schema=UNIFIED_SCHEMA)


def _reasons(turns: pa.ListArray, images: pa.Array) -> np.ndarray:
    """Per record: '' (keep) or the first reject reason that applies, computed over all turns at once."""
    offsets = turns.offsets.to_numpy()
    lengths, starts = np.diff(offsets), offsets[:-1]
    values = turns.values.field("value")
    role = pc.fill_null(pc.index_in(turns.values.field("from"), value_set=SOURCE_ROLES), -1).to_numpy()
    position = np.arange(len(role)) - np.repeat(starts, lengths)
    tokens = _token_counts(values)

    def per_record(per_turn: np.ndarray) -> np.ndarray:
        padded = np.append(per_turn.astype(np.int64), 0)  # reduceat needs every start < len
        return np.where(lengths > 0, np.add.reduceat(padded, starts), 0)

    has_image = images.is_valid().to_numpy(zero_copy_only=False)
    first_tokens = np.where(lengths > 0, np.append(tokens, 0)[starts], 0)
    unsafe = pc.fill_null(pc.match_substring_regex(images, UNSAFE_PATH_PATTERN), False)
    checks = [  # in priority order
        ("bad_type", (lengths == 0) | (per_record(values.is_null().to_numpy(zero_copy_only=False)) > 0)),
        ("unknown_role", per_record(role < 0) > 0),
        ("role_order", (per_record((role >= 0) & (role != position % 2)) > 0) | (lengths % 2 == 1)),
        ("bad_image_path", unsafe.to_numpy(zero_copy_only=False)),
        ("image_token_count", per_record(tokens) != has_image),
        ("image_token_position", has_image & (first_tokens == 0)),
    ]
    reasons = np.full(len(lengths), "", dtype=object)
    for reason, failed in reversed(checks):  # earlier checks overwrite later ones
        reasons[failed] = reason
    return reasons


def _token_counts(values: pa.StringArray) -> np.ndarray:
    """Occurrences of `<image>` in each value. One bytes.find() pass over the values' data buffer (memchr
    speed), hits mapped to their value through the offsets: pc.count_substring took ~70 % of the record
    checks. "<image>" cannot overlap itself, so a hit running across two values (dropped) hides no real one."""
    token = IMAGE_TOKEN.encode()
    offsets = np.frombuffer(values.buffers()[1], dtype=np.int32)[values.offset : values.offset + len(values) + 1]
    data = values.buffers()[2]
    hits = []
    if data is not None and len(offsets):
        raw, end = data.to_pybytes(), int(offsets[-1])
        at = raw.find(token, int(offsets[0]), end)
        while at >= 0:
            hits.append(at)
            at = raw.find(token, at + len(token), end)
    hits = np.array(hits, dtype=np.int64)
    owner = np.searchsorted(offsets, hits, side="right") - 1
    inside = hits + len(token) <= offsets[np.minimum(owner + 1, len(offsets) - 1)]
    return np.bincount(owner[inside], minlength=len(values))


def _captions(turns: pa.ListArray, images: list) -> pa.Array:
    """The assistant text of two-turn image records, else null."""
    offsets = turns.offsets.to_numpy()
    values = turns.values.field("value")
    if not len(values):
        return pa.nulls(len(images), pa.string())
    wanted = (np.diff(offsets) == 2) & np.array([image is not None for image in images], dtype=bool)
    answers = values.take(pa.array(np.minimum(offsets[:-1] + 1, len(values) - 1)))
    return pc.if_else(pa.array(wanted), answers, pa.scalar(None, pa.string()))
