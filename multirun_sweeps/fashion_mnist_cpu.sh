#!/usr/bin/env bash
# The TiDAL comparison (plus margin, dispersion, BADGE) on real Fashion-MNIST, CPU-sized, seeds 0-2.
# Grid: conf/sweep/fashion_mnist_cpu.yaml; more arguments go to Hydra (launcher, narrower grid).
set -euo pipefail
cd "$(dirname "$0")/.."
# $PYTHON, else the project's .venv (make install), else the python on the PATH
PY=${PYTHON:-$( [ -x .venv/bin/python ] && echo .venv/bin/python || command -v python3 || command -v python )}
exec "$PY" -m tidal_lightning +sweep=fashion_mnist_cpu -m "$@"
