#!/usr/bin/env bash
# Every strategy on the generated smoke data, two seeds: checks a sweep end to end in about a minute.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-.venv/bin/python}
exec "$PY" -m tidal_lightning +experiment=smoke -m \
  strategy=random,entropy,margin,least_confidence,tidal_entropy,tidal_margin \
  seed=0,1 "$@"
