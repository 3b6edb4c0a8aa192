"""The ``fastlenet`` command: parses options and calls the library.

Every user mistake ends in one line on stderr (``fastlenet: error: ...``) and exit
status 2; a clean run exits 0.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import shlex
import sys

import numpy as np

from . import backends, compare, report
from .version import __version__
from .config import RECIPES, TrainConfig, default_recipe
from .data import DATASETS, preprocess
from .demo import write_demo
from .export import FORMATS, export_checkpoint, resolve_format, torch_source
from .figures import require_matplotlib
from .errors import ConfigError, FastLeNetError, TrainingDivergedError
from .evaluation import confusion_matrix, evaluate, load_test_set, per_class_accuracy
from .imageprep import load_digit
from .info import info_text
from .nn import DTYPES, MODELS, build_model
from .optim import OPTIMIZERS, SCHEDULES
from .sweep import DEFAULT_CLUSTER_TIMEOUT, resume_sweep, run_sweep
from .train import train
from .trained_model import PATH_HELP, load_trained_model, model_checkpoint

EXIT_ERROR = 2
EXIT_INTERRUPTED = 130
EXIT_DIVERGED = 3  # training stopped as diverged (docs/cli.md#divergence)


class _Parser(argparse.ArgumentParser):
    """argparse, but a bad option is one line naming it and pointing at --help."""

    def error(self, message):
        self.exit(EXIT_ERROR, f"{self.prog}: error: {message} (see '{self.prog} --help')\n")


# Option values are only parsed here; their ranges are checked once, by TrainConfig and
# the library calls, whose messages name the option.
def _int(text: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an integer: {text!r}") from None


def _float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    return value


def _add_train_options(p: argparse.ArgumentParser) -> None:
    d = TrainConfig()
    # defaults are None so that --resume can tell which options were given
    p.add_argument("--backend", choices=backends.names(), help=f"array backend (default: {d.backend})")
    p.add_argument("--model", choices=list(MODELS), help=f"model (default: {d.model})")
    fast, augmented = RECIPES[default_recipe(False)], RECIPES[default_recipe(True)]

    def by_recipe(field: str) -> str:
        return f"(default: the recipe's, {fast[field]}; {augmented[field]} with --augment)"

    p.add_argument("--recipe", choices=list(RECIPES),
                   help="the defaults of the options marked 'the recipe's': fast (99%% test "
                        "accuracy in 4 epochs), augment (with --augment), classic (8 epochs) "
                        f"(default: {default_recipe(False)}; {default_recipe(True)} with --augment)")
    p.add_argument("--epochs", type=_int, help=f"epochs to train {by_recipe('epochs')}")
    p.add_argument("--batch-size", type=_int, help=f"images per step {by_recipe('batch_size')}")
    p.add_argument("--optimizer", choices=OPTIMIZERS, help=f"optimizer (default: {d.optimizer})")
    p.add_argument("--lr", type=_float, help=f"(peak) learning rate {by_recipe('lr')}")
    p.add_argument("--beta1", type=_float, help=f"Adam's first-moment decay {by_recipe('beta1')}")
    p.add_argument("--beta2", type=_float, help=f"Adam's second-moment decay {by_recipe('beta2')}")
    p.add_argument("--schedule", choices=SCHEDULES, help=f"learning-rate schedule (default: {d.schedule})")
    p.add_argument("--weight-decay", type=_float, help=f"decoupled weight decay (default: {d.weight_decay})")
    p.add_argument("--label-smoothing", type=_float, help=f"label smoothing {by_recipe('label_smoothing')}")
    p.add_argument("--seed", type=_int, help=f"seed for weights, split and shuffling (default: {d.seed})")
    p.add_argument("--val-size", type=_int, help=f"validation images held out of the training set (default: {d.val_size})")
    p.add_argument("--dataset", choices=DATASETS, help=f"dataset (default: {d.dataset})")
    p.add_argument("--data-dir", help="folder of MNIST-format IDX files; alone, it trains on them as dataset "
                   "'custom' (default: $FASTLENET_DATA_DIR or the dataset's own folder)")
    p.add_argument("--dtype", choices=DTYPES, help=f"floating-point precision (default: {d.dtype})")
    p.add_argument("--limit", type=_int, dest="train_limit", help="train on only this many images (quick tries)")
    p.add_argument("--target-accuracy", type=_float, help="stop once validation accuracy reaches this fraction, e.g. 0.99")
    p.add_argument("--out", help="run folder (default: runs/<time>-<model>-<backend>)")
    p.add_argument("--resume", metavar="RUN", help="continue the run in this folder (or from this checkpoint)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar (the default when not on a terminal)")
    _add_augment_options(p)


_AUGMENT_HELP = {  # TrainConfig field -> (metavar, help)
    "augment_shift": ("PX", "random shift up to this many pixels in x and y"),
    "augment_rotate": ("DEG", "random rotation up to this many degrees either way"),
    "augment_scale": ("S", "random size factor in [1 - S, 1 + S]"),
    "augment_shear": ("K", "random horizontal shear factor in [-K, K]"),
    "augment_elastic": ("ALPHA", "elastic distortion strength in pixels (Simard et al. 2003, sigma 4)"),
    "augment_noise": ("STD", "Gaussian noise, in pixel intensity (black to white is 1)"),
}


def _check_augment_options(given: dict) -> None:
    """An --augment-* option without --augment would be silently ignored: refuse it."""
    tuned = [f for f in _AUGMENT_HELP if f in given]
    if tuned and not given.get("augment"):
        raise ConfigError(f"{_option_names()[tuned[0]]} sets up augmentation, which is "
                          "off; add --augment")


def _add_augment_options(p: argparse.ArgumentParser) -> None:
    d = TrainConfig()
    g = p.add_argument_group("augmentation", "random transforms of each training batch; "
                             "0 turns one off")
    g.add_argument("--augment", action="store_true", default=None,
                   help="augment the training images (off by default)")
    for field, (metavar, text) in _AUGMENT_HELP.items():
        g.add_argument("--" + field.replace("_", "-"), type=_float, metavar=metavar,
                       help=f"{text} (default: {getattr(d, field)})")


def cmd_train(args) -> int:
    fields = {f.name for f in dataclasses.fields(TrainConfig)}
    given = {k: v for k, v in vars(args).items() if k in fields and v is not None}
    if args.resume:
        changed = sorted(set(given) - {"epochs"})
        if changed:
            names = _option_names()
            raise ConfigError(f"--resume continues a run with its own settings; drop "
                              f"{', '.join(names[c] for c in changed)} (only --epochs may change)")
        config = None
    else:
        _check_augment_options(given)
        config = TrainConfig(**given)
    if args.report:  # before training, so a missing matplotlib does not cost a run
        require_matplotlib()
    metrics = train(config, out=args.out, resume=args.resume,
                    epochs=given.get("epochs") if args.resume else None,
                    progress=False if args.no_progress else None)
    if args.report:
        report.make_report(metrics["run_dir"])
    else:
        print(f"figures and an HTML report: fastlenet report {shlex.quote(metrics['run_dir'])}")
    return 0


_NOT_SWEPT = {"out", "resume", "no_progress", "help"}  # train options a sweep sets itself
_FLAG_VALUES = {"on": True, "off": False, "yes": True, "no": False, "true": True, "false": False}


def _train_actions() -> list[argparse.Action]:
    """The train command's options that a sweep can vary."""
    template = argparse.ArgumentParser(add_help=False)
    _add_train_options(template)
    return [a for a in template._actions if a.dest not in _NOT_SWEPT]


