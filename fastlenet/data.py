"""Datasets: IDX parsing and validation, the dataset registry, preprocessing.

MNIST-format data is four IDX files, big-endian: images are ``magic 2051, count, rows,
cols`` then ``count*rows*cols`` bytes; labels are ``magic 2049, count`` then ``count``
bytes (0-9). Every way such a file can be wrong -- missing, unreadable, corrupt gzip,
wrong magic, truncated, trailing bytes, labels outside 0-9, image and label files that
do not belong together, or (for the known datasets) bytes that are not the published
ones -- becomes a one-line :class:`DataError` naming the file and the fix.

Preprocessing happens once for the whole set, in float32: pad 28x28 to LeNet-5's 32x32
with background, then normalise with the training split's pixel mean and std.
"""

from __future__ import annotations

import functools
import gzip
import hashlib
import os
import struct
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .errors import ConfigError, DataError

# "custom" is any folder of MNIST-format files, checked structurally but not by checksum
DATASETS = ("mnist", "fashion-mnist", "custom")
ENV_DATA_DIR = "FASTLENET_DATA_DIR"
MNIST_PAD = 2  # 28x28 + 2*2 = the 32x32 input LeNet-5 was designed for

IMAGES_MAGIC = 2051  # 0x00000803: unsigned bytes, 3 dimensions
LABELS_MAGIC = 2049  # 0x00000801: unsigned bytes, 1 dimension
# Standard file names, in the order train images, train labels, test images, test labels;
# each may carry a ".gz" suffix.
FILES = ("train-images-idx3-ubyte", "train-labels-idx1-ubyte",
         "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")
_GZIP_MAGIC = b"\x1f\x8b"
_CHUNK = 4096  # images per step in the whole-set loops: bounds their temporaries to ~25 MB


@dataclass(frozen=True)
class _Spec:
    title: str
    default_dir: Path
    install_hint: str  # how to get the files when the default folder lacks them
    class_names: tuple[str, ...]
    sha256: dict[str, str]  # file stem -> sha256 of the raw (uncompressed) bytes


_DIGITS = tuple(str(d) for d in range(10))
_SPECS = {
    "mnist": _Spec(
        "MNIST", Path(__file__).parent / "datasets" / "mnist",
        "the bundled copy is incomplete: reinstall fastlenet, or pass --data-dir DIR",
        _DIGITS,
        dict(zip(FILES, (  # raw (uncompressed) sha256, in FILES order
            "ba891046e6505d7aadcbbe25680a0738ad16aec93bde7f9b65e87a2fc25776db",
            "65a50cbbf4e906d70832878ad85ccda5333a97f0f4c3dd2ef09a8a9eef7101c5",
            "0fa7898d509279e482958e8ce81c8e77db3f2f8254e26661ceb7762c4d494ce7",
            "ff7bcfd416de33731a308c3f266cc351222c34898ecbeaf847f06e48f7ec33f2")))),
    # Raw sha256s of Debian's dataset-fashion-mnist (0.0~git20200523.55506a9-1) files.
    "fashion-mnist": _Spec(
        "Fashion-MNIST", Path("/usr/share/datasets/fashion-mnist"),
        "apt-get install dataset-fashion-mnist, or pass --data-dir DIR",
        ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
         "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot"),
        dict(zip(FILES, (  # raw (uncompressed) sha256, in FILES order
            "c59f468a2f672dc815687fe0f83887768d799fd8a3f3276145d20f83aa44d888",
            "bad3541b69d912435c50bb6ba87bec294ff4f6a2e1246121d8633921760443d9",
            "5b4141f0afbad91edebe8549f8fcffe087ea10ca49f1dbef5c9a5cd8815ce37b",
            "0402a96d92fd2663957122ceb108a494c5af83dab82d92729df917d7dec38c34")))),
}


# ------------------------------------------------------------------------ IDX files
def read_idx(path: str | os.PathLike) -> np.ndarray:
    """Read one IDX file, gzip-compressed or raw, as a read-only uint8 array.

    Images (magic 2051) come back as ``(count, rows, cols)``, labels (magic 2049) as
    ``(count,)``. Compression is recognised by the gzip magic bytes, not the file name.
    Raises :class:`DataError` naming the file for any structural problem.
    """
    return _read_idx(Path(path))[0]


