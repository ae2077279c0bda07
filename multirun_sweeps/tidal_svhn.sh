#!/usr/bin/env bash
# TiDAL paper, SVHN: 8 strategies x 3 seeds on the paper protocol (GPU).
# Grid: conf/sweep/tidal_svhn.yaml; more arguments go to Hydra (launcher, narrower grid).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-.venv/bin/python}
exec "$PY" -m tidal_lightning +sweep=tidal_svhn -m "$@"
