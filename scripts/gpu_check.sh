#!/usr/bin/env bash
# The GPU check (issue #16): one command of at most 8 minutes, every figure into one folder.
# Steps and outputs: `python -m tidal_lightning.gpu_check --help` (tidal_lightning/gpu_check.py).
#
# On a lent GPU machine (the device tool's nvidia-h200: no network, Python 3.12 with torch,
# Lightning, torchvision, torchmetrics, but no hydra-core/omegaconf/antlr4):
#   1. here, once:   make gpu-wheels    # .whl/ (those wheels) and .gpu_data/ (real Fashion-MNIST)
#   2. the device call, from the repository root (carry names the two ignored folders):
#        run(command='GPU_CHECK_COMMIT=<git rev-parse HEAD> bash scripts/gpu_check.sh "$OUT"',
#            carry=[".whl", ".gpu_data"], timeout_s=560)
#      $OUT comes back with gpu_check.json, gpu_check.md, gpu_check.log, bench.json,
#      bench_official.json, paper_results.csv, paper_epochs.jsonl.
# On any CPU, in well under a minute (the test suite runs this, so the check cannot rot):
#   bash scripts/gpu_check.sh --tiny OUT
set -euo pipefail
cd "$(dirname "$0")/.."
export PYTHONUNBUFFERED=1
exec "${PYTHON:-python3}" -m tidal_lightning.gpu_check "$@"
