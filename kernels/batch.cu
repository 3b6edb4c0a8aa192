// A training batch gathered from the training set and laid out batch innermost, images
// and labels together, in one launch (the reference's x[index], its transposed copy and
// y[index] are three).
//
// Layout: x is the training set, C-contiguous (N, F) with F = C*H*W values per sample;
// y (N) int64 labels, or a null pointer for none; index (B) int64 sample numbers, where
// a negative one counts from the end and others wrap around, as CuPy's take does. Out:
// xb C-contiguous (F, B), i.e. (C, H, W, B); yb (B) int64 (unused when y is null).
// Thread-to-element map: one thread per element of xb, t = f * B + b, so the writes are
// contiguous; the threads with f == 0 also copy the labels. Every thread checks its range.

template <typename T>
__device__ void gather_batch(const T* x, const long long* y, const long long* index, T* xb,
                             long long* yb, long long N, long long F, int B) {
    long long t = (long long)blockIdx.x * blockDim.x + threadIdx.x;
    if (t >= F * B) return;
    int b = (int)(t % B);
    long long f = t / B;
    long long i = index[b] % N;
    if (i < 0) i += N;
    xb[t] = x[i * F + f];
    if (f == 0 && y) yb[b] = y[i];
}

#define GATHER_ARGS const long long* y, const long long* index
#define GATHER_SIZES long long N, long long F, int B

extern "C" __global__ void gather_batch_f32(const float* x, GATHER_ARGS, float* xb,
                                            long long* yb, GATHER_SIZES) {
    gather_batch<float>(x, y, index, xb, yb, N, F, B);
}
extern "C" __global__ void gather_batch_f64(const double* x, GATHER_ARGS, double* xb,
                                            long long* yb, GATHER_SIZES) {
    gather_batch<double>(x, y, index, xb, yb, N, F, B);
}
