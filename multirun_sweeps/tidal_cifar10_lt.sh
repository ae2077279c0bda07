#!/usr/bin/env bash
# TiDAL paper, CIFAR-10-LT: 8 strategies x imbalance ratios 10, 100 x 3 seeds (GPU).
# Grid: conf/sweep/tidal_cifar10_lt.yaml; more arguments go to Hydra (launcher, narrower grid).
set -euo pipefail
cd "$(dirname "$0")/.."
# $PYTHON, else the project's .venv (make install), else the python on the PATH
PY=${PYTHON:-$( [ -x .venv/bin/python ] && echo .venv/bin/python || command -v python3 || command -v python )}
exec "$PY" -m tidal_lightning +sweep=tidal_cifar10_lt -m "$@"
