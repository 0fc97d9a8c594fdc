#!/usr/bin/env bash
# --engine img2dataset end to end: img2dataset 1.47 and mmcorpus in a virtual environment of their own
# (img2dataset pins old opencv/albumentations/webdataset: it never goes into the main test environment),
# then tests/img2dataset_e2e against the local mirror (no internet). About 1-2 minutes, most of it pip.
#
#   scripts/ci/test_img2dataset.sh [VENV]      (default VENV: .venv-img2dataset, reused when present)
set -euo pipefail
cd "$(dirname "$0")/../.."
venv="${1:-.venv-img2dataset}"

if [ ! -x "$venv/bin/img2dataset" ]; then
  python3 -m venv "$venv"
  "$venv/bin/python" -m pip install -q --upgrade pip
  # One resolve for both, so pip picks versions that satisfy img2dataset's pins and our dependencies.
  "$venv/bin/python" -m pip install -q 'img2dataset==1.47.0' -e . 'pytest>=8' 'pytest-timeout>=2.2'
fi
"$venv/bin/python" -m pip check

# albumentations asks PyPI for updates on import; CI has no internet and wants no surprises
export NO_ALBUMENTATIONS_UPDATE=1 MMCORPUS_IMG2DATASET_E2E=1
"$venv/bin/python" -m pytest -q -p no:cacheprovider tests/img2dataset_e2e
