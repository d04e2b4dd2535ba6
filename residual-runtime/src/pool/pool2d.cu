// Max and average 2D pooling, forward and backward, matching pool/cpu.rs exactly: the same
// window clipping, the same argmax (first maximum in row-major order; a NaN wins, a later NaN
// over an earlier one), the same summation order. Backward gathers per input element (no
// atomics), adding the windows' contributions in the CPU's (oy, ox) order.
typedef unsigned long long u64;
typedef long long i64;

struct Pool2dOp {
    u64 batch, channels, kernel, stride, padding, in_h, in_w, out_h, out_w;
};

#define GRID_STRIDE(i, n) \
    for (u64 i = (u64)blockIdx.x * blockDim.x + threadIdx.x; i < (n); i += (u64)blockDim.x * gridDim.x)

// A product rounded on its own: NVRTC runs with fmad on (cuda.rs), which would fuse
// `acc += g * inv_area` into one FMA (one rounding) where the CPU rounds the product, then the sum.
__device__ float mul_rn(float a, float b) { return __fmul_rn(a, b); }
__device__ double mul_rn(double a, double b) { return __dmul_rn(a, b); }

template <typename T> __device__ T neg_inf();
template <> __device__ float neg_inf<float>() { return -__int_as_float(0x7f800000); }
template <> __device__ double neg_inf<double>() { return -__longlong_as_double(0x7ff0000000000000LL); }

// [lo, hi) of the input rows (or columns) output index o covers, clipped to [0, len).
__device__ void window(u64 o, const Pool2dOp &op, u64 len, u64 &lo, u64 &hi) {
    const i64 start = (i64)(o * op.stride) - (i64)op.padding;
    const i64 end = start + (i64)op.kernel;
    lo = start < 0 ? 0 : (u64)start;
    hi = end < 0 ? 0 : ((u64)end < len ? (u64)end : len);
}

template <typename T>
__device__ u64 argmax(const T *plane, u64 w, u64 y0, u64 y1, u64 x0, u64 x1) {
    u64 best = y0 * w + x0;
    T m = neg_inf<T>();
    for (u64 y = y0; y < y1; y++) {
        for (u64 x = x0; x < x1; x++) {
            const T v = plane[y * w + x];
            if (v > m || v != v) {
                m = v;
                best = y * w + x;
            }
        }
    }
    return best;
}

template <typename T>
__device__ void max_fwd(const Pool2dOp op, const T *in, T *out) {
    const u64 n = op.batch * op.channels * op.out_h * op.out_w;
    GRID_STRIDE(i, n) {
        const u64 ox = i % op.out_w, oy = (i / op.out_w) % op.out_h, plane = i / (op.out_w * op.out_h);
        const T *p = in + plane * op.in_h * op.in_w;
        u64 y0, y1, x0, x1;
        window(oy, op, op.in_h, y0, y1);
        window(ox, op, op.in_w, x0, x1);
        out[i] = p[argmax<T>(p, op.in_w, y0, y1, x0, x1)];
    }
}

template <typename T>
__device__ void avg_fwd(const Pool2dOp op, const T *in, T *out) {
    const u64 n = op.batch * op.channels * op.out_h * op.out_w;
    const T inv_area = T(1) / T(op.kernel * op.kernel);
    GRID_STRIDE(i, n) {
        const u64 ox = i % op.out_w, oy = (i / op.out_w) % op.out_h, plane = i / (op.out_w * op.out_h);
        const T *p = in + plane * op.in_h * op.in_w;
        u64 y0, y1, x0, x1;
        window(oy, op, op.in_h, y0, y1);
        window(ox, op, op.in_w, x0, x1);
        T sum = 0;
        for (u64 y = y0; y < y1; y++)
            for (u64 x = x0; x < x1; x++) sum += p[y * op.in_w + x];
        out[i] = sum * inv_area;
    }
}

