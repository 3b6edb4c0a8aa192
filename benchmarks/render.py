"""Render a saved benchmark run as Markdown tables and a bar chart.

    python -m benchmarks.render RESULTS.json [-o RESULTS.md] [--chart RESULTS.png | --no-chart]

RESULTS.json is what ``python -m pytest benchmarks --benchmark-json RESULTS.json`` wrote.
The Markdown goes to stdout (or ``-o``); the chart (matplotlib) goes beside the JSON with
a ``.png`` suffix unless ``--chart`` names another file. Every figure is the median of its
rounds, and "vs PyTorch" is the contender's time (or memory) divided by PyTorch's from
the same run: below 1 is better. The epoch's ratio is the one measured with the two
interleaved (``extra_info["ratio_to_torch"]``).
"""

from __future__ import annotations

import argparse
import io
import json
import statistics
import sys
from dataclasses import dataclass
from pathlib import Path

from .torch_contenders import TORCH, TORCH_CUDA, TORCH_CUDA_GRAPHS

COURSEWORK_TARGET_S = 420.0
CHART_BATCH = 128  # the per-op chart compares contenders at the model's training batch


class RenderError(Exception):
    """A problem with the input or output, reported as one line."""


@dataclass
class Entry:
    """One benchmark of the run."""

    group: str
    contender: str
    params: dict
    median: float | None
    extra: dict


@dataclass
class Results:
    machine: dict
    conditions: dict
    entries: list[Entry]
    contenders: list[str]

    def group(self, name: str) -> list[Entry]:
        return [e for e in self.entries if e.group == name]

    def find(self, group: str, contender: str, **params) -> Entry | None:
        for e in self.group(group):
            if e.contender == contender and all(e.params.get(k) == v for k, v in params.items()):
                return e
        return None


def load(path: Path) -> Results:
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        raise RenderError(f"{path} does not exist; save a run with "
                          "python -m pytest benchmarks --benchmark-json RESULTS.json") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise RenderError(f"{path} is not readable JSON ({exc}); pass the file "
                          "--benchmark-json wrote") from None
    if not isinstance(data, dict) or not isinstance(data.get("benchmarks"), list):
        raise RenderError(f"{path} is not a pytest-benchmark results file (no 'benchmarks' "
                          "list); pass the file --benchmark-json wrote")
    entries = []
    for b in data["benchmarks"]:
        params = b.get("params") or {}
        if "contender" not in params:
            continue  # not one of this suite's benchmarks
        stats = b.get("stats") or {}
        entries.append(Entry(b.get("group") or "", params["contender"], params,
                             stats.get("median"), b.get("extra_info") or {}))
    if not entries:
        raise RenderError(f"{path} holds no fastlenet benchmarks with timings (runs with "
                          "--benchmark-disable save none); run the suite without it")
    conditions = data.get("conditions") or {}
    seen = list(dict.fromkeys(e.contender for e in entries))
    order = [c for c in conditions.get("contenders", []) if c in seen]
    order += [c for c in seen if c not in order]
    order.sort(key=lambda c: c == TORCH)  # PyTorch, the reference, last
    return Results((data.get("machine_info") or {}).get("fastlenet") or {}, conditions,
                   entries, order)


# ------------------------------------------------------------------ formatting
def _seconds(s: float | None) -> str:
    if s is None:
        return "–"
    if s >= 10:
        return f"{s:.1f} s"
    if s >= 1:
        return f"{s:.2f} s"
    if s >= 1e-3:
        return f"{s * 1e3:.3g} ms"
    return f"{s * 1e6:.3g} µs"


def _rate(x: float | None) -> str:
    return "–" if x is None else f"{x:,.0f}"


def _mb(x: float | None) -> str:
    return "–" if x is None else f"{x:,.0f} MB"


def _ratio(ours: float | None, theirs: float | None) -> str:
    if ours is None or not theirs:
        return "–"
    return f"{ours / theirs:.2f}x"


def _table(header: list[str], rows: list[list[str]], text_columns: int = 1) -> str:
    """A Markdown table: the first ``text_columns`` left-aligned, the figures right."""
    lines = ["| " + " | ".join(header) + " |",
             "|" + "|".join("---" if i < text_columns else "---:" for i in range(len(header))) + "|"]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines)


