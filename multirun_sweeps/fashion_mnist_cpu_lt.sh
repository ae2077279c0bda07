#!/usr/bin/env bash
# fashion_mnist_cpu on a long-tailed pool (imbalance ratios 10 and 100), 11 strategies, seed 0.
# Grid: conf/sweep/fashion_mnist_cpu_lt.yaml; more arguments go to Hydra (launcher, narrower grid).
set -euo pipefail
cd "$(dirname "$0")/.."
# $PYTHON, else the project's .venv (make install), else the python on the PATH
PY=${PYTHON:-$( [ -x .venv/bin/python ] && echo .venv/bin/python || command -v python3 || command -v python )}
exec "$PY" -m tidal_lightning +sweep=fashion_mnist_cpu_lt -m "$@"
