#!/usr/bin/env bash
# Label-dispersion paper, CIFAR-100: 8 strategies x 3 seeds, 10% -> 30% labeled (GPU).
# Grid: conf/sweep/dispersion_cifar100.yaml; more arguments go to Hydra (launcher, narrower grid).
set -euo pipefail
cd "$(dirname "$0")/.."
# $PYTHON, else the project's .venv (make install), else the python on the PATH
PY=${PYTHON:-$( [ -x .venv/bin/python ] && echo .venv/bin/python || command -v python3 || command -v python )}
exec "$PY" -m tidal_lightning +sweep=dispersion_cifar100 -m "$@"
