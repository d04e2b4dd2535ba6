// Conv2d helpers for the cuBLAS path (see conv/cuda.rs): im2col, col2im (gather, accumulating),
// and the two layout shuffles between NCHW and [C, batch, H*W]. Compiled at run time by NVRTC;
// no headers. `u64` matches Rust's `usize` (the op struct is `#[repr(C)]` of `usize`s).
typedef unsigned long long u64;
typedef long long i64;

struct Conv2dOp {
    u64 batch, in_channels, out_channels, groups, kernel, stride, padding, dilation,
        in_h, in_w, out_h, out_w;
};

#define GRID_STRIDE(i, n) \
    for (u64 i = (u64)blockIdx.x * blockDim.x + threadIdx.x; i < (n); i += (u64)blockDim.x * gridDim.x)

// col[(c * K + ky) * K + kx][b * OH*OW + oy * OW + ox] = in[b0 + b, c, oy*s - p + ky*d, ox*s - p + kx*d]
// (0 outside the image), for the nb images from b0: the columns of every image side by side, so
// one GEMM per group covers the whole chunk.
template <typename T>
__device__ void im2col(const Conv2dOp op, u64 b0, u64 nb, const T *in, T *col) {
    const u64 ohw = op.out_h * op.out_w;
    const u64 cols = nb * ohw;
    const u64 kk = op.kernel * op.kernel;
    const u64 n = op.in_channels * kk * cols;
    GRID_STRIDE(i, n) {
        const u64 l = i % cols, r = i / cols;
        const u64 kx = r % op.kernel, ky = (r / op.kernel) % op.kernel, c = r / kk;
        const u64 b = l / ohw, p = l % ohw, oy = p / op.out_w, ox = p % op.out_w;
        const i64 y = (i64)(oy * op.stride + ky * op.dilation) - (i64)op.padding;
        const i64 x = (i64)(ox * op.stride + kx * op.dilation) - (i64)op.padding;
        T v = 0;
        if (y >= 0 && y < (i64)op.in_h && x >= 0 && x < (i64)op.in_w) {
            v = in[(((b0 + b) * op.in_channels + c) * op.in_h + (u64)y) * op.in_w + (u64)x];
        }
        col[i] = v;
    }
}

// grad_in[b0 + b, c, y, x] += the sum of every column entry im2col copied from (c, y, x).
// One thread per input element, so no atomics and a fixed summation order.
template <typename T>
__device__ void col2im(const Conv2dOp op, u64 b0, u64 nb, const T *col, T *grad_in) {
    const u64 ohw = op.out_h * op.out_w;
    const u64 cols = nb * ohw;
    const u64 n = nb * op.in_channels * op.in_h * op.in_w;
    GRID_STRIDE(i, n) {
        const u64 x = i % op.in_w, y = (i / op.in_w) % op.in_h;
        const u64 c = (i / (op.in_w * op.in_h)) % op.in_channels;
        const u64 b = i / (op.in_w * op.in_h * op.in_channels);
        T acc = 0;
        for (u64 ky = 0; ky < op.kernel; ky++) {
            const i64 yy = (i64)(y + op.padding) - (i64)(ky * op.dilation);
            if (yy < 0 || yy % (i64)op.stride != 0) continue;
            const u64 oy = (u64)yy / op.stride;
            if (oy >= op.out_h) continue;
            for (u64 kx = 0; kx < op.kernel; kx++) {
                const i64 xx = (i64)(x + op.padding) - (i64)(kx * op.dilation);
                if (xx < 0 || xx % (i64)op.stride != 0) continue;
                const u64 ox = (u64)xx / op.stride;
                if (ox >= op.out_w) continue;
                acc += col[((c * op.kernel + ky) * op.kernel + kx) * cols + b * ohw + oy * op.out_w + ox];
            }
        }
        grad_in[(b0 * op.in_channels) * op.in_h * op.in_w + i] += acc;
    }
}

// dst[(b0 + b), c, p] = src[c, b, p]   (src: [channels, nb, plane]; dst: NCHW, overwritten)
template <typename T>
__device__ void cbp_to_nchw(u64 channels, u64 plane, u64 b0, u64 nb, const T *src, T *dst) {
    const u64 n = nb * channels * plane;
    GRID_STRIDE(i, n) {
        const u64 p = i % plane, c = (i / plane) % channels, b = i / (plane * channels);
        dst[b0 * channels * plane + i] = src[(c * nb + b) * plane + p];
    }
}

// dst[c, b, p] = src[(b0 + b), c, p]
template <typename T>
__device__ void nchw_to_cbp(u64 channels, u64 plane, u64 b0, u64 nb, const T *src, T *dst) {
    const u64 n = nb * channels * plane;
    GRID_STRIDE(i, n) {
        const u64 p = i % plane, b = (i / plane) % nb, c = i / (plane * nb);
        dst[i] = src[((b0 + b) * channels + c) * plane + p];
    }
}

#define CONV_KERNELS(T, SUF)                                                                      \
    extern "C" __global__ void im2col_##SUF(const Conv2dOp op, u64 b0, u64 nb, const T *in,     \
                                             T *col) {                                            \
        im2col<T>(op, b0, nb, in, col);                                                           \
    }                                                                                             \
    extern "C" __global__ void col2im_##SUF(const Conv2dOp op, u64 b0, u64 nb, const T *col,    \
                                             T *grad_in) {                                        \
        col2im<T>(op, b0, nb, col, grad_in);                                                      \
    }                                                                                             \
    extern "C" __global__ void cbp_to_nchw_##SUF(u64 channels, u64 plane, u64 b0, u64 nb,       \
                                                  const T *src, T *dst) {                         \
        cbp_to_nchw<T>(channels, plane, b0, nb, src, dst);                                        \
    }                                                                                             \
    extern "C" __global__ void nchw_to_cbp_##SUF(u64 channels, u64 plane, u64 b0, u64 nb,       \
                                                  const T *src, T *dst) {                         \
        nchw_to_cbp<T>(channels, plane, b0, nb, src, dst);                                        \
    }

CONV_KERNELS(float, f32)
CONV_KERNELS(double, f64)
