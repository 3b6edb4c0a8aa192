// Fused convolution blocks: conv + bias + ReLU + max-pool forward, and all of its
// backward, one launch each way (Backend.conv2d_relu_maxpool2d_forward / _backward).
//
// Layouts (C-contiguous, batch innermost, as every fastlenet backend):
//   x    (C, H, W, N)     input; dx like x
//   w    (K, C, KH, KW)   weights; b (K) bias or a null pointer
//   y    (K, PH, PW, N)   pooled output, dy like y. The convolution output (K, OH, OW, N),
//                         OH = (H + 2*pad - KH) / stride + 1, is never stored; windows of
//                         size x size with stride ps pool it: PH = (OH - size) / ps + 1.
//   arg  (K, PH, PW, N)   int: the offset a*size + b inside its window of the FIRST maximum
//                         (row-major scan, strict '>'), size*size where the ReLU zeroed the
//                         window (max <= 0): pool.cu's encoding, so pool.cu and conv2d.cu
//                         can take the backward of this forward.
//   part (B, K*C*KH*KW + K)  per weight block: its partial dw followed by its partial db
//   grads (K*C*KH*KW + K)    dw followed by db, the partials summed in block order
//   counter (1) int       zeroed by the forward; the backward's last block resets it
//
// Kernels and their block-to-tile maps. Every block has blockDim.x threads (any number;
// the launcher uses BLOCK_THREADS) and one shared array of BLOCK_SMEM_BYTES; tiles keep
// images innermost with a stride of NS = NI | 1 words (odd: fewer bank conflicts when
// threads of a warp read different columns of one image).
//   conv_block_forward_{f32,f64}  block (image chunk, band of PB pooled rows, group of KG
//       output channels): loads the KG channels' weights and the input rows the band's
//       windows reach (all columns, NI images, zeros in the padding) into shared memory,
//       then each thread takes (group of KR channels, pooled position, image), n fastest:
//       for each window position in row-major order the KR convolution sums in registers
//       (each shared x value serves them all), the first maximum, then the ReLU.
//       conv[k,i,j,n] = b[k] + sum_{c,p,q} w[k,c,p,q] * x[c, i*stride-pad+p, j*stride-pad+q, n]
//   conv_block_backward_{f32,f64}  two kinds of blocks in one launch:
//     blocks [0, wblocks): (image chunk, band of PB pooled rows). Load the band's input
//       rows, and per window dy and where its argmax sits in that tile (dead windows
//       marked); each thread then owns weight elements (and bias elements) and sums,
//       over the block's live windows only (max-pool backward and the ReLU mask: the
//       gradient reaches one conv output per live window):
//         dw[k,c,p,q] += dy[k,pi,pj,n] * x[c, (pi*ps+a)*stride-pad+p, (pj*ps+b)*stride-pad+q, n]
//         db[k]       += dy[k,pi,pj,n]           ((a, b) the window's argmax)
//       into part[block]. The last weight block to finish (an integer ticket; no float
//       atomics) adds the partials in block order into grads and resets the counter:
//       the same bits on every run.
//     blocks [wblocks, ...): only when dx is not null; (image chunk, band of HB input
//       rows). Load every weight and the conv-output gradient of the rows whose taps reach
//       the band (g[k,i,j,n]: the dy of each window whose argmax is (i, j), a gather as
//       in pool.cu), then one thread per (c, h, w, n) of the band gathers
//         dx[c,h,w,n] = sum_{p,q,k} w[k,c,p,q] * g[k, i, j, n],  h = i*stride - pad + p
// Indices into global arrays are computed in long long; the tiles fit in int.

#define BLOCK_SMEM_BYTES 40960
#define BLOCK_KR 8

#define BLOCK_DIMS int C, int H, int W, int N, int K, int KH, int KW, int OH, int OW, \
                   int stride, int pad, int PH, int PW, int size, int ps
