// The ResNet paper's option-A shortcut: out[b, pad_front + c, y, x] = in[b, c, y*s, x*s], every
// other output channel 0. Backward adds the kept pixels' gradients; each input pixel receives at
// most one, so one thread per kept pixel and no atomics.
typedef unsigned long long u64;

struct SubsamplePadOp {
    u64 batch, in_channels, out_channels, pad_front, stride, in_h, in_w, out_h, out_w;
};

#define GRID_STRIDE(i, n) \
    for (u64 i = (u64)blockIdx.x * blockDim.x + threadIdx.x; i < (n); i += (u64)blockDim.x * gridDim.x)

template <typename T>
__device__ void fwd(const SubsamplePadOp op, const T *in, T *out) {
    const u64 n = op.batch * op.out_channels * op.out_h * op.out_w;
    GRID_STRIDE(i, n) {
        const u64 x = i % op.out_w, y = (i / op.out_w) % op.out_h;
        const u64 oc = (i / (op.out_w * op.out_h)) % op.out_channels;
        const u64 b = i / (op.out_w * op.out_h * op.out_channels);
        T v = 0;
        if (oc >= op.pad_front && oc - op.pad_front < op.in_channels) {
            const u64 c = oc - op.pad_front;
            v = in[((b * op.in_channels + c) * op.in_h + y * op.stride) * op.in_w + x * op.stride];
        }
        out[i] = v;
    }
}

template <typename T>
__device__ void bwd(const SubsamplePadOp op, T *grad_in, const T *grad_out) {
    const u64 n = op.batch * op.in_channels * op.out_h * op.out_w;
    GRID_STRIDE(i, n) {
        const u64 x = i % op.out_w, y = (i / op.out_w) % op.out_h;
        const u64 c = (i / (op.out_w * op.out_h)) % op.in_channels;
        const u64 b = i / (op.out_w * op.out_h * op.in_channels);
        const T g = grad_out[((b * op.out_channels + op.pad_front + c) * op.out_h + y) * op.out_w + x];
        grad_in[((b * op.in_channels + c) * op.in_h + y * op.stride) * op.in_w + x * op.stride] += g;
    }
}

#define SHORTCUT_KERNELS(T, SUF)                                                                   \
    extern "C" __global__ void subsample_pad_fwd_##SUF(const SubsamplePadOp op, const T *in,     \
                                                        T *out) {                                  \
        fwd<T>(op, in, out);                                                                       \
    }                                                                                              \
    extern "C" __global__ void subsample_pad_bwd_##SUF(const SubsamplePadOp op, T *grad_in,      \
                                                        const T *grad_out) {                       \
        bwd<T>(op, grad_in, grad_out);                                                             \
    }

SHORTCUT_KERNELS(float, f32)
SHORTCUT_KERNELS(double, f64)
