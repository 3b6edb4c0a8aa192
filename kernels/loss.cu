// Softmax cross-entropy with label smoothing: per-sample losses and the gradient.
//
// Layouts (C-contiguous, batch innermost):
//   z      (K, N)  logits, one column per sample
//   labels (N)     int64 classes in [0, K)
//   loss   (N)     per-sample loss; loss_mean takes their mean
//   grad   (K, N)  dloss/dz of the MEAN loss
// With smoothing s the target is q = (1 - s) * onehot + s / K; keep = 1 - s and
// spread = s / K come from the host (computed in double, as the NumPy backend does).
//   m = max_k z[k]; e_k = exp(z_k - m); S = sum_k e_k
//   loss[n] = log S - keep * (z[label] - m) - spread * sum_k (z_k - m)
//   grad[k, n] = (e_k / S - spread - keep * [k == label]) / N
// Subtracting m keeps exp finite for logits of any size. Compiled with --fmad=false, so
// the products round as the NumPy backend's do.
//
// Kernels and their thread-to-element maps:
//   softmax_cross_entropy_{f32,f64}  one thread per sample n (column of z); it loops over
//       the K classes three times (max, sums, gradient). K is the number of classes (10
//       for MNIST), so a column is cheap and the loop needs no cooperation between
//       threads. A label outside [0, K) gives a NaN loss and gradient column (the trainer
//       stops on a NaN loss).
//   loss_mean_{f32,f64}     ONE block of LOSS_THREADS threads: out[0] = mean of loss (N),
//       the threads striding over it and reducing in shared memory in a fixed order
//       (deterministic). N = 0 gives 0/0, a NaN, as NumPy's mean of nothing.
//   count_correct_{f32,f64} ONE block of LOSS_THREADS threads: correct[0] += the number
//       of columns n whose largest logit is at row labels[n]. The largest is the first
//       on ties, and a NaN counts as the largest, as NumPy's argmax has them.
// These two replace CuPy reductions in the training step: CuPy compiles a reduction the
// first time it meets its types, seconds of NVRTC inside the first epoch on a cold cache,
// while these compile with the module, when the backend starts.

#define LOSS_THREADS 256

template <typename T>
__device__ void softmax_cross_entropy(const T* z, const long long* labels, T* loss, T* grad,
                                      int K, int N, double keep, double spread) {
    int n = blockIdx.x * blockDim.x + threadIdx.x;
    if (n >= N) return;
    long long label = labels[n];
    if (label < 0 || label >= K) {
        T nan = T(0) / T(0);
        loss[n] = nan;
        for (int k = 0; k < K; ++k) grad[(long long)k * N + n] = nan;
        return;
    }
    T m = z[n];
    for (int k = 1; k < K; ++k) m = max(m, z[(long long)k * N + n]);
    T sum_exp = T(0), sum_shifted = T(0);
    for (int k = 0; k < K; ++k) {
        T shifted = z[(long long)k * N + n] - m;
        sum_exp += exp(shifted);
        sum_shifted += shifted;
    }
    T target = T(keep) * (z[label * N + n] - m);
    if (spread != 0.0) target = target + T(spread) * sum_shifted;
    loss[n] = log(sum_exp) - target;
    for (int k = 0; k < K; ++k) {
        long long o = (long long)k * N + n;
        T g = exp(z[o] - m) / sum_exp;
        if (spread != 0.0) g -= T(spread);
        if (k == label) g -= T(keep);
        grad[o] = g / T(N);
    }
}

// The sum of every thread's `value` over a block of LOSS_THREADS threads, through `shared`
// (LOSS_THREADS elements), in a fixed order (deterministic); the result is thread 0's.
template <typename S>
__device__ S block_sum(S value, S* shared) {
    shared[threadIdx.x] = value;
    __syncthreads();
    for (int half = blockDim.x / 2; half > 0; half /= 2) {
        if (threadIdx.x < half) shared[threadIdx.x] += shared[threadIdx.x + half];
        __syncthreads();
    }
    return shared[0];
}

template <typename T>
__device__ void loss_mean(const T* loss, T* out, int N) {
    __shared__ T partial[LOSS_THREADS];
    T acc = T(0);
    for (int n = threadIdx.x; n < N; n += blockDim.x) acc += loss[n];
    T sum = block_sum(acc, partial);
    if (threadIdx.x == 0) out[0] = sum / T(N);
}

template <typename T>
__device__ void count_correct(const T* z, const long long* labels, long long* correct,
                              int K, int N) {
    __shared__ long long partial[LOSS_THREADS];
    long long count = 0;
    for (int n = threadIdx.x; n < N; n += blockDim.x) {
        int best = 0;
        T top = z[n];
        for (int k = 1; k < K; ++k) {
            T v = z[(long long)k * N + n];
            if (top == top && (v > top || v != v)) {  // a NaN once found stays the largest
                top = v;
                best = k;
            }
        }
        count += labels[n] == best;
    }
    long long total = block_sum(count, partial);
    if (threadIdx.x == 0) correct[0] += total;
}

extern "C" __global__ void softmax_cross_entropy_f32(const float* z, const long long* labels,
                                                     float* loss, float* grad, int K, int N,
                                                     double keep, double spread) {
    softmax_cross_entropy<float>(z, labels, loss, grad, K, N, keep, spread);
}
extern "C" __global__ void softmax_cross_entropy_f64(const double* z, const long long* labels,
                                                     double* loss, double* grad, int K, int N,
                                                     double keep, double spread) {
    softmax_cross_entropy<double>(z, labels, loss, grad, K, N, keep, spread);
}
// Launch loss_mean and count_correct as ONE block of LOSS_THREADS (a power of two) threads.
extern "C" __global__ void loss_mean_f32(const float* loss, float* out, int N) {
    loss_mean<float>(loss, out, N);
}
extern "C" __global__ void loss_mean_f64(const double* loss, double* out, int N) {
    loss_mean<double>(loss, out, N);
}
extern "C" __global__ void count_correct_f32(const float* z, const long long* labels,
                                             long long* correct, int K, int N) {
    count_correct<float>(z, labels, correct, K, N);
}
extern "C" __global__ void count_correct_f64(const double* z, const long long* labels,
                                             long long* correct, int K, int N) {
    count_correct<double>(z, labels, correct, K, N);
}