#define BLOCK_ARGS C, H, W, N, K, KH, KW, OH, OW, stride, pad, PH, PW, size, ps

// Decompose the flat index e of an (A, R, S, ni) tile, the last index fastest.
__device__ __forceinline__ void split4(int e, int R, int S, int ni, int& a, int& r, int& s,
                                       int& n) {
    n = e % ni;
    s = e / ni % S;
    r = e / ni / S % R;
    a = e / ni / S / R;
}

// The images of a block: n0 .. n0+ni-1, chunk `block % chunks` of NI images; returns the
// rest of the block index.
__device__ __forceinline__ int image_chunk(int block, int N, int NI, int& n0, int& ni) {
    int chunks = (N + NI - 1) / NI;
    n0 = block % chunks * NI;
    ni = min(NI, N - n0);
    return block / chunks;
}

// A block's tile of pooled rows: its images, pooled rows pr0 .. pr0+pb-1 (band of PB), and
// the input they reach: TR rows from input row r0, TC columns from column -pad.
struct Band {
    int n0, ni, pr0, pb, TR, TC, r0;
};

// The Band of `block` (image chunks fastest, then bands); returns the rest of the index.
__device__ __forceinline__ int band_of(int block, BLOCK_DIMS, int NI, int PB, Band& t) {
    int rest = image_chunk(block, N, NI, t.n0, t.ni);
    int bands = (PH + PB - 1) / PB;
    t.pr0 = rest % bands * PB;
    t.pb = min(PB, PH - t.pr0);
    t.TR = ((t.pb - 1) * ps + size - 1) * stride + KH;
    t.TC = ((PW - 1) * ps + size - 1) * stride + KW;
    t.r0 = t.pr0 * ps * stride - pad;
    return rest / bands;
}

// The band's input rows, every column the windows reach, ni images, into xs (c, r, col, n)
// with image stride NS; zeros where the taps fall in the padding.
template <typename T>
__device__ void load_input_tile(const T* x, T* xs, int C, int H, int W, int N, int r0,
                                int TR, int TC, int pad, int n0, int ni, int NS) {
    int tile = C * TR * TC * ni;
    for (int e = threadIdx.x; e < tile; e += blockDim.x) {
        int c, r, col, n;
        split4(e, TR, TC, ni, c, r, col, n);
        int ih = r0 + r, iw = col - pad;
        T v = T(0);
        if (ih >= 0 && ih < H && iw >= 0 && iw < W)
            v = x[(((long long)c * H + ih) * W + iw) * N + n0 + n];
        xs[((c * TR + r) * TC + col) * NS + n] = v;
    }
}