_TORCH_NAMES = {TORCH: "PyTorch (CPU)", TORCH_CUDA: "PyTorch CUDA (eager)",
                TORCH_CUDA_GRAPHS: "PyTorch CUDA (graphs)"}


def _name(contender: str) -> str:
    return _TORCH_NAMES.get(contender, f"fastlenet `{contender}`")


# ------------------------------------------------------------------ sections
def machine_section(results: Results) -> str:
    m, c = results.machine, results.conditions
    versions = m.get("versions", {})
    libs = ", ".join(f"{k} {v}" for k, v in versions.items())
    blas = "; ".join(f"{b.get('name')} {b.get('version')}"
                     + (f" {b['architecture']} kernels" if b.get("architecture") else "")
                     + f" ({b.get('num_threads')} thread{'' if b.get('num_threads') == 1 else 's'})"
                     for b in m.get("blas", [])) or "unknown"
    kernel_variables = m.get("kernel_variables") or {}
    if kernel_variables:
        blas += "; set: " + ", ".join(f"{k}={v}" for k, v in kernel_variables.items())
    gpus = "; GPU: " + "; ".join(m["gpus"]) if m.get("gpus") else ""
    d = m.get("cpu_details", {})
    cpu = m.get("cpu", "unknown CPU")
    about = [f"family {d['cpu family']} model {d['model']}" if "cpu family" in d else "",
             f"LLVM target {d['llvm_cpu']}" if "llvm_cpu" in d else "",
             " ".join(f.upper() for f in d.get("vector_features", []))]
    cpu += f" ({'; '.join(a for a in about if a)})" if any(about) else ""
    lines = [f"Machine: {cpu}, {m.get('cores', '?')} cores{gpus}; BLAS: {blas}.",
             f"Software: {libs or 'unknown'}."]
    when = c.get("date", "an unknown date")
    load = c.get("load_average_at_start")
    extra = f"; load average {load[0]} at the start, {c['load_average_at_end'][0]} at the end" if load else ""
    threads = f"; PyTorch threads: {c['torch_threads']}" if "torch_threads" in c else ""
    if "numba_threads" in c:
        layer = c.get("numba_threading_layer")
        threads += f"; Numba threads: {c['numba_threads']}" + (f" ({layer} layer)" if layer else "")
    if "numba_tile_bytes" in c:
        threads += f"; numba conv tiles: {c['numba_tile_bytes']}-byte vectors"
    lines.append(f"Run: {when}{threads}{extra}.")
    return "\n".join(lines)


MODEL_TITLES = {"": "LeNet-5", "lenet5-classic": "lenet5-classic", "compact": "compact"}


def training_section(results: Results) -> str | None:
    """One table per model timed: LeNet-5's groups (``epoch``), then each other model's
    (``epoch compact``)."""
    suffixes = dict.fromkeys(e.group[len(kind):].strip() for e in results.entries
                             for kind in ("training step", "epoch") if e.group.startswith(kind))
    tables = [_training_table(results, suffix) for suffix in sorted(suffixes, key=bool)]
    return "\n\n".join(t for t in tables if t) or None


def _training_table(results: Results, suffix: str) -> str | None:
    step_group = f"training step {suffix}".strip()
    epoch_group = f"epoch {suffix}".strip()
    rows = []
    for c in results.contenders:
        step, epoch = results.find(step_group, c), results.find(epoch_group, c)
        if step is None and epoch is None:
            continue
        torch_step, torch_epoch = results.find(step_group, TORCH), results.find(epoch_group, TORCH)
        row = [_name(c)]
        row += [_seconds(step.median), _rate(step.extra.get("images_per_second")),
                _ratio(step.median, torch_step and torch_step.median)] if step else ["–"] * 3
        if epoch:
            paired = epoch.extra.get("ratio_to_torch")
            ratio = (f"{paired:.2f}x" if paired is not None
                     else _ratio(epoch.median, torch_epoch and torch_epoch.median))
            row += [_seconds(epoch.median), _rate(epoch.extra.get("images_per_second")), ratio]
        else:
            row += ["–"] * 3
        rows.append(row)
    if not rows:
        return None
    images = next((e.extra.get("images") for e in results.group(epoch_group)), None)
    model = MODEL_TITLES.get(suffix, suffix)
    title = (f"### Training speed: {model}, batch 128, Adam, float32\n\n"
             f"A training step (gather, forward, loss, backward, Adam) and a full epoch"
             f"{f' of {images:,} images' if images else ''}. Epochs of each fastlenet backend "
             "were interleaved with PyTorch's.\n\n")
    return title + _table(["contender", "step", "images/s", "vs PyTorch", "epoch", "images/s",
                           "vs PyTorch"], rows)


