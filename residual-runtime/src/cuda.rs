//! What the CUDA kernels share (feature `cuda`): the element types, kernel loading, the cuBLAS
//! handle, launch shapes, and `TensorStorage` for dfdx's `Cuda`.
//!
//! Kernels are CUDA C sources beside each op's `cuda.rs` (`conv/conv2d.cu`, ...), compiled at run
//! time with NVRTC the first time a process uses them (once per module, f32 and f64 together),
//! then loaded into each `CudaDevice` that asks (`has_func` / `load_ptx`). NVRTC rather than a
//! build script running nvcc: `cargo check --features cuda,ci-check` then needs no toolkit, the
//! PTX comes from the same libnvrtc that ships beside the binary (so its PTX ISA version matches
//! what the bundled toolkit and the machine's driver agree on), and the sources need no headers.
//!
//! Every launch and every cuBLAS call goes on the device's own stream (cudarc 0.9 gives each
//! `CudaDevice` the null stream of the primary context; dfdx's kernels use it too), so our ops
//! are ordered with dfdx's without synchronisation, and nothing comes back to the host.

use std::sync::{Arc, Mutex, OnceLock};

use cudarc::cublas::{sys::cublasOperation_t, CudaBlas, Gemm, GemmConfig};
use cudarc::driver::{
    sys::CUresult, CudaDevice, CudaFunction, DevicePtr, DevicePtrMut, DeviceRepr, DeviceSlice, DriverError,
    LaunchConfig, ValidAsZeroBits,
};
use cudarc::nvrtc::{compile_ptx_with_opts, CompileOptions, Ptx};
use dfdx::shapes::{Dtype, Shape};
use dfdx::tensor::{Cuda, CudaError, Gradients, OwnedTape, Storage, Tensor, ZerosTensor};
use dfdx::tensor_ops::{Backward, SumTo, TryMul};

use crate::storage::TensorStorage;

/// The element types with CUDA kernels: `f32` and `f64`. `SUFFIX` names their instantiation in
/// the `.cu` sources (`im2col_f32`, ...).
pub(crate) trait CudaElem: Dtype + DeviceRepr + ValidAsZeroBits {
    const SUFFIX: &'static str;
}
impl CudaElem for f32 {
    const SUFFIX: &'static str = "f32";
}
impl CudaElem for f64 {
    const SUFFIX: &'static str = "f64";
}

/// One `.cu` source: its module name, text, and every `extern "C"` function it defines.
pub(crate) struct KernelSource {
    pub module: &'static str,
    pub src: &'static str,
    pub functions: &'static [&'static str],
    ptx: OnceLock<Result<Ptx, String>>,
}

impl KernelSource {
    pub(crate) const fn new(module: &'static str, src: &'static str, functions: &'static [&'static str]) -> Self {
        KernelSource { module, src, functions, ptx: OnceLock::new() }
    }

    /// The PTX of this source, compiled once per process. Needs libnvrtc, not a GPU.
    pub(crate) fn ptx(&self) -> &Result<Ptx, String> {
        self.ptx.get_or_init(|| {
            let opts = CompileOptions {
                // Same as nvcc's defaults; kept explicit so the numerics are not left to a
                // future NVRTC's defaults. No `arch`: NVRTC targets its lowest architecture and
                // the driver compiles the PTX for the GPU it runs on.
                ftz: Some(false),
                prec_div: Some(true),
                prec_sqrt: Some(true),
                fmad: Some(true),
                ..Default::default()
            };
            compile_ptx_with_opts(self.src, opts).map_err(|e| format!("{e:?}"))
        })
    }

    /// The kernel `{base}_{E::SUFFIX}` on `dev`, loading the module into `dev` the first time.
    pub(crate) fn function<E: CudaElem>(
        &'static self,
        dev: &Arc<CudaDevice>,
        base: &str,
    ) -> Result<CudaFunction, CudaError> {
        let name = format!("{base}_{}", E::SUFFIX);
        if !dev.has_func(self.module, &name) {
            match self.ptx() {
                Ok(ptx) => dev.load_ptx(ptx.clone(), self.module, self.functions)?,
                Err(log) => {
                    // A broken kernel source is a bug in this crate; a missing
                    // libnvrtc-builtins is a broken install. Either way the log is the only
                    // useful message, and CudaError has no variant to carry it.
                    eprintln!("residual-runtime: NVRTC failed to compile `{}`:\n{log}", self.module);
                    return Err(DriverError(CUresult::CUDA_ERROR_INVALID_SOURCE).into());
                }
            }
        }
        dev.get_func(self.module, &name).ok_or_else(|| DriverError(CUresult::CUDA_ERROR_NOT_FOUND).into())
    }
}

/// One cuBLAS handle per device ordinal, created on first use and kept for the process.
///
/// dfdx's `Cuda` holds its own handle in a crate-private field. Every `CudaDevice` of an ordinal
/// shares the primary context and the null stream (cudarc 0.9), so one handle serves them all.
pub(crate) fn blas(dev: &Arc<CudaDevice>) -> Result<Arc<CudaBlas>, CudaError> {
    static HANDLES: Mutex<Vec<(usize, Arc<CudaBlas>)>> = Mutex::new(Vec::new());
    let mut handles = HANDLES.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
    if let Some((_, b)) = handles.iter().find(|(ordinal, _)| *ordinal == dev.ordinal()) {
        return Ok(b.clone());
    }
    let b = Arc::new(CudaBlas::new(dev.clone())?);
    handles.push((dev.ordinal(), b.clone()));
    Ok(b)
}

