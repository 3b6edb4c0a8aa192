"""Which of the cupy backend's kernel sets a training step runs: ``FASTLENET_CUDA_BLOCKS``.

``separate`` (the default, and unset): every layer its own kernels. ``fused``: the fused
conv blocks (cupy_conv_block.py) and fully connected chain (cupy_dense_chain.py); the
default changes only when a GPU run shows them faster (docs/cuda.md). The conv blocks read
it at every call, the chain when a model is bound to the backend.
"""

from __future__ import annotations

import os

from ..errors import ConfigError

SWITCH = "FASTLENET_CUDA_BLOCKS"
CHOICES = ("separate", "fused")


def kernel_set() -> str:
    """``separate`` or ``fused``, from FASTLENET_CUDA_BLOCKS; ConfigError for anything else."""
    value = os.environ.get(SWITCH, "").strip().lower() or "separate"
    if value not in CHOICES:
        raise ConfigError(f"{SWITCH}={os.environ[SWITCH]!r} is not a kernel set; set it to "
                          "'fused' or 'separate', or unset it (separate)")
    return value
