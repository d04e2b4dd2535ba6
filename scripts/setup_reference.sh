#!/usr/bin/env bash
# Makes .venv-ref (git-ignored): numpy for the fixture generators, PyTorch (CPU use only) for
# scripts/bench_reference.py. Usage, from the repository root: bash scripts/setup_reference.sh
#
# PyTorch's CPU-only wheel index is not reachable from this project's machines, so torch comes
# from PyPI; its Linux wheel pulls the CUDA runtime wheels (a few GB) even though the benchmark
# only uses the CPU. Set REFERENCE_NO_TORCH=1 to install numpy only.
set -euo pipefail
cd "$(dirname "$0")/.."

if [ ! -x .venv-ref/bin/python ]; then
    python3 -m venv .venv-ref
fi
.venv-ref/bin/pip install --quiet --upgrade pip
.venv-ref/bin/pip install --quiet numpy
if [ "${REFERENCE_NO_TORCH:-0}" != "1" ]; then
    .venv-ref/bin/pip install --quiet torch
fi
.venv-ref/bin/python -c "import numpy; print('numpy', numpy.__version__)"
if [ "${REFERENCE_NO_TORCH:-0}" != "1" ]; then
    .venv-ref/bin/python -c "import torch; print('torch', torch.__version__, 'threads', torch.get_num_threads())"
fi