def _read_idx(path: Path) -> tuple[np.ndarray, bytes]:
    """``read_idx`` that also returns the uncompressed bytes, so callers can hash them
    without reading the file again."""
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise DataError(f"{path}: file not found; check the path") from None
    except OSError as exc:
        raise DataError(f"{path}: cannot read the file ({exc.strerror}); "
                        "check that it is a readable file") from None
    if data[:2] == _GZIP_MAGIC:
        try:
            data = gzip.decompress(data)
        except (gzip.BadGzipFile, EOFError, zlib.error) as exc:
            raise DataError(f"{path}: corrupt gzip data ({exc}); "
                            "re-download or re-copy the file") from None
    return _parse_idx(path, data), data


def _parse_idx(path: Path, data: bytes) -> np.ndarray:
    """Check the IDX header against the payload and view the payload as uint8."""
    fix = "re-download or re-copy the file"
    if len(data) < 8:
        raise DataError(f"{path}: truncated: {len(data)} bytes is shorter than an IDX "
                        f"header; {fix}")
    magic, count = struct.unpack(">II", data[:8])
    if magic == IMAGES_MAGIC:
        if len(data) < 16:
            raise DataError(f"{path}: truncated image header ({len(data)} of 16 bytes); {fix}")
        rows, cols = struct.unpack(">II", data[8:16])
        if rows == 0 or cols == 0:
            raise DataError(f"{path}: header says images of {rows}x{cols} pixels; "
                            f"the file is corrupt, {fix}")
        shape, offset = (count, rows, cols), 16
    elif magic == LABELS_MAGIC:
        shape, offset = (count,), 8
    else:
        raise DataError(f"{path}: bad magic number {magic} ({magic:#010x}), expected "
                        f"{IMAGES_MAGIC} (images) or {LABELS_MAGIC} (labels); "
                        "this is not an MNIST-style IDX file")
    if count == 0:
        raise DataError(f"{path}: header says the file holds 0 items; {fix}")
    expected = int(np.prod(shape, dtype=np.int64))
    found = len(data) - offset
    described = "x".join(str(d) for d in shape)
    if found < expected:
        raise DataError(f"{path}: truncated: header says {described} = {expected} bytes, "
                        f"found {found}; {fix}")
    if found > expected:
        raise DataError(f"{path}: {found - expected} trailing bytes after the {described} = "
                        f"{expected} bytes the header announces; the file is corrupt, {fix}")
    return np.frombuffer(data, dtype=np.uint8, count=expected, offset=offset).reshape(shape)


def write_idx(path: str | os.PathLike, array, gz: bool | None = None) -> None:
    """Write a uint8 array as an IDX file that :func:`read_idx` reads back.

    ``array`` is ``(count, rows, cols)`` images or ``(count,)`` labels. The file is
    gzip-compressed when ``gz`` is true, or, with ``gz=None``, when the name ends in
    ".gz". Useful for building tiny datasets, e.g. for tests::

        write_idx(d / "train-images-idx3-ubyte", rng.integers(0, 256, (20, 28, 28), np.uint8))
    """
    path = Path(path)
    array = np.asarray(array)
    if array.dtype != np.uint8 or array.ndim not in (1, 3) or array.size == 0:
        raise DataError(f"{path}: write_idx needs a non-empty uint8 array of shape (count,) "
                        f"or (count, rows, cols), got {array.dtype} {array.shape}")
    magic = IMAGES_MAGIC if array.ndim == 3 else LABELS_MAGIC
    data = struct.pack(f">{1 + array.ndim}I", magic, *array.shape) + array.tobytes()
    if gz is None:
        gz = path.suffix == ".gz"
    if gz:
        data = gzip.compress(data, mtime=0)  # mtime=0: identical bytes on every run
    path.write_bytes(data)


# ------------------------------------------------------------------------ datasets
@dataclass(frozen=True, eq=False)
class Dataset:
    """A dataset as stored: read-only uint8 arrays, shared by every caller (cached).

    ``train_images`` ``(N, H, W)`` (60000x28x28 for MNIST), ``train_labels`` ``(N,)``
    in 0-9, ``test_images`` ``(M, H, W)``, ``test_labels`` ``(M,)``; ``source`` is the
    folder the files came from.
    """

    name: str
    train_images: np.ndarray
    train_labels: np.ndarray
    test_images: np.ndarray
    test_labels: np.ndarray
    class_names: tuple[str, ...]
    source: Path


