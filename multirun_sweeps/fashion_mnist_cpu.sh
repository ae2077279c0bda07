#!/usr/bin/env bash
# Every strategy of the core issue on real Fashion-MNIST (CPU-sized), seeds 0-2.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-.venv/bin/python}
exec "$PY" -m tidal_lightning +experiment=fashion_mnist_cpu trainer.enable_progress_bar=false -m \
  strategy=random,entropy,margin,least_confidence,tidal_entropy,tidal_margin \
  seed=0,1,2 "$@"
