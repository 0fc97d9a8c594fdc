"""README's "Bring your own data", as a user runs it: a dataset spec and its collection spec, fetch, prepare."""

from __future__ import annotations

import io
import json
import zipfile
from pathlib import Path

import pytest
from helpers.cli import mmcorpus, one_line_error
from PIL import Image

RECORDS = [
    {"id": 7, "image": "000.jpg", "conversations": [{"from": "human", "value": "<image>\nWhat colour?"},
                                                    {"from": "gpt", "value": "red"}]},
    {"id": "b1", "image": "001.jpg", "conversations": [{"from": "human", "value": "What colour?\n<image>"},
                                                       {"from": "gpt", "value": "green"}]},
]


def images_zip() -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        for i, colour in enumerate([(200, 0, 0), (0, 200, 0)]):
            image = io.BytesIO()
            Image.new("RGB", (64, 48), colour).save(image, "JPEG")
            archive.writestr(f"images/{i:03d}.jpg", image.getvalue())
    return buffer.getvalue()


@pytest.fixture
def own(tmp_path, mirror) -> list[str]:
    """The README's two specs in a --config-dir, served by a real local server; returns the common arguments."""
    specs = tmp_path / "specs"
    specs.mkdir()
    (specs / "my_llava.yaml").write_text(f"""name: my_llava
kind: dataset
stages: [finetune]
license: CC BY 4.0
files:
  train:
    url: {mirror.put("my_llava.json", json.dumps(RECORDS).encode())}
    image_prefix: my_llava/images
format: {{type: llava}}
images: {{collections: [my_llava_images]}}
""")
    (specs / "my_llava_images.yaml").write_text(f"""name: my_llava_images
kind: collection
license: CC BY 4.0
path: my_llava/images
archives:
  - url: {mirror.put("my_images.zip", images_zip())}
    strip: images/
""")
    return ["--root", str(tmp_path / "root"), "--config-dir", str(specs)]


def test_own_dataset_fetches_with_its_images_and_joins_a_stage_by_its_spec(own):
    fetched = mmcorpus(*own, "fetch", "my_llava")
    assert fetched.returncode == 0, fetched.stderr
    root = Path(own[1])
    assert (root / "images/my_llava/images/001.jpg").is_file()
    prepared = mmcorpus(*own, "prepare", "--stage", "finetune", "--datasets", "my_llava", "--format", "llava")
    assert prepared.returncode == 0, prepared.stderr
    export = sorted(json.loads((root / "stages/finetune/llava/finetune.json").read_text()), key=lambda r: r["sample_id"])
    assert [r["image"] for r in export] == ["my_llava/images/000.jpg", "my_llava/images/001.jpg"]
    assert [r["id"] for r in export] == [7, "b1"]  # as the source wrote them: an int stays an int
    assert [r["sample_id"] for r in export] == ["my_llava/train/0", "my_llava/train/1"]
    assert all((root / "images" / r["image"]).is_file() for r in export)
    assert export[1]["conversations"][0]["value"] == "<image>\nWhat colour?"


def test_a_file_whose_every_record_is_rejected_says_so_with_the_reasons(own, mirror):
    mirror.put("my_llava.json", json.dumps([{"id": i, "image": "000.jpg", "text": "x"} for i in range(5)]).encode())
    assert mmcorpus(*own, "fetch", "my_llava", "--no-images").returncode == 0
    result = mmcorpus(*own, "prepare", "--stage", "finetune", "--datasets", "my_llava")
    assert result.returncode == 2
    line = one_line_error(result)
    assert "my_llava/train: all 5 records rejected (missing_conversations 5): is this LLaVA format?" in line
    assert "mmcorpus fetch" not in line