def load_dataset(name: str | None = None, data_dir: str | os.PathLike | None = None) -> Dataset:
    """Load and validate a dataset's four IDX files (with or without .gz).

    The folder is ``data_dir`` if given, else ``$FASTLENET_DATA_DIR`` if set, else the
    dataset's default (MNIST: the copy bundled with the package; Fashion-MNIST:
    /usr/share/datasets/fashion-mnist from Debian's ``dataset-fashion-mnist``). A folder
    with a subfolder named like the dataset (``DIR/fashion-mnist/``) is looked into.
    Files of a named dataset must match its published sha256s wherever they come from;
    ``name="custom"`` loads other MNIST-format data from ``data_dir`` (or the environment
    variable), checked structurally only. ``name=None`` means "custom" when a folder is
    given (either way) and "mnist" otherwise: a folder alone is the user's own data.
    """
    if name is None:
        name = "custom" if data_dir is not None or os.environ.get(ENV_DATA_DIR) else "mnist"
    if name == "custom":
        name = None
    if name is not None and name not in _SPECS:
        raise ConfigError(f"unknown dataset {name!r}; choose one of: {', '.join(DATASETS)}")
    spec = _SPECS.get(name)
    folder, origin = _resolve_dir(name, spec, data_dir)
    paths = []
    for stem in FILES:
        found = [p for p in (folder / stem, folder / f"{stem}.gz") if p.is_file()]
        paths.append(found[0] if found else None)
    missing = [f"{stem}[.gz]" for stem, p in zip(FILES, paths) if p is None]
    if missing:
        fix = (spec.install_hint if origin is None else
               f"put the four IDX files there, or point {origin} at the folder that holds them")
        title = spec.title if spec else "custom dataset"
        raise DataError(f"{title}: missing {', '.join(missing)} in {folder}; {fix}")
    # Path, mtime and size key the cache, so a file replaced since is read again.
    key = tuple((str(p.absolute()), p.stat().st_mtime_ns, p.stat().st_size) for p in paths)
    return _load(name, key)


def _resolve_dir(name: str | None, spec: _Spec | None, data_dir) -> tuple[Path, str | None]:
    """The folder to read and where it came from (None: the dataset's default)."""
    env = os.environ.get(ENV_DATA_DIR)
    if data_dir is not None:
        folder, origin = Path(data_dir).expanduser(), "--data-dir"
    elif env:
        folder, origin = Path(env).expanduser(), f"${ENV_DATA_DIR}"
    elif spec is not None:
        return spec.default_dir, None
    else:
        raise ConfigError("a custom dataset needs a folder: pass --data-dir DIR "
                          f"(data_dir=...) or set {ENV_DATA_DIR}")
    if not folder.is_dir():
        raise DataError(f"{folder}: data folder (from {origin}) does not exist or is not a "
                        f"directory; fix {origin}")
    if name is not None and (folder / name).is_dir():
        folder = folder / name
    return folder, origin


@functools.lru_cache(maxsize=4)
def _load(name: str | None, key: tuple) -> Dataset:
    """Read, verify and cross-check the four files listed in ``key`` (see load_dataset)."""
    spec = _SPECS.get(name)
    paths = [Path(entry[0]) for entry in key]
    arrays = []
    for stem, path in zip(FILES, paths):
        array, raw = _read_idx(path)
        if spec is not None:
            digest = hashlib.sha256(raw).hexdigest()
            if digest != spec.sha256[stem]:
                raise DataError(
                    f"{path}: checksum mismatch: sha256 of the uncompressed bytes is "
                    f"{digest[:16]}..., expected {spec.sha256[stem][:16]}...; the file is "
                    f"corrupt or not the {spec.title} {stem} file; re-download or re-copy "
                    "it (other MNIST-format data loads with --dataset custom)")
        want = 3 if "images" in stem else 1
        if array.ndim != want:
            raise DataError(f"{path}: holds {'labels' if array.ndim == 1 else 'images'}, "
                            f"expected {'images' if want == 3 else 'labels'}; "
                            "the files are misnamed")
        arrays.append(array)
    train_x, train_y, test_x, test_y = arrays
    for images, labels, ipath, lpath in ((train_x, train_y, paths[0], paths[1]),
                                         (test_x, test_y, paths[2], paths[3])):
        bad = np.flatnonzero(labels > 9)
        if bad.size:
            raise DataError(f"{lpath}: label {labels[bad[0]]} at index {bad[0]} is outside "
                            f"0-9 ({bad.size} bad labels); the file is corrupt")
        if len(images) != len(labels):
            raise DataError(f"{ipath} has {len(images)} images but {lpath} has {len(labels)} "
                            "labels; the two files do not belong together")
    if train_x.shape[1:] != test_x.shape[1:]:
        raise DataError(f"{paths[0]} has {train_x.shape[1]}x{train_x.shape[2]} images but "
                        f"{paths[2]} has {test_x.shape[1]}x{test_x.shape[2]}; train and test "
                        "images must have the same size")
    return Dataset(name or "custom", train_x, train_y, test_x, test_y,
                   spec.class_names if spec else _DIGITS, paths[0].parent)