template <typename T>
__device__ void conv_block_forward(const T* x, const T* w, const T* b, T* y, int* arg,
                                   int* counter, BLOCK_DIMS, int NI, int PB, int KG, int KR) {
    __shared__ T smem[BLOCK_SMEM_BYTES / sizeof(T)];
    if (blockIdx.x == 0 && threadIdx.x == 0) *counter = 0;  // the backward's ticket counter
    int NS = NI | 1;
    Band t;
    int k0 = band_of((int)blockIdx.x, BLOCK_ARGS, NI, PB, t) * KG;
    int n0 = t.n0, ni = t.ni, pr0 = t.pr0, pb = t.pb, TR = t.TR, TC = t.TC;
    int kg = min(KG, K - k0);
    int CKK = C * KH * KW;
    T* ws = smem;              // the group's weights (kg, C, KH, KW)
    T* xs = smem + KG * CKK;   // the input tile
    for (int e = threadIdx.x; e < kg * CKK; e += blockDim.x)
        ws[e] = w[(long long)k0 * CKK + e];
    load_input_tile(x, xs, C, H, W, N, t.r0, TR, TC, pad, n0, ni, NS);
    __syncthreads();
    int outputs = (kg + KR - 1) / KR * pb * PW * ni;
    for (int e = threadIdx.x; e < outputs; e += blockDim.x) {
        int g, pr, pj, n;
        split4(e, pb, PW, ni, g, pr, pj, n);
        int kl0 = g * KR;
        int kn = min(KR, kg - kl0);
        T best[BLOCK_KR];
        int best_t[BLOCK_KR];
#pragma unroll
        for (int kk = 0; kk < BLOCK_KR; ++kk) {
            best[kk] = T(0);
            best_t[kk] = 0;
        }
        for (int a = 0; a < size; ++a) {
            for (int bb = 0; bb < size; ++bb) {
                int t = a * size + bb;
                T acc[BLOCK_KR];
#pragma unroll
                for (int kk = 0; kk < BLOCK_KR; ++kk)
                    acc[kk] = kk < kn && b != nullptr ? b[k0 + kl0 + kk] : T(0);
                const T* xw = xs + (((pr * ps + a) * stride) * TC + (pj * ps + bb) * stride) * NS + n;
                for (int c = 0; c < C; ++c) {
                    for (int p = 0; p < KH; ++p) {
                        const T* xr = xw + (c * TR + p) * TC * NS;
                        const T* wr = ws + ((kl0 * C + c) * KH + p) * KW;
                        for (int q = 0; q < KW; ++q) {
                            T v = xr[q * NS];
#pragma unroll
                            for (int kk = 0; kk < BLOCK_KR; ++kk)
                                if (kk < kn) acc[kk] += wr[kk * CKK + q] * v;
                        }
                    }
                }
#pragma unroll
                for (int kk = 0; kk < BLOCK_KR; ++kk) {
                    if (kk >= kn) continue;
                    if (t == 0 || acc[kk] > best[kk]) {
                        best[kk] = acc[kk];
                        best_t[kk] = t;
                    } else if (acc[kk] != acc[kk]) {  // NaN: y becomes NaN, arg stays
                        best[kk] = acc[kk];
                    }
                }
            }
        }
#pragma unroll
        for (int kk = 0; kk < BLOCK_KR; ++kk) {
            if (kk >= kn) continue;
            long long o = ((((long long)k0 + kl0 + kk) * PH + pr0 + pr) * PW + pj) * N + n0 + n;
            bool dead = best[kk] <= T(0);
            y[o] = dead ? T(0) : best[kk];
            arg[o] = dead ? size * size : best_t[kk];
        }
    }
}

// Weight blocks of the backward: partial dw and db of one (image chunk, pooled-row band).
template <typename T>
__device__ void weight_partials(T* smem, const T* dy, const int* arg, const T* x, T* part,
                                BLOCK_DIMS, int NI, int PB, int block) {
    int NS = NI | 1;
    Band t;
    band_of(block, BLOCK_ARGS, NI, PB, t);
    int n0 = t.n0, ni = t.ni, pr0 = t.pr0, pb = t.pb, TR = t.TR, TC = t.TC;
    int WT = K * C * KH * KW, total = WT + K;
    int TRmax = ((PB - 1) * ps + size - 1) * stride + KH;
    T* xs = smem;                               // (C, TR, TC, NS)
    T* gs = xs + C * TRmax * TC * NS;           // (K, PB, PW, NS): dy of each window
    int* os = (int*)(gs + K * PB * PW * NS);    // where its argmax's taps start in xs; -1: dead
    load_input_tile(x, xs, C, H, W, N, t.r0, TR, TC, pad, n0, ni, NS);
    int windows = K * pb * PW * ni;
    for (int e = threadIdx.x; e < windows; e += blockDim.x) {
        int k, pr, pj, n;
        split4(e, pb, PW, ni, k, pr, pj, n);
        long long o = (((long long)k * PH + pr0 + pr) * PW + pj) * N + n0 + n;
        int s = ((k * PB + pr) * PW + pj) * NS + n;
        int t = arg[o];
        if (t >= size * size) {
            gs[s] = T(0);
            os[s] = -1;
        } else {
            gs[s] = dy[o];
            os[s] = ((pr * ps + t / size) * stride * TC + (pj * ps + t % size) * stride) * NS + n;
        }
    }
    __syncthreads();
    for (int e = threadIdx.x; e < total; e += blockDim.x) {
        T acc = T(0);
        int k, off = -1;
        if (e < WT) {
            int q = e % KW, p = (e / KW) % KH, c = (e / (KW * KH)) % C;
            k = e / (KW * KH * C);
            off = ((c * TR + p) * TC + q) * NS;
        } else {
            k = e - WT;
        }
        for (int pr = 0; pr < pb; ++pr) {
            for (int pj = 0; pj < PW; ++pj) {
                int base = ((k * PB + pr) * PW + pj) * NS;
                for (int n = 0; n < ni; ++n) {
                    int at = os[base + n];
                    if (at < 0) continue;
                    acc += off < 0 ? gs[base + n] : gs[base + n] * xs[off + at];
                }
            }
        }
        part[(long long)block * total + e] = acc;
    }
}