// The output rows (or columns) whose window covers input index v: [lo, hi).
__device__ void covering(u64 v, u64 out_len, const Pool2dOp &op, u64 &lo, u64 &hi) {
    // o * s - p <= v  and  v < o * s - p + k   <=>   (v + p - k) / s < o <= (v + p) / s
    const i64 top = (i64)(v + op.padding);
    const i64 first = top - (i64)op.kernel + 1;  // smallest o * s allowed
    lo = first <= 0 ? 0 : (u64)((first + (i64)op.stride - 1) / (i64)op.stride);
    const u64 last = (u64)top / op.stride;       // largest o allowed
    hi = last + 1 < out_len ? last + 1 : out_len;
}

template <typename T>
__device__ void max_bwd(const Pool2dOp op, const T *in, T *grad_in, const T *grad_out) {
    const u64 n = op.batch * op.channels * op.in_h * op.in_w;
    GRID_STRIDE(i, n) {
        const u64 x = i % op.in_w, y = (i / op.in_w) % op.in_h, plane = i / (op.in_w * op.in_h);
        const T *p = in + plane * op.in_h * op.in_w;
        const T *go = grad_out + plane * op.out_h * op.out_w;
        const u64 me = y * op.in_w + x;
        u64 oy0, oy1, ox0, ox1;
        covering(y, op.out_h, op, oy0, oy1);
        covering(x, op.out_w, op, ox0, ox1);
        T acc = grad_in[i];
        for (u64 oy = oy0; oy < oy1; oy++) {
            u64 y0, y1;
            window(oy, op, op.in_h, y0, y1);
            for (u64 ox = ox0; ox < ox1; ox++) {
                u64 x0, x1;
                window(ox, op, op.in_w, x0, x1);
                if (argmax<T>(p, op.in_w, y0, y1, x0, x1) == me) acc += go[oy * op.out_w + ox];
            }
        }
        grad_in[i] = acc;
    }
}

template <typename T>
__device__ void avg_bwd(const Pool2dOp op, T *grad_in, const T *grad_out) {
    const u64 n = op.batch * op.channels * op.in_h * op.in_w;
    const T inv_area = T(1) / T(op.kernel * op.kernel);
    GRID_STRIDE(i, n) {
        const u64 x = i % op.in_w, y = (i / op.in_w) % op.in_h, plane = i / (op.in_w * op.in_h);
        const T *go = grad_out + plane * op.out_h * op.out_w;
        u64 oy0, oy1, ox0, ox1;
        covering(y, op.out_h, op, oy0, oy1);
        covering(x, op.out_w, op, ox0, ox1);
        T acc = grad_in[i];
        for (u64 oy = oy0; oy < oy1; oy++)
            for (u64 ox = ox0; ox < ox1; ox++) acc += mul_rn(go[oy * op.out_w + ox], inv_area);
        grad_in[i] = acc;
    }
}

#define POOL_KERNELS(T, SUF)                                                                       \
    extern "C" __global__ void max_pool_fwd_##SUF(const Pool2dOp op, const T *in, T *out) {      \
        max_fwd<T>(op, in, out);                                                                   \
    }                                                                                              \
    extern "C" __global__ void avg_pool_fwd_##SUF(const Pool2dOp op, const T *in, T *out) {      \
        avg_fwd<T>(op, in, out);                                                                   \
    }                                                                                              \
    extern "C" __global__ void max_pool_bwd_##SUF(const Pool2dOp op, const T *in, T *grad_in,    \
                                                   const T *grad_out) {                            \
        max_bwd<T>(op, in, grad_in, grad_out);                                                     \
    }                                                                                              \
    extern "C" __global__ void avg_pool_bwd_##SUF(const Pool2dOp op, T *grad_in,                 \
                                                   const T *grad_out) {                            \
        avg_bwd<T>(op, grad_in, grad_out);                                                         \
    }

POOL_KERNELS(float, f32)
POOL_KERNELS(double, f64)
