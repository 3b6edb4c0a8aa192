"""Pen strokes that redraw an MNIST digit, for driving the demo page like a person.

The digit's ink (pixels above half intensity) is thinned to a one-pixel skeleton
(Zhang and Suen 1984) and the skeleton walked into polylines, endpoints first: what a
pen would trace. Coordinates are in the 28x28 image's pixels; scale them to the canvas.
"""

import numpy as np

# the 8 neighbours P2..P9 of Zhang-Suen, clockwise from north: (row, column) offsets
_RING = [(-1, 0), (-1, 1), (0, 1), (1, 1), (1, 0), (1, -1), (0, -1), (-1, -1)]


def skeleton(ink: np.ndarray) -> np.ndarray:
    """(H, W) bool -> (H, W) bool, thinned to lines one pixel wide."""
    s = np.pad(ink.astype(np.uint8), 1)
    h, w = ink.shape

    def ring():
        return [s[1 + dy:1 + dy + h, 1 + dx:1 + dx + w] for dy, dx in _RING]

    changed = True
    while changed:
        changed = False
        for step in (0, 1):
            p = ring()
            count = sum(p)
            transitions = sum((p[i] == 0) & (p[(i + 1) % 8] == 1) for i in range(8))
            # P2 P4 P6 / P4 P6 P8 on the first pass, P2 P4 P8 / P2 P6 P8 on the second
            a, b = ((p[0] * p[2] * p[4], p[2] * p[4] * p[6]) if step == 0
                    else (p[0] * p[2] * p[6], p[0] * p[4] * p[6]))
            core = s[1:-1, 1:-1]
            remove = (core == 1) & (count >= 2) & (count <= 6) & (transitions == 1) & (a == 0) & (b == 0)
            if remove.any():
                core[remove] = 0
                changed = True
    return s[1:-1, 1:-1].astype(bool)


def strokes(digit: np.ndarray, threshold: int = 128) -> list[list[tuple[int, int]]]:
    """(28, 28) uint8 digit -> polylines of (x, y) pixel positions covering its skeleton."""
    left = {(int(y), int(x)) for y, x in zip(*np.nonzero(skeleton(digit >= threshold)))}

    def free_neighbours(y, x):
        # the four edge neighbours before the diagonal ones: smoother lines
        order = [(-1, 0), (0, 1), (1, 0), (0, -1), (-1, 1), (1, 1), (1, -1), (-1, -1)]
        return [(y + dy, x + dx) for dy, dx in order if (y + dy, x + dx) in left]

    lines = []
    while left:
        # start at an end of a line (fewest free neighbours), top-most first
        start = min(left, key=lambda p: (len(free_neighbours(*p)), p))
        left.discard(start)
        path = [start]
        while True:
            nxt = free_neighbours(*path[-1])
            if not nxt:
                break
            left.discard(nxt[0])
            path.append(nxt[0])
        lines.append([(x, y) for y, x in path])
    return lines
