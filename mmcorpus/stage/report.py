"""What a prepared stage holds, for people: `report.html` (one self-contained page) and a terminal summary.

The page has no external resources: inline CSS, inline SVG charts, thumbnails as small base64 JPEG data
URIs, so it can be mailed or opened from a cluster's file browser. All dataset text (captions, conversations,
even names from user configs) is untrusted and HTML-escaped. A tiny inline script marks every thumbnail with
data-loaded="1"/"0" after the page loads (what the headless-browser test reads).
"""

from __future__ import annotations

import base64
import html
import io
from pathlib import Path

from PIL import Image

from mmcorpus import layout
from mmcorpus.core.imaging import to_rgb
from mmcorpus.stage.build import DUPLICATES

THUMB_SIZE = 224
THUMB_QUALITY = 70
KEPT, DROPPED, SKIPPED = "#2f9e6b", "#d9534f", "#c8ccd2"
WDS_SKIPPED = {"text_only": "text-only rows", "image_unreadable": "rows whose image became unreadable"}
REASONS = {
    "text_only": "no image (text-only rows are not used in this stage)",
    "image_not_downloaded": "the image URL failed or was not fetched",
    "image_missing": "image file not on disk (collection not fetched or incomplete)",
    "image_empty": "image file is empty",
    "image_undecodable": "image file cannot be decoded",
    "bad_image_path": "image path is absolute or climbs out of the images folder",
    "duplicate_url": "same image URL as a sample kept earlier",
    "duplicate_record": "same image and text as a sample kept earlier",
}


def _e(value) -> str:
    return html.escape(str(value), quote=True)


def _n(value: int) -> str:
    return f"{value:,}"


# ----------------------------------------------------------------------------------------------- terminal


def format_stage_summary(manifest: dict) -> str:
    """A plain-text summary of a stage manifest for the terminal (`prepare`, `status`)."""
    total = manifest["total"]
    lines = [
        f"stage {manifest['stage']}: {_n(total['kept'])} samples from {_n(total['rows'])} rows"
        f" ({manifest['created']}, mmcorpus {manifest['mmcorpus_version']})"
        + (" - unchanged" if manifest.get("unchanged") else ""),
        f"  {'dataset/subset':<28} {'rule':<14} {'rows':>12} {'kept':>12} {'not sampled':>12} {'dropped':>12}",
    ]
    for d in manifest["datasets"]:
        label = f"{d['dataset']}/{d['subset']}"
        lines.append(
            f"  {label:<28} {d['sample']:<14} {_n(d['rows']):>12} {_n(d['kept']):>12}"
            f" {_n(d['not_sampled']):>12} {_n(sum(d['dropped'].values())):>12}"
        )
    for reason, n in total["dropped"].items():
        lines.append(f"  dropped {_n(n):>12}  {reason}: {REASONS.get(reason, reason)}")
    for d in manifest["datasets"]:
        up = d.get("upstream") or {}
        lost = {**(up.get("download_failed") or {}), **{f"rejected {k}": v for k, v in (up.get("rejected") or {}).items()}}
        if lost:
            detail = ", ".join(f"{reason} {_n(n)}" for reason, n in sorted(lost.items(), key=lambda kv: -kv[1]))
            lines.append(f"  before the stage, {d['dataset']}/{d['subset']}: {detail}")
    for m in manifest.get("missing", []):
        lines.append(f"  missing  {m['dataset']}/{m['subset']}: {m.get('reason') or 'not fetched'} ({m['fetch']})")
    lines.append("  outputs: " + ", ".join(_output_summary(manifest)))
    return "\n".join(lines)


def _output_summary(manifest: dict) -> list[str]:
    out, items = manifest["outputs"], []
    if "parquet" in out:
        items.append(f"{len(out['parquet']['files'])} parquet shard(s) in {layout.STAGE_PARQUET}/")
    if "llava" in out:
        items.append(f"{layout.STAGE_LLAVA}/{out['llava']['file']} ({_n(out['llava']['records'])} records)")
    if "webdataset" in out:
        skipped = out["webdataset"].get("skipped") or {}
        note = "".join(f", skipped {_n(n)} {WDS_SKIPPED.get(r, r)}" for r, n in sorted(skipped.items()))
        items.append(f"{len(out['webdataset']['shards'])} tar shard(s) in {layout.STAGE_WEBDATASET}/"
                     f" ({_n(out['webdataset'].get('samples', 0))} samples{note})")
    return items + [layout.STAGE_REPORT]


# ------------------------------------------------------------------------------------------------ charts


