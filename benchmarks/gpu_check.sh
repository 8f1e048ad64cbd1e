#!/usr/bin/env bash
# One-shot GPU check (issue #18); the steps, their caps and the flags: benchmarks/gpu_check.py.
#   bash benchmarks/gpu_check.sh --out OUT --wheels gpu-wheels --data-root gpu-data --dc-repo dc-reference
#   bash benchmarks/gpu_check.sh --rehearse --out /tmp/gpu-check     # on CPU, tiny sizes, < 3 minutes
set -euo pipefail
cd "$(dirname "$0")/.."
# The project's venv where there is one; on the GPU machine, the python3 that holds its PyTorch.
PY=${PYTHON:-python3}
if [ -z "${PYTHON:-}" ] && [ -x .venv/bin/python ]; then PY=.venv/bin/python; fi
exec env PYTHONUNBUFFERED=1 "$PY" benchmarks/gpu_check.py "$@"
