#!/usr/bin/env bash
# Set-up and main job in one: install everything, then run the quick-start experiment on an embedded local Ray
# cluster. Extra arguments go to `run` (e.g. ./quickstart.sh --set rounds=3).
set -euo pipefail
cd "$(dirname "$0")"
scripts/install.sh
exec .venv/bin/python -m msfusion_ray run configs/quickstart.yaml "$@"
