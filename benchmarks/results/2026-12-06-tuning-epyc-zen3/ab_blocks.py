"""A/B of the numba backend's FC products: the 4x4 kernel of 2f6705d (before the edge
change), the new 4x4 and the new 3x3 (one kernel with both blockings since the
commit after 324c797), interleaved; run from the repository root:
    python benchmarks/results/2026-12-06-tuning-epyc-zen3/ab_blocks.py [batch]"""
import importlib.util, statistics, subprocess, sys, tempfile, time
import numpy as np

_old = subprocess.run(["git", "show", "2f6705d:fastlenet/backends/numba/dense.py"],
                      capture_output=True, text=True, check=True).stdout
_old = _old.replace("from .jit import", "from fastlenet.backends.numba.jit import")
with tempfile.NamedTemporaryFile("w", suffix=".py", delete=False) as f:
    f.write(_old)
_spec = importlib.util.spec_from_file_location("olddense", f.name)
olddense = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(olddense)
from fastlenet.backends.numba import dense
rng = np.random.default_rng(0)
N = int(sys.argv[1]) if len(sys.argv) > 1 else 128
shapes = {"fc1 fwd": (120, N, 400), "fc1 dw": (120, 400, N), "fc1 dx": (400, N, 128),
          "fc2 fwd": (84, N, 128), "fc2 dx": (128, N, 96), "fc3 fwd": (10, N, 96)}
kern = {"old4x4": lambda a, b, o: olddense.gemm_nt(a, b, np.zeros(0, np.float32), o),
        "4x4": lambda a, b, o: dense.gemm_nt(a, b, np.zeros(a.shape[0], np.float32), o, 4),
        "3x3": lambda a, b, o: dense.gemm_nt(a, b, np.zeros(a.shape[0], np.float32), o, 3)}
for name, (R, S, L) in shapes.items():
    a = rng.standard_normal((R, L)).astype(np.float32); b = rng.standard_normal((S, L)).astype(np.float32)
    o = np.empty((R, S), np.float32)
    res = {}
    for k in kern.values(): k(a, b, o)
    for rnd in range(15):
        for v, k in kern.items():
            t = time.perf_counter()
            for _ in range(20): k(a, b, o)
            res.setdefault(v, []).append((time.perf_counter() - t) / 20 * 1e6)
    print(f"{name:8s} {R}x{S}x{L}  " + "  ".join(f"{v}: med {statistics.median(t):.0f} min {min(t):.0f}" for v, t in res.items()), flush=True)