def _option_names() -> dict[str, str]:
    """Each train option's destination (a TrainConfig field) -> the option as the user
    types it, read from the parser (e.g. train_limit -> --limit)."""
    return {a.dest: max(a.option_strings, key=len) for a in _train_actions()}


def _add_sweep_options(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("grid", "any train option, with a comma-separated list of "
                             "values to try (one value: the same for every setting)")
    for action in _train_actions():
        if action.nargs == 0:  # a flag, e.g. --augment: on for all, or 'off,on' to compare
            g.add_argument(*action.option_strings, dest=action.dest, nargs="?", const="on",
                           metavar="off,on", help=action.help)
        else:
            g.add_argument(*action.option_strings, dest=action.dest, metavar="V[,V...]",
                           help=action.help)
    p.add_argument("--jobs", type=_int, default=1, help="settings to train at once, each on "
                   "one thread (default: 1, one after another with the usual threads)")
    p.add_argument("--out", help="sweep folder (default: sweeps/<time>)")
    p.add_argument("--resume", metavar="SWEEP", help="continue the sweep in this folder: ended "
                   "settings are kept, started ones resume from their checkpoints")
    g = p.add_argument_group("Dask", "train each setting as a task on a Dask cluster (needs "
                             'the dask extra: pip install -e ".[dask]"; see docs/sweeps.md)')
    g.add_argument("--cluster", metavar="ADDRESS", help="a Dask scheduler, tcp://HOST:PORT, or "
                   "local:N to start N single-threaded worker processes here")
    g.add_argument("--cluster-timeout", type=_float, default=DEFAULT_CLUSTER_TIMEOUT,
                   metavar="SECONDS", help="give up when the scheduler does not answer, or "
                   f"has no worker, for this long (default: {DEFAULT_CLUSTER_TIMEOUT:g})")


def _sweep_values(action: argparse.Action, text: str) -> list:
    """Parse 'v1,v2,...' for one train option, as the train command would parse each."""
    option = action.option_strings[0]
    values = []
    for piece in text.split(","):
        piece = piece.strip()
        if action.nargs == 0:
            if piece.lower() not in _FLAG_VALUES:
                raise ConfigError(f"{option} takes on or off in a sweep, got {piece!r}")
            values.append(_FLAG_VALUES[piece.lower()])
            continue
        try:
            value = action.type(piece) if action.type else piece
        except argparse.ArgumentTypeError as exc:
            raise ConfigError(f"{option}: {exc}") from None
        if action.choices is not None and value not in action.choices:
            raise ConfigError(f"{option}: invalid choice {piece!r} (choose from "
                              f"{', '.join(map(str, action.choices))})")
        values.append(value)
    return values


def cmd_sweep(args) -> int:
    grid, fixed = {}, {}
    runner = dict(jobs=args.jobs, cluster=args.cluster, cluster_timeout=args.cluster_timeout)
    if args.resume:
        given = [a.option_strings[0] for a in _train_actions() if getattr(args, a.dest) is not None]
        if given or args.out:
            raise ConfigError(f"--resume continues a sweep with its own settings and folder; "
                              f"drop {', '.join(given + ['--out'] * bool(args.out))}")
        return _sweep_status(resume_sweep(args.resume, **runner))
    for action in _train_actions():
        text = getattr(args, action.dest)
        if text is None:
            continue
        values = _sweep_values(action, text)
        if len(values) == 1:
            fixed[action.dest] = values[0]
        else:
            grid[action.dest] = values
    _check_augment_options({**fixed, **{k: any(v) if k == "augment" else v for k, v in grid.items()}})
    if not grid:
        raise ConfigError("a sweep needs at least one option with several values, "
                          "e.g. --lr 1e-3,3e-3")
    return _sweep_status(run_sweep(grid, fixed, out=args.out, **runner))


def _sweep_status(rows: list[dict]) -> int:
    """The sweep's exit status: an error, said in one line, when no setting trained."""
    if all(row["status"].startswith("failed") or row["status"] == "diverged" for row in rows):
        print("fastlenet: error: no setting of the sweep trained (failed or diverged); "
              "the status column of its table says why", file=sys.stderr)
        return EXIT_ERROR
    return 0


def cmd_evaluate(args) -> int:
    source = model_checkpoint(args.checkpoint)
    model, meta = load_trained_model(source, args.backend)
    x, y, dataset = load_test_set(meta, args.dataset, args.data_dir)
    loss, accuracy, preds = evaluate(model, x, y, batch_size=args.batch_size)
    k = model.num_classes
    confusion = confusion_matrix(y, preds, k)
    per_class = per_class_accuracy(confusion)
    if args.json:
        print(json.dumps({"checkpoint": str(source), "dataset": dataset.name,
                          "accuracy": accuracy, "loss": loss, "per_class_accuracy": per_class.tolist(),
                          "confusion_matrix": confusion.tolist()}, indent=2))
        return 0
    names = [str(n) for n in meta.get("class_names") or range(k)]
    print(f"{source}: {meta['model']} on the {dataset.name} test set ({len(y):,} images): "
          f"accuracy {accuracy:.2%}, loss {loss:.4f}")
    print("\nper-class accuracy:")
    width = max(len(n) for n in names)
    for name, acc, total in zip(names, per_class, confusion.sum(axis=1)):
        print(f"  {name:<{width}}  {acc:7.2%}  ({total:,} images)")
    print("\nconfusion matrix (rows: true class, columns: predicted):")
    cell = max(5, len(str(confusion.max())) + 1)
    print(" " * (width + 2) + "".join(f"{i:>{cell}}" for i in range(k)))
    for i, row in enumerate(confusion):
        print(f"  {i:<{width}}" + "".join(f"{v:>{cell}}" for v in row))
    return 0


def cmd_predict(args) -> int:
    model, meta = load_trained_model(args.checkpoint, args.backend)
    names = [str(n) for n in meta.get("class_names") or range(model.num_classes)]
    failed = 0
    for path in args.images:
        try:
            digit = load_digit(path)
        except FastLeNetError as exc:
            print(f"fastlenet: error: {exc}", file=sys.stderr)
            failed += 1
            continue
        proba = model.predict_proba(preprocess(digit[None], meta["mean"], meta["std"]))[0]
        order = np.argsort(proba)[::-1]
        runner_up = f"  (next: {names[order[1]]} {proba[order[1]]:.1%})" if len(order) > 1 else ""
        print(f"{path}: {names[order[0]]}  probability {proba[order[0]]:.1%}{runner_up}")
    return EXIT_ERROR if failed else 0


def cmd_report(args) -> int:
    report.make_report(args.run, args.out, backend=args.backend, seed=args.seed)
    return 0


def cmd_compare(args) -> int:
    result = compare.compare_runs(args.runs, args.out)
    print(result.markdown)
    print(f"\nwritten: {result.markdown_path}, {result.csv_path}, {result.figure_path}")
    return 0


def cmd_summary(args) -> int:
    print(build_model(args.model, "numpy").summary_text())
    return 0


def cmd_info(args) -> int:
    print(info_text())
    return 0


def _add_export_command(sub) -> None:
    p = sub.add_parser("export", help="write a checkpoint's model as ONNX, or as weights with PyTorch's names",
                       description="Write the model as an ONNX file (needs the onnx extra: pip install "
                       "'fastlenet[onnx]') or as an .npz of weights named as PyTorch's nn.Sequential names them.")
    p.add_argument("checkpoint", help=PATH_HELP)
    p.add_argument("--format", choices=FORMATS, help="onnx, or npz for PyTorch (default: the one -o's "
                   "suffix names, .onnx or .npz; onnx without -o); -o must end in the format's suffix")
    p.add_argument("-o", "--out", help="output file (default: beside the checkpoint, best.npz -> best.onnx "
                   "or best-torch.npz)")
    p.set_defaults(func=cmd_export)


def cmd_export(args) -> int:
    fmt = resolve_format(args.format, args.out)
    out, model, meta = export_checkpoint(args.checkpoint, args.out, fmt)
    source = model_checkpoint(args.checkpoint)
    prep = (f"28x28 digits, white on black, as (v/255 - {meta['mean']:.6g}) / {meta['std']:.6g}, "
            f"padded with {-meta['mean'] / meta['std']:.4g} (the value of a 0 pixel) to "
            f"{model.input_shape[1]}x{model.input_shape[2]}")
    if fmt == "onnx":
        print(f"wrote {out} from {source}: ONNX, input 'images' "
              f"(N, {', '.join(map(str, model.input_shape))}) float32 [{prep}; in the file's "
              f"metadata], output 'logits' (N, {model.num_classes})")
        return 0
    print(f"wrote {out} from {source}: {len(model.state_dict())} arrays named as PyTorch names "
          "them; in PyTorch:\n"
          f"  import numpy as np, torch\n  net = {torch_source(model)}\n"
          f"  net.load_state_dict({{k: torch.from_numpy(v) for k, v in np.load({str(out)!r}).items()}}); net.eval()\n"
          f"inputs: {prep}")
    return 0


def _add_demo_command(sub) -> None:
    p = sub.add_parser("demo", help="write one HTML page to draw digits and see the model read them, offline")
    p.add_argument("checkpoint", help=PATH_HELP)
    p.add_argument("-o", "--out", help="the page to write (default: beside the checkpoint, best.npz -> "
                   "best-demo.html)")
    p.set_defaults(func=cmd_demo)


def cmd_demo(args) -> int:
    out, model, _ = write_demo(args.checkpoint, args.out)
    print(f"wrote {out} ({out.stat().st_size / 1e6:.1f} MB) from {model_checkpoint(args.checkpoint)}: "
          f"open it in a browser to draw digits for {model.name}; it needs no server and no network")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="fastlenet", description="Train, evaluate and use LeNet-5 written "
                     "from scratch, on NumPy and faster backends.")
    parser.add_argument("--version", action="version", version=f"fastlenet {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)

    p = sub.add_parser("train", help="train a model (default: LeNet-5 on MNIST)")
    _add_train_options(p)
    p.add_argument("--report", action="store_true",
                   help="make the run's figures and HTML report when training ends (needs matplotlib)")
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("sweep", help="train a grid of settings and tabulate accuracy and time",
                       description="Train every combination of the given values, e.g. "
                       "'fastlenet sweep --lr 1e-3,3e-3 --batch-size 64,128'; writes "
                       "sweep.md, sweep.csv and sweep.png in the sweep folder.")
    _add_sweep_options(p)
    p.set_defaults(func=cmd_sweep)

    p = sub.add_parser("report", help="figures and an HTML page of a run: curves, confusion matrix, "
                       "mistakes, filters, feature maps")
    p.add_argument("run", metavar="RUN", help="a run folder (meaning its best.npz, the best "
                   "validation accuracy) written by 'fastlenet train'")
    p.add_argument("--out", help="folder for the figures and report.html (default: RUN/report)")
    p.add_argument("--backend", choices=backends.names(), default="auto",
                   help="backend that evaluates best.npz (default: auto)")
    p.add_argument("--seed", type=_int, default=0, help="seed choosing the sample test images (default: 0)")
    p.set_defaults(func=cmd_report)

    p = sub.add_parser("compare", help="overlay the curves of several runs and tabulate them")
    p.add_argument("runs", nargs="+", metavar="RUN", help="run folders written by 'fastlenet train'")
    p.add_argument("--out", help="a new folder for compare.md, compare.csv and compare.png, never one "
                   "holding a comparison, as for sweep (default: comparisons/<time>)")
    p.set_defaults(func=cmd_compare)

    p = sub.add_parser("evaluate", help="test-set accuracy, per-class accuracy and confusion matrix")
    p.add_argument("checkpoint", help=PATH_HELP)
    p.add_argument("--backend", choices=backends.names(), default="auto")
    p.add_argument("--dataset", choices=DATASETS, help="evaluate on another dataset than the one trained on")
    p.add_argument("--data-dir", help="folder of MNIST-format IDX files")
    p.add_argument("--batch-size", type=_int, default=1000)
    p.add_argument("--json", action="store_true", help="print the results as JSON")
    p.set_defaults(func=cmd_evaluate)

    p = sub.add_parser("predict", help="classify photos or scans of handwritten digits")
    p.add_argument("checkpoint", help=PATH_HELP)
    p.add_argument("images", nargs="+", metavar="IMAGE", help="PNG or JPEG files")
    p.add_argument("--backend", choices=backends.names(), default="auto")
    p.set_defaults(func=cmd_predict)

    _add_export_command(sub)
    _add_demo_command(sub)

    p = sub.add_parser("summary", help="layers, output shapes, parameters and connections of a model")
    p.add_argument("model", choices=list(MODELS), nargs="?", default="lenet5")
    p.set_defaults(func=cmd_summary)

    p = sub.add_parser("info", help="versions, and which backends run here (and why not)")
    p.set_defaults(func=cmd_info)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return EXIT_ERROR
    try:
        return args.func(args)
    except TrainingDivergedError as exc:  # its own status: not a bad option, a bad run
        print(f"fastlenet: error: {exc}", file=sys.stderr)
        return EXIT_DIVERGED
    except FastLeNetError as exc:
        print(f"fastlenet: error: {exc}", file=sys.stderr)
        return EXIT_ERROR
    except KeyboardInterrupt as exc:  # a training's says how to continue it
        print(f"fastlenet: {str(exc) or 'interrupted'}", file=sys.stderr)
        return EXIT_INTERRUPTED
