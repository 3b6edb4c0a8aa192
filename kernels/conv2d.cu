// Convolution (PyTorch's Conv2d cross-correlation), forward and backward.
//
// Layouts (C-contiguous, batch innermost, as every fastlenet backend):
//   x  (C, H, W, N)     input feature maps
//   w  (K, C, KH, KW)   weights (PyTorch's shape)
//   b  (K)              bias, or a null pointer
//   y  (K, OH, OW, N)   output; OH = (H + 2*pad - KH) / stride + 1, OW likewise
//   dy like y, dx like x, dw like w.
// Padding is implicit: a tap that falls outside the input reads zero and is skipped.
//
// Kernels and their thread-to-element maps (n is the fastest index, so neighbouring
// threads of a warp touch neighbouring addresses of x, y and dy, and all read the same
// weight):
//   conv2d_forward_{f32,f64}          thread (g, i, j, n): the outputs y[k, i, j, n] of a
//       group of `group` (at most CONV_GROUP) output channels k = g*group + kk, so that
//       each x value it loads serves them all (conv1 has one input channel: without
//       groups, six threads loaded every x value). Each output sums in the same order:
//       y[k,i,j,n] = b[k] + sum_{c,p,q} w[k,c,p,q] * x[c, i*stride-pad+p, j*stride-pad+q, n]
//   conv2d_backward_input_{f32,f64}   thread (c, h, w, n) of dx, a gather (no atomics,
//       so the result is deterministic): it sums over the (k, p, q) whose tap lands on
//       (h, w): h = i*stride - pad + p for an output row i in [0, OH), likewise w.
//       dx[c,h,w,n] = sum_{k,p,q} w[k,c,p,q] * dy[k, i, j, n]
//   conv2d_backward_weight_{f32,f64}  BLOCK (s, k, c, p, q): a dw element sums
//       OH*OW*N products, too many for one thread and, for a layer with few weights
//       (conv1: 150), too few elements to fill a GPU with one block each. So the output
//       rows are cut into S slices of `rows` rows; block (s, element) sums its slice's
//       (i, j, n) terms with WEIGHT_THREADS threads (j, n flattened, n fastest, coalesced)
//       and reduces them in shared memory in a fixed order into part[s, element]. The
//       blocks of (s, k, 0, 0, 0) also sum their slice of dy[k] into part[s, K*C*KH*KW + k],
//       the bias gradient's partial (the tap may fall in the padding; dy still counts).
//       dw[k,c,p,q] = sum_{i,j,n} dy[k,i,j,n] * x[c, i*stride-pad+p, j*stride-pad+q, n]
//       db[k]       = sum_{i,j,n} dy[k,i,j,n]
//       dense.cu's sum_splits then adds the S slices in order (deterministic) into one
//       (K*C*KH*KW + K) array, dw followed by db.
// Every index that can pass 2**31 (into x, y, dy, dx, part) is computed in long long;
// every thread checks it is in range.

#define WEIGHT_THREADS 256

#define CONV_GROUP 8

template <typename T>
__device__ void conv2d_forward(const T* x, const T* w, const T* b, T* y,
                               int C, int H, int W, int N, int K, int KH, int KW,
                               int OH, int OW, int stride, int pad, int group) {
    long long idx = (long long)blockIdx.x * blockDim.x + threadIdx.x;
    int groups = (K + group - 1) / group;
    long long total = (long long)groups * OH * OW * N;
    if (idx >= total) return;
    int n = (int)(idx % N);
    int j = (int)((idx / N) % OW);
    int i = (int)((idx / ((long long)N * OW)) % OH);
    int k0 = (int)(idx / ((long long)N * OW * OH)) * group;
    int kn = min(group, K - k0);
    long long w_step = (long long)C * KH * KW;  // from one output channel's weights to the next
    T acc[CONV_GROUP];
#pragma unroll
    for (int kk = 0; kk < CONV_GROUP; ++kk)
        acc[kk] = kk < kn && b != nullptr ? b[k0 + kk] : T(0);
    for (int c = 0; c < C; ++c) {
        for (int p = 0; p < KH; ++p) {
            int ih = i * stride - pad + p;
            if (ih < 0 || ih >= H) continue;
            for (int q = 0; q < KW; ++q) {
                int iw = j * stride - pad + q;
                if (iw < 0 || iw >= W) continue;
                T v = x[(((long long)c * H + ih) * W + iw) * N + n];
                const T* wk = w + (((long long)k0 * C + c) * KH + p) * KW + q;
#pragma unroll
                for (int kk = 0; kk < CONV_GROUP; ++kk)
                    if (kk < kn) acc[kk] += wk[kk * w_step] * v;
            }
        }
    }
#pragma unroll
    for (int kk = 0; kk < CONV_GROUP; ++kk)
        if (kk < kn) y[((((long long)k0 + kk) * OH + i) * OW + j) * N + n] = acc[kk];
}

