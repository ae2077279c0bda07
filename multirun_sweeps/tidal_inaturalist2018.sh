#!/usr/bin/env bash
# TiDAL paper, iNaturalist 2018: 8 strategies x 3 seeds on the preset (GPU; needs the data:
# pass dataset.root=<folder with train_val2018/, train2018.json, val2018.json>).
# Grid: conf/sweep/tidal_inaturalist2018.yaml; more arguments go to Hydra (launcher, narrower grid).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-.venv/bin/python}
exec "$PY" -m tidal_lightning +sweep=tidal_inaturalist2018 -m "$@"
