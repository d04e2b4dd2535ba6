#!/usr/bin/env bash
# Builds the CUDA tests and the GPU benchmark (`--features cuda`, release, sm_90) on a machine
# without a GPU, and collects them into a self-contained folder for a GPU machine that has a
# driver (580+, CUDA 13) and Python/PyTorch but no cargo and no network:
#
#   out/cuda-bundle/
#     bin/          test binaries (tests/cuda.rs and the runtime's unit tests) + bench_gpu
#     lib/          libnvrtc(+builtins), libcublas, libcublasLt from the pinned CUDA 13.0 wheels
#                   (never libcuda: the driver's own is used)
#     bench_gpu_reference.py
#     run.sh        sets LD_LIBRARY_PATH, runs the tests, then both benchmarks and the ratio
#
# Usage: scripts/cuda/build.sh            (runs scripts/cuda/setup_toolchain.sh first if needed)
# Then copy out/cuda-bundle/ to the GPU machine and run `./run.sh` there (`./run.sh --help`).
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
cd "$ROOT"
BUNDLE="$ROOT/out/cuda-bundle"
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$ROOT/target/cuda}"

[[ -f .toolchain/cuda-env.sh ]] || scripts/cuda/setup_toolchain.sh
# shellcheck disable=SC1091
source .toolchain/cuda-env.sh

# Test binaries: cargo prints each as a JSON "compiler-artifact" with an "executable".
echo "build.sh: building CUDA tests and the benchmark (release, sm_${CUDA_COMPUTE_CAP})"
json=$(mktemp)
trap 'rm -f "$json"' EXIT
cargo test --release --features cuda --no-run --message-format=json --test cuda >"$json"
cargo test --release -p residual-runtime --features cuda --no-run --message-format=json --lib >>"$json"
cargo build --release --features cuda --example bench_gpu --message-format=json >>"$json"

rm -rf "$BUNDLE"
mkdir -p "$BUNDLE/bin" "$BUNDLE/lib"
python3 - "$json" "$BUNDLE/bin" <<'EOF'
import json, shutil, sys, os
src, dest = sys.argv[1], sys.argv[2]
names = {}
for line in open(src):
    try:
        msg = json.loads(line)
    except ValueError:
        continue
    if msg.get("reason") != "compiler-artifact" or not msg.get("executable"):
        continue
    t = msg["target"]
    kind = t["kind"][0]
    if kind == "example":
        name = t["name"]
    elif kind == "lib":
        name = "test_" + t["name"].replace("-", "_") + "_lib"
    else:
        name = "test_" + t["name"]
    shutil.copy2(msg["executable"], os.path.join(dest, name))
    names[name] = msg["executable"]
for n, p in sorted(names.items()):
    print(f"build.sh:   bin/{n}  <- {p}")
if not any(n == "bench_gpu" for n in names) or not any(n == "test_cuda" for n in names):
    sys.exit("build.sh: missing bench_gpu or the cuda test binary")
EOF

# The libraries the binaries load, apart from the driver (libcuda.so.1) and the C runtime.
# libnvrtc dlopens libnvrtc-builtins at run time, which ldd cannot see: copy it explicitly.
for so in libnvrtc.so.13 libnvrtc-builtins.so.13.0 libcublas.so.13 libcublasLt.so.13; do
    cp -L "$CUDA_ROOT/lib/$so" "$BUNDLE/lib/"
done
missing=$(LD_LIBRARY_PATH="$BUNDLE/lib" ldd "$BUNDLE"/bin/* | grep "not found" | grep -v "libcuda.so.1" | sort -u || true)
if [[ -n "$missing" ]]; then
    echo "build.sh: the binaries need libraries the bundle lacks:" >&2
    echo "$missing" >&2
    exit 1
fi
echo "build.sh: shared libraries each binary loads (libcuda.so.1 comes from the GPU machine's driver):"
echo "build.sh:   $(ldd "$BUNDLE/bin/bench_gpu" | awk '{print $1}' | sort -u | tr '\n' ' ')"

cp scripts/bench_gpu_reference.py "$BUNDLE/"
cp scripts/cuda/run_bundle.sh "$BUNDLE/run.sh"
chmod +x "$BUNDLE/run.sh"
cat >"$BUNDLE/BUILD_INFO.txt" <<EOF
commit: $(git rev-parse HEAD 2>/dev/null || echo unknown)$(git diff --quiet 2>/dev/null || echo " (with uncommitted changes)")
built: $(date -u +%Y-%m-%dT%H:%M:%SZ)
toolchain: $(nvcc --version | tail -n1), $(rustc --version)
target: sm_${CUDA_COMPUTE_CAP} (dfdx kernels, nvcc PTX); our kernels: NVRTC PTX at run time
EOF
du -sh "$BUNDLE"
echo "build.sh: done -> $BUNDLE (copy it to the GPU machine and run ./run.sh)"
