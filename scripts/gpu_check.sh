#!/usr/bin/env bash
# GPU day one: build for this GPU, run the GPU tests, benchmark, memcheck; the last line printed is the
# verdict. Run from anywhere with the machine's own python3 (PYTHON=... to choose another); no network.
# Results go to ${OUT:-bench/results/gpu}. Without a GPU it says so and exits 0. See scripts/gpu_check.py.
set -euo pipefail
cd "$(dirname "$0")/.."
exec "${PYTHON:-python3}" scripts/gpu_check.py "$@"
