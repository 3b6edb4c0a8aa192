// Batch normalisation, forward and backward, of the rows (channels) of x.
//
// Layouts (C-contiguous):
//   x, y, dy, dx   (C, M)   one row per channel: a (C, H, W, N) map or an (F, N) batch
//   gamma, beta, running_mean, running_var, mean, inv_std, dgamma, dbeta   (C)
// Maths (base.Backend.batchnorm_forward / _backward): xhat = (x - mean) * inv_std,
// y = gamma * xhat + beta; training uses the row's mean and biased variance and updates
// the running estimates in place (the variance unbiased, times M / (M - 1)); eval uses
// the running estimates. Backward: dbeta = sum dy, dgamma = sum dy * xhat, and
// dx = gamma * inv_std * (dy - dbeta / M - xhat * dgamma / M) (training) or
// gamma * inv_std * dy (eval).
//
// Kernels and their thread-to-element maps:
//   batchnorm_stats_{f32,f64}           one BLOCK of BN_THREADS threads per channel c:
//       training: the threads stride over the row and their sums are added in thread
//       order (deterministic), twice: the sum, then the squares about the mean (no
//       cancellation); thread 0 writes mean[c], inv_std[c] and the running estimates.
//       eval: thread 0 copies running_mean[c] and takes inv_std from running_var[c].
//   batchnorm_forward_{f32,f64}         one thread per element (c, m) of y.
//   batchnorm_backward_reduce_{f32,f64} one BLOCK of BN_THREADS threads per channel c:
//       dbeta[c] and dgamma[c], both sums in one sweep, reduced as above.
//   batchnorm_backward_input_{f32,f64}  one thread per element (c, m) of dx.
// Sums run in double for both dtypes. Every flat index is computed in long long; every
// thread checks it is in range.

#define BN_THREADS 256

// The sum of every thread's `a` and of every thread's `b` over the block, returned to
// all threads: thread 0 adds the block's values in thread order (deterministic; a few
// hundred additions against a row of 10^4-10^5 values). Every thread of the block must
// call it.
__device__ void block_sum2(double& a, double& b) {
    __shared__ double part_a[BN_THREADS];
    __shared__ double part_b[BN_THREADS];
    __shared__ double totals[2];
    part_a[threadIdx.x] = a;
    part_b[threadIdx.x] = b;
    __syncthreads();
    if (threadIdx.x == 0) {
        double sum_a = 0.0, sum_b = 0.0;
        for (unsigned t = 0; t < blockDim.x; ++t) {
            sum_a += part_a[t];
            sum_b += part_b[t];
        }
        totals[0] = sum_a;
        totals[1] = sum_b;
    }
    __syncthreads();
    a = totals[0];
    b = totals[1];
    __syncthreads();  // every thread has read the totals before the arrays are reused
}

template <typename T>
__device__ void batchnorm_stats(const T* x, T* running_mean, T* running_var, T* mean,
                                T* inv_std, int C, long long M, int training, double momentum,
                                double eps) {
    int c = blockIdx.x;  // one block per channel
    if (c >= C) return;  // uniform across the block
    if (!training) {
        if (threadIdx.x == 0) {
            mean[c] = running_mean[c];
            inv_std[c] = T(1.0 / sqrt((double)running_var[c] + eps));
        }
        return;
    }
    const T* row = x + (long long)c * M;
    double s = 0.0, unused = 0.0;
    for (long long e = threadIdx.x; e < M; e += blockDim.x) s += (double)row[e];
    block_sum2(s, unused);
    double mu = s / (double)M;
    double ss = 0.0;
    unused = 0.0;
    for (long long e = threadIdx.x; e < M; e += blockDim.x) {
        double d = (double)row[e] - mu;
        ss += d * d;
    }
    block_sum2(ss, unused);
    if (threadIdx.x == 0) {
        double var = ss / (double)M;
        mean[c] = T(mu);
        inv_std[c] = T(1.0 / sqrt(var + eps));
        running_mean[c] = T((1.0 - momentum) * (double)running_mean[c] + momentum * mu);
        running_var[c] = T((1.0 - momentum) * (double)running_var[c]
                           + momentum * var * (double)M / (double)(M - 1));
    }
}

template <typename T>
__device__ void batchnorm_forward(const T* x, const T* mean, const T* inv_std, const T* gamma,
                                  const T* beta, T* y, int C, long long M) {
    long long idx = (long long)blockIdx.x * blockDim.x + threadIdx.x;
    if (idx >= (long long)C * M) return;
    int c = (int)(idx / M);
    y[idx] = (x[idx] - mean[c]) * (gamma[c] * inv_std[c]) + beta[c];
}

