// The AdamW update, fused: one pass over p, g, m, v instead of the ten array operations
// of the reference (fastlenet/backends/reference.py), whose maths and rounding order it
// follows (compiled with --fmad=false so no multiply-add is contracted):
//   m = b1 m + (1 - b1) g;  v = b2 v + (1 - b2) g^2
//   p = p * decay                          decay = 1 - lr * wd  (when decay_on != 0)
//   p = p - step_size * (m / (sqrt(v / bias2) + eps))
//                                          step_size = lr / (1 - b1^t), bias2 = 1 - b2^t
// The per-step factors (decay, step_size, bias2) are READ FROM DEVICE MEMORY, factors[0..2],
// written before each step by set_scalars (scalars.cu): a training step recorded as a
// CUDA graph replays this launch unchanged while the learning rate and t move on. The
// host computes them in double and stores them in T, as NumPy rounds a Python float
// combined with a float32 array; the constants b1, b2, eps are launch arguments.
//
// Layout: p, g, m, v are C-contiguous arrays of the same shape, treated as flat (count);
// for a model they are its whole ParameterBuffer (all parameters, one launch).
// Thread-to-element map: one thread per element; every thread checks it is in range.

template <typename T>
__device__ void adam_update(T* p, const T* g, T* m, T* v, long long count, const T* factors,
                            double beta1, double beta2, double eps, int decay_on) {
    long long idx = (long long)blockIdx.x * blockDim.x + threadIdx.x;
    if (idx >= count) return;
    T decay = factors[0], step_size = factors[1], bias2 = factors[2];
    T gi = g[idx];
    T mi = m[idx] * T(beta1) + T(1.0 - beta1) * gi;
    T vi = v[idx] * T(beta2) + T(1.0 - beta2) * (gi * gi);
    T pi = p[idx];
    if (decay_on) pi *= decay;
    T denom = sqrt(vi / bias2) + T(eps);
    pi -= step_size * (mi / denom);
    m[idx] = mi;
    v[idx] = vi;
    p[idx] = pi;
}

#define ADAM_CONSTANTS double beta1, double beta2, double eps, int decay_on
#define ADAM_ARGS beta1, beta2, eps, decay_on

extern "C" __global__ void adam_update_f32(float* p, const float* g, float* m, float* v,
                                           long long count, const float* factors,
                                           ADAM_CONSTANTS) {
    adam_update<float>(p, g, m, v, count, factors, ADAM_ARGS);
}
extern "C" __global__ void adam_update_f64(double* p, const double* g, double* m, double* v,
                                           long long count, const double* factors,
                                           ADAM_CONSTANTS) {
    adam_update<double>(p, g, m, v, count, factors, ADAM_ARGS);
}
