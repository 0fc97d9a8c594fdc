"""LLaVA-format JSON (LLaVA-Instruct, mix665k, LCS-558K, CC3M-595K chat.json, ShareGPT4V) -> unified rows.

Format: reference section 2. Per record:
- `id` (int or str, P1) becomes a string `source_id`; ids are not unique (P2), so `sample_id` is
  `<dataset>/<subset>/<record index in the file>`;
- roles human/gpt become user/assistant; they must alternate, start with human and end with gpt (P7);
- `<image>` may be a prefix or a suffix of the first human turn (P3): the text is kept as published, and the
  token must appear exactly once per image, in the first user turn;
- a record without an `image` key is text-only (P4): kept, with a null `image_path` and no `<image>`;
- the file's `image_prefix` is prepended to the image path, after checking the path is safe (resolve.py);
- a job may cover a byte range of the file (`job.start`/`job.end`, from `split_points`): then record indices
  count from `job.first_index`;
- caption rule: with `job.captions` (the dataset serves the pretrain stage), a record with exactly one user and
  one assistant turn and an image gets the assistant's text as `caption`. LLaVA's plain template learns
  exactly that text and drops the instruction (reference 2.3). Multi-turn and text-only records never get one.

Reject reasons (counted, with example record indices): not_an_object, missing_conversations, bad_type,
unknown_role, role_order, image_token_count, image_token_position, bad_image_path.
"""

from __future__ import annotations

from typing import Iterator

from mmcorpus.normalizers import Job
from mmcorpus.normalizers import jsonarray
from mmcorpus.normalizers.jsonarray import iter_json_array
from mmcorpus.resolve import unsafe_path_reason

ROLES = {"human": "user", "gpt": "assistant"}
NEXT = {"human": "gpt", "gpt": "human"}
IMAGE_TOKEN = "<image>"


def normalize(job: Job) -> Iterator[dict]:
    """Stream the rows of one LLaVA JSON file; rejects are counted in job.rejects."""
    prefix = job.image_prefix.strip("/") + "/" if job.image_prefix else ""
    base = f"{job.dataset}/{job.subset}/"
    add_reject = job.rejects.add
    records = iter_json_array(job.path, job.start, job.end)
    for index, record in enumerate(records, job.first_index):
        row = convert(record, prefix, job.captions)
        if type(row) is str:
            add_reject(row, index)
            continue
        row["sample_id"] = base + str(index)
        row["dataset"] = job.dataset
        row["subset"] = job.subset
        yield row


def split_points(path, parts: int) -> list[int]:
    """Byte ranges of whole records, for normalizing one big file in several processes."""
    return jsonarray.split_points(path, parts, lambda v: type(v) is dict and "conversations" in v)


def convert(record: object, prefix: str = "", captions: bool = False) -> dict | str:
    """One record as a partial unified row (without sample_id/dataset/subset), or a reject reason."""
    if type(record) is not dict:
        return "not_an_object"
    conversations = record.get("conversations")
    if not conversations:
        return "missing_conversations"
    if type(conversations) is not list:
        return "bad_type"
    checked = _turns(conversations)
    if type(checked) is str:
        return checked
    turns, tokens = checked
    source_id = record.get("id")
    if source_id is not None:
        if type(source_id) is int or type(source_id) is str:
            source_id = str(source_id)
        else:
            return "bad_type"  # float, bool, list ids: no stable string form
    image_path = None
    if "image" in record:  # the key's absence, not a null value, marks a text-only record (P4)
        image = record["image"]
        if type(image) is not str:
            return "bad_type"
        if unsafe_path_reason(image):
            return "bad_image_path"
        image_path = prefix + image
    problem = _image_token_problem(turns, tokens, 0 if image_path is None else 1)
    if problem:
        return problem
    caption = turns[1]["content"] if captions and image_path is not None and len(turns) == 2 else None
    return {
        "source_id": source_id,
        "image_path": image_path,
        "image_url": None,
        "caption": caption,
        "conversations": turns,
        "width": None,
        "height": None,
    }


def _turns(conversations: list) -> tuple[list[dict], int] | str:
    """Mapped turns and the number of `<image>` tokens in them, or the reject reason of the first broken turn."""
    turns = []
    tokens = 0
    expected = "human"
    for turn in conversations:
        if type(turn) is not dict:
            return "bad_type"
        role, value = turn.get("from"), turn.get("value")
        if type(value) is not str:
            return "bad_type"
        if role != expected:
            return "role_order" if role in ROLES else "unknown_role"
        expected = NEXT[role]
        if IMAGE_TOKEN in value:
            tokens += value.count(IMAGE_TOKEN)
        turns.append({"role": ROLES[role], "content": value})
    if expected != "human":  # ends with an unanswered human turn
        return "role_order"
    return turns, tokens


def _image_token_problem(turns: list[dict], tokens: int, images: int) -> str | None:
    if tokens != images:
        return "image_token_count"
    if images and IMAGE_TOKEN not in turns[0]["content"]:
        return "image_token_position"
    return None