/// Row-major GEMM on cuBLAS (column-major): `c[m, n] = alpha * op(a) @ op(b) + beta * c`, with
/// `op(a)` `[m, k]` and `op(b)` `[k, n]`; `lda`, `ldb`, `ldc` are row strides of the matrices as
/// stored. Computed as the column-major `c^T = op(b)^T @ op(a)^T`.
#[allow(clippy::too_many_arguments)]
pub(crate) fn gemm_row_major<E, A, B, C>(
    blas: &CudaBlas,
    (trans_a, trans_b): (bool, bool),
    (m, n, k): (usize, usize, usize),
    alpha: E,
    (a, lda): (&A, usize),
    (b, ldb): (&B, usize),
    beta: E,
    (c, ldc): (&mut C, usize),
) -> Result<(), CudaError>
where
    CudaBlas: Gemm<E>,
    A: DevicePtr<E>,
    B: DevicePtr<E>,
    C: DevicePtrMut<E>,
{
    let op = |t: bool| {
        if t {
            cublasOperation_t::CUBLAS_OP_T
        } else {
            cublasOperation_t::CUBLAS_OP_N
        }
    };
    let cfg = GemmConfig {
        transa: op(trans_b),
        transb: op(trans_a),
        m: to_int(n)?,
        n: to_int(m)?,
        k: to_int(k)?,
        alpha,
        lda: to_int(ldb)?,
        ldb: to_int(lda)?,
        beta,
        ldc: to_int(ldc)?,
    };
    // SAFETY: the callers size every view for the dims and strides they pass.
    unsafe { blas.gemm(cfg, b, a, c) }?;
    Ok(())
}

fn to_int(v: usize) -> Result<std::ffi::c_int, CudaError> {
    std::ffi::c_int::try_from(v).map_err(|_| DriverError(CUresult::CUDA_ERROR_INVALID_VALUE).into())
}

/// A grid-stride launch over `n` elements: 256 threads a block, at most 65,536 blocks (the
/// kernels loop, so any `n` is covered).
pub(crate) fn launch_cfg(n: usize) -> LaunchConfig {
    const THREADS: usize = 256;
    let blocks = n.div_ceil(THREADS).clamp(1, 1 << 16);
    LaunchConfig { grid_dim: (blocks as u32, 1, 1), block_dim: (THREADS as u32, 1, 1), shared_mem_bytes: 0 }
}

/// Cuda's side of `TensorStorage`, with dfdx 0.13's public API only (it exposes no `Cuda`
/// tensor's buffer and no constructor from a `CudaSlice`; see `storage.rs`). Both directions stay
/// on the device:
///
/// - buffer -> tensor: the buffer goes into a `Gradients` under a zero tensor of the right shape,
///   and `Gradients::get` returns it as a tensor (one device-to-device copy);
/// - tensor -> buffer: the buffer is the gradient of `0.5 * sum(t^2)` with respect to `t`, which
///   is `t` itself, exactly (`2 * x * 0.5`; only `|x| > MAX / 2` would overflow). About five
///   passes over the data where a copy would be two: the price of dfdx's private `Tensorlike`.
macro_rules! impl_tensor_storage_cuda {
    ($e:ty) => {
        impl TensorStorage<$e> for Cuda {
            fn try_tensor_from_storage<S: Shape>(
                &self,
                buf: Self::Vec,
                shape: S,
            ) -> Result<Tensor<S, $e, Self>, Self::Err> {
                if buf.len() != shape.num_elements() {
                    return Err(CudaError::Cpu(dfdx::tensor::CpuError::WrongNumElements));
                }
                let holder: Tensor<S, $e, Self> = self.try_zeros_like(&shape)?;
                let mut grads = Gradients::<$e, Self>::leaky();
                *grads.get_or_alloc_mut(&holder)? = buf;
                Ok(grads.get(&holder))
            }

            fn try_storage_of<S: Shape, T>(
                &self,
                t: &Tensor<S, $e, Self, T>,
            ) -> Result<Self::Vec, Self::Err> {
                let traced = t.retaped::<OwnedTape<$e, Self>>();
                let half_sum_sq = traced.try_square()?.try_sum::<(), _>()?.try_mul(0.5 as $e)?;
                let mut grads = half_sum_sq.try_backward()?;
                let empty = self.try_alloc_len(0)?;
                Ok(std::mem::replace(grads.get_or_alloc_mut(t)?, empty))
            }
        }
    };
}
impl_tensor_storage_cuda!(f32);
impl_tensor_storage_cuda!(f64);

/// Test helper: NVRTC compiles `src` and the PTX defines every listed function. Needs libnvrtc
/// at run time, not a GPU, so it runs wherever the CUDA tests are built.
#[cfg(test)]
pub(crate) fn assert_compiles(src: &KernelSource) {
    match src.ptx() {
        Err(log) => panic!("NVRTC failed on `{}`:\n{log}", src.module),
        Ok(ptx) => {
            let text = ptx.to_src();
            for f in src.functions {
                assert!(text.contains(&format!(".entry {f}(")), "`{}` does not define `{f}`", src.module);
            }
        }
    }
}