def svg_bars(items: list[tuple[str, list[tuple[int, str]]]], width: int = 1060) -> str:
    """Horizontal (stacked) bars: items of (label, [(value, colour), ...])."""
    label_w, row_h, value_w = 230, 26, 90
    scale = max([sum(v for v, _ in parts) for _, parts in items] + [1])
    bar_w = width - label_w - value_w
    rows = []
    for i, (label, parts) in enumerate(items):
        y, x = i * row_h, label_w
        rows.append(f'<text x="{label_w - 8}" y="{y + 17}" text-anchor="end">{_e(_clip(label, 34))}</text>')
        for value, colour in parts:
            w = bar_w * value / scale
            if w > 0:
                rows.append(f'<rect x="{x:.1f}" y="{y + 4}" width="{max(w, 1):.1f}" height="{row_h - 8}" rx="3" fill="{colour}"><title>{_n(value)}</title></rect>')
            x += w
        rows.append(f'<text x="{x + 6:.1f}" y="{y + 17}" class="num">{_n(sum(v for v, _ in parts))}</text>')
    height = max(len(items), 1) * row_h
    return f'<svg viewBox="0 0 {width} {height}" width="{width}" role="img">{"".join(rows)}</svg>'


def svg_histogram(labels: list[str], counts: list[int], colour: str, width: int = 340, height: int = 170) -> str:
    """Vertical bars with the bin labels underneath (every other label when crowded)."""
    if not any(counts):
        return '<p class="empty">none in this stage</p>'
    pad_b, pad_t = 34, 14
    n = max(len(counts), 1)
    bar_w = width / n
    top = max(counts + [1])
    parts = []
    for i, (label, count) in enumerate(zip(labels, counts)):
        h = (height - pad_b - pad_t) * count / top
        x = i * bar_w
        parts.append(f'<rect x="{x + 1:.1f}" y="{height - pad_b - h:.1f}" width="{bar_w - 2:.1f}" height="{h:.1f}" fill="{colour}"><title>{_e(label)}: {_n(count)}</title></rect>')
        if n <= 12 or i % 2 == 0:
            tick = label.split("-")[0]  # "128-255" -> "128": ranges do not fit under narrow bars (full in the title)
            parts.append(f'<text x="{x + bar_w / 2:.1f}" y="{height - pad_b + 14}" text-anchor="middle" class="tick">{_e(tick)}</text>')
    parts.append(f'<line x1="0" y1="{height - pad_b}" x2="{width}" y2="{height - pad_b}" class="axis"/>')
    return f'<svg viewBox="0 0 {width} {height}" width="{width}" role="img">{"".join(parts)}</svg>'


def _clip(text: str, n: int) -> str:
    return text if len(text) <= n else text[: n - 1] + "…"


# ------------------------------------------------------------------------------------------- thumbnails


def thumbnail_uri(path: Path) -> str | None:
    """A small JPEG data URI of an image, or None when it cannot be read."""
    try:
        with Image.open(path) as image:
            image.draft("RGB", (THUMB_SIZE * 2, THUMB_SIZE * 2))  # JPEG: decode at reduced size, much faster
            image = to_rgb(image)  # transparent areas on white, as in the exports
            image.thumbnail((THUMB_SIZE, THUMB_SIZE))
            buffer = io.BytesIO()
            image.save(buffer, "JPEG", quality=THUMB_QUALITY)
    except (OSError, ValueError, Image.DecompressionBombError):
        return None
    return "data:image/jpeg;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


def _sample_card(example: dict, images_root: Path) -> str:
    uri = thumbnail_uri(images_root / example["image_path"]) if example.get("image_path") else None
    if uri:
        visual = f'<img src="{uri}" alt="{_e(example["sample_id"])}" loading="eager">'
    else:
        visual = f'<div class="noimg">{"text only" if not example.get("image_path") else "image unavailable"}</div>'
    return (
        f'<figure class="card">{visual}<figcaption><div class="tag">{_e(example["entry"])}</div>'
        f'<div class="sid">{_e(example["sample_id"])}</div><p>{_e(example["text"])}</p></figcaption></figure>'
    )


# ------------------------------------------------------------------------------------------------- page


