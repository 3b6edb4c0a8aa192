// The fully connected chain: up to DC_MAX_LAYERS linear layers with a ReLU between each
// two (LeNet-5's 400-120-84-10), forward in one kernel and backward in one kernel, each
// block taking a slice of the batch through every layer with its activations in shared
// memory.
//
// Layouts (C-contiguous, batch innermost as everywhere):
//   x      (W0, N)    the chain's input
//   w_l    (W_{l+1}, W_l), b_l (W_{l+1}) or null, for l < L (L = layers)
//   acts   (W1 + ... + W_{L-1}, N)  the hidden activations a_l = max(z_l, 0) one after
//          another (a_1's rows first): kept by the forward for the backward
//   y, dy  (W_L, N)   the chain's output and its gradient
//   dx     (W0, N)
//   grads  (S, P)     per block s: for each layer l in turn, dw_l (W_{l+1} * W_l values)
//          then db_l (W_{l+1}); P their total. With S = 1 the gradients themselves, else
//          dense.cu's sum_splits adds the S blocks' rows in order (deterministic).
// Maths: z_l = w_l a_{l-1} + b_l (a_0 = x), a_l = max(z_l, 0) (a NaN stays a NaN, as
// NumPy's maximum), y = z_L. Backward: dz_L = dy; dw_l = dz_l a_{l-1}^T; db_l = sum_n dz_l;
// dz_{l-1} = (w_l^T dz_l) * [a_{l-1} > 0]; dx = w_0^T dz_1 (only when need_dx).
//
// Kernels and their thread-to-element maps (one block per `images` columns of the batch,
// the last block's slice may be shorter; blocks of any number of threads):
//   dense_chain_forward_{f32,f64}   layer by layer, the block's threads stride over the
//       (output row o, image n) pairs of the layer, n fastest, each summing its row's
//       products in order (k = 0, 1, ...), then the bias; the first layer reads x from
//       global memory, later ones the previous activations from shared memory.
//   dense_chain_backward_{f32,f64}  layer by layer from the last: dz_l of the block's
//       images in shared memory; the threads stride over the weights (o, k) of dw_l, each
//       summing over the block's images in order, then over db_l, then over the (k, n)
//       pairs of dz_{l-1} (or dx), each summing over o in order. No atomics: every value
//       is written by one thread, every sum has a fixed order (same bits every run).
// Shared memory: two buffers of DC_SHARED_BYTES / 2 each; the launcher picks `images` so
// that images * max(W1, ..., WL) values fit one buffer. Flat indices are long long.

#define DC_MAX_LAYERS 4
#define DC_SHARED_BYTES 32768

template <typename T>
__device__ void dense_chain_forward(const T* x, const T* const* w, const T* const* b, T* acts,
                                    T* y, int layers, const int* width, int N, int images) {
    __shared__ T buf[DC_SHARED_BYTES / sizeof(T)];
    const int half = DC_SHARED_BYTES / sizeof(T) / 2;
    int n0 = blockIdx.x * images;
    int nb = min(images, N - n0);
    T* cur = buf;         // a_{l-1} of the block's images, (W_l, nb)
    T* next = buf + half;
    long long row = 0;    // a_l's first row in acts
    for (int l = 0; l < layers; ++l) {
        int in = width[l], out = width[l + 1];
        bool last = l == layers - 1;
        for (int t = threadIdx.x; t < out * nb; t += blockDim.x) {
            int o = t / nb, n = t - o * nb;
            const T* wrow = w[l] + (long long)o * in;
            T acc = T(0);
            if (l == 0) {
                for (int k = 0; k < in; ++k) acc += wrow[k] * x[(long long)k * N + n0 + n];
            } else {
                for (int k = 0; k < in; ++k) acc += wrow[k] * cur[k * nb + n];
            }
            if (b[l] != nullptr) acc += b[l][o];
            if (last) {
                y[(long long)o * N + n0 + n] = acc;
            } else {
                T a = (acc > T(0) || acc != acc) ? acc : T(0);
                next[t] = a;
                acts[(row + o) * N + n0 + n] = a;
            }
        }
        __syncthreads();  // next is complete; cur may be overwritten
        T* swap = cur;
        cur = next;
        next = swap;
        row += out;
    }
}

