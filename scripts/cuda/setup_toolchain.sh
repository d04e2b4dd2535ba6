#!/usr/bin/env bash
# Installs a CUDA 13.0 build toolchain into `.toolchain/cuda/` (git-ignored), from NVIDIA's PyPI
# wheels, on a machine with no GPU and no system CUDA. Enough to build `--features cuda`:
#
#   nvcc + cicc + ptxas + headers   dfdx's build.rs compiles its .cu files to PTX with nvcc
#   cuda.h                          cudarc's build.rs looks for `$CUDA_ROOT/include/cuda.h`
#   libnvrtc, libcublas(Lt)         cudarc links them dynamically (they are also bundled to run)
#   lib/stubs/libcuda.so            link-time stub of the driver (soname libcuda.so.1); the GPU
#                                   machine's own driver library is used at run time
#   fake-bin/nvidia-smi             dfdx's build.rs calls `nvidia-smi` before it reads
#                                   CUDA_COMPUTE_CAP; the shim answers "9.0" (H100/H200)
#
# Versions are pinned to the CUDA 13.0 line on purpose: the GPU machine runs driver 580, which is
# CUDA 13.0. PTX from a newer nvcc/nvrtc (13.1+ writes PTX ISA > 9.0) would fail to load there with
# CUDA_ERROR_UNSUPPORTED_PTX_VERSION, and cuBLAS 13.x > 13.0 only runs under minor-version
# compatibility. Override with CUDA_WHEEL_VERSION / CUBLAS_WHEEL_VERSION at your own risk.
#
# Usage:  scripts/cuda/setup_toolchain.sh          # idempotent; ~700 MB download, ~2 GB on disk
#         source .toolchain/cuda-env.sh            # PATH, CUDA_ROOT, LIBRARY_PATH, CUDA_COMPUTE_CAP
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
TC="$ROOT/.toolchain"
CUDA="$TC/cuda"
WHL="$ROOT/.whl"            # wheel cache (git-ignored), kept so a rerun downloads nothing

CUDA_WHEEL_VERSION="${CUDA_WHEEL_VERSION:-13.0.88}"
RUNTIME_WHEEL_VERSION="${RUNTIME_WHEEL_VERSION:-13.0.96}"
CCCL_WHEEL_VERSION="${CCCL_WHEEL_VERSION:-13.0.85}"
CUBLAS_WHEEL_VERSION="${CUBLAS_WHEEL_VERSION:-13.0.2.14}"
COMPUTE_CAP="${CUDA_COMPUTE_CAP:-90}"

PY="${PYTHON:-python3}"

wheels=(
    "nvidia-cuda-nvcc==$CUDA_WHEEL_VERSION"     # nvcc, ptxas, fatbinary, nvlink
    "nvidia-nvvm==$CUDA_WHEEL_VERSION"          # cicc + libdevice (nvcc's front end)
    "nvidia-cuda-crt==$CUDA_WHEEL_VERSION"      # crt/*.h that nvcc's preprocessing needs
    "nvidia-cuda-runtime==$RUNTIME_WHEEL_VERSION" # cuda.h, cuda_runtime.h, libcudart
    "nvidia-cuda-cccl==$CCCL_WHEEL_VERSION"     # cuda/std, nv/target headers
    "nvidia-cuda-nvrtc==$CUDA_WHEEL_VERSION"    # libnvrtc + builtins (kernels compiled at run time)
    "nvidia-cublas==$CUBLAS_WHEEL_VERSION"      # libcublas, libcublasLt
)

stamp="$CUDA/.installed"
want="${wheels[*]} cap=$COMPUTE_CAP"
if [[ -f "$stamp" && "$(cat "$stamp")" == "$want" ]]; then
    echo "setup_toolchain: $CUDA is up to date ($want)"
else
    mkdir -p "$WHL"
    echo "setup_toolchain: downloading ${#wheels[@]} wheels into $WHL"
    "$PY" -m pip download --no-deps --only-binary=:all: --quiet -d "$WHL" "${wheels[@]}"

    rm -rf "$CUDA"
    mkdir -p "$CUDA"
    # Every wheel unpacks to nvidia/cu13/{bin,include,lib,nvvm}; merge them into one root, the
    # layout nvcc.profile expects (TOP = bin/..).
    for spec in "${wheels[@]}"; do
        name="${spec%%==*}"; ver="${spec##*==}"
        file=$(ls "$WHL"/"${name//-/_}"-"$ver"-*.whl | head -n1)
        echo "setup_toolchain: unpacking $(basename "$file")"
        "$PY" - "$file" "$CUDA" <<'EOF'
import sys, zipfile, os, stat
whl, dest = sys.argv[1], sys.argv[2]
prefix = "nvidia/cu13/"
with zipfile.ZipFile(whl) as z:
    for info in z.infolist():
        if not info.filename.startswith(prefix) or info.is_dir():
            continue
        rel = info.filename[len(prefix):]
        if rel.startswith(".metadata/") or rel.endswith("__init__.py") or "__pycache__" in rel:
            continue
        out = os.path.join(dest, rel)
        os.makedirs(os.path.dirname(out), exist_ok=True)
        with z.open(info) as src, open(out, "wb") as dst:
            dst.write(src.read())
        mode = (info.external_attr >> 16) & 0o777
        if mode:
            os.chmod(out, mode)
