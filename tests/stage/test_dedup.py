"""Duplicate removal: what counts as a duplicate, and digests held in 8 bytes each, not a Python set."""

from __future__ import annotations

import random
import tracemalloc

from mmcorpus.stage.dedup import Deduper, DigestSet


def test_a_digest_set_answers_like_a_set_across_merges():
    rng = random.Random(7)
    values = [0, 2**64 - 1, 2**63] + [rng.getrandbits(64) for _ in range(5000)]
    digests, reference = DigestSet(recent=64), set()
    for i, value in enumerate(values):
        assert (value in digests) == (value in reference)
        digests.add(value)
        reference.add(value)
        if i % 7 == 0:
            digests.add(values[i // 2])  # adding again changes nothing
    assert len(digests) == len(reference)
    assert all(v in digests for v in values) and not any(rng.getrandbits(64) in digests for _ in range(2000))


def test_the_first_copy_wins_by_url_or_by_identical_record():
    dedup = Deduper()
    turns = [{"role": "user", "content": "<image>\nWhat is this?"}, {"role": "assistant", "content": "a cat"}]
    moved = [{"role": "user", "content": "What is this?\n<image>"}, {"role": "assistant", "content": "a cat"}]
    assert dedup.check_and_add("https://a/1.jpg", "cc3m/x.jpg", "a cat", []) is None
    assert dedup.check_and_add(" https://a/1.jpg ", "cc12m/y.jpg", "other", []) == "duplicate_url"
    assert dedup.check_and_add(None, "coco/1.jpg", None, turns) is None
    assert dedup.check_and_add(None, "coco/1.jpg", None, moved) == "duplicate_record"
    assert dedup.check_and_add(None, "coco/2.jpg", None, moved) is None  # another image: another record


def test_kept_samples_cost_about_8_bytes_each():
    digests = DigestSet(recent=4096)
    tracemalloc.start()
    for i in range(150_000):
        digests.add(i * 0x9E3779B97F4A7C15 % 2**64)
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert len(digests) == 150_000
    assert peak < 5_000_000, peak  # 1.2 MB of digests (+ merges); a Python set of 150k ints takes ~9 MB
