#!/usr/bin/env bash
# Gathers what benchmarks/gpu_check.sh needs on a GPU machine that has no internet, into ignored
# folders of this repository (so a device run can carry them):
#   gpu-wheels/         pure-Python wheels the GPU image lacks (or has in a version robustbench
#                       cannot use), downloaded with `pip download --no-deps`
#   gpu-data/           Fashion-MNIST's four IDX .gz files (30 MB), when this machine has them
# torch and torchvision are NOT carried (hundreds of MB): the GPU machine's own are used. Its image
# also has timm, pluggy, safetensors, numpy, scipy, pandas, matplotlib, jinja2, pyyaml, requests and
# tqdm. DC's reference code (VICO-UoE/DatasetCondensation) goes in dc-reference/ by hand: a clone,
# or its .py files (networks.py and utils.py are what bench_distill.py imports).
#
#     bash benchmarks/gpu_wheels.sh            # then: du -sh gpu-wheels gpu-data dc-reference
set -euo pipefail
cd "$(dirname "$0")/.."

WHEELS=gpu-wheels
DATA=gpu-data/fashion-mnist
FASHION=/usr/share/datasets/fashion-mnist

# Pinned to what CI installs (pyproject.toml, .ci/setup), so the GPU run computes with the same code.
PACKAGES=(
  torchattacks==3.5.1 robustbench==1.1.1
  pyautoattack==0.2.0          # robustbench's AutoAttack (our `autoattack` module adapts it)
  gdown==5.1.0 beautifulsoup4==4.15.0 soupsieve==4.1.3   # robustbench imports gdown at import time
  geotorch==0.4.0 torchdiffeq==0.2.5                     # robustbench's model zoo imports them
  tomli-w==1.2.0               # the GPU image's Python is 3.12: tomli (for < 3.11) is not carried
  # robustbench imports pkg_resources, which setuptools 81 removed; also builds this package there
  setuptools==80.10.2
)

mkdir -p "$WHEELS"
# Only what is missing: pip would fetch the slimmed pyautoattack again, its hash being new.
missing=()
for spec in "${PACKAGES[@]}"; do
  name=${spec%%==*} version=${spec##*==}
  [ -f "$WHEELS/${name//-/_}-$version-py3-none-any.whl" ] || missing+=("$spec")
done
if [ ${#missing[@]} -gt 0 ]; then
  # Local index mirrors print one "is ignored" line per package; only real errors are worth showing.
  python3 -m pip download --quiet --no-deps --only-binary=:all: --dest "$WHEELS" "${missing[@]}" 2>&1 \
    | { grep -v "is ignored" || true; } >&2
fi
if ls "$WHEELS"/*.whl | grep -v -- "-py3-none-any.whl$"; then
  echo "error: the wheels above are built for this machine only; the GPU machine needs py3-none-any" >&2
  exit 1
fi

# pyautoattack's wheel is 42 MB, 44.7 MB of it an example model (examples/model_test.pt) that no
# import touches; without it the whole carry fits the device run's 64 MiB. The slimmed wheel keeps
# name and version, and its RECORD lists exactly the files it still holds.
python3 - "$WHEELS"/pyautoattack-0.2.0-py3-none-any.whl <<'PY'
import sys, zipfile
from pathlib import Path

wheel = Path(sys.argv[1])
dropped = ("pyautoattack/examples/model_test.pt", "pyautoattack/examples/tf_model.weight.h5")
with zipfile.ZipFile(wheel) as src:
    if not any(n in src.namelist() for n in dropped):
        sys.exit(0)  # slimmed already
    slim = wheel.with_suffix(".slim")
    with zipfile.ZipFile(slim, "w", zipfile.ZIP_DEFLATED) as dst:
        for info in src.infolist():
            if info.filename in dropped:
                continue
            data = src.read(info)
            if info.filename.endswith(".dist-info/RECORD"):
                lines = data.decode().splitlines(keepends=True)
                data = "".join(l for l in lines if l.split(",")[0] not in dropped).encode()
            dst.writestr(info, data)
slim.replace(wheel)
PY

if [ -f "$FASHION/train-images-idx3-ubyte.gz" ]; then
  mkdir -p "$DATA"
  cp -u "$FASHION"/*-ubyte.gz "$DATA"/
else
  echo "note: $FASHION not found (apt-get install dataset-fashion-mnist); gpu-data/ not made" >&2
fi

du -sh "$WHEELS" gpu-data dc-reference 2>/dev/null || true
