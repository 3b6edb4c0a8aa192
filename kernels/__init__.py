"""CUDA C sources of the cupy backend, one ``.cu`` file per op family; each file opens
with a comment giving its kernels, layouts and thread-to-element map.

They live at the top of the repository (``kernels/``) and ship inside the package as
``fastlenet.kernels`` (pyproject.toml maps the folder), where :func:`sources` reads them
in a source checkout installed with ``pip install -e .`` and in a wheel alike.
"""

from importlib import resources


def sources() -> dict[str, str]:
    """File stem -> CUDA source text, for every ``.cu`` file of this package."""
    return {entry.name[:-len(".cu")]: entry.read_text(encoding="utf-8")
            for entry in resources.files(__name__).iterdir() if entry.name.endswith(".cu")}
