"""Wall time of one 8-setting sweep with --jobs 2 and with --cluster local:2, interleaved
(ABBA rounds), and whether every setting's accuracies agree; writes results.json here.

    PYTHONPATH=$PWD python benchmarks/results/2026-12-06-dask-sweep-epyc-zen3/measure.py [ROUNDS] [BACKEND]
"""

import csv
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

GRID = ["--lr", "2e-3,5e-3", "--batch-size", "64,128", "--seed", "0,1"]
FIXED = ["--limit", "5000", "--val-size", "1000", "--epochs", "2"]
RUNNERS = {"jobs2": ["--jobs", "2"], "local2": ["--cluster", "local:2"]}
SAME = ("status", "test_accuracy", "best_val_accuracy", "best_epoch", "epochs")


def sweep(runner: str, backend: str, folder: Path) -> tuple[float, list[dict]]:
    out = folder / f"{runner}-{time.monotonic_ns()}"
    began = time.perf_counter()
    subprocess.run([sys.executable, "-m", "fastlenet", "sweep", *GRID, *FIXED, "--backend", backend,
                    *RUNNERS[runner], "--out", str(out)], check=True, stdout=subprocess.DEVNULL)
    wall = time.perf_counter() - began
    with open(out / "sweep.csv", newline="") as f:
        rows = [{k: r[k] for k in ("run", *SAME)} for r in csv.DictReader(f)]
    shutil.rmtree(out)
    return wall, rows


def main() -> None:
    rounds = int(sys.argv[1]) if len(sys.argv) > 1 else 3
    backend = sys.argv[2] if len(sys.argv) > 2 else "auto"
    folder = Path(tempfile.mkdtemp(prefix="fastlenet-dask-bench-"))
    walls = {name: [] for name in RUNNERS}
    tables = {}
    sweep("jobs2", backend, folder)  # warm-up: the numba cache, the page cache
    for k in range(rounds):
        for name in (RUNNERS if k % 2 == 0 else reversed(list(RUNNERS))):
            wall, rows = sweep(name, backend, folder)
            walls[name].append(wall)
            tables.setdefault(name, rows)
            assert rows == tables[name], f"{name}: a setting changed between rounds"
    ratios = [c / j for c, j in zip(walls["local2"], walls["jobs2"])]
    result = {"grid": GRID + FIXED, "backend": backend, "walls": walls, "ratios": ratios,
              "median_ratio": sorted(ratios)[len(ratios) // 2],
              "same_accuracies": tables["jobs2"] == tables["local2"],
              "rows": tables["jobs2"], "machine": platform.processor() or platform.machine(),
              "cpus": os.cpu_count(), "load_after": os.getloadavg()}
    print(json.dumps(result, indent=1))
    name = f"results-{backend}.json"
    (Path(__file__).parent / name).write_text(json.dumps(result, indent=1) + "\n")
    shutil.rmtree(folder)


if __name__ == "__main__":
    main()
