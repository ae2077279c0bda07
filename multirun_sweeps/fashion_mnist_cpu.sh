#!/usr/bin/env bash
# The TiDAL comparison (plus margin, dispersion, BADGE) on real Fashion-MNIST, CPU-sized, seeds 0-2.
# Grid: conf/sweep/fashion_mnist_cpu.yaml; more arguments go to Hydra (launcher, narrower grid).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-.venv/bin/python}
exec "$PY" -m tidal_lightning +sweep=fashion_mnist_cpu -m "$@"