template <typename T>
__device__ void batchnorm_backward_reduce(const T* x, const T* dy, const T* mean,
                                          const T* inv_std, T* dgamma, T* dbeta, int C,
                                          long long M) {
    int c = blockIdx.x;  // one block per channel
    if (c >= C) return;  // uniform across the block
    const T* row = x + (long long)c * M;
    const T* grad = dy + (long long)c * M;
    double mu = (double)mean[c];
    double sdy = 0.0, sdyx = 0.0;
    for (long long e = threadIdx.x; e < M; e += blockDim.x) {
        double g = (double)grad[e];
        sdy += g;
        sdyx += g * ((double)row[e] - mu);
    }
    block_sum2(sdy, sdyx);
    if (threadIdx.x == 0) {
        dbeta[c] = T(sdy);
        dgamma[c] = T(sdyx * (double)inv_std[c]);
    }
}

template <typename T>
__device__ void batchnorm_backward_input(const T* x, const T* dy, const T* mean,
                                         const T* inv_std, const T* gamma, const T* dgamma,
                                         const T* dbeta, T* dx, int C, long long M,
                                         int training) {
    long long idx = (long long)blockIdx.x * blockDim.x + threadIdx.x;
    if (idx >= (long long)C * M) return;
    int c = (int)(idx / M);
    T scale = gamma[c] * inv_std[c];
    if (training) {
        T xhat = (x[idx] - mean[c]) * inv_std[c];
        dx[idx] = scale * (dy[idx] - dbeta[c] / T(M) - xhat * (dgamma[c] / T(M)));
    } else {
        dx[idx] = scale * dy[idx];
    }
}

// Launch with blockDim.x == BN_THREADS (a power of two) and one block per channel.
extern "C" __global__ void batchnorm_stats_f32(const float* x, float* running_mean,
                                               float* running_var, float* mean, float* inv_std,
                                               int C, long long M, int training, double momentum,
                                               double eps) {
    batchnorm_stats<float>(x, running_mean, running_var, mean, inv_std, C, M, training,
                           momentum, eps);
}
extern "C" __global__ void batchnorm_stats_f64(const double* x, double* running_mean,
                                               double* running_var, double* mean,
                                               double* inv_std, int C, long long M, int training,
                                               double momentum, double eps) {
    batchnorm_stats<double>(x, running_mean, running_var, mean, inv_std, C, M, training,
                            momentum, eps);
}
extern "C" __global__ void batchnorm_forward_f32(const float* x, const float* mean,
                                                 const float* inv_std, const float* gamma,
                                                 const float* beta, float* y, int C, long long M) {
    batchnorm_forward<float>(x, mean, inv_std, gamma, beta, y, C, M);
}
extern "C" __global__ void batchnorm_forward_f64(const double* x, const double* mean,
                                                 const double* inv_std, const double* gamma,
                                                 const double* beta, double* y, int C,
                                                 long long M) {
    batchnorm_forward<double>(x, mean, inv_std, gamma, beta, y, C, M);
}
// Launch with blockDim.x == BN_THREADS (a power of two) and one block per channel.
extern "C" __global__ void batchnorm_backward_reduce_f32(const float* x, const float* dy,
                                                         const float* mean, const float* inv_std,
                                                         float* dgamma, float* dbeta, int C,
                                                         long long M) {
    batchnorm_backward_reduce<float>(x, dy, mean, inv_std, dgamma, dbeta, C, M);
}
extern "C" __global__ void batchnorm_backward_reduce_f64(const double* x, const double* dy,
                                                         const double* mean,
                                                         const double* inv_std, double* dgamma,
                                                         double* dbeta, int C, long long M) {
    batchnorm_backward_reduce<double>(x, dy, mean, inv_std, dgamma, dbeta, C, M);
}
extern "C" __global__ void batchnorm_backward_input_f32(const float* x, const float* dy,
                                                        const float* mean, const float* inv_std,
                                                        const float* gamma, const float* dgamma,
                                                        const float* dbeta, float* dx, int C,
                                                        long long M, int training) {
    batchnorm_backward_input<float>(x, dy, mean, inv_std, gamma, dgamma, dbeta, dx, C, M,
                                    training);
}
extern "C" __global__ void batchnorm_backward_input_f64(const double* x, const double* dy,
                                                        const double* mean,
                                                        const double* inv_std,
                                                        const double* gamma,
                                                        const double* dgamma,
                                                        const double* dbeta, double* dx, int C,
                                                        long long M, int training) {
    batchnorm_backward_input<double>(x, dy, mean, inv_std, gamma, dgamma, dbeta, dx, C, M,
                                     training);
}