EOF
    done
    # Wheels lose the executable bit on some pip versions; nvcc's helpers must be runnable.
    chmod +x "$CUDA"/bin/* "$CUDA"/nvvm/bin/* 2>/dev/null || true

    # Unversioned names for the linker (`-lcublas` etc.); lib64 as some tools look there.
    (
        cd "$CUDA/lib"
        for so in libcudart.so.13 libnvrtc.so.13 libcublas.so.13 libcublasLt.so.13 libnvvm.so.4; do
            [[ -f "$so" ]] && ln -sf "$so" "${so%%.so*}.so"
        done
    )
    ln -sfn lib "$CUDA/lib64"

    # Link-time stub of the driver library. cudarc 0.9 links `-lcuda` (no dynamic loading), and
    # the wheels ship no stub, so export every `cu*` symbol cudarc's bindings declare. The soname
    # is libcuda.so.1, so the binary loads the real driver library on the GPU machine.
    mkdir -p "$CUDA/lib/stubs"
    cudarc_sys=$(ls -d "${CARGO_HOME:-$HOME/.cargo}"/registry/src/*/cudarc-0.9.*/src/driver/sys.rs 2>/dev/null | tail -n1 || true)
    stub_c="$CUDA/lib/stubs/libcuda_stub.c"
    {
        echo "/* Generated by scripts/cuda/setup_toolchain.sh: link-time stub, never loaded. */"
        if [[ -n "$cudarc_sys" ]]; then
            grep -o 'pub fn cu[A-Za-z0-9_]*' "$cudarc_sys" | sed 's/pub fn //' | sort -u
        fi
        # Fallback list if the cudarc source is not in the cargo registry yet.
        grep -o '^CUresult CUDAAPI cu[A-Za-z0-9_]*' "$CUDA/include/cuda.h" | sed 's/.* //' | sort -u
    } | awk 'NR==1 {print; next}
             /^cuGetError(String|Name)$/ {next}
             !seen[$0]++ {print "int " $0 "(void) { return 100; /* CUDA_ERROR_NO_DEVICE */ }"}' > "$stub_c"
    # The error-string calls must answer (cudarc formats errors with them, even in a panic).
    cat >> "$stub_c" <<'EOF_C'
int cuGetErrorString(int err, const char **s) { (void)err; *s = "no CUDA driver (link-time stub libcuda)"; return 0; }
int cuGetErrorName(int err, const char **s) { (void)err; *s = "CUDA_ERROR_NO_DEVICE"; return 0; }
EOF_C
    # `#define cuFoo cuFoo_v2` in cuda.h does not matter here: the stub exports both spellings
    # whenever cudarc's bindings name them.
    cc -shared -fPIC -o "$CUDA/lib/stubs/libcuda.so" -Wl,-soname,libcuda.so.1 "$stub_c"
    echo "setup_toolchain: libcuda stub exports $(grep -c '^int ' "$stub_c") symbols"

    # dfdx 0.13's build.rs runs `nvidia-smi --query-gpu=compute_cap --format=csv` unconditionally
    # (and only then reads CUDA_COMPUTE_CAP). On a GPU-less machine, answer for it.
    mkdir -p "$TC/fake-bin"
    cat > "$TC/fake-bin/nvidia-smi" <<EOF
#!/bin/sh
# Shim for dfdx's build.rs on machines without a GPU (scripts/cuda/setup_toolchain.sh).
printf 'compute_cap\n%s.%s\n' "${COMPUTE_CAP%?}" "${COMPUTE_CAP#${COMPUTE_CAP%?}}"
EOF
    chmod +x "$TC/fake-bin/nvidia-smi"

    echo "$want" > "$stamp"
fi

# The environment for builds, written fresh each time (it holds absolute paths).
cat > "$TC/cuda-env.sh" <<EOF
# Source this before building with \`--features cuda\` (written by scripts/cuda/setup_toolchain.sh).
export CUDA_ROOT="$CUDA"
export CUDA_PATH="$CUDA"
export CUDA_TOOLKIT_ROOT_DIR="$CUDA"
export CUDA_COMPUTE_CAP="$COMPUTE_CAP"
export PATH="$CUDA/bin:$CUDA/nvvm/bin:\$PATH"
# The nvidia-smi shim only where no real one exists (a GPU build machine keeps its own).
command -v nvidia-smi >/dev/null 2>&1 || export PATH="$TC/fake-bin:\$PATH"
export LIBRARY_PATH="$CUDA/lib:$CUDA/lib/stubs\${LIBRARY_PATH:+:\$LIBRARY_PATH}"
# Let build scripts that run nvcc-built tools find the toolkit's libraries (never libcuda's stub).
export LD_LIBRARY_PATH="$CUDA/lib\${LD_LIBRARY_PATH:+:\$LD_LIBRARY_PATH}"
EOF

# Smoke test: nvcc can target sm_$COMPUTE_CAP and compile a kernel to PTX.
# shellcheck disable=SC1091
source "$TC/cuda-env.sh"
nvcc --version | tail -n2
nvcc --list-gpu-code | grep -qx "sm_$COMPUTE_CAP" || { echo "nvcc cannot target sm_$COMPUTE_CAP" >&2; exit 1; }
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
printf '%s\n' '#include <cuda_fp16.h>' 'extern "C" __global__ void k(float *x) { x[threadIdx.x] += 1.0f; }' > "$tmp/k.cu"
nvcc --gpu-architecture="sm_$COMPUTE_CAP" --ptx -o "$tmp/k.ptx" "$tmp/k.cu"
grep -q '^.version' "$tmp/k.ptx" && echo "setup_toolchain: nvcc OK ($(grep '^.version' "$tmp/k.ptx"), sm_$COMPUTE_CAP)"
echo "setup_toolchain: done. Now: source .toolchain/cuda-env.sh"
