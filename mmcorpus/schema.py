"""The on-disk table contracts (DESIGN.md §3 and §4). Users build dashboards and loaders on these names.

- UNIFIED_SCHEMA: one row per sample, the output of every normalizer.
- STATUS_SCHEMA: one row per input row of a URL-list shard, the record of what happened to it.
"""

from __future__ import annotations

import pyarrow as pa

TURN_TYPE = pa.struct([pa.field("role", pa.string()), pa.field("content", pa.string())])

UNIFIED_SCHEMA = pa.schema(
    [
        pa.field("sample_id", pa.string(), nullable=False),  # <dataset>/<subset>/<row index>
        pa.field("dataset", pa.string(), nullable=False),
        pa.field("subset", pa.string(), nullable=False),
        pa.field("source_id", pa.string()),  # original id as a string (sources mix int and str ids)
        pa.field("image_path", pa.string()),  # relative to <root>/images; null for text-only samples
        pa.field("image_url", pa.string()),  # original URL for URL-list datasets
        pa.field("caption", pa.string()),
        pa.field("conversations", pa.list_(TURN_TYPE)),  # roles user/assistant; <image> kept in turn 0
        pa.field("width", pa.int32()),
        pa.field("height", pa.int32()),
        # The source id when the source wrote an integer (int64), so exports give ids back as written; else null.
        pa.field("source_id_int", pa.int64()),
    ]
)
# Columns added after the first release: a normalized file written before them reads with nulls there.
ADDITIVE_COLUMNS = ("source_id_int",)

# The error vocabulary of STATUS_SCHEMA.error (DESIGN.md §3); keep the values stable.
ERRORS = (
    "not_found",  # 404 / 410
    "http_error",  # other 4xx / 5xx
    "timeout",
    "connection",
    "too_large",
    "not_image",
    "corrupt",
    "opted_out",  # X-Robots-Tag noai / noimageai
    "blocked_url",  # scheme or address refused
    "too_many_redirects",
)


def is_transient(error: str | None, http_status: int | None) -> bool:
    """Failures worth trying again with --retry-failed: timeouts, dropped connections, 5xx, 408 and 429.
    404/410 (not_found), other 4xx and content problems are final."""
    if error in ("timeout", "connection"):
        return True
    return error == "http_error" and http_status is not None and (http_status >= 500 or http_status in (408, 429))

STATUS_SCHEMA = pa.schema(
    [
        pa.field("key", pa.string(), nullable=False),  # row index, zero-padded
        pa.field("url", pa.string()),
        pa.field("caption", pa.string()),
        pa.field("status", pa.string(), nullable=False),  # ok | failed
        pa.field("error", pa.string()),  # null when ok, else one of ERRORS
        pa.field("http_status", pa.int32()),
        pa.field("bytes", pa.int64()),
        pa.field("width", pa.int32()),
        pa.field("height", pa.int32()),
        pa.field("image_path", pa.string()),  # relative to <root>/images
        pa.field("sha256", pa.string()),  # of the stored bytes
        # why a row failed, in words (DNS failure, refused, TLS error, the HTTP status text, which limit was hit);
        # null when ok. Added last: readers that select columns by name see no change.
        pa.field("error_detail", pa.string()),
    ]
)
