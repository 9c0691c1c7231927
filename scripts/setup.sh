#!/usr/bin/env bash
# Sets up a fresh clone: a virtual environment in .venv with torch, triton and the build tools, then
# adadelta_fused itself, with its extension compiled (the CUDA kernel too where a CUDA toolkit is found).
# Safe to run again: it reuses .venv, and the extension build keeps its objects in build/, so an
# up-to-date checkout rebuilds in seconds and a changed source recompiles alone.
set -euo pipefail
cd "$(dirname "$0")/.."

PYTHON=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  "$PYTHON" -m venv .venv
fi
.venv/bin/python -m pip install --quiet --upgrade pip
# torch 2.14.1 is the CUDA 13.0 build; triton 3.8 is its partner release.
.venv/bin/python -m pip install --quiet "torch==2.14.1" "triton~=3.8.0" ninja pybind11 numpy "setuptools>=77" wheel
# The package, editable, without compiling: pip builds an editable install in a temporary folder, which
# would recompile the whole extension (about 4 minutes here) on every run. The bench and examples extras
# too: the tests run the benchmark's plot and examples/zeiler2012.py (scikit-learn).
ADADELTA_FUSED_BUILD_EXT=0 .venv/bin/python -m pip install --quiet --no-build-isolation -e ".[test,bench,examples]"
# The extension, in place, against the torch installed above; ninja keeps the objects in build/.
.venv/bin/python setup.py --quiet build_ext --inplace
.venv/bin/python -c "import adadelta_fused, json; print('adadelta_fused backends:', json.dumps(adadelta_fused.available_backends(), indent=1))"