def accuracy_section(results: Results) -> str | None:
    entries = {e.contender: e for e in results.group("time to accuracy")}
    if not entries:
        return None
    torch = entries.get(TORCH)
    rows = []
    for c in results.contenders:
        e = entries.get(c)
        if e is None:
            continue
        row = [_name(c)]
        for key in ("to_97", "to_99"):
            reached = e.extra.get(key)
            theirs = torch and (torch.extra.get(key) or {}).get("seconds")
            if reached:
                row += [f"{_seconds(reached['seconds'])} (epoch {reached['epoch']})",
                        _ratio(reached["seconds"], theirs),
                        f"{reached['seconds'] / COURSEWORK_TARGET_S:.1%}"]
            else:
                row += ["not reached", "–", "–"]
        epochs = e.extra.get("epochs") or []
        row.append(_seconds(statistics.median(r["epoch_seconds"] for r in epochs))
                   if epochs and all("epoch_seconds" in r for r in epochs) else "–")
        row.append(f"{epochs[-1]['test_accuracy']:.2%}" if epochs else "–")
        rows.append(row)
    first = next(iter(entries.values())).extra
    recipe = first.get("recipe")
    if isinstance(recipe, dict):
        named = f"the {recipe['recipe']} recipe: " if "recipe" in recipe else ""
        extras = "".join(f", {label} {recipe[key]:g}" for key, label in (
            ("beta1", "beta1"), ("beta2", "beta2"), ("label_smoothing", "label smoothing"))
            if key in recipe)
        described = (f"{named}{recipe['epochs']} epochs, {recipe['optimizer']}, "
                     f"{recipe['schedule']} lr {recipe['lr']:g}, batch {recipe['batch_size']}"
                     f"{extras}, {recipe['val_size']:,} images held out")
    else:  # results saved before the recipe was recorded
        described = "the TrainConfig defaults of that run"
    title = ("### Time to test accuracy\n\n"
             f"The default `fastlenet train` recipe (seed {first.get('seed')}; {described}), "
             "and the same recipe in PyTorch from "
             "the same initial weights, shuffled order and learning rates. Training time until "
             "the test accuracy (measured after each epoch) first reached the target, evaluation "
             f"excluded; \"of 420 s\" is its share of the coursework target (97% in 7 minutes). "
             "The runs stop at 99%.\n\n")
    return title + _table(["contender", "to 97%", "vs PyTorch", "of 420 s", "to 99%",
                           "vs PyTorch", "of 420 s", "s per epoch", "last test accuracy"], rows)


def memory_section(results: Results) -> str | None:
    rows = []
    for c in results.contenders:
        startup = results.find("startup", c)
        peaks = {b: results.find("peak memory", c, memory_batch=b) for b in (128, 1024)}
        if startup is None and not any(peaks.values()):
            continue
        row = [_name(c)]
        for b, e in peaks.items():
            torch = results.find("peak memory", TORCH, memory_batch=b)
            ours = e and e.extra.get("training_peak_rss_mb")
            row += [_mb(ours), _ratio(ours, torch and torch.extra.get("training_peak_rss_mb"))]
        before = next((e.extra.get("rss_before_steps_mb") for e in peaks.values() if e), None)
        process = max((e.extra.get("peak_rss_mb") or 0 for e in peaks.values() if e), default=None)
        row += [_mb(before), _mb(process)]
        if startup:
            cold, warm = startup.extra.get("cold", {}), startup.extra.get("warm", {})
            row += [_seconds(cold.get("first_step_s")), _seconds(warm.get("first_step_s")),
                    _seconds(warm.get("to_first_step_s"))]
        else:
            row += ["–"] * 3
        rows.append(row)
    if not rows:
        return None
    images = next((e.extra.get("images") for e in results.entries
                   if e.group == "peak memory" and e.extra.get("images")), None)
    title = ("### Memory and startup\n\n"
             "Each figure from a fresh process training LeNet-5 with "
             f"{f'{images:,}' if images else 'the'} MNIST training images in memory. Peak resident set size during the training steps at batch 128 "
             "and 1024; the resident size before them; the process's peak including data "
             "preparation. The first training step with empty compile caches (cold: includes "
             "JIT compilation) and with the caches the cold run filled (warm); and the warm "
             "process's time from start to the end of its first step (imports and data loading "
             "included).\n\n")
    return title + _table(["contender", "peak, batch 128", "vs PyTorch", "peak, batch 1024",
                           "vs PyTorch", "before steps", "process peak", "first step, cold",
                           "first step, warm", "start to first step"], rows)


