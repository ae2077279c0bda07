#!/usr/bin/env bash
# Label-dispersion paper, CIFAR-100: 8 strategies x 3 seeds, 10% -> 30% labeled (GPU).
# Grid: conf/sweep/dispersion_cifar100.yaml; more arguments go to Hydra (launcher, narrower grid).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-.venv/bin/python}
exec "$PY" -m tidal_lightning +sweep=dispersion_cifar100 -m "$@"
