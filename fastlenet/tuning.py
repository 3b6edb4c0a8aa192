"""Per-machine choices between interchangeable kernel variants, measured on first use and
kept on disk, as FFTW's wisdom or cuDNN's benchmark mode do (docs/tuning.md).

A choice is keyed by the machine (CPU model, LLVM's name for it, thread count) and the
op; ``FASTLENET_TUNING=off`` uses every op's default without measuring, ``retune``
measures again, and ``FASTLENET_CACHE_DIR`` moves the file from ~/.cache/fastlenet.
"""

from __future__ import annotations

import json
import os
import platform
import time
from collections.abc import Callable
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

from .atomic_write import write_json
from .errors import ConfigError

MODES = ("auto", "off", "retune")
# a variant replaces the default only when it is this much faster: a choice that noise
# could flip is not worth the bits it changes between machines
MARGIN = 0.03
ROUNDS = 7
ROUND_SECONDS = 0.004
STEADY = 0.10


@dataclass(frozen=True)
class Choice:
    """The variant in use for an op, and how it was decided."""

    op: str
    variant: str
    how: str                     # "measured now", "from <file>", "default (...)"
    times_us: dict | None = None  # each variant's fastest round, microseconds per call


def mode() -> str:
    """The tuning mode from FASTLENET_TUNING (default auto); ConfigError for another value."""
    value = os.environ.get("FASTLENET_TUNING", "auto").strip().lower() or "auto"
    if value not in MODES:
        raise ConfigError(f"FASTLENET_TUNING={value!r} is not a tuning mode; use one of "
                          f"{', '.join(MODES)}")
    return value


def cache_file() -> Path:
    """Where the choices are kept: $FASTLENET_CACHE_DIR, else $XDG_CACHE_HOME/fastlenet,
    else ~/.cache/fastlenet; the file is tuning.json."""
    folder = os.environ.get("FASTLENET_CACHE_DIR")
    if not folder:
        base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
        folder = Path(base) / "fastlenet"
    return Path(folder) / "tuning.json"


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _llvm_cpu() -> str:
    """LLVM's name for this CPU as Numba compiles for it (NUMBA_CPU_NAME overrides)."""
    if os.environ.get("NUMBA_CPU_NAME"):
        return os.environ["NUMBA_CPU_NAME"]
    try:
        import llvmlite.binding as llvm
    except ImportError:
        return "unknown"
    return llvm.get_host_cpu_name()


def machine_key(threads: int) -> str:
    """One line that names what a measured choice depends on."""
    return f"{_cpu_model()} | llvm {_llvm_cpu()} | {threads} threads"


def _read(path: Path) -> dict:
    """The file's choices; an unreadable or corrupt file is a cache to rebuild, not an error."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


@contextmanager
def _locked(path: Path):
    """Hold an exclusive lock beside ``path`` (where the OS has fcntl and the folder can
    be written), so processes starting together measure once and agree."""
    try:
        import fcntl
        path.parent.mkdir(parents=True, exist_ok=True)
        handle = open(path.with_suffix(".lock"), "a")
    except (ImportError, OSError):
        yield
        return
    with handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        yield


def _measure(variants: dict[str, Callable[[], None]]) -> dict[str, list[float]]:
    """Each variant's per-call time in each of ROUNDS interleaved rounds, microseconds:
    interleaving spreads a busy machine's noise over all of them alike."""
    calls = {}
    for name, run in variants.items():
        run()  # compile or load, and warm the caches
        tick = time.perf_counter()
        run()
        once = max(time.perf_counter() - tick, 1e-7)
        calls[name] = max(1, min(1000, int(ROUND_SECONDS / once)))
    rounds: dict[str, list[float]] = {name: [] for name in variants}
    for _ in range(ROUNDS):
        for name, run in variants.items():
            tick = time.perf_counter()
            for _ in range(calls[name]):
                run()
            rounds[name].append((time.perf_counter() - tick) / calls[name] * 1e6)
    return rounds


def _steady(rounds: dict[str, list[float]]) -> bool:
    """Whether every variant's fastest round was met again within STEADY: on a machine
    busy with other work the fastest rounds are luck, and no choice is made from them."""
    return all(sorted(times)[1] <= sorted(times)[0] * (1 + STEADY) for times in rounds.values())


def choose(op: str, variants: dict[str, Callable[[], None]], default: str,
           threads: int) -> Choice:
    """The variant to use for ``op`` on this machine: the one kept on disk, or else the
    fastest of ``variants`` (each a call that runs it once on representative inputs),
    measured now and kept. ``default`` wins unless another is MARGIN faster."""
    if default not in variants:
        raise ValueError(f"default {default!r} is not one of {sorted(variants)}")
    current = mode()
    if current == "off":
        return Choice(op, default, "default (FASTLENET_TUNING=off)")
    path = cache_file()
    machine = machine_key(threads)
    with _locked(path):
        kept = _read(path).get(machine, {}).get(op)
        if current == "auto" and isinstance(kept, dict) and kept.get("variant") in variants:
            return Choice(op, kept["variant"], f"from {path}", kept.get("times_us"))
        rounds = _measure(variants)
        times = {name: min(t) for name, t in rounds.items()}
        fastest = min(times, key=times.get)
        variant = fastest if times[fastest] < times[default] * (1 - MARGIN) else default
        record = {"variant": variant, "times_us": {k: round(v, 2) for k, v in times.items()},
                  "measured": datetime.now(timezone.utc).isoformat(timespec="seconds")}
        if not _steady(rounds):
            return Choice(op, default, "default: the machine was too busy for steady "
                          "timings (measured again next run)", record["times_us"])
        data = _read(path)
        data.setdefault(machine, {})[op] = record
        try:
            write_json(path, data)
            how = f"measured now, kept in {path}"
        except OSError as exc:
            how = f"measured now, not kept ({path}: {exc.strerror or exc})"
    return Choice(op, variant, how, record["times_us"])


def recorded() -> dict[str, dict]:
    """Every machine's kept choices, by machine key then op (for `fastlenet info`)."""
    return _read(cache_file())


def describe(threads: int) -> list[str]:
    """Lines for `fastlenet info`: the mode, the file, and this machine's kept choices."""
    lines = [f"  machine  {machine_key(threads)}",
             f"  mode     {mode()} (FASTLENET_TUNING), kept in {cache_file()}"]
    kept = recorded().get(machine_key(threads), {})
    if not kept:
        lines.append("  nothing measured on this machine yet (the first numba run measures)")
    for op, record in sorted(kept.items()):
        times = ", ".join(f"{k} {v:.0f} us" for k, v in record.get("times_us", {}).items())
        lines.append(f"  {op:<22} {record.get('variant')}  ({times}; measured "
                     f"{record.get('measured', '?')})")
    return lines
