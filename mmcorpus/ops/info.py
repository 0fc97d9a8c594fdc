"""`mmcorpus info NAME`: one spec in full, plus which of its files are already on disk."""

from __future__ import annotations

from pathlib import Path

from mmcorpus import layout
from mmcorpus.core.progress import human_bytes
from mmcorpus.registry import Registry, Spec, spec_to_dict


def run(registry: Registry, root: Path, name: str) -> dict:
    spec = registry.get(name)
    return {**spec_to_dict(spec), "on_disk": on_disk(spec, root)}


def on_disk(spec: Spec, root: Path) -> dict:
    out = {}
    for file in spec.downloads:
        path = layout.download_path(root, spec.name, file.filename)
        out[file.key] = {"path": str(path), "present": path.is_file(),
                         "bytes": path.stat().st_size if path.is_file() else None}
    return out


def format_report(registry: Registry, data: dict) -> str:
    spec = registry.get(data["name"])
    lines = [f"{spec.name} ({spec.kind})" + (f": {spec.title}" if spec.title else "")]
    for label, value in (("stages", ", ".join(spec.stages)), ("homepage", spec.homepage),
                         ("license", spec.license), ("citation", spec.citation), ("path", spec.path and
                         f"<root>/{layout.IMAGES}/{spec.path}"), ("images", "from the url column" if spec.images_from
                         else ", ".join(spec.collections)), ("manual", spec.manual), ("notes", spec.notes),
                         ("spec", str(spec.source))):
        if value:
            lines.append(f"  {label + ':':10} {' '.join(str(value).split())}")
    lines.append("  files:")
    for file in spec.downloads:
        state = data["on_disk"][file.key]
        flags = [human_bytes(file.size) if file.size else "size ?", "sha256" if file.sha256 else "",
                 "md5" if file.md5 else "", "optional" if file.optional else "",
                 "on disk" if state["present"] else "not fetched"]
        lines.append(f"    {file.key}: {file.filename} [{', '.join(f for f in flags if f)}]")
        for url in file.urls:
            lines.append(f"      {url}")
        if file.manual:
            lines.append(f"      manual: {' '.join(file.manual.split())}")
    return "\n".join(lines)
