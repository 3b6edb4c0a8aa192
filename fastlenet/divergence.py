"""When a training run has diverged, and the one line that says so.

A run has diverged when a loss is NaN or infinite, or when the mean training loss over
the last WINDOW_IMAGES images is over FACTOR times its starting loss (docs/cli.md#divergence
gives the rule and why a healthy run cannot meet it).
"""

from __future__ import annotations

import math

FACTOR = 4.0          # healthy runs measured stay under 1.1x their starting loss
WINDOW_IMAGES = 512   # images the mean loss is taken over, so one bad batch is not enough
MIN_IMAGES = 64       # no verdict on fewer images than this


def starting_loss(first_loss: float, num_classes: int) -> float:
    """The loss a run is measured against: its first step's, or at least that of a
    uniform guess, ln K (so a lucky first batch does not lower the bar)."""
    return max(first_loss, math.log(num_classes))


def exploded(losses: list[float], batch_size: int, start: float) -> float | None:
    """The mean of the last losses (per step, the newest last) when it is over FACTOR
    times ``start``, else None."""
    steps = max(1, math.ceil(WINDOW_IMAGES / batch_size))
    window = losses[-steps:]
    if len(window) * batch_size < MIN_IMAGES:
        return None
    mean = sum(window) / len(window)
    return mean if mean > FACTOR * start else None


def advice(lr: float) -> str:
    """The fix, naming the learning rate tried."""
    return f"try a lower --lr than the {lr:g} used, e.g. --lr {lr / 10:g}"
