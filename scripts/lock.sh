#!/usr/bin/env bash
# Refreshes requirements.txt: every dependency of pyproject.toml and of its `test` extra, each pinned to one version,
# made with pip-tools' pip-compile (pip install pip-tools). Pins already in the lock are kept while they satisfy
# pyproject.toml, so a new dependency adds its own and nothing else moves; `scripts/lock.sh --upgrade` moves every
# package to its newest allowed version (`--upgrade-package NAME` one of them): then run the tests.
# torch is locked as torch==2.13.0: pip resolves it to the CPU build where the index or find-links offer it (this
# machine's pip.conf: /opt/wheels; elsewhere --extra-index-url https://download.pytorch.org/whl/cpu), never to a
# CUDA build, and the lock holds no nvidia-* package besides nvidia-ml-py (tests/test_dependencies.py).
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-.venv/bin/python}
"$PYTHON" -m piptools compile --quiet --extra test --strip-extras --no-emit-index-url --no-emit-find-links \
  --output-file requirements.txt "$@" pyproject.toml
sed -i 's/^torch==2\.13\.0+cpu$/torch==2.13.0/' requirements.txt
