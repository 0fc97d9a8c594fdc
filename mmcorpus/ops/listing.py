"""`mmcorpus list`: every dataset and image collection of the registry, one row each."""

from __future__ import annotations

from mmcorpus.core.progress import human_bytes
from mmcorpus.registry import Registry, Spec

COLUMNS = ["name", "kind", "stages", "files", "size", "license"]
WIDTH = 100  # the table fits a 100-column terminal: the last column is shortened to what is left


def run(registry: Registry) -> list[dict]:
    return [_row(spec) for spec in registry]


def _row(spec: Spec) -> dict:
    size = spec.approx_size()
    return {
        "name": spec.name,
        "kind": spec.kind,
        "stages": ",".join(spec.stages) or "-",
        "files": len(spec.downloads),
        "size": human_bytes(size) if size else ("manual" if spec.manual and not size else "?"),
        "size_bytes": size,
        "license": " ".join(spec.license.split()),
        "title": spec.title,
    }


def short(text: str, width: int) -> str:
    text = " ".join(text.split())
    return text if len(text) <= width else text[: width - 1] + "…"


def format_report(rows: list[dict], columns: list[str] = COLUMNS, width: int = WIDTH) -> str:
    widths = {c: max([len(c)] + [len(str(r.get(c, ""))) for r in rows]) for c in columns}
    last = columns[-1]
    room = max(len(last), width - sum(widths[c] + 2 for c in columns[:-1]))
    rows = [r | {last: short(str(r.get(last, "")), room)} for r in rows]
    widths[last] = min(widths[last], room)
    lines = ["  ".join(c.upper().ljust(widths[c]) for c in columns).rstrip()]
    lines += ["  ".join(str(r.get(c, "")).ljust(widths[c]) for c in columns).rstrip() for r in rows]
    return "\n".join(lines)