OP_ORDER = ("conv2d_relu_maxpool2d_forward", "conv2d_forward", "conv2d_backward",
            "relu_maxpool2d_forward",
            "relu_maxpool2d_backward", "maxpool2d_forward", "maxpool2d_backward",
            "batchnorm_forward", "batchnorm_backward", "batchnorm_relu_maxpool2d_forward",
            "batchnorm_relu_maxpool2d_backward", "avgpool2d_forward", "avgpool2d_backward",
            "tanh_forward", "tanh_backward", "linear_forward", "linear_backward", "softmax_cross_entropy", "adam_update")


def _op_entries(results: Results) -> list[Entry]:
    ops = [e for e in results.entries if e.extra.get("op")]
    return sorted(ops, key=lambda e: (OP_ORDER.index(e.extra["op"]) if e.extra["op"] in OP_ORDER
                                      else len(OP_ORDER), e.extra.get("layer") or "",
                                      e.params.get("batch") or 0))


def ops_section(results: Results) -> str | None:
    ops = _op_entries(results)
    if not ops:
        return None
    cases = list(dict.fromkeys((e.extra["op"], e.extra.get("layer"), e.params.get("batch"))
                               for e in ops))
    ours = [c for c in results.contenders if c != TORCH]
    has_torch = TORCH in results.contenders
    header = ["op", "layer", "batch"] + [f"`{c}`" if c != TORCH else "PyTorch" for c in results.contenders]
    if has_torch:
        header += [f"`{c}` vs PyTorch" for c in ours]
    rows = []
    for op, layer, batch in cases:
        found = {c: results.find(op if not layer else f"{op} {layer}", c, **({"batch": batch} if batch else {}))
                 for c in results.contenders}
        row = [op, layer or "", str(batch) if batch else "–"]
        row += [_seconds(e.median) if e else "–" for e in found.values()]
        if has_torch:
            torch = found[TORCH]
            row += [_ratio(found[c] and found[c].median, torch and torch.median) for c in ours]
        rows.append(row)
    first_calls = []
    for c in results.contenders:
        timed = [e for e in ops if e.contender == c and e.extra.get("first_call_s") is not None]
        if timed:
            slowest = max(timed, key=lambda e: e.extra["first_call_s"])
            first_calls.append([_name(c), _seconds(slowest.extra["first_call_s"]), slowest.group,
                                _seconds(sum(e.extra["first_call_s"] for e in timed))])
    first = ("### First call of each op\n\nThe first call in the process, untimed by the "
             "benchmark: JIT compilation or its load from the disk cache (compiled backends), "
             "allocator and cache warm-up (all).\n\n"
             + _table(["contender", "slowest first call", "op", "sum over all op cases"],
                      first_calls))
    title = ("### Kernels\n\nMedian time of one call at LeNet-5's shapes (conv1: 1->6 channels "
             "on 32x32; conv2: 6->16 on 14x14; pool1/pool2 after them; fc1-fc3: 400-120-84-10), "
             "each checked against the NumPy backend first.\n\n")
    return title + _table(header, rows, text_columns=2) + "\n\n" + first


def markdown(results: Results) -> str:
    sections = [machine_section(results), training_section(results), accuracy_section(results),
                memory_section(results), ops_section(results)]
    return "\n\n".join(s for s in sections if s) + "\n"


