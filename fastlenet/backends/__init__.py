"""Backend registry: the one place that turns a backend name into a backend.

A backend is a module under ``fastlenet.backends`` holding one :class:`Backend`
subclass; adding one is a new module and one entry in ``_REGISTRY``. Backend modules
import their optional dependencies at the top, so an uninstalled dependency shows up here
as an ImportError that :func:`get_backend` quotes. Every backend's kernels are tested
against :class:`~fastlenet.backends.reference.ReferenceBackend`, which is not registered.
"""

from __future__ import annotations

import importlib

from ..errors import BackendUnavailableError
from .base import Backend

# name -> (module, class), fastest first: ``auto`` takes the first one usable here.
_REGISTRY: dict[str, tuple[str, str]] = {
    "cupy": ("fastlenet.backends.cupy_backend", "CupyBackend"),
    "numba": ("fastlenet.backends.numba.backend", "NumbaBackend"),
    "numpy": ("fastlenet.backends.numpy_backend", "NumpyBackend"),
}

_instances: dict[str, Backend] = {}
_failures: dict[str, str] = {}


def names() -> list[str]:
    """Every registered backend name (usable here or not), plus ``auto``."""
    return [*_REGISTRY, "auto"]


def _load(name: str) -> Backend:
    if name in _instances:
        return _instances[name]
    if name in _failures:
        raise BackendUnavailableError(_failures[name])
    module_name, class_name = _REGISTRY[name]
    try:
        backend = getattr(importlib.import_module(module_name), class_name)()
    except Exception as exc:  # ImportError, or the backend's own "no device" check
        reason = f"{type(exc).__name__}: {exc}".splitlines()[0]
        _failures[name] = f"backend '{name}' is not usable here ({reason})"
        raise BackendUnavailableError(_failures[name]) from exc
    _instances[name] = backend
    return backend


def status() -> dict[str, str | None]:
    """For every registered backend: None when usable, else why it is not."""
    report: dict[str, str | None] = {}
    for name in _REGISTRY:
        try:
            _load(name)
            report[name] = None
        except BackendUnavailableError as exc:
            report[name] = str(exc)
    return report


def usable() -> list[str]:
    """Names of the backends that load and run here, in registry order."""
    return [name for name, why in status().items() if why is None]


def get_backend(name: str | Backend = "auto") -> Backend:
    """The backend called ``name`` ("numpy", ..., or "auto" for the fastest usable one).

    Raises BackendUnavailableError naming the cause and the usable backends.
    """
    if isinstance(name, Backend):
        return name
    if name == "auto":
        for candidate in _REGISTRY:
            try:
                return _load(candidate)
            except BackendUnavailableError:
                continue
        raise BackendUnavailableError("no backend is usable here: " + "; ".join(
            why for why in status().values() if why))
    if name not in _REGISTRY:
        raise BackendUnavailableError(
            f"unknown backend '{name}'; choose one of: {', '.join(names())}")
    try:
        return _load(name)
    except BackendUnavailableError as exc:
        raise BackendUnavailableError(
            f"{exc}; usable backends: {', '.join(usable()) or 'none'}") from exc.__cause__


__all__ = ["Backend", "get_backend", "names", "status", "usable"]