template <typename T>
__device__ void dense_chain_backward(const T* dy, const T* x, const T* acts,
                                     const T* const* w, T* dx, T* grads, int layers,
                                     const int* width, int N, int images, int need_dx) {
    __shared__ T buf[DC_SHARED_BYTES / sizeof(T)];
    const int half = DC_SHARED_BYTES / sizeof(T) / 2;
    int n0 = blockIdx.x * images;
    int nb = min(images, N - n0);
    long long total = 0, hidden = 0;  // P, and the rows of acts
    for (int l = 0; l < layers; ++l) {
        total += (long long)width[l + 1] * (width[l] + 1);
        if (l < layers - 1) hidden += width[l + 1];
    }
    T* cur = buf;          // dz_l of the block's images, (W_{l+1}, nb)
    T* next = buf + half;
    for (int t = threadIdx.x; t < width[layers] * nb; t += blockDim.x) {
        int o = t / nb;
        cur[t] = dy[(long long)o * N + n0 + (t - o * nb)];
    }
    __syncthreads();
    long long at = total;  // where layer l's gradients end in the block's row
    for (int l = layers - 1; l >= 0; --l) {
        int in = width[l], out = width[l + 1];
        hidden -= l > 0 ? in : 0;                  // a_l's first row in acts
        const T* a = l > 0 ? acts + hidden * N : x;  // the layer's input, (in, N)
        at -= (long long)out * (in + 1);
        T* dw = grads + (long long)blockIdx.x * total + at;
        T* db = dw + (long long)out * in;
        for (long long t = threadIdx.x; t < (long long)out * in; t += blockDim.x) {
            int o = (int)(t / in), k = (int)(t - (long long)o * in);
            const T* arow = a + (long long)k * N + n0;
            T acc = T(0);
            for (int n = 0; n < nb; ++n) acc += cur[o * nb + n] * arow[n];
            dw[t] = acc;
        }
        for (int o = threadIdx.x; o < out; o += blockDim.x) {
            T acc = T(0);
            for (int n = 0; n < nb; ++n) acc += cur[o * nb + n];
            db[o] = acc;
        }
        if (l > 0 || need_dx) {
            for (int t = threadIdx.x; t < in * nb; t += blockDim.x) {
                int k = t / nb, n = t - k * nb;
                T acc = T(0);
                for (int o = 0; o < out; ++o) acc += w[l][(long long)o * in + k] * cur[o * nb + n];
                long long g = (long long)k * N + n0 + n;
                if (l == 0) dx[g] = acc;
                else next[t] = acc * (a[g] > T(0) ? T(1) : T(0));  // the ReLU's mask, as dy * mask
            }
        }
        __syncthreads();  // next is complete; cur may be overwritten
        T* swap = cur;
        cur = next;
        next = swap;
    }
}

// Launch with one block per `images` columns and layers <= DC_MAX_LAYERS; the pointers
// and widths past the last layer are ignored. The entry points' arguments, per type:
#define DC_FORWARD_ARGS(T)                                                                  \
    const T *x, const T *w0, const T *b0, const T *w1, const T *b1, const T *w2,            \
        const T *b2, const T *w3, const T *b3, T *acts, T *y, int layers, int W0, int W1,    \
        int W2, int W3, int W4, int N, int images
#define DC_FORWARD_CALL(T)                                                                  \
    const T* w[DC_MAX_LAYERS] = {w0, w1, w2, w3};                                           \
    const T* b[DC_MAX_LAYERS] = {b0, b1, b2, b3};                                           \
    const int width[DC_MAX_LAYERS + 1] = {W0, W1, W2, W3, W4};                              \
    dense_chain_forward<T>(x, w, b, acts, y, layers, width, N, images);
#define DC_BACKWARD_ARGS(T)                                                                 \
    const T *dy, const T *x, const T *acts, const T *w0, const T *w1, const T *w2,          \
        const T *w3, T *dx, T *grads, int layers, int W0, int W1, int W2, int W3, int W4,    \
        int N, int images, int need_dx
#define DC_BACKWARD_CALL(T)                                                                 \
    const T* w[DC_MAX_LAYERS] = {w0, w1, w2, w3};                                           \
    const int width[DC_MAX_LAYERS + 1] = {W0, W1, W2, W3, W4};                              \
    dense_chain_backward<T>(dy, x, acts, w, dx, grads, layers, width, N, images, need_dx);

extern "C" __global__ void dense_chain_forward_f32(DC_FORWARD_ARGS(float)) {
    DC_FORWARD_CALL(float)
}
extern "C" __global__ void dense_chain_forward_f64(DC_FORWARD_ARGS(double)) {
    DC_FORWARD_CALL(double)
}
extern "C" __global__ void dense_chain_backward_f32(DC_BACKWARD_ARGS(float)) {
    DC_BACKWARD_CALL(float)
}
extern "C" __global__ void dense_chain_backward_f64(DC_BACKWARD_ARGS(double)) {
    DC_BACKWARD_CALL(double)
}
