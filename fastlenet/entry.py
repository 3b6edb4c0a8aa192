"""The ``fastlenet`` command's entry point: it loads the command line (and with it NumPy)
inside a handler, so that a Ctrl-C while the libraries load ends as quietly as one later."""

from __future__ import annotations

import sys


def main(argv: list[str] | None = None) -> int:
    try:
        from .cli import main as run
    except KeyboardInterrupt:
        print("fastlenet: interrupted", file=sys.stderr)
        return 130  # cli.EXIT_INTERRUPTED, which is not loaded yet
    return run(argv)