def render_report(manifest: dict, images_root: Path) -> str:
    total, stats = manifest["total"], manifest["stats"]
    duplicates = sum(n for r, n in total["dropped"].items() if r in DUPLICATES)
    sections = [
        _kpis(total, duplicates, manifest),
        _section("Samples per dataset", _dataset_chart(manifest) + _dataset_table(manifest)),
        _missing(manifest),
        _section("Where the images come from", svg_bars([(s, [(n, "#4c78a8")]) for s, n in stats["sources"].items()])),
        _section("Why samples were dropped", _drops(total)),
        _upstream(manifest),
        _section("Text lengths", _histograms(stats)),
        _section("Random samples", '<div class="grid">' + "".join(_sample_card(x, images_root) for x in stats["examples"]) + "</div>"),
        _section("Files", _files(manifest)),
    ]
    title = f"mmcorpus · stage {manifest['stage']}"
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><meta name="viewport" content="width=device-width, initial-scale=1">
<title>{_e(title)}</title><style>{CSS}</style></head>
<body><header><h1>{_e(title)}</h1><p>{_e(manifest['mix'].get('name'))} mix · built {_e(manifest['created'])} ·
mmcorpus {_e(manifest['mmcorpus_version'])} · fingerprint <code>{_e(manifest['fingerprint'][:12])}</code></p></header>
<main>{''.join(s for s in sections if s)}</main>
<script>{SCRIPT}</script></body></html>
"""


def write_report(manifest: dict, stage_dir: Path, images_root: Path) -> Path:
    """Written in place: the stage folder is a temporary one until stages.prepare_stage swaps it in."""
    path = layout.stage_report(stage_dir)
    path.write_text(render_report(manifest, Path(images_root)), encoding="utf-8")
    return path


def _section(title: str, body: str) -> str:
    return f"<section><h2>{_e(title)}</h2>{body}</section>"


def _kpis(total: dict, duplicates: int, manifest: dict) -> str:
    cards = [
        ("samples kept", _n(total["kept"]), "good"),
        ("rows read", _n(total["rows"]), ""),
        ("not usable", _n(sum(total["dropped"].values()) - duplicates), "bad"),
        ("duplicates removed", _n(duplicates), ""),
        ("datasets used / in the mix", f"{len(manifest['datasets'])} / {len(manifest['datasets']) + len(manifest.get('missing', []))}", ""),
    ]
    return '<div class="kpis">' + "".join(
        f'<div class="kpi {cls}"><div class="v">{_e(v)}</div><div class="l">{_e(label)}</div></div>' for label, v, cls in cards
    ) + "</div>"


def _dataset_chart(manifest: dict) -> str:
    items = [
        (f"{d['dataset']}/{d['subset']}", [(d["kept"], KEPT), (sum(d["dropped"].values()), DROPPED), (d["not_sampled"], SKIPPED)])
        for d in manifest["datasets"]
    ]
    legend = (f'<p class="legend"><i style="background:{KEPT}"></i>kept <i style="background:{DROPPED}"></i>dropped '
              f'<i style="background:{SKIPPED}"></i>not sampled</p>')
    return legend + svg_bars(items)


def _dataset_table(manifest: dict) -> str:
    head = "<tr><th>dataset / subset</th><th>rule</th><th>rows</th><th>kept</th><th>not sampled</th><th>dropped</th><th>spec</th></tr>"
    rows = []
    for d in manifest["datasets"]:
        dropped = ", ".join(f"{_e(r)} {_n(n)}" for r, n in d["dropped"].items()) or "—"
        rows.append(
            f"<tr><td>{_e(d['dataset'])}/{_e(d['subset'])}</td><td><code>{_e(d['sample'])}</code></td>"
            f"<td class='r'>{_n(d['rows'])}</td><td class='r'>{_n(d['kept'])}</td><td class='r'>{_n(d['not_sampled'])}</td>"
            f"<td>{dropped}</td><td class='r'>v{_e(d.get('spec_version', '?'))}</td></tr>"
        )
    return f"<table>{head}{''.join(rows)}</table>"


def _missing(manifest: dict) -> str:
    if not manifest.get("missing"):
        return ""
    items = "".join(f"<li>{_e(m['dataset'])}/{_e(m['subset'])} — <code>{_e(m['fetch'])}</code></li>" for m in manifest["missing"])
    return _section("Not fetched yet (left out of this stage)", f'<ul class="missing">{items}</ul>')


def _drops(total: dict) -> str:
    if not total["dropped"]:
        return "<p>No sample was dropped.</p>"
    chart = svg_bars([(r, [(n, DROPPED)]) for r, n in total["dropped"].items()])
    notes = "".join(f"<li><code>{_e(r)}</code>: {_e(REASONS.get(r, r))}</li>" for r in total["dropped"])
    return chart + f'<ul class="notes">{notes}</ul>'


def _upstream(manifest: dict) -> str:
    """Failures before the stage (normalizer reports): image downloads that failed, records rejected."""
    rows = []
    for d in manifest["datasets"]:
        up = d.get("upstream") or {}
        for kind, counts in (("download failed", up.get("download_failed")), ("record rejected", up.get("rejected"))):
            for reason, n in sorted((counts or {}).items(), key=lambda kv: -kv[1]):
                rows.append(f"<tr><td>{_e(d['dataset'])}/{_e(d['subset'])}</td><td>{kind}</td><td><code>{_e(reason)}</code></td>"
                            f"<td class='r'>{_n(n)}</td></tr>")
    if not rows:
        return ""
    head = "<tr><th>dataset / subset</th><th>step</th><th>reason</th><th>count</th></tr>"
    return _section("Lost before this stage (fetch and normalize)", f"<table>{head}{''.join(rows)}</table>")


def _histograms(stats: dict) -> str:
    charts = [
        ("caption length (words)", stats["caption_words"], "#4c78a8"),
        ("turn length (words)", stats["turn_words"], "#f58518"),
        ("turns per conversation", stats["turns_per_sample"], "#54a24b"),
    ]
    return '<div class="hists">' + "".join(
        f"<div><h3>{_e(t)}</h3>{svg_histogram(h['labels'], h['counts'], c)}</div>" for t, h, c in charts
    ) + "</div>"


def _files(manifest: dict) -> str:
    out = manifest["outputs"]
    items = [f"<li><code>{layout.STAGE_PARQUET}/{_e(f['file'])}</code> — {_n(f['rows'])} rows</li>" for f in out["parquet"]["files"]]
    if "llava" in out:
        items.append(f"<li><code>{layout.STAGE_LLAVA}/{_e(out['llava']['file'])}</code> — {_n(out['llava']['records'])} records "
                     f"(train with <code>--image_folder &lt;root&gt;/{layout.IMAGES}</code>)</li>")
    if "webdataset" in out:
        items += [f"<li><code>{layout.STAGE_WEBDATASET}/{_e(s['file'])}</code> — {_n(s['samples'])} samples</li>" for s in out["webdataset"]["shards"]]
    return f"<ul class='files'>{''.join(items)}</ul>"


CSS = """
:root{--fg:#1f2430;--muted:#6b7280;--line:#e5e7eb;--bg:#f6f7f9}
*{box-sizing:border-box}body{margin:0;font:14px/1.45 system-ui,-apple-system,'Segoe UI',Roboto,sans-serif;color:var(--fg);background:var(--bg)}
header{background:#1f2430;color:#fff;padding:20px 32px}header code{background:rgba(255,255,255,.14);color:#fff}header h1{margin:0;font-size:22px}header p{margin:4px 0 0;color:#c9ced6}
main{max-width:1180px;margin:0 auto;padding:20px 32px}
section{background:#fff;border:1px solid var(--line);border-radius:10px;padding:16px 20px;margin:16px 0}
h2{font-size:16px;margin:0 0 12px}h3{font-size:13px;color:var(--muted);margin:0 0 6px;font-weight:600}
.kpis{display:grid;grid-template-columns:repeat(auto-fit,minmax(170px,1fr));gap:12px}
.kpi{background:#fff;border:1px solid var(--line);border-radius:10px;padding:14px 16px}
.kpi .v{font-size:24px;font-weight:700}.kpi .l{color:var(--muted)}.kpi.good .v{color:#2f9e6b}.kpi.bad .v{color:#d9534f}
svg{max-width:100%;height:auto;display:block}.empty{color:var(--muted);margin:40px 0}
svg text{font-size:12px;fill:var(--fg)}svg .num{fill:var(--muted)}svg .tick{font-size:10px;fill:var(--muted)}svg .axis{stroke:#9ca3af}
table{border-collapse:collapse;width:100%;margin-top:12px}th,td{border-bottom:1px solid var(--line);padding:6px 8px;text-align:left;vertical-align:top}
th{color:var(--muted);font-weight:600}td.r{text-align:right;font-variant-numeric:tabular-nums}
.legend i{display:inline-block;width:10px;height:10px;border-radius:2px;margin:0 4px 0 12px}.legend i:first-child{margin-left:0}
.hists{display:grid;grid-template-columns:repeat(auto-fit,minmax(300px,1fr));gap:18px}
.grid{display:grid;grid-template-columns:repeat(auto-fill,minmax(220px,1fr));gap:14px}
.card{margin:0;border:1px solid var(--line);border-radius:8px;overflow:hidden;background:#fff}
.card img,.card .noimg{display:block;width:100%;height:170px;object-fit:cover;background:#eef0f3}
.card .noimg{display:flex;align-items:center;justify-content:center;color:var(--muted)}
.card figcaption{padding:8px 10px}.card p{margin:4px 0 0;white-space:pre-wrap;overflow-wrap:anywhere;max-height:9.5em;overflow:auto;font-size:12.5px}
.tag{display:inline-block;background:#eef2ff;color:#3b4cca;border-radius:4px;padding:0 6px;font-size:11.5px}
.sid{color:var(--muted);font-size:11px;overflow-wrap:anywhere}
code{background:#f1f3f5;border-radius:4px;padding:0 4px}ul{margin:6px 0;padding-left:20px}.notes{color:var(--muted)}
"""

SCRIPT = """
window.addEventListener('load', function () {
  var imgs = document.querySelectorAll('img'), ok = 0;
  imgs.forEach(function (img) { var good = img.complete && img.naturalWidth > 0; img.dataset.loaded = good ? '1' : '0'; if (good) ok++; });
  document.body.dataset.imagesLoaded = ok + '/' + imgs.length;
});
"""
