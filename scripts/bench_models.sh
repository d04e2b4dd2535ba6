#!/usr/bin/env bash
# The whole-model benchmark, both sides in one command on one machine: residual
# (examples/bench_models.rs), then PyTorch eager and onnxruntime (scripts/bench_models_reference.py)
# on the same rows. Setup once: bash scripts/setup_reference.sh. Results go in BENCHMARKS.md.
# Usage, from anywhere: bash scripts/bench_models.sh [--rows r50-b1,r50-b8,...] [--reps 7]
set -euo pipefail
cd "$(dirname "$0")/.."
echo "# $(date -u +%Y-%m-%dT%H:%MZ), $(lscpu | sed -n 's/^Model name: *//p'), $(nproc) cores"
cargo run --release --quiet --example bench_models -- "$@"
.venv-ref/bin/python scripts/bench_models_reference.py "$@"
