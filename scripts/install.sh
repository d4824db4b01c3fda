#!/usr/bin/env bash
# Installs everything msfusion_ray needs on a Debian machine: the Fashion-MNIST data package, and a virtual
# environment (.venv) with the locked Python requirements and this project. Safe to re-run.
set -euo pipefail
cd "$(dirname "$0")/.."

as_root() { if [ "$(id -u)" -eq 0 ]; then "$@"; else sudo "$@"; fi; }
# pip, without its note on each configured index folder that this machine lacks; its own exit status kept.
pip_quietly() { .venv/bin/pip "$@" 2>&1 | { grep -v "is ignored: it is neither a file nor a directory" || true; }; }

missing=()
[ -f /usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz ] || missing+=(dataset-fashion-mnist)
python3 -c "import venv, ensurepip" 2>/dev/null || missing+=(python3-venv)
if [ ${#missing[@]} -gt 0 ]; then
  echo "installing Debian packages: ${missing[*]}"
  as_root apt-get update -qq
  as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}"
fi

[ -x .venv/bin/python ] || python3 -m venv .venv
# requirements.txt: every dependency (the tests' too) at the version tested, torch the CPU build (scripts/lock.sh
# makes it). The project itself on top, its dependencies being those.
pip_quietly install -q -r requirements.txt
pip_quietly install -q --no-deps -e .
.venv/bin/python -c "import torch, ray, msfusion_ray, analysis; print('installed: torch', torch.__version__, '/ ray', ray.__version__)"
