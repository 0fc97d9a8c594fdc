"""Helpers shared by the tests (fixtures live in tests/conftest.py): paths of the repository and of the real
dataset samples; stage rows (helpers.stage), URL-list images (helpers.urllist), kill -9 runs (helpers.killsafe)."""

from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
SAMPLES = REPO / "tests" / "data" / "samples"
