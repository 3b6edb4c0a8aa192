"""The training progress bar: tqdm on stderr, or nothing."""

from __future__ import annotations

import sys


class _NoBar:
    """Stands in for tqdm when there is no terminal to draw on, or no tqdm."""

    def update(self, n): pass

    def set_postfix(self, **kw): pass

    def close(self): pass


def progress_bar(total: int, desc: str, enabled: bool):
    """A tqdm bar of ``total`` batches on stderr when ``enabled`` (and tqdm importable),
    else one that draws nothing."""
    if enabled:
        try:
            from tqdm.auto import tqdm
        except ImportError:  # a declared dependency, but the numpy path runs without it
            return _NoBar()
        return tqdm(total=total, desc=desc, unit="batch", leave=False, dynamic_ncols=True,
                    file=sys.stderr)
    return _NoBar()
