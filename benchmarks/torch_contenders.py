"""PyTorch as a contender: its three contenders, why one cannot run here, and torch
imported and set up to compute as fastlenet does.

The op cases (ops.py) and the training runs (lenet.py) both start PyTorch from here.
"""

from __future__ import annotations

import importlib.util

from .machine import usable_cores

TORCH = "torch"
TORCH_CUDA = "torch-cuda"                # eager PyTorch on a CUDA device
TORCH_CUDA_GRAPHS = "torch-cuda-graphs"  # each training step one CUDA graph replay
# PyTorch contender -> (device, whole training steps replayed as CUDA graphs)
TORCH_CONTENDERS = {TORCH: ("cpu", False), TORCH_CUDA: ("cuda", False),
                    TORCH_CUDA_GRAPHS: ("cuda", True)}

# threads PyTorch may use: one per usable core unless set (the suite's --torch-threads)
torch_threads: int | None = None


def torch_unavailable(contender: str) -> str | None:
    """Why the PyTorch contender ``contender`` cannot run here, or None."""
    if importlib.util.find_spec("torch") is None:
        return ("PyTorch is not installed, so there is no reference figure; "
                "python -m pip install torch==2.13.0")
    if TORCH_CONTENDERS[contender][0] == "cuda":
        import torch

        if not torch.cuda.is_available():
            return (f"{contender} needs a CUDA device, and PyTorch {torch.__version__} sees "
                    "none (torch.cuda.is_available() is False)")
    return None


def import_torch():
    """torch, set to ``torch_threads`` threads (default: one per usable core)."""
    import torch

    torch.set_num_threads(torch_threads or usable_cores())
    return torch


def set_up_torch_cuda(torch) -> None:
    """PyTorch on a GPU as fastlenet computes: float32 arithmetic (PyTorch's default runs
    convolutions in TF32 on recent GPUs, which rounds to 10-bit mantissas), and cuDNN
    picking its fastest algorithm per shape (what a tuned PyTorch user sets)."""
    torch.backends.cudnn.allow_tf32 = False
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.benchmark = True
