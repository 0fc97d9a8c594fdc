"""Normalized rows -> a training stage: mixes, sampling, dedup, image checks, exports, report."""
