"""Statistics of the samples kept in a stage, gathered while it is built, for the manifest and the report.

Bounded memory whatever the stage size: fixed histogram bins, one counter per image source, and a few
example samples per mix entry (the k smallest seeded priorities, so the examples are a fair random pick).
"""

from __future__ import annotations

import heapq
from collections import Counter

from mmcorpus.stage.sampling import priority

LENGTH_BINS = 12  # bin i holds lengths n with n.bit_length() == i: 0, 1, 2-3, 4-7, ..., 1024+ words
MAX_TURNS = 20  # turns per sample: one bin per count, the last one is "20+"
EXAMPLE_TEXT_CHARS = 600
TEXT_ONLY = "(text only)"


def length_bin_labels() -> list[str]:
    labels = ["0", "1"]
    for i in range(2, LENGTH_BINS):
        low, high = 2 ** (i - 1), 2**i - 1
        labels.append(f"{low}+" if i == LENGTH_BINS - 1 else f"{low}-{high}")
    return labels


def turn_bin_labels() -> list[str]:
    return [str(i) for i in range(MAX_TURNS)] + [f"{MAX_TURNS}+"]


def image_source(image_path: str | None) -> str:
    """Where an image comes from: the first two folders of its path (coco/train2017, gqa/images, cc3m/train)."""
    if not image_path:
        return TEXT_ONLY
    parts = image_path.split("/")
    return "/".join(parts[:2]) if len(parts) > 2 else parts[0]


def _words(text: str | None) -> int:
    return len(text.split()) if text else 0


def example_text(caption: str | None, conversations: list[dict] | None) -> str:
    if conversations:
        text = "\n".join(f"{t.get('role')}: {t.get('content') or ''}" for t in conversations[:2])
    else:
        text = caption or ""
    return text if len(text) <= EXAMPLE_TEXT_CHARS else text[: EXAMPLE_TEXT_CHARS - 1] + "…"


class StageStats:
    def __init__(self, seed: int, examples_per_entry: int = 4):
        self.seed, self.k = seed, examples_per_entry
        self.sources: Counter = Counter()
        self.caption_words = [0] * LENGTH_BINS
        self.turn_words = [0] * LENGTH_BINS
        self.turns = [0] * (MAX_TURNS + 1)
        self._examples: dict[str, list] = {}

    def add(self, entry: str, sample_id: str, image_path, caption, conversations) -> None:
        self.sources[image_source(image_path)] += 1
        if caption:
            self.caption_words[min(_words(caption).bit_length(), LENGTH_BINS - 1)] += 1
        for turn in conversations or ():
            self.turn_words[min(_words(turn.get("content")).bit_length(), LENGTH_BINS - 1)] += 1
        if conversations:
            self.turns[min(len(conversations), MAX_TURNS)] += 1
        self._offer_example(entry, sample_id, image_path, caption, conversations)

    def _offer_example(self, entry, sample_id, image_path, caption, conversations) -> None:
        heap = self._examples.setdefault(entry, [])
        p = priority(self.seed, sample_id)
        if len(heap) >= self.k and p >= -heap[0][0]:
            return
        item = (-p, sample_id, image_path, example_text(caption, conversations))
        if len(heap) < self.k:
            heapq.heappush(heap, item)
        else:
            heapq.heapreplace(heap, item)

    def to_dict(self) -> dict:
        examples = []
        for entry, heap in self._examples.items():
            for _, sample_id, image_path, text in sorted(heap, reverse=True):
                examples.append({"entry": entry, "sample_id": sample_id, "image_path": image_path, "text": text})
        return {
            "sources": dict(self.sources.most_common()),
            "caption_words": {"labels": length_bin_labels(), "counts": self.caption_words},
            "turn_words": {"labels": length_bin_labels(), "counts": self.turn_words},
            "turns_per_sample": {"labels": turn_bin_labels(), "counts": self.turns},
            "examples": examples,
        }
