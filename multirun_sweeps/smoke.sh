#!/usr/bin/env bash
# Every strategy on the generated smoke data, two seeds: checks a sweep end to end on any CPU.
# Grid: conf/sweep/smoke.yaml; more arguments go to Hydra (launcher, narrower grid).
set -euo pipefail
cd "$(dirname "$0")/.."
# $PYTHON, else the project's .venv (make install), else the python on the PATH
PY=${PYTHON:-$( [ -x .venv/bin/python ] && echo .venv/bin/python || command -v python3 || command -v python )}
exec "$PY" -m tidal_lightning +sweep=smoke -m "$@"
