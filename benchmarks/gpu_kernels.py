"""Where a recorded cupy training step spends its GPU time, and what the backend's launch
constants do to it, on a machine with a CUDA device:

    python -m benchmarks.gpu_kernels [launches] [--sweep] [--ncu] [--json FILE]

``launches`` the kernels of one recorded LeNet-5 training step (batch 128, Adam), with
             the separate and with the fused kernel sets (FASTLENET_CUDA_BLOCKS: conv
             blocks and the fully connected chain), as
             ``<set> kernels: launches per training step: N`` and per kernel name.
             On a CUDA device: the kernel nodes of the step's CUDA graph. Without one (or
             without CuPy): the launches that the CPU emulation of tests/host_cuda.py
             records, which are the project's kernels only (CuPy's own element-wise
             operations run there as NumPy and are not counted). The output says which.

``--sweep``  the time of a recorded LeNet-5 step (batch 128, Adam; CUDA events around
             SWEEP_STEPS steps) for each setting in SETTINGS of cupy_backend's launch
             constants, in SWEEP_ROUNDS interleaved rounds: the measurement those
             constants' values and comments come from.
``--ncu``    Nsight Compute's ``gpu__time_duration`` of every kernel of PROFILED_STEPS
             recorded steps, fastlenet's and (where PyTorch has CUDA) PyTorch's with one
             CUDA graph per step, summed per kernel and launch shape: what to work on
             next. Needs ``ncu`` on the PATH; the clocks are left alone (``--clock-control
             none``), so compare kernels within one run.

benchmarks/gpu_check.py runs both as its ``kernels`` stage. ``--json`` writes the
figures. A tool for working on the cupy backend; the figures to publish are the
benchmark suite's.
"""

from __future__ import annotations

import argparse
import csv
import functools
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
from collections import defaultdict
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
SWITCH = "FASTLENET_CUDA_BLOCKS"  # separate or fused kernels (cupy_kernel_set.py)
KERNEL_SETS = ("separate", "fused")
# setting -> the constants it changes (the rest keep their values): cupy_backend's by
# name, another fastlenet.backends module's as "module.NAME"; SWITCH picks the kernel set
FUSED = {SWITCH: "fused"}
SETTINGS: dict[str, dict[str, int | str]] = {
    "committed values": {},
    "fused kernels": FUSED,
    "fused: BLOCK_IMAGES 4": {**FUSED, "cupy_conv_block.BLOCK_IMAGES": 4},
    "fused: BLOCK_IMAGES 2": {**FUSED, "cupy_conv_block.BLOCK_IMAGES": 2},
    "fused: FUSED_THREADS 131072": {**FUSED, "cupy_conv_block.FUSED_THREADS": 131072},
    "fused: CHAIN_IMAGES 4": {**FUSED, "cupy_dense_chain.CHAIN_IMAGES": 4},
    "fused: CHAIN_IMAGES 2": {**FUSED, "cupy_dense_chain.CHAIN_IMAGES": 2},
    "conv forward: one channel per thread": {"CONV_THREADS": 10 ** 12},
    "conv forward: up to 8 channels always": {"CONV_THREADS": 0},
    "conv forward: CONV_THREADS 131072": {"CONV_THREADS": 131072},
    "matrix products unsplit": {"GEMM_THREADS": 0},
    "matrix products: GEMM_THREADS 524288": {"GEMM_THREADS": 524288},
    "weight gradient: WEIGHT_BLOCKS 256": {"WEIGHT_BLOCKS": 256},
    "weight gradient: WEIGHT_BLOCKS 4096": {"WEIGHT_BLOCKS": 4096},
}
SWEEP_ROUNDS, SWEEP_STEPS, WARMUP_STEPS = 3, 400, 20
PROFILED_STEPS = 3
IMAGES = 8192  # the training set the steps draw from
NCU = ["ncu", "--clock-control", "none", "--profile-from-start", "off", "--metrics",
       "gpu__time_duration.sum", "--csv", "--print-units", "base"]


def _batches(run, count: int = 64) -> list:
    rng = np.random.default_rng(0)
    return [run.index(rng.permutation(IMAGES)[:128].astype(np.int64)) for _ in range(count)]


@functools.cache
def _training_set():
    from .lenet import load_training_set

    return load_training_set(IMAGES)


def _make_run(contender: str):
    from .lenet import FastLeNetRun, TorchRun

    x, y = _training_set()
    if contender == "cupy":
        return FastLeNetRun("cupy", x, y)
    return TorchRun(x, y, device="cuda", graphs=True)


def profile_target(contender: str) -> None:
    """The program ncu profiles: warm-up steps, then PROFILED_STEPS steps inside
    cudaProfilerStart/Stop."""
    from cupyx.profiler import profile

    run = _make_run(contender)
    batches = _batches(run)
    for i in range(WARMUP_STEPS):
        run.step(batches[i % len(batches)])
    run.synchronize()
    with profile():
        for i in range(PROFILED_STEPS):
            run.step(batches[i])
        run.synchronize()


