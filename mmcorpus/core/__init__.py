"""Mechanisms with no pipeline knowledge: atomic writes, progress, images, parquet shards, disk space, locks, run records."""
