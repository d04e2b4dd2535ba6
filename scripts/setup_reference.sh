#!/usr/bin/env bash
# Makes .venv-ref (git-ignored): numpy and safetensors for the fixture generators, PyTorch and
# torchvision (CPU use only) for scripts/bench_reference.py and
# scripts/reference/roundtrip_torchvision.py, and onnx + onnxruntime for
# scripts/bench_models_reference.py (the ONNX export of the same PyTorch models). Usage, from the repository root:
# bash scripts/setup_reference.sh
#
# PyTorch's CPU-only wheel index is not reachable from this project's machines, so torch comes
# from PyPI; its Linux wheel pulls the CUDA runtime wheels (a few GB) even though the benchmark
# only uses the CPU. Set REFERENCE_NO_TORCH=1 to install numpy and safetensors only.
set -euo pipefail
cd "$(dirname "$0")/.."

if [ ! -x .venv-ref/bin/python ]; then
    python3 -m venv .venv-ref
fi
.venv-ref/bin/pip install --quiet --upgrade pip
.venv-ref/bin/pip install --quiet numpy safetensors
if [ "${REFERENCE_NO_TORCH:-0}" != "1" ]; then
    .venv-ref/bin/pip install --quiet torch torchvision onnx onnxscript onnxruntime
fi
.venv-ref/bin/python -c "import numpy; print('numpy', numpy.__version__)"
if [ "${REFERENCE_NO_TORCH:-0}" != "1" ]; then
    .venv-ref/bin/python -c "import torch; print('torch', torch.__version__, 'threads', torch.get_num_threads())"
fi
