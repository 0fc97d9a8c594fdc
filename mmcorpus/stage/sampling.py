"""Sampling rules of a stage mix entry: `all`, `first:N`, `random:N`, `weight:W`.

Every random choice is a pure function of (seed, sample_id): a 64-bit hash, so the same seed picks the same
samples however the normalized files are sharded or in which order they are read, and no state beyond the
N kept priorities is needed (random:N keeps the N smallest hashes, a bounded heap).
"""

from __future__ import annotations

import hashlib
import heapq
import math
from dataclasses import dataclass

RULE_HELP = "use all, first:N, random:N or weight:W (N a positive integer, W a positive number)"


@dataclass(frozen=True)
class Rule:
    kind: str  # all | first | random | weight
    n: int = 0  # first / random
    weight: float = 1.0  # weight

    def __str__(self) -> str:
        if self.kind == "all":
            return "all"
        if self.kind == "weight":
            return f"weight:{self.weight:g}"
        return f"{self.kind}:{self.n}"


def parse_rule(text: object) -> Rule:
    """Parse a rule; ValueError says what is wrong and what to write instead."""
    if isinstance(text, bool) or not isinstance(text, str):
        raise ValueError(f"must be a string such as 'all' or 'random:1000', got {text!r}; {RULE_HELP}")
    kind, _, arg = text.strip().partition(":")
    if kind == "all" and not arg:
        return Rule("all")
    if kind in ("first", "random"):
        try:
            n = int(arg)
        except ValueError:
            n = 0
        if n <= 0:
            raise ValueError(f"'{text}' needs a positive sample count, e.g. {kind}:1000; {RULE_HELP}")
        return Rule(kind, n=n)
    if kind == "weight":
        try:
            weight = float(arg)
        except ValueError:
            weight = 0.0
        if not math.isfinite(weight) or weight <= 0:
            raise ValueError(f"'{text}' needs a positive weight, e.g. weight:0.5 or weight:2; {RULE_HELP}")
        return Rule("weight", weight=weight)
    raise ValueError(f"'{text}' is not a sampling rule; {RULE_HELP}")


def priority(seed: int, sample_id: str) -> int:
    """A 64-bit pseudo-random number fixed by (seed, sample_id)."""
    digest = hashlib.blake2b(sample_id.encode("utf-8"), digest_size=8, key=str(seed).encode()).digest()
    return int.from_bytes(digest, "big")


def copies(weight: float, seed: int, sample_id: str) -> int:
    """How many times weight:W emits a sample: floor(W), plus one more with probability frac(W)."""
    whole = math.floor(weight)
    fraction = weight - whole
    return whole + (1 if fraction and priority(seed, sample_id) < fraction * 2**64 else 0)


class BottomK:
    """The k smallest priorities seen (a max-heap of negated values): random:N's first pass."""

    def __init__(self, k: int):
        self.k, self.heap = k, []

    def could_take(self, p: int) -> bool:
        return len(self.heap) < self.k or p < -self.heap[0]

    def push(self, p: int) -> None:
        if len(self.heap) < self.k:
            heapq.heappush(self.heap, -p)
        elif p < -self.heap[0]:
            heapq.heapreplace(self.heap, -p)

    def threshold(self) -> int:
        """Priorities <= this were chosen (everything when fewer than k candidates existed)."""
        return 2**64 if len(self.heap) < self.k else -self.heap[0]
