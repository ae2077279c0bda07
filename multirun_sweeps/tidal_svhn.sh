#!/usr/bin/env bash
# TiDAL paper, SVHN: 8 strategies x 3 seeds on the paper protocol (GPU).
# Grid: conf/sweep/tidal_svhn.yaml; more arguments go to Hydra (launcher, narrower grid).
set -euo pipefail
cd "$(dirname "$0")/.."
# $PYTHON, else the project's .venv (make install), else the python on the PATH
PY=${PYTHON:-$( [ -x .venv/bin/python ] && echo .venv/bin/python || command -v python3 || command -v python )}
exec "$PY" -m tidal_lightning +sweep=tidal_svhn -m "$@"
