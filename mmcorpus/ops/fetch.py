"""`mmcorpus fetch`: the command's run (the fetch, then the --min-success rule) and its human report.

The fetch itself (what to download for each name, in which order) is mmcorpus.fetch.run; its options are one
mmcorpus.fetch.options.FetchOptions, checked there.
"""

from __future__ import annotations

import logging

from mmcorpus.core.progress import human_bytes
from mmcorpus.errors import UsageError
from mmcorpus.fetch.options import FetchOptions
from mmcorpus.fetch.run import fetch
from mmcorpus.registry import Registry

log = logging.getLogger("mmcorpus")


def run(registry: Registry, names: list[str], options: FetchOptions, *,
        min_success: float | None = None) -> tuple[dict, bool]:
    """Fetch `names`; returns the report and whether the command succeeded (every step ok and, with
    `min_success`, the image success ratio at least that)."""
    if min_success is not None and not 0 <= min_success <= 1:
        raise UsageError(f"--min-success expects a ratio between 0 and 1, got {min_success}")
    report = fetch(registry, names, options)
    report["root"] = str(options.root)
    return report, report["ok"] and success_ratio_ok(report, min_success)


def success_ratio_ok(report: dict, min_success: float | None) -> bool:
    """Records `success_ratio` (ok images over ok + failed, all URL-list subsets together) in the report."""
    if min_success is None:
        return True
    ok = failed = 0
    for target in report.get("targets", []):
        for images in target.get("images", []):
            ok += images.get("ok", 0)
            failed += sum((images.get("failed") or {}).values())
    ratio = ok / (ok + failed) if ok + failed else 1.0
    report["success_ratio"] = round(ratio, 4)
    if ratio < min_success:
        log.error("image success ratio %.1f%% is below --min-success %.1f%%", 100 * ratio, 100 * min_success)
        return False
    return True


# ---------------------------------------------------------------------------------------------- format


def format_report(report: dict) -> str:
    """The human summary of a fetch: per name, files and images, failures with reasons."""
    if report.get("dry_run"):
        lines = ["dry run: nothing downloaded"]
        for t in report["targets"]:
            unknown = f" + {t['unknown_sizes']} of unknown size" if t.get("unknown_sizes") else ""
            needed = f", if {t['needed_by']}'s records use it" if t.get("needed_by") else ""
            lines.append(f"{t['name']} ({t['kind']}{needed}): {len(t['files'])} files, "
                         f"{'~' if t.get('approximate') else ''}{human_bytes(t['bytes'])}{unknown}")
            for f in t["files"]:
                where = f["url"] or f"manual: {' '.join((f['manual'] or '').split())}"
                size = (human_bytes(f["size"]) if f["size"] is not None else
                        "~" + human_bytes(f["approx_size"]) if f.get("approx_size") is not None else "?")
                lines.append(f"  {f['filename']:45} {size:>9}  {where}")
            if t.get("manual") and not t["files"]:
                manual = " ".join(t["manual"].split())
                lines.append(f"  by hand: {manual[:150]}{'...' if len(manual) > 150 else ''} (mmcorpus info {t['name']})")
            if t.get("images") == "url column":
                count = f"up to {t['web_images']:,}" if t.get("web_images") is not None else "the"
                lines.append(f"  + {count} images from the web (their URLs are in the files above)")
        total = sum(t["bytes"] for t in report["targets"])
        unknown = sum(t.get("unknown_sizes", 0) for t in report["targets"])
        about = "~" if any(t.get("approximate") for t in report["targets"]) else ""
        lines.append(f"total: {about}{human_bytes(total)} of files" + (f" + {unknown} of unknown size" if unknown else "")
                     + (" + the web images" if any(t.get("images") == "url column" for t in report["targets"])
                        else ""))
        return "\n".join(lines)
    lines = []
    for t in report["targets"]:
        mark = "ok" if t["ok"] else "FAILED"
        lines.append(f"{t['name']} ({t['kind']}): {mark} in {t.get('seconds', 0):.1f} s")
        if t.get("error"):
            lines.append(f"  error: {t['error']}")
        for f in t.get("files", []):
            detail = f.get("error") or f.get("note") or human_bytes(f.get("bytes"))
            lines.append(f"  file {f['key']}: {f['status']} ({' '.join(str(detail).split())})")
        for images in t.get("images", []):
            lines.append("  images " + _images_line(images))
            lines += [f"    {hint}" for hint in _policy_hints(images)]
        for archive in t.get("archives", []):
            lines.append("  " + _archive_line(archive))
        if t.get("manual"):
            lines.append(f"  manual: {' '.join(t['manual'].split())}")
    lines.append(f"root: {report.get('root')}")
    return "\n".join(lines)


def _archive_line(archive: dict) -> str:
    status = archive.get("status")
    if status == "missing":
        return f"archive {archive.get('name')}: missing ({archive.get('reason', '')})"
    files = archive.get("extracted", 0) + archive.get("already_present", 0)
    return f"archive {archive.get('name')}: {status}, {files} files, {human_bytes(archive.get('bytes'))}"


def _images_line(images: dict) -> str:
    """`train: 36/45 ok (80.0%); failed: not_found 5, corrupt 1; 120 images/s`"""
    reasons = images.get("failed") or {}
    failed = sum(reasons.values())
    why = ", ".join(f"{k} {v}" for k, v in sorted(reasons.items(), key=lambda kv: (-kv[1], kv[0])))
    rows = images.get("rows", images.get("ok", 0) + failed)
    text = f"{images.get('subset')}: {images.get('ok', 0)}/{rows} ok ({100 * images.get('success_rate', 0):.1f}%)"
    if why:
        text += f"; failed: {why}"
    if images.get("fetched"):
        text += f"; {images.get('images_per_s', 0):.0f} images/s"
    if images.get("malformed"):
        text += "; malformed lines: " + ", ".join(f"{k} {v}" for k, v in images["malformed"].items())
    return text


def _policy_hints(images: dict) -> list[str]:
    """Refusals a flag would lift (a re-run with it fetches those rows again)."""
    failed = images.get("failed") or {}
    hints = []
    if failed.get("blocked_url"):
        hints.append(f"{failed['blocked_url']} URLs refused by the address policy (not http/https, or a "
                     "private/loopback address: pass --allow-private-hosts, or --mirror for a mirror host)")
    if failed.get("opted_out"):
        hints.append(f"{failed['opted_out']} images opted out of AI use by X-Robots-Tag (--ignore-opt-out "
                     "fetches them; mind their licence)")
    return hints
