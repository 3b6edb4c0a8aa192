"""The Numba backend: direct convolution and pooling as JIT-compiled CPU loops.

One module per op family, mirroring kernels/*.cu, so an op's CPU and CUDA versions are
found by the same name: conv2d.py (with tiles.py, its register-blocked inner products),
pool.py, dense.py (the linear layers' products), loss.py, adam.py, augment.py (the
augmenter's warp and smoothing), layout.py (the batch gather and copies) and random.py
(the Philox4x32-10 generator); jit.py holds the compile options and the disk cache's
stamp, and backend.py the launchers
(:class:`~fastlenet.backends.numba.backend.NumbaBackend`).

Arrays are NumPy arrays in the batch-innermost layout of ``base.py``, so every innermost
loop runs over images, contiguous in memory, and LLVM turns it into SIMD code over the
batch. Outer loops are ``prange`` over disjoint outputs: no two threads write the same
element, so there are no races and no atomics.
"""
