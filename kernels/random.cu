// Uniform random numbers in [0, 1), and standard normal ones, from a counter-based
// generator, Philox4x32-10 (Salmon et al., "Parallel random numbers: as easy as 1, 2, 3",
// SC 2011).
//
// The generator's whole state is a 64-bit key (from the seed) and a 64-bit counter, both
// in device memory (state[0] = key, state[1] = counter): a draw needs no host round
// trip, a captured CUDA graph advances the counter on every replay and reads the key
// that is there at replay time (so restoring a generator's state reaches recorded
// draws too), and the state saves to a checkpoint as two integers.
// Element i of a draw is Philox(key, counter + i); afterwards a second kernel adds the
// draw's size to the counter (a separate launch, so no thread reads the counter after
// another has moved it).
//
// Layouts: out is C-contiguous, treated as flat (count); state is two uint64.
// Thread-to-element map:
//   uniform_{f32,f64}  one thread per element of out; float takes the top 24 bits of the
//                      first Philox word, double 53 bits from the first two words.
//   normal_{f32,f64}   one thread per element of out: Box-Muller on two uniforms of the
//                      element's Philox block, u1 in (0, 1] (so log(u1) is finite) and u2
//                      in [0, 1): z = sqrt(-2 log u1) cos(2 pi u2). float uses words 0 and 1,
//                      double words 0-1 and 2-3.
//   advance_counter    a single thread: state[1] += count.
// Every thread checks its index is in range.

__device__ __forceinline__ void philox4x32_10(unsigned int ctr[4], unsigned int k0,
                                              unsigned int k1) {
    const unsigned int M0 = 0xD2511F53u, M1 = 0xCD9E8D57u;
    const unsigned int W0 = 0x9E3779B9u, W1 = 0xBB67AE85u;
    for (int round = 0; round < 10; ++round) {
        if (round > 0) {
            k0 += W0;
            k1 += W1;
        }
        unsigned int hi0 = __umulhi(M0, ctr[0]), lo0 = M0 * ctr[0];
        unsigned int hi1 = __umulhi(M1, ctr[2]), lo1 = M1 * ctr[2];
        unsigned int c0 = hi1 ^ ctr[1] ^ k0;
        unsigned int c2 = hi0 ^ ctr[3] ^ k1;
        ctr[0] = c0;
        ctr[1] = lo1;
        ctr[2] = c2;
        ctr[3] = lo0;
    }
}

__device__ __forceinline__ void draw(unsigned long long key, unsigned long long position,
                                     unsigned int out[4]) {
    out[0] = (unsigned int)position;
    out[1] = (unsigned int)(position >> 32);
    out[2] = 0u;
    out[3] = 0u;
    philox4x32_10(out, (unsigned int)key, (unsigned int)(key >> 32));
}

extern "C" __global__ void uniform_f32(float* out, long long count,
                                       const unsigned long long* state) {
    long long idx = (long long)blockIdx.x * blockDim.x + threadIdx.x;
    if (idx >= count) return;
    unsigned int words[4];
    draw(state[0], state[1] + (unsigned long long)idx, words);
    out[idx] = (float)(words[0] >> 8) * (1.0f / 16777216.0f);  // 24 bits / 2^24
}

extern "C" __global__ void uniform_f64(double* out, long long count,
                                       const unsigned long long* state) {
    long long idx = (long long)blockIdx.x * blockDim.x + threadIdx.x;
    if (idx >= count) return;
    unsigned int words[4];
    draw(state[0], state[1] + (unsigned long long)idx, words);
    unsigned long long bits = ((unsigned long long)(words[0] >> 5) << 26) | (words[1] >> 6);
    out[idx] = (double)bits * (1.0 / 9007199254740992.0);  // 53 bits / 2^53
}

extern "C" __global__ void normal_f32(float* out, long long count,
                                      const unsigned long long* state) {
    long long idx = (long long)blockIdx.x * blockDim.x + threadIdx.x;
    if (idx >= count) return;
    unsigned int words[4];
    draw(state[0], state[1] + (unsigned long long)idx, words);
    float u1 = (float)((words[0] >> 8) + 1u) * (1.0f / 16777216.0f);  // (0, 1]
    float u2 = (float)(words[1] >> 8) * (1.0f / 16777216.0f);         // [0, 1)
    out[idx] = sqrt(-2.0f * log(u1)) * cos(6.2831853071795865f * u2);
}

extern "C" __global__ void normal_f64(double* out, long long count,
                                      const unsigned long long* state) {
    long long idx = (long long)blockIdx.x * blockDim.x + threadIdx.x;
    if (idx >= count) return;
    unsigned int words[4];
    draw(state[0], state[1] + (unsigned long long)idx, words);
    unsigned long long bits1 = ((unsigned long long)(words[0] >> 5) << 26) | (words[1] >> 6);
    unsigned long long bits2 = ((unsigned long long)(words[2] >> 5) << 26) | (words[3] >> 6);
    double u1 = (double)(bits1 + 1ull) * (1.0 / 9007199254740992.0);  // (0, 1]
    double u2 = (double)bits2 * (1.0 / 9007199254740992.0);          // [0, 1)
    out[idx] = sqrt(-2.0 * log(u1)) * cos(6.283185307179586 * u2);
}

extern "C" __global__ void advance_counter(unsigned long long* state, long long count) {
    if (blockIdx.x == 0 && threadIdx.x == 0) state[1] += (unsigned long long)count;
}
