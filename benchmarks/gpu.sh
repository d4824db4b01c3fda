#!/usr/bin/env bash
# The GPU check, for a machine with an NVIDIA GPU, in under 8 minutes: installs the project, runs the test suite
# (its GPU tests included: they skip without a GPU, and run here), then measures the quick start and the
# 1000-participant config on the GPU (participant tasks per second, GPU memory and utilisation, hosts per GPU).
#
#   benchmarks/gpu.sh                          # installs with scripts/install.sh into .venv
#   PYTHON=/path/to/python benchmarks/gpu.sh   # an interpreter that already has a CUDA build of torch
#
# Results: a Markdown table on stdout and benchmarks/out/gpu-<time>.json (for docs/benchmarks.md).
set -euo pipefail
cd "$(dirname "$0")/.."
started=$SECONDS
step() { echo "== $1 ($((SECONDS - started)) s)"; }

step "GPU"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader \
  || { echo "error: no NVIDIA GPU here (nvidia-smi found none)" >&2; exit 1; }

step "install"
if [ -n "${PYTHON:-}" ]; then
  py=$PYTHON
  grep -v '^torch==' requirements.txt | "$py" -m pip install -q -r /dev/stdin  # keep the interpreter's own torch
  "$py" -m pip install -q --no-deps -e .
else
  scripts/install.sh
  py=.venv/bin/python
fi
"$py" -c "import sys, torch
print('torch', torch.__version__, 'CUDA', torch.version.cuda, 'GPUs', torch.cuda.device_count())
sys.exit(0 if torch.cuda.is_available() else 1)" \
  || { echo "error: this torch cannot use the GPU: install a CUDA build of torch==2.13.0, or set PYTHON" >&2; exit 1; }

step "tests"
PYTHONUNBUFFERED=1 timeout 270 "$py" -m pytest -q -x -rs

step "quick start and 1000 participants on the GPU"
PYTHONUNBUFFERED=1 timeout 150 "$py" benchmarks/gpu.py configs/quickstart.yaml configs/scale_1000.yaml \
  --set runtime.device=cuda

step "done"