# ------------------------------------------------------------------ chart
def chart(results: Results, path: Path) -> None:
    """Left: seconds per epoch (or per training step) by contender; right: each op's time
    relative to PyTorch at batch 128 (or absolute times when PyTorch is absent)."""
    try:  # the object API: no window, and pyplot's global state is left alone
        from matplotlib.figure import Figure
    except ImportError:
        raise RenderError("the chart needs matplotlib (python -m pip install -e '.[bench]'); "
                          "or pass --no-chart") from None
    from fastlenet.atomic_write import atomic_open

    fig = Figure(figsize=(13, 4.8))
    left, right = fig.subplots(1, 2, width_ratios=(1, 3))
    whole = "epoch" if results.group("epoch") else "training step"
    bars = [(c, results.find(whole, c)) for c in results.contenders]
    bars = [(c, e) for c, e in bars if e is not None and e.median is not None]
    left.bar([c for c, _ in bars], [e.median for _, e in bars],
             color=["tab:gray" if c == TORCH else "tab:blue" for c, _ in bars])
    for i, (c, e) in enumerate(bars):
        ratio = e.extra.get("ratio_to_torch")
        label = f"{e.median:.2f} s" + (f"\n{ratio:.2f}x PyTorch" if ratio is not None else "")
        left.annotate(label, (i, e.median), ha="center", va="bottom", fontsize=8)
    left.set_ylabel(f"seconds per {whole}")
    left.set_title(f"LeNet-5 {whole}, batch 128")
    left.margins(y=0.25)

    ops = [e for e in _op_entries(results) if e.params.get("batch") in (CHART_BATCH, None)]
    labels = list(dict.fromkeys(e.group for e in ops))
    medians = {(e.group, e.contender): e.median for e in ops}
    has_torch = TORCH in results.contenders
    shown = [c for c in results.contenders if c != TORCH] if has_torch else results.contenders
    width = 0.8 / max(len(shown), 1)
    for j, c in enumerate(shown):
        xs, ys = [], []
        for i, label in enumerate(labels):
            ours, theirs = medians.get((label, c)), medians.get((label, TORCH))
            value = (ours / theirs if ours and theirs else None) if has_torch else ours and ours * 1e3
            if value:
                xs.append(i + (j - (len(shown) - 1) / 2) * width)
                ys.append(value)
        right.bar(xs, ys, width=width, label=c)
    right.set_xticks(range(len(labels)), labels, rotation=35, ha="right", fontsize=8)
    right.set_yscale("log")
    if has_torch:
        right.axhline(1.0, color="tab:gray", linestyle="--", linewidth=1)
        right.set_ylabel("time / PyTorch's (below 1: faster)")
    else:
        right.set_ylabel("ms per call")
    right.set_title(f"Kernels at batch {CHART_BATCH}")
    right.legend(fontsize=8)
    m = results.machine
    fig.suptitle(f"{m.get('cpu', 'unknown CPU')}, {m.get('cores', '?')} cores, "
                 f"{results.conditions.get('date', '')[:10]}", fontsize=9)
    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=120)
    with atomic_open(path, "wb") as f:
        f.write(buffer.getvalue())


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.render",
                                     description=__doc__.split("\n\n")[0])
    parser.add_argument("results", type=Path, help="the JSON file --benchmark-json wrote")
    parser.add_argument("-o", "--output", type=Path, help="write the Markdown here (default: stdout)")
    where = parser.add_mutually_exclusive_group()
    where.add_argument("--chart", type=Path, help="the chart's PNG file (default: RESULTS.png)")
    where.add_argument("--no-chart", action="store_true", help="write no chart")
    args = parser.parse_args(argv)
    try:
        results = load(args.results)
        text = markdown(results)
        if args.output:
            from fastlenet.atomic_write import atomic_open

            with atomic_open(args.output, "w") as f:
                f.write(text)
        else:
            sys.stdout.write(text)
        if not args.no_chart:
            chart(results, args.chart or args.results.with_suffix(".png"))
    except RenderError as exc:
        print(f"render: error: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:
        print(f"render: error: cannot write {exc.filename}: {exc.strerror}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
