// Host numbers into a small device array, carried by the launch itself.
//
// An optimizer's per-step scalars (the learning rate, Adam's bias corrections) are read
// by the recorded training step from device memory (adam.cu). Writing them as the
// arguments of one launch needs no host-to-device copy: the values travel with the launch,
// which queues behind the previous step, and the host never waits for the device (a copy
// from pageable host memory is staged by the driver and may block the host).
//
// Layout: out is C-contiguous (count), count <= 4; the values come as doubles and are
// rounded to T here, as NumPy rounds a Python float stored into a float32 array.
// Thread-to-element map: one thread per element of out; every thread checks its range.

template <typename T>
__device__ void set_scalars(T* out, int count, double a0, double a1, double a2, double a3) {
    int idx = blockIdx.x * blockDim.x + threadIdx.x;
    if (idx >= count || idx >= 4) return;
    double value = idx == 0 ? a0 : idx == 1 ? a1 : idx == 2 ? a2 : a3;
    out[idx] = T(value);
}

extern "C" __global__ void set_scalars_f32(float* out, int count, double a0, double a1,
                                           double a2, double a3) {
    set_scalars<float>(out, count, a0, a1, a2, a3);
}
extern "C" __global__ void set_scalars_f64(double* out, int count, double a0, double a1,
                                           double a2, double a3) {
    set_scalars<double>(out, count, a0, a1, a2, a3);
}
