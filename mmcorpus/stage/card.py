"""What loaders look for in a stage folder: the dataset card (`README.md`) and WebDataset's `sizes.json`.

- `README.md`: a Hugging Face dataset card. Its YAML header lists `configs:` with `data_files`, so
  `datasets.load_dataset("<root>/stages/<stage>")` reads `data/*.parquet` (without it, `datasets` picks a
  builder from the files it sees, the JSON one for manifest.json and llava/*.json, and fails); the `hf` export,
  when written, is a second config. The body says what the stage holds: counts and licenses per dataset (from
  the manifest), how it was made, and how to load it; no date, so that the same stage gives the same bytes.
  Dataset names come from user configs: escaped for tables.
- `webdataset/sizes.json`: `{shard file name: samples}`, what open_clip reads instead of `--train-num-samples`.
"""

from __future__ import annotations

from pathlib import Path

import yaml

from mmcorpus import layout
from mmcorpus.core.atomicio import write_bytes_atomic, write_json_atomic

NOTICE = "Each dataset keeps its own license and terms of use: check them before you train on this stage or share it."


def write_sizes(folder: Path, shards: list[dict]) -> None:
    """`<folder>/sizes.json` for the tar shards of write_webdataset's result."""
    write_json_atomic(layout.webdataset_sizes(folder), {s["file"]: s["samples"] for s in shards}, indent=1)


def write_card(stage_folder: Path, manifest: dict) -> None:
    text = "---\n" + yaml.safe_dump(card_header(manifest), sort_keys=False) + "---\n\n" + card_body(manifest)
    write_bytes_atomic(layout.stage_card(stage_folder), text.encode("utf-8"))


def card_header(manifest: dict) -> dict:
    """The YAML header: one config per parquet layout, `default` (the unified rows) first and marked."""
    configs = [{"config_name": "default", "default": True,
                "data_files": [{"split": "train", "path": f"{layout.STAGE_PARQUET}/*.parquet"}]}]
    if "hf" in manifest.get("outputs", {}):
        configs.append({"config_name": "hf", "data_files": [{"split": "train", "path": layout.HF_DATA_FILES}]})
    return {"license": "other", "configs": configs}


def _cell(value) -> str:
    return str(value).replace("\\", "\\\\").replace("|", "\\|").replace("\n", " ")


def _count(n: int, what: str) -> str:
    return f"{n:,} {what}" + ("" if n == 1 else "s")


def card_body(manifest: dict) -> str:
    stage, total = manifest["stage"], manifest["total"]
    files = manifest["outputs"]["parquet"]["files"]
    lines = [
        f"# Stage `{_cell(stage)}`",
        "",
        (f"{_count(total['kept'], 'sample')} in {_count(len(files), 'parquet shard')} (`{layout.STAGE_PARQUET}/`), "
         f"prepared by mmcorpus {manifest['mmcorpus_version']}. The rows are a shuffle "
         f"of the whole mix (seed {manifest['options']['seed']}): every shard mixes the datasets below in their "
         "proportions."),
        "",
        "| dataset | subset | sampling | samples |",
        "|---|---|---|---:|",
    ]
    for d in manifest["datasets"]:
        lines.append(f"| {_cell(d['dataset'])} | {_cell(d['subset'])} | {_cell(d['sample'])} | {d['kept']:,} |")
    licenses = {d["dataset"]: d.get("license") or "unknown" for d in manifest["datasets"]}
    lines += ["", "## Licenses", "", NOTICE, ""]
    lines += [f"- **{_cell(name)}**: {_cell(text)}" for name, text in licenses.items()]
    lines += ["", "## Loading", "", *_loading(stage), *_exports(manifest)]
    return "\n".join(lines) + "\n"


def _loading(stage: str) -> list[str]:
    return [
        "```python",
        "import datasets",
        'rows = datasets.load_dataset("<this folder>", split="train")  # image_path is relative to <root>/images',
        "",
        "import mmcorpus",
        f"stage = mmcorpus.open_stage({stage!r})  # pass root=... or set MMCORPUS_ROOT",
        'hf = stage.to_hf_dataset()  # column "images": decoded PIL images',
        "torch_data = stage.to_torch(shuffle_seed=0)  # splits across DataLoader workers and ranks",
        "```",
    ]


def _exports(manifest: dict) -> list[str]:
    outputs = manifest["outputs"]
    lines = []
    if "llava" in outputs:
        lines.append(f"- `{layout.STAGE_LLAVA}/{outputs['llava']['file']}`: LLaVA's `train.py` "
                     "(`--data_path` this file, `--image_folder <root>/images`).")
    if "webdataset" in outputs:
        lines.append(f"- `{layout.STAGE_WEBDATASET}/`: {_count(len(outputs['webdataset']['shards']), 'tar shard')} "
                     f"for webdataset / open_clip (`{layout.WEBDATASET_SIZES}` gives the samples per shard).")
    if "hf" in outputs:
        lines.append(f"- `{layout.HF_DATA_FILES}`: `messages` and embedded `images` for TRL's SFTTrainer or the Hub "
                     '(`datasets.load_dataset("<this folder>", "hf")`).')
    return ["", "Exports:", "", *lines] if lines else []