# ------------------------------------------------------------------- preprocessing
@dataclass(frozen=True, eq=False)
class Prepared:
    """Network-ready float32 inputs and int64 labels.

    ``x_*`` are ``(N, 1, H + 2*MNIST_PAD, W + 2*MNIST_PAD)`` (32x32 for MNIST) and
    ``y_*`` ``(N,)``; ``x_val`` may be empty, ``(0, 1, 32, 32)``. ``mean`` and ``std`` are
    the training images' pixel statistics (of x/255) that every split was normalised with.
    """

    name: str
    x_train: np.ndarray
    y_train: np.ndarray
    x_val: np.ndarray
    y_val: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray
    mean: float
    std: float
    class_names: tuple[str, ...]


def prepare(dataset: Dataset, val_size: int = 5000, seed: int = 0,
            train_limit: int | None = None) -> Prepared:
    """Split off a seeded random validation set, then pad and normalise every split.

    The validation images are a random ``val_size`` of the training set, drawn with
    ``np.random.default_rng(seed)``; the rest, in that shuffled order, is the training
    split, cut to its first ``train_limit`` images if given. Mean and std come from the
    training split only, so no validation or test pixel leaks into the inputs.
    """
    n = len(dataset.train_labels)
    if not 0 <= val_size < n:
        raise ConfigError(f"the validation size (--val-size) must be between 0 and {n - 1} "
                          f"(the training set has {n} images), got {val_size}")
    order = np.random.default_rng(seed).permutation(n)
    val_idx, train_idx = order[:val_size], order[val_size:]
    if train_limit is not None:
        if not 1 <= train_limit <= len(train_idx):
            raise ConfigError(f"the training limit (--limit) must be between 1 and "
                              f"{len(train_idx)} (training images left after validation), "
                              f"got {train_limit}")
        train_idx = train_idx[:train_limit]
    train_images = dataset.train_images[train_idx]
    mean, std = _pixel_stats(train_images)
    if std == 0:
        raise DataError(f"{dataset.source}: every training pixel has the same value; "
                        "there is nothing to learn from these images")
    return Prepared(
        dataset.name,
        preprocess(train_images, mean, std), dataset.train_labels[train_idx].astype(np.int64),
        preprocess(dataset.train_images[val_idx], mean, std),
        dataset.train_labels[val_idx].astype(np.int64),
        preprocess(dataset.test_images, mean, std), dataset.test_labels.astype(np.int64),
        mean, std, dataset.class_names)


def _pixel_stats(images: np.ndarray) -> tuple[float, float]:
    """Mean and std of ``images / 255`` over all pixels, exactly, without a float copy.

    A uint8 image set has only 256 distinct values, so a histogram carries everything:
    mean = sum_v c_v v / n,  var = sum_v c_v (v - mean)^2 / n,  with v = byte / 255.
    The histogram is built in chunks because bincount widens its input to int64.
    """
    counts = sum(np.bincount(images[start:start + _CHUNK].reshape(-1), minlength=256)
                 for start in range(0, len(images), _CHUNK))
    values = np.arange(256) / 255.0
    n = counts.sum()
    mean = counts @ values / n
    var = counts @ (values - mean) ** 2 / n
    return float(mean), float(np.sqrt(var))


def preprocess(images: np.ndarray, mean: float, std: float, pad: int = MNIST_PAD) -> np.ndarray:
    """uint8 ``(N, H, W)`` -> float32 ``(N, 1, H + 2*pad, W + 2*pad)``.

    x = (x/255 - mean) / std; the border gets the value of a 0 (background) pixel, so
    padding before or after normalising is the same. Used for training, evaluation and
    prediction alike, with the training split's ``mean`` and ``std``.
    """
    images = np.asarray(images)
    if images.dtype != np.uint8 or images.ndim != 3:
        raise DataError(f"preprocess expects uint8 images of shape (N, H, W), got "
                        f"{images.dtype} {images.shape}")
    # One float32 value per possible byte; mapping through the table normalises each
    # pixel without a float64 copy of the set.
    table = ((np.arange(256) / 255.0 - mean) / std).astype(np.float32)
    n, h, w = images.shape
    out = np.full((n, 1, h + 2 * pad, w + 2 * pad), table[0], dtype=np.float32)
    for start in range(0, n, _CHUNK):
        out[start:start + _CHUNK, 0, pad:pad + h, pad:pad + w] = table[images[start:start + _CHUNK]]
    return out