template <typename T>
__device__ void conv2d_backward_input(const T* dy, const T* w, T* dx,
                                      int C, int H, int W, int N, int K, int KH, int KW,
                                      int OH, int OW, int stride, int pad) {
    long long idx = (long long)blockIdx.x * blockDim.x + threadIdx.x;
    long long total = (long long)C * H * W * N;
    if (idx >= total) return;
    int n = (int)(idx % N);
    int x = (int)((idx / N) % W);  // the input column (w names the weights)
    int h = (int)((idx / ((long long)N * W)) % H);
    int c = (int)(idx / ((long long)N * W * H));
    T acc = T(0);
    for (int p = 0; p < KH; ++p) {
        int ti = h + pad - p;  // = i * stride for the output row i whose tap p hits h
        if (ti < 0 || ti % stride != 0) continue;
        int i = ti / stride;
        if (i >= OH) continue;
        for (int q = 0; q < KW; ++q) {
            int tj = x + pad - q;
            if (tj < 0 || tj % stride != 0) continue;
            int j = tj / stride;
            if (j >= OW) continue;
            for (int k = 0; k < K; ++k) {
                acc += w[(((long long)k * C + c) * KH + p) * KW + q]
                     * dy[(((long long)k * OH + i) * OW + j) * N + n];
            }
        }
    }
    dx[idx] = acc;
}

template <typename T>
__device__ void conv2d_backward_weight(const T* dy, const T* x, T* part,
                                       int C, int H, int W, int N, int K, int KH, int KW,
                                       int OH, int OW, int stride, int pad, int rows) {
    __shared__ T partial[WEIGHT_THREADS];
    __shared__ T bias_partial[WEIGHT_THREADS];
    int wtotal = K * C * KH * KW;
    int widx = (int)(blockIdx.x % wtotal);  // the same in every thread: no
    int s = (int)(blockIdx.x / wtotal);     // __syncthreads is skipped by some
    int q = widx % KW;
    int p = (widx / KW) % KH;
    int c = (widx / (KW * KH)) % C;
    int k = widx / (KW * KH * C);
    bool bias = c == 0 && p == 0 && q == 0;
    int i0 = s * rows, i1 = min(OH, i0 + rows);
    int terms = OW * N;  // per output row
    T acc = T(0), bias_acc = T(0);
    for (int i = i0; i < i1; ++i) {
        int ih = i * stride - pad + p;
        bool row_in = ih >= 0 && ih < H;
        if (!row_in && !bias) continue;
        const T* dy_row = dy + ((long long)k * OH + i) * OW * N;
        const T* x_row = x + ((long long)c * H + ih) * W * N;
        for (int e = threadIdx.x; e < terms; e += blockDim.x) {
            int j = e / N;
            int n = e - j * N;
            T g = dy_row[e];
            int iw = j * stride - pad + q;
            if (row_in && iw >= 0 && iw < W) acc += g * x_row[(long long)iw * N + n];
            bias_acc += g;
        }
    }
    partial[threadIdx.x] = acc;
    bias_partial[threadIdx.x] = bias_acc;
    __syncthreads();
    for (int half = blockDim.x / 2; half > 0; half /= 2) {
        if (threadIdx.x < half) {
            partial[threadIdx.x] += partial[threadIdx.x + half];
            bias_partial[threadIdx.x] += bias_partial[threadIdx.x + half];
        }
        __syncthreads();
    }
    if (threadIdx.x == 0) {
        long long row = (long long)s * (wtotal + K);
        part[row + widx] = partial[0];
        if (bias) part[row + wtotal + k] = bias_partial[0];
    }
}

#define CONV_DIMS int C, int H, int W, int N, int K, int KH, int KW, int OH, int OW, \
                  int stride, int pad
#define CONV_ARGS C, H, W, N, K, KH, KW, OH, OW, stride, pad

// Launch with one thread per (group, i, j, n), group in [1, CONV_GROUP].
extern "C" __global__ void conv2d_forward_f32(const float* x, const float* w, const float* b,
                                              float* y, CONV_DIMS, int group) {
    conv2d_forward<float>(x, w, b, y, CONV_ARGS, group);
}
extern "C" __global__ void conv2d_forward_f64(const double* x, const double* w, const double* b,
                                              double* y, CONV_DIMS, int group) {
    conv2d_forward<double>(x, w, b, y, CONV_ARGS, group);
}
extern "C" __global__ void conv2d_backward_input_f32(const float* dy, const float* w, float* dx,
                                                     CONV_DIMS) {
    conv2d_backward_input<float>(dy, w, dx, CONV_ARGS);
}
extern "C" __global__ void conv2d_backward_input_f64(const double* dy, const double* w, double* dx,
                                                     CONV_DIMS) {
    conv2d_backward_input<double>(dy, w, dx, CONV_ARGS);
}
// Launch with blockDim.x == WEIGHT_THREADS (a power of two) and S * K*C*KH*KW blocks,
// S = ceil(OH / rows); part holds S * (K*C*KH*KW + K) values.
extern "C" __global__ void conv2d_backward_weight_f32(const float* dy, const float* x, float* part,
                                                      CONV_DIMS, int rows) {
    conv2d_backward_weight<float>(dy, x, part, CONV_ARGS, rows);
}
extern "C" __global__ void conv2d_backward_weight_f64(const double* dy, const double* x,
                                                      double* part, CONV_DIMS, int rows) {
    conv2d_backward_weight<double>(dy, x, part, CONV_ARGS, rows);
}