// dx blocks of the backward: one (image chunk, band of HB input rows).
template <typename T>
__device__ void input_gradient(T* smem, const T* dy, const int* arg, const T* w, T* dx,
                               BLOCK_DIMS, int NIX, int HB, int block) {
    int NS = NIX | 1;
    int n0, ni;
    int h0 = image_chunk(block, N, NIX, n0, ni) * HB, h1 = min(H, h0 + HB);
    // the conv rows i whose taps reach [h0, h1): h0 + pad - KH + 1 <= i*stride <= h1 - 1 + pad
    int lo = h0 + pad - KH + 1;
    int i0 = lo <= 0 ? 0 : (lo + stride - 1) / stride;
    int i1 = min(OH - 1, (h1 - 1 + pad) / stride);
    int GR = max(0, i1 - i0 + 1);
    int WT = K * C * KH * KW;
    T* ws = smem;       // every weight
    T* gt = smem + WT;  // (K, GR, OW, NS): the conv output's gradient
    for (int e = threadIdx.x; e < WT; e += blockDim.x) ws[e] = w[e];
    int grads = K * GR * OW * ni;
    for (int e = threadIdx.x; e < grads; e += blockDim.x) {
        int k, il, j, n;
        split4(e, GR, OW, ni, k, il, j, n);
        int i = i0 + il;
        T g = T(0);
        // windows (pi, pj) with pi*ps <= i < pi*ps + size, from the last one down
        for (int pi = min(i / ps, PH - 1); pi >= 0 && pi * ps + size > i; --pi) {
            for (int pj = min(j / ps, PW - 1); pj >= 0 && pj * ps + size > j; --pj) {
                long long o = (((long long)k * PH + pi) * PW + pj) * N + n0 + n;
                if (arg[o] == (i - pi * ps) * size + (j - pj * ps)) g += dy[o];
            }
        }
        gt[((k * GR + il) * OW + j) * NS + n] = g;
    }
    __syncthreads();
    int outputs = C * (h1 - h0) * W * ni;
    for (int e = threadIdx.x; e < outputs; e += blockDim.x) {
        int c, hl, col, n;
        split4(e, h1 - h0, W, ni, c, hl, col, n);
        int h = h0 + hl;
        T acc = T(0);
        for (int p = 0; p < KH; ++p) {
            int ti = h + pad - p;  // = i * stride for the conv row i whose tap p hits h
            if (ti < 0 || ti % stride != 0 || ti / stride >= OH) continue;
            int il = ti / stride - i0;
            for (int q = 0; q < KW; ++q) {
                int tj = col + pad - q;
                if (tj < 0 || tj % stride != 0 || tj / stride >= OW) continue;
                const T* gk = gt + (il * OW + tj / stride) * NS + n;
                const T* wk = ws + (c * KH + p) * KW + q;
                for (int k = 0; k < K; ++k)
                    acc += wk[k * C * KH * KW] * gk[k * GR * OW * NS];
            }
        }
        dx[(((long long)c * H + h) * W + col) * N + n0 + n] = acc;
    }
}

