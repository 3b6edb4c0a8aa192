#!/usr/bin/env bash
# The GPU check of issue 9 in one command, for a machine with a CUDA GPU, CuPy, PyTorch
# and pytest already installed and no network:
#
#     benchmarks/gpu_check.sh OUTDIR
#
# Installs this checkout without touching the network (an editable install with no
# dependencies; if that fails, a copy of the package on PYTHONPATH), then runs
# python -m benchmarks.gpu_check OUTDIR: fastlenet info, the GPU tests, the default
# training run and one with the fused kernels, the benchmarks against PyTorch CUDA,
# the cupy kernel tests, compute-sanitizer, and the launch counts and step times of both
# conv kernel sets, within a 9-minute budget (it took 2-3 minutes on an H200). OUTDIR
# gets at most 8 files, summary.txt last; the exit status is nonzero when any stage failed.
# PYTHON names the interpreter (default python3); FASTLENET_GPU_CHECK_INSTALL=0 skips
# the install (the checkout is importable already).
set -u
OUT=${1:?usage: benchmarks/gpu_check.sh OUTDIR}
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
mkdir -p "$OUT" || exit 2
OUT=$(cd "$OUT" && pwd)

install="skipped (FASTLENET_GPU_CHECK_INSTALL=0)"
if [ "${FASTLENET_GPU_CHECK_INSTALL:-1}" != 0 ]; then
    {
        echo "===== install: $PY -m pip install --no-deps --no-build-isolation --no-index -e ."
        "$PY" -m pip install --no-deps --no-build-isolation --no-index -e .
    } >>"$OUT/info.log" 2>&1
    if [ $? -eq 0 ] && "$PY" -c "import fastlenet.kernels" >>"$OUT/info.log" 2>&1; then
        install="editable install of $(pwd)"
    else
        # kernels/ ships as fastlenet.kernels: lay the package out as the wheel does
        site=$(mktemp -d)
        cp -r fastlenet "$site/fastlenet" && cp -r kernels "$site/fastlenet/kernels"
        export PYTHONPATH="$site${PYTHONPATH:+:$PYTHONPATH}"
        install="the editable install failed (see info.log); a copy of the package on PYTHONPATH ($site)"
        echo "===== install fallback: $install" >>"$OUT/info.log"
    fi
fi
"$PY" -m benchmarks.gpu_check "$OUT" --install "$install"
