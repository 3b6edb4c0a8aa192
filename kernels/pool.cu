// Max and average pooling over size x size windows, forward and backward, and the fused
// ReLU + max-pool.
//
// Layouts (C-contiguous, batch innermost):
//   x   (C, H, W, N)     input;  dx like x
//   y   (C, OH, OW, N)   output; dy like y; OH = (H - size) / stride + 1, OW likewise
//   arg (C, OH, OW, N)   int: offset t = p*size + q, inside its window, of the max that
//                        receives the window's gradient; size*size marks a window whose
//                        max the fused ReLU zeroed (it matches no position: no gradient).
// Window (i, j) covers rows i*stride .. i*stride + size - 1 and columns likewise.
//
// Kernels and their thread-to-element maps (one thread per output element, n fastest):
//   maxpool2d_forward_{f32,f64}   thread (c, i, j, n) of y and arg. Scans its window in
//       row-major (p, q) order with a strict '>', so arg is the FIRST maximum (PyTorch's
//       rule, and the NumPy backend's); a NaN propagates to y as in numpy.maximum. With
//       relu != 0 it also applies the ReLU: max <= 0 gives y = 0 and arg = size*size.
//   maxpool2d_backward_{f32,f64}  thread (c, h, w, n) of dx, a gather over the windows
//       that contain (h, w) (several when stride < size): it adds dy of each window whose
//       arg is (h, w)'s offset in that window. No atomics, deterministic.
//   avgpool2d_forward_{f32,f64}   thread (c, i, j, n) of y: the window's sum in row-major
//       order, times 1 / size^2.
//   avgpool2d_backward_{f32,f64}  thread (c, h, w, n) of dx: sum over the windows that
//       contain (h, w) of dy * (1 / size^2).
// Every flat index is computed in long long; every thread checks it is in range.

// Decompose a flat index of a (C, R, S, N) array.
__device__ __forceinline__ void unflatten(long long idx, int R, int S, int N,
                                          int& c, int& r, int& s, int& n) {
    n = (int)(idx % N);
    s = (int)((idx / N) % S);
    r = (int)((idx / ((long long)N * S)) % R);
    c = (int)(idx / ((long long)N * S * R));
}

template <typename T>
__device__ void maxpool2d_forward(const T* x, T* y, int* arg, int C, int H, int W, int N,
                                  int OH, int OW, int size, int stride, int relu) {
    long long idx = (long long)blockIdx.x * blockDim.x + threadIdx.x;
    if (idx >= (long long)C * OH * OW * N) return;
    int c, i, j, n;
    unflatten(idx, OH, OW, N, c, i, j, n);
    const T* base = x + (((long long)c * H + (long long)i * stride) * W
                         + (long long)j * stride) * N + n;
    T best = base[0];
    int best_t = 0;
    for (int p = 0; p < size; ++p) {
        for (int q = 0; q < size; ++q) {
            T v = base[((long long)p * W + q) * N];
            if (v > best) {
                best = v;
                best_t = p * size + q;
            } else if (v != v) {  // NaN: y becomes NaN, arg stays (numpy.maximum's rule)
                best = v;
            }
        }
    }
    if (relu && best <= T(0)) {
        best = T(0);
        best_t = size * size;
    }
    y[idx] = best;
    arg[idx] = best_t;
}

template <typename T>
__device__ void maxpool2d_backward(const T* dy, const int* arg, T* dx, int C, int H, int W,
                                   int N, int OH, int OW, int size, int stride) {
    long long idx = (long long)blockIdx.x * blockDim.x + threadIdx.x;
    if (idx >= (long long)C * H * W * N) return;
    int c, h, w, n;
    unflatten(idx, H, W, N, c, h, w, n);
    T acc = T(0);
    // windows i with i*stride <= h < i*stride + size, from the last one down
    for (int i = min(h / stride, OH - 1); i >= 0 && i * stride + size > h; --i) {
        int p = h - i * stride;
        for (int j = min(w / stride, OW - 1); j >= 0 && j * stride + size > w; --j) {
            int q = w - j * stride;
            long long o = (((long long)c * OH + i) * OW + j) * N + n;
            if (arg[o] == p * size + q) acc += dy[o];
        }
    }
    dx[idx] = acc;
}

template <typename T>
__device__ void avgpool2d_forward(const T* x, T* y, int C, int H, int W, int N,
                                  int OH, int OW, int size, int stride) {
    long long idx = (long long)blockIdx.x * blockDim.x + threadIdx.x;
    if (idx >= (long long)C * OH * OW * N) return;
    int c, i, j, n;
    unflatten(idx, OH, OW, N, c, i, j, n);
    const T* base = x + (((long long)c * H + (long long)i * stride) * W
                         + (long long)j * stride) * N + n;
    T acc = T(0);
    for (int p = 0; p < size; ++p)
        for (int q = 0; q < size; ++q)
            acc += base[((long long)p * W + q) * N];
    y[idx] = acc * (T)(1.0 / (double)(size * size));  // numpy's rounding of 1/size^2
}

template <typename T>
__device__ void avgpool2d_backward(const T* dy, T* dx, int C, int H, int W, int N,
                                   int OH, int OW, int size, int stride) {
    long long idx = (long long)blockIdx.x * blockDim.x + threadIdx.x;
    if (idx >= (long long)C * H * W * N) return;
    int c, h, w, n;
    unflatten(idx, H, W, N, c, h, w, n);
    T share = (T)(1.0 / (double)(size * size));
    T acc = T(0);
    for (int i = min(h / stride, OH - 1); i >= 0 && i * stride + size > h; --i)
        for (int j = min(w / stride, OW - 1); j >= 0 && j * stride + size > w; --j)
            acc += dy[(((long long)c * OH + i) * OW + j) * N + n] * share;
    dx[idx] = acc;
}

#define POOL_DIMS int C, int H, int W, int N, int OH, int OW, int size, int stride
#define POOL_ARGS C, H, W, N, OH, OW, size, stride

extern "C" __global__ void maxpool2d_forward_f32(const float* x, float* y, int* arg, POOL_DIMS,
                                                 int relu) {
    maxpool2d_forward<float>(x, y, arg, POOL_ARGS, relu);
}
extern "C" __global__ void maxpool2d_forward_f64(const double* x, double* y, int* arg, POOL_DIMS,
                                                 int relu) {
    maxpool2d_forward<double>(x, y, arg, POOL_ARGS, relu);
}
extern "C" __global__ void maxpool2d_backward_f32(const float* dy, const int* arg, float* dx,
                                                  POOL_DIMS) {
    maxpool2d_backward<float>(dy, arg, dx, POOL_ARGS);
}
extern "C" __global__ void maxpool2d_backward_f64(const double* dy, const int* arg, double* dx,
                                                  POOL_DIMS) {
    maxpool2d_backward<double>(dy, arg, dx, POOL_ARGS);
}
extern "C" __global__ void avgpool2d_forward_f32(const float* x, float* y, POOL_DIMS) {
    avgpool2d_forward<float>(x, y, POOL_ARGS);
}
extern "C" __global__ void avgpool2d_forward_f64(const double* x, double* y, POOL_DIMS) {
    avgpool2d_forward<double>(x, y, POOL_ARGS);
}
extern "C" __global__ void avgpool2d_backward_f32(const float* dy, float* dx, POOL_DIMS) {
    avgpool2d_backward<float>(dy, dx, POOL_ARGS);
}
extern "C" __global__ void avgpool2d_backward_f64(const double* dy, double* dx, POOL_DIMS) {
    avgpool2d_backward<double>(dy, dx, POOL_ARGS);
}