template <typename T>
__device__ void conv_block_backward(const T* dy, const int* arg, const T* x, const T* w, T* dx,
                                    T* part, int* counter, T* grads, BLOCK_DIMS, int NI, int PB,
                                    int wblocks, int NIX, int HB) {
    __shared__ T smem[BLOCK_SMEM_BYTES / sizeof(T)];
    __shared__ int last;
    if ((int)blockIdx.x >= wblocks) {  // the same in every thread of the block
        input_gradient(smem, dy, arg, w, dx, BLOCK_ARGS, NIX, HB, (int)blockIdx.x - wblocks);
        return;
    }
    weight_partials(smem, dy, arg, x, part, BLOCK_ARGS, NI, PB, (int)blockIdx.x);
    __threadfence();  // this block's partials are visible to whichever block sums them
    __syncthreads();
    if (threadIdx.x == 0) {
        last = atomicAdd(counter, 1) == wblocks - 1;
        if (last) __threadfence();  // acquire: the partials summed below are the final ones
    }
    __syncthreads();
    if (!last) return;
    int total = K * C * KH * KW + K;
    for (int e = threadIdx.x; e < total; e += blockDim.x) {
        // in block order; unrolled so that several loads are in flight (from L2, where
        // the other blocks' partials are: no stale L1 line)
        T acc = T(0);
#pragma unroll 8
        for (int s = 0; s < wblocks; ++s) acc += __ldcg(part + (long long)s * total + e);
        grads[e] = acc;
    }
    if (threadIdx.x == 0) *counter = 0;  // ready for the next launch (a graph replay)
}

// Launch with ceil(N/NI) * ceil(PH/PB) * ceil(K/KG) blocks; KR <= BLOCK_KR; the weights
// (KG*C*KH*KW) and the input tile (C * TR * TC * (NI|1)) fit BLOCK_SMEM_BYTES.
extern "C" __global__ void conv_block_forward_f32(const float* x, const float* w, const float* b,
                                                  float* y, int* arg, int* counter, BLOCK_DIMS,
                                                  int NI, int PB, int KG, int KR) {
    conv_block_forward<float>(x, w, b, y, arg, counter, BLOCK_ARGS, NI, PB, KG, KR);
}
extern "C" __global__ void conv_block_forward_f64(const double* x, const double* w,
                                                  const double* b, double* y, int* arg,
                                                  int* counter, BLOCK_DIMS, int NI, int PB,
                                                  int KG, int KR) {
    conv_block_forward<double>(x, w, b, y, arg, counter, BLOCK_ARGS, NI, PB, KG, KR);
}
// Launch with wblocks = ceil(N/NI) * ceil(PH/PB) weight blocks, then, where dx is not null,
// ceil(N/NIX) * ceil(H/HB) dx blocks; part holds wblocks * (K*C*KH*KW + K) values.
extern "C" __global__ void conv_block_backward_f32(const float* dy, const int* arg, const float* x,
                                                   const float* w, float* dx, float* part,
                                                   int* counter, float* grads, BLOCK_DIMS,
                                                   int NI, int PB, int wblocks, int NIX, int HB) {
    conv_block_backward<float>(dy, arg, x, w, dx, part, counter, grads, BLOCK_ARGS, NI, PB,
                               wblocks, NIX, HB);
}
extern "C" __global__ void conv_block_backward_f64(const double* dy, const int* arg,
                                                   const double* x, const double* w, double* dx,
                                                   double* part, int* counter, double* grads,
                                                   BLOCK_DIMS, int NI, int PB, int wblocks,
                                                   int NIX, int HB) {
    conv_block_backward<double>(dy, arg, x, w, dx, part, counter, grads, BLOCK_ARGS, NI, PB,
                                wblocks, NIX, HB);
}