def sweep(rounds: int = SWEEP_ROUNDS, steps: int = SWEEP_STEPS, log=print) -> dict[str, list[float]]:
    """Microseconds per recorded step for each setting, one figure per round."""
    import cupy

    committed = {name: getattr(*_constant(name)) for change in SETTINGS.values()
                 for name in change if name != SWITCH}
    switch = os.environ.get(SWITCH)
    times: dict[str, list[float]] = defaultdict(list)
    try:
        for round_ in range(rounds):
            for setting, change in SETTINGS.items():
                for name, value in {**committed, **change}.items():
                    if name != SWITCH:
                        setattr(*_constant(name), value)
                os.environ[SWITCH] = str(change.get(SWITCH, "separate"))
                run = _make_run("cupy")  # a new recording for each setting
                batches = _batches(run)
                for i in range(WARMUP_STEPS):
                    run.step(batches[i % len(batches)])
                start, stop = cupy.cuda.Event(), cupy.cuda.Event()
                start.record()
                for i in range(steps):
                    run.step(batches[i % len(batches)])
                stop.record()
                stop.synchronize()
                times[setting].append(cupy.cuda.get_elapsed_time(start, stop) * 1000 / steps)
                log(f"round {round_}  {setting:<40} {times[setting][-1]:7.1f} us/step")
    finally:
        for name, value in committed.items():
            setattr(*_constant(name), value)
        _restore(switch)
    return dict(times)


def _constant(name: str) -> tuple:
    """``(module, attribute)`` of a SETTINGS key: ``NAME`` in cupy_backend, or
    ``module.NAME`` in fastlenet.backends.module."""
    import importlib

    module, _, attribute = name.rpartition(".")
    return importlib.import_module(f"fastlenet.backends.{module or 'cupy_backend'}"), attribute


def _restore(switch: str | None) -> None:
    if switch is None:
        os.environ.pop(SWITCH, None)
    else:
        os.environ[SWITCH] = switch


def recording_backend():
    """``(backend, where)``: the cupy backend on a CUDA device where it is usable, else
    on the CPU emulation of tests/host_cuda.py; ``where`` says which, for the output."""
    from fastlenet import backends

    if backends.status()["cupy"] is None:
        backend = backends.get_backend("cupy")
        return backend, f"a CUDA device ({backend.device_description()}): kernel nodes of the recorded CUDA graph"
    sys.path.insert(0, str(ROOT / "tests"))
    import host_cuda

    stand_in = host_cuda.make_module()
    empty_like = stand_in.empty_like
    # the recording's static index array: zeros, not the emulation's sentinel, so that
    # NumPy's gather while recording does not fail (CuPy's wraps an index around)
    stand_in.empty_like = lambda a, dtype=None: (
        np.zeros(np.shape(a), dtype or a.dtype) if np.dtype(dtype or a.dtype).kind in "iu"
        else empty_like(a, dtype))
    return (host_cuda.load_module(stand_in).CupyBackend(),
            "the CPU emulation of tests/host_cuda.py (no usable CUDA device here): the project's "
            "kernel launches recorded in the step; CuPy's own element-wise operations run as "
            "NumPy there and are not counted")


def _graph_kernels(graph) -> list[str]:
    """Kernel names in a recorded graph: the emulation's tape, or the kernel nodes of a
    CUDA graph's DOT description (every node but memory copies and sets, events, host
    calls, allocations and empty nodes; each named by the first word of its label after
    the node's number)."""
    if hasattr(graph, "tape"):
        return [function.name for function, *_ in graph.tape]
    dot = graph.debug_dot_str()
    labels = re.findall(r'^\s*"[^"]*node_\d+"\s*\[[^\]]*?label="((?:[^"\\]|\\.)*)"', dot,
                        flags=re.M)
    if not labels:
        raise RuntimeError("found no nodes in the CUDA graph's DOT description: "
                           + dot[:300].replace("\n", " "))
    other = re.compile(r"MEMSET|MEMCPY|EMPTY|EVENT|HOST|MEM_ALLOC|MEM_FREE|WAIT|RECORD")
    names = []
    for label in labels:
        if not other.search(label):
            found = re.search(r"[A-Za-z_]\w+", label)
            names.append(found.group(0) if found else "kernel")
    return names


def recorded_launches(backend, kernel_set: str, batch: int = 128) -> list[str]:
    """Kernel names of one recorded LeNet-5 training step (Adam) with ``kernel_set``."""
    from fastlenet.nn import SoftmaxCrossEntropy, build_model
    from fastlenet.optim import Adam
    from fastlenet.training_step import TrainingStep

    switch = os.environ.get(SWITCH)
    os.environ[SWITCH] = kernel_set
    try:
        model = build_model("lenet5", backend, seed=0)
        rng = np.random.default_rng(0)
        x = backend.asarray(rng.random((batch, 1, 32, 32), dtype=np.float32))
        y = backend.asarray(rng.integers(0, 10, batch))
        step = TrainingStep(model, SoftmaxCrossEntropy(backend=backend),
                            Adam(model.parameters(), backend, lr=1e-3), x, y)
        idx = backend.asarray(np.arange(batch))
        step(idx)  # the warm-up, run as plain launches
        step(idx)  # the recording
        (recording,) = step._run.graphs.values()
        return _graph_kernels(recording.graph)
    finally:
        _restore(switch)


