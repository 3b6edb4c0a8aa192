"""The state of the Philox4x32-10 generators (kernels/random.cu on the GPU,
numba/random.py on the CPU): a 64-bit key from the seed and a 64-bit counter.

Both backends derive the key from a seed the same way and number the draws the same way,
so the cupy and numba backends draw the same dropout masks and augmentations from the
same seed, and one's saved state restores in the other.
"""

from __future__ import annotations

import numpy as np

NAME = "Philox4x32-10"


def seed_key(seed: int) -> int:
    """The generator key of ``seed``: 64 bits from NumPy's SeedSequence."""
    return int(np.random.SeedSequence(seed).generate_state(1, np.uint64)[0])


def to_state(key: int, counter: int) -> dict:
    """A JSON-serialisable state, as checkpoints keep it."""
    return {"bit_generator": NAME, "key": int(key), "counter": int(counter)}


def from_state(state: dict, backend: str) -> tuple[int, int]:
    """(key, counter) of a saved state; TypeError or ValueError naming what is wrong
    (a state of another generator, or numbers outside 64 bits)."""
    if not isinstance(state, dict):
        raise TypeError(f"a generator state is a dict, not {type(state).__name__}")
    if state.get("bit_generator") != NAME:
        raise ValueError(f"a {state.get('bit_generator')!r} generator state does not fit "
                         f"the {backend} backend's {NAME} generator")
    missing = [name for name in ("key", "counter") if name not in state]
    if missing:
        raise ValueError(f"the generator state lacks its {' and '.join(missing)}")
    key, counter = int(state["key"]), int(state["counter"])
    if not (0 <= key < 2 ** 64 and 0 <= counter < 2 ** 64):
        raise ValueError("generator key and counter must be 64-bit unsigned integers")
    return key, counter
