"""``fastlenet info``: what this machine offers fastlenet, as sections of lines.

Each section is a function returning its lines; :data:`SECTIONS` lists them in print
order, so a new kind of information is one function and one entry.
"""

from __future__ import annotations

import os
import platform
from importlib import metadata

from . import backends, tuning
from .errors import FastLeNetError
from .version import __version__

# (name shown, its distributions (the first installed is reported), what fastlenet uses it for)
PACKAGES = (
    ("numpy", ("numpy",), "required: arrays, the numpy backend"),
    ("tqdm", ("tqdm",), "required: the progress bar"),
    ("numba", ("numba",), "the numba backend (extra: numba)"),
    ("cupy", ("cupy-cuda12x", "cupy-cuda13x", "cupy"),
     "the cupy backend (extra: cupy-cuda12 or cupy-cuda13)"),
    ("matplotlib", ("matplotlib",), "figures of report, compare, sweep (extra: plots)"),
    ("pillow", ("pillow",), "predict on photos (extra: images)"),
    ("onnx", ("onnx",), "export to ONNX (extra: onnx)"),
    ("onnxruntime", ("onnxruntime",), "runs exported ONNX files in the tests"),
    ("torch", ("torch",), "the live PyTorch oracle in the tests, benchmarks"),
    ("threadpoolctl", ("threadpoolctl",), "BLAS thread limits in sweeps, the example, benchmarks"),
    ("dask", ("dask",), "sweeps on a Dask cluster"),
    ("distributed", ("distributed",), "sweeps on a Dask cluster"),
)


def version_of(label: str, names: tuple[str, ...]) -> str:
    """The installed version of the first distribution of ``names`` found, naming it when
    it is not called ``label``; "not installed" when none is."""
    for name in names:
        try:
            version = metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
        return version if name == label else f"{version} ({name})"
    return "not installed"


def about() -> list[str]:
    return [f"fastlenet  {__version__}",
            f"python     {platform.python_version()} ({platform.machine()}, {platform.system()})"]


def packages() -> list[str]:
    lines = ["packages:"]
    for label, names, use in PACKAGES:
        lines.append(f"  {label:<14} {version_of(label, names):<24} {use}")
    return lines


def backend_lines() -> list[str]:
    lines = ["backends:"]
    for name, why in backends.status().items():
        lines.append(f"  {name:<6} {'usable' if why is None else 'not usable: ' + why}")
        device = backends.get_backend(name).device_description() if why is None else None
        if device:
            lines.append(f"         device: {device}")
    try:
        lines.append(f"  auto   -> {backends.get_backend('auto').name} (the default)")
    except FastLeNetError as exc:
        lines.append(f"  auto   -> none ({exc})")
    return lines


def tuning_lines() -> list[str]:
    lines = ["per-machine kernel choices (docs/tuning.md):", *tuning.describe(_numba_threads())]
    width = _tile_vector_bytes()
    if width:
        lines.append(f"  {'numba conv tiles':<22} {width}-byte vectors  (from the CPU's name and "
                     f"features, the width LLVM vectorizes with; not measured)")
    return lines


def _tile_vector_bytes() -> int | None:
    """The vector width of the numba convolutions' tiles here; None without Numba."""
    try:
        from .backends.numba import tiles
    except ImportError:
        return None
    return tiles.VECTOR_BYTES


def _numba_threads() -> int:
    """The thread count the numba backend's choices are kept for (every core when Numba
    is not installed: its default)."""
    try:
        import numba
    except ImportError:
        return os.cpu_count() or 1
    return numba.config.NUMBA_NUM_THREADS


SECTIONS = [about, packages, backend_lines, tuning_lines]


def info_text() -> str:
    """Every section, a blank line between them."""
    return "\n\n".join("\n".join(section()) for section in SECTIONS)