def launches(log=print) -> dict:
    """Launches per recorded LeNet-5 step for each kernel set, printed and returned."""
    backend, where = recording_backend()
    log(f"counted on {where}")
    counts = {}
    for kernel_set in KERNEL_SETS:
        names = recorded_launches(backend, kernel_set)
        counts[kernel_set] = len(names)
        log(f"{kernel_set} kernels: launches per training step: {len(names)}")
        per_name: dict[str, int] = defaultdict(int)
        for name in names:
            per_name[name] += 1
        log("  " + ", ".join(f"{name} x{n}" for name, n in per_name.items()))
    return {"where": where, **counts}


def ncu_kernels(csv_text: str, steps: int = PROFILED_STEPS) -> list[dict]:
    """ncu's CSV (one row per kernel launch and metric) -> one row per kernel name and
    grid: launches and microseconds per step, the longest first."""
    rows = list(csv.reader(line for line in csv_text.splitlines() if line.startswith('"')))
    if not rows:
        return []
    header = rows[0]
    name, grid, metric, value = (header.index(c) for c in ("Kernel Name", "Grid Size",
                                                              "Metric Name", "Metric Value"))
    totals: dict[tuple[str, str], list[float]] = defaultdict(list)
    for row in rows[1:]:
        if row[metric] == "gpu__time_duration.sum":
            totals[(row[name], row[grid])].append(float(row[value].replace(",", "")))
    kernels = [{"kernel": k, "grid": g, "launches_per_step": len(ns) / steps,
                "us_per_step": sum(ns) / steps / 1000} for (k, g), ns in totals.items()]
    return sorted(kernels, key=lambda r: -r["us_per_step"])


def format_kernels(kernels: list[dict], top: int = 25) -> str:
    total = sum(k["us_per_step"] for k in kernels)
    launches = sum(k["launches_per_step"] for k in kernels)
    lines = [f"{total:.1f} us of kernels per step, {launches:.0f} launches"]
    lines += [f"  {k['us_per_step']:8.1f} us  x{k['launches_per_step']:.0f}  {k['kernel'][:80]} "
              f"grid {k['grid']}" for k in kernels[:top]]
    return "\n".join(lines)


def run_ncu(contender: str, timeout: float = 120) -> str:
    """ncu's CSV for PROFILED_STEPS steps of ``contender`` (cupy or torch-cuda-graphs)."""
    done = subprocess.run([*NCU, sys.executable, "-m", "benchmarks.gpu_kernels", "--target",
                           contender], cwd=ROOT, capture_output=True, text=True, timeout=timeout,
                          check=False)
    if done.returncode != 0:
        tail = (done.stderr or done.stdout).strip().splitlines()[-3:]
        raise RuntimeError(f"ncu on {contender} exited {done.returncode}: {' | '.join(tail)}")
    return done.stdout


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.gpu_kernels",
                                     description=__doc__.split("\n")[0])
    parser.add_argument("what", nargs="?", choices=["launches"],
                        help="count the kernels of a recorded step, each kernel set")
    parser.add_argument("--sweep", action="store_true", help="time a step for each setting")
    parser.add_argument("--ncu", action="store_true", help="every kernel's time under Nsight Compute")
    parser.add_argument("--json", type=Path, help="write the figures here")
    parser.add_argument("--target", choices=["cupy", "torch-cuda-graphs"], help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.target:
        profile_target(args.target)
        return 0
    if not (args.what or args.sweep or args.ncu):
        parser.error("say what to run: launches, --sweep, --ncu or several")
    figures: dict = {}
    status = 0
    if args.what == "launches":
        figures["launches"] = launches(log=lambda line: print(line, flush=True))
    if args.sweep:
        print("== recorded-step time per setting of the cupy backend's launch constants", flush=True)
        times = sweep(log=lambda line: print(line, flush=True))
        figures["sweep_us_per_step"] = {k: statistics.median(v) for k, v in times.items()}
        for setting, us in figures["sweep_us_per_step"].items():
            print(f"median  {setting:<40} {us:7.1f} us/step")
    if args.ncu:
        if shutil.which("ncu") is None:
            print("== ncu is not on the PATH: no per-kernel times")
            figures["ncu"] = "not installed"
        else:
            for contender in ("cupy", "torch-cuda-graphs"):
                if contender != "cupy":
                    from .torch_contenders import torch_unavailable

                    why = torch_unavailable(contender)
                    if why:
                        print(f"== {contender}: not profiled ({why})")
                        continue
                print(f"== Nsight Compute, {contender}, {PROFILED_STEPS} recorded steps", flush=True)
                try:
                    kernels = ncu_kernels(run_ncu(contender))
                except (RuntimeError, subprocess.TimeoutExpired) as exc:
                    print(f"failed: {exc}")
                    status = 1
                    continue
                print(format_kernels(kernels))
                figures[f"ncu_{contender}"] = kernels
    if args.json:
        args.json.write_text(json.dumps(figures, indent=1) + "\n")
    return status


if __name__ == "__main__":
    sys.exit(main())
