#!/usr/bin/env bash
# The whole-model benchmark, both sides in one command on one machine: residual
# (examples/bench_models.rs: compiled plans and, with --layers, the layer-by-layer path), then
# PyTorch eager and onnxruntime (scripts/bench_models_reference.py) on the same rows. One process
# per row on both sides, so each row's peak RSS is its own. Setup once: bash scripts/setup_reference.sh.
# Results go in BENCHMARKS.md.
# Usage, from anywhere: bash scripts/bench_models.sh [--rows r50-b1,r50-b8,...] [--reps 7] [--layers]
set -euo pipefail
cd "$(dirname "$0")/.."
rows="r50-b1,r50-b8,r152-b8,r50-b8-train,r56-b16-train,r56-b128-train"
reps=7
ours=()
while [ $# -gt 0 ]; do
    case "$1" in
        --rows) rows="$2"; shift 2 ;;
        --reps) reps="$2"; shift 2 ;;
        --layers) ours+=(--layers); shift ;;
        *) echo "unknown option $1" >&2; exit 2 ;;
    esac
done
echo "# $(date -u +%Y-%m-%dT%H:%MZ), $(lscpu | sed -n 's/^Model name: *//p'), $(nproc) cores, load $(cut -d' ' -f1-3 /proc/loadavg)"
cargo build --release --quiet --example bench_models
header=()
for row in ${rows//,/ }; do
    ./target/release/examples/bench_models --rows "$row" --reps "$reps" "${ours[@]}" "${header[@]}"
    header=(--no-header)
done
.venv-ref/bin/python scripts/bench_models_reference.py --rows "$rows" --reps "$reps"
