#!/usr/bin/env bash
# run.sh of the CUDA bundle (made by scripts/cuda/build.sh). On the GPU machine:
#   ./run.sh            tests, then the benchmark (ours, then PyTorch's) and the ratio
#   ./run.sh tests      only the tests
#   ./run.sh bench      only the benchmarks   (BENCH_ARGS="--runs 20" ./run.sh bench)
set -uo pipefail
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
export LD_LIBRARY_PATH="$HERE/lib${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
# A bundle sent without lib/ (its cuBLAS is ~600 MB, more than some transfers allow) uses the
# CUDA 13.0 libraries of the machine's PyTorch wheels (nvidia/cu13/lib), as on the H200 where this
# ran (README, "Verification status").
if [[ ! -e "$HERE/lib/libcublas.so.13" ]]; then
    py_prefix=$(python3 -c 'import sys; print(sys.prefix)' 2>/dev/null || true)
    wheel_lib=$(find "${py_prefix:-/nonexistent}" -name libcublas.so.13 -printf '%h\n' 2>/dev/null | head -n1)
    if [[ -n "$wheel_lib" ]]; then
        echo "run.sh: no lib/ in the bundle; using $wheel_lib"
        export LD_LIBRARY_PATH="$wheel_lib:$LD_LIBRARY_PATH"
    fi
fi
what="${1:-all}"
status=0

nvidia-smi --query-gpu=name,driver_version,compute_cap,memory.total --format=csv 2>/dev/null || echo "(no nvidia-smi)"
cat "$HERE/BUILD_INFO.txt" 2>/dev/null

if [[ "$what" == all || "$what" == tests ]]; then
    for t in "$HERE"/bin/test_*; do
        echo "== $(basename "$t")"
        # --test-threads=1: the tests share one GPU; one at a time keeps failures readable.
        "$t" --test-threads=1 --nocapture || status=1
    done
fi

if [[ "$what" == all || "$what" == bench ]]; then
    ours="$HERE/bench_ours.csv"
    ref="$HERE/bench_torch.csv"
    echo "== bench_gpu (residual on dfdx + our kernels)"
    # shellcheck disable=SC2086
    "$HERE/bin/bench_gpu" --csv "$ours" ${BENCH_ARGS:-} || status=1
    echo "== bench_gpu_reference.py (PyTorch eager, same GPU)"
    # shellcheck disable=SC2086
    python3 "$HERE/bench_gpu_reference.py" --csv "$ref" ${BENCH_ARGS:-} || status=1
    if [[ -s "$ours" && -s "$ref" ]]; then
        python3 - "$ours" "$ref" <<'EOF'
import csv, sys
def load(p):
    return {(r["model"], r["batch"], r["mode"]): float(r["ms"]) for r in csv.DictReader(open(p))}
ours, ref = load(sys.argv[1]), load(sys.argv[2])
print(f"{'model':<10} {'batch':>5} {'mode':<6} {'residual ms':>12} {'torch ms':>10} {'ratio':>7}")
for key in sorted(ours):
    if key in ref:
        m, b, mode = key
        print(f"{m:<10} {b:>5} {mode:<6} {ours[key]:>12.1f} {ref[key]:>10.1f} {ours[key] / ref[key]:>6.2f}x")
print("ratio = residual time / PyTorch time (lower is better; 1.00x = parity)")
EOF
    fi
fi
exit $status
