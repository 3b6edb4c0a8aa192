// The AdamW update, fused: one pass over p, g, m, v instead of the ten array operations
// of the generic version in fastlenet/backends/base.py, whose maths and rounding order it
// follows (compiled with --fmad=false so no multiply-add is contracted):
//   m = b1 m + (1 - b1) g;  v = b2 v + (1 - b2) g^2
//   p = p * decay                          decay = 1 - lr * wd  (1 when wd == 0)
//   p = p - step_size * (m / (sqrt(v / bias2) + eps))
//                                          step_size = lr / (1 - b1^t), bias2 = 1 - b2^t
// The scalars are computed on the host in double and rounded to T here, as NumPy rounds
// a Python float combined with a float32 array.
//
// Layout: p, g, m, v are C-contiguous arrays of the same shape, treated as flat (count).
// Thread-to-element map: one thread per element; every thread checks it is in range.

template <typename T>
__device__ void adam_update(T* p, const T* g, T* m, T* v, long long count,
                            double beta1, double beta2, double eps, double decay,
                            double step_size, double bias2) {
    long long idx = (long long)blockIdx.x * blockDim.x + threadIdx.x;
    if (idx >= count) return;
    T gi = g[idx];
    T mi = m[idx] * T(beta1) + T(1.0 - beta1) * gi;
    T vi = v[idx] * T(beta2) + T(1.0 - beta2) * (gi * gi);
    T pi = p[idx];
    if (decay != 1.0) pi *= T(decay);
    T denom = sqrt(vi / T(bias2)) + T(eps);
    pi -= T(step_size) * (mi / denom);
    m[idx] = mi;
    v[idx] = vi;
    p[idx] = pi;
}

#define ADAM_SCALARS double beta1, double beta2, double eps, double decay, double step_size, \
                     double bias2
#define ADAM_ARGS beta1, beta2, eps, decay, step_size, bias2

extern "C" __global__ void adam_update_f32(float* p, const float* g, float* m, float* v,
                                           long long count, ADAM_SCALARS) {
    adam_update<float>(p, g, m, v, count, ADAM_ARGS);
}
extern "C" __global__ void adam_update_f64(double* p, const double* g, double* m, double* v,
                                           long long count, ADAM_SCALARS) {
    adam_update<double>(p, g, m, v, count, ADAM_ARGS);
}
