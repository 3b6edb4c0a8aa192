// Dense linear algebra for the fully connected layers and the bias gradients: the
// project's own GEMM, used instead of cuBLAS so that a training step can be captured
// whole in a CUDA graph (CuPy cannot capture cuBLAS calls), and a row sum.
//
// Layouts (C-contiguous):
//   gemm:    C (M, N) = op(A) @ op(B) (+ bias[m] on every column when bias is not null)
//            op(A) is (M, KD): A is stored (M, KD), or (KD, M) when trans_a != 0
//            op(B) is (KD, N): B is stored (KD, N), or (N, KD) when trans_b != 0
//            The linear layer (x, dy: (F, N) batch innermost; w: (OUT, IN)) uses it as
//            y = w @ x + b,  dx = w.T @ dy (trans_a),  dw = dy @ x.T (trans_b).
//   row_sum: out (R) = sum over the L columns of a (R, L) matrix: the linear layer's bias
//            gradient db = row_sum(dy (OUT, N)). (The conv's is folded into its weight
//            gradient, conv2d.cu.)
//
// Kernels and their thread-to-element maps:
//   gemm_{f32,f64}     one thread per element (s, m, n) of out (S, M, N), n fastest
//                      (coalesced along the rows of B and C): it sums, in order, the
//                      products of its split s, k in [s*chunk, min(KD, (s+1)*chunk)).
//                      S = ceil(KD / chunk) splits of the inner dimension give a product
//                      with few outputs and a long inner dimension (fc1's y = w @ x:
//                      15,360 outputs of 400 products) threads enough to fill a GPU, and
//                      each a short chain. With S = 1, out is C itself (bias added);
//                      else out is scratch and sum_splits finishes.
//   sum_splits_{f32,f64}  one thread per element (m, n) of C: the S partial sums of
//                      part (S, M, N) in order (deterministic), plus bias[m]. The conv
//                      weight gradient's slices (conv2d.cu) are summed by it too, M = 1.
//   row_sum_{f32,f64}  one BLOCK of ROW_THREADS threads per row: the threads stride over
//                      the row (coalesced) and reduce in shared memory in a fixed order
//                      (deterministic).
// Every flat index is computed in long long; every thread checks it is in range.

#define ROW_THREADS 256

template <typename T>
__device__ void gemm(const T* A, const T* B, const T* bias, T* out, int M, int N, int KD,
                     int trans_a, int trans_b, int chunk) {
    long long idx = (long long)blockIdx.x * blockDim.x + threadIdx.x;
    long long mn = (long long)M * N;
    int splits = max(1, (KD + chunk - 1) / chunk);  // KD = 0: one split of no products
    if (idx >= mn * splits) return;
    int s = (int)(idx / mn);
    int m = (int)((idx - s * mn) / N);
    int n = (int)(idx - s * mn - (long long)m * N);
    int k0 = s * chunk, k1 = min(KD, k0 + chunk);
    T acc = T(0);
    for (int k = k0; k < k1; ++k) {
        T a = trans_a ? A[(long long)k * M + m] : A[(long long)m * KD + k];
        T b = trans_b ? B[(long long)n * KD + k] : B[(long long)k * N + n];
        acc += a * b;
    }
    if (bias != nullptr) acc += bias[m];
    out[idx] = acc;
}

template <typename T>
__device__ void sum_splits(const T* part, const T* bias, T* Cm, int S, int M, int N) {
    long long idx = (long long)blockIdx.x * blockDim.x + threadIdx.x;
    long long mn = (long long)M * N;
    if (idx >= mn) return;
    T acc = T(0);
    for (int s = 0; s < S; ++s) acc += part[s * mn + idx];
    if (bias != nullptr) acc += bias[idx / N];
    Cm[idx] = acc;
}

template <typename T>
__device__ void row_sum(const T* a, T* out, int R, long long L) {
    __shared__ T partial[ROW_THREADS];
    int r = blockIdx.x;  // one block per row
    if (r >= R) return;  // uniform across the block
    T acc = T(0);
    for (long long e = threadIdx.x; e < L; e += blockDim.x) acc += a[(long long)r * L + e];
    partial[threadIdx.x] = acc;
    __syncthreads();
    for (int half = blockDim.x / 2; half > 0; half /= 2) {
        if (threadIdx.x < half) partial[threadIdx.x] += partial[threadIdx.x + half];
        __syncthreads();
    }
    if (threadIdx.x == 0) out[r] = partial[0];
}

extern "C" __global__ void gemm_f32(const float* A, const float* B, const float* bias,
                                    float* out, int M, int N, int KD, int trans_a, int trans_b,
                                    int chunk) {
    gemm<float>(A, B, bias, out, M, N, KD, trans_a, trans_b, chunk);
}
extern "C" __global__ void gemm_f64(const double* A, const double* B, const double* bias,
                                    double* out, int M, int N, int KD, int trans_a, int trans_b,
                                    int chunk) {
    gemm<double>(A, B, bias, out, M, N, KD, trans_a, trans_b, chunk);
}
extern "C" __global__ void sum_splits_f32(const float* part, const float* bias, float* Cm,
                                          int S, int M, int N) {
    sum_splits<float>(part, bias, Cm, S, M, N);
}
extern "C" __global__ void sum_splits_f64(const double* part, const double* bias, double* Cm,
                                          int S, int M, int N) {
    sum_splits<double>(part, bias, Cm, S, M, N);
}
// Launch with blockDim.x == ROW_THREADS (a power of two) and one block per row.
extern "C" __global__ void row_sum_f32(const float* a, float* out, int R, long long L) {
    row_sum<float>(a, out, R, L);
}
extern "C" __global__ void row_sum_f64(const double* a, double* out, int R, long long L) {
    row_sum<double>(a, out, R, L);
}
