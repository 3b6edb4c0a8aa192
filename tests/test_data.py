"""IDX parsing and validation, the dataset registry, and preprocessing."""

import dataclasses
import gzip
import hashlib
import os
import struct
from pathlib import Path

import numpy as np
import pytest

from fastlenet import data
from fastlenet.data import (DATASETS, FILES, MNIST_PAD, load_dataset, prepare, preprocess,
                            read_idx, write_idx)
from fastlenet.errors import ConfigError, DataError

FASHION_DIR = Path("/usr/share/datasets/fashion-mnist")
# The published raw sha256s (shared/data/mnist/README.md), written out independently
# of the ones data.py checks against.
MNIST_RAW_SHA256 = {
    "train-images-idx3-ubyte": "ba891046e6505d7aadcbbe25680a0738ad16aec93bde7f9b65e87a2fc25776db",
    "train-labels-idx1-ubyte": "65a50cbbf4e906d70832878ad85ccda5333a97f0f4c3dd2ef09a8a9eef7101c5",
    "t10k-images-idx3-ubyte": "0fa7898d509279e482958e8ce81c8e77db3f2f8254e26661ceb7762c4d494ce7",
    "t10k-labels-idx1-ubyte": "ff7bcfd416de33731a308c3f266cc351222c34898ecbeaf847f06e48f7ec33f2",
}


def make_dataset(folder, n_train=40, n_test=10, size=(28, 28), gz=True, seed=0):
    """Write a tiny MNIST-format dataset of distinct random images into ``folder``."""
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    arrays = (rng.integers(0, 256, (n_train, *size), dtype=np.uint8),
              rng.integers(0, 10, n_train, dtype=np.uint8),
              rng.integers(0, 256, (n_test, *size), dtype=np.uint8),
              rng.integers(0, 10, n_test, dtype=np.uint8))
    for stem, array in zip(FILES, arrays):
        write_idx(folder / (stem + ".gz" if gz else stem), array)
    return arrays


def one_line_error(exc_info, *needles):
    message = str(exc_info.value)
    assert "\n" not in message
    for needle in needles:
        assert needle in message, f"{needle!r} not in {message!r}"


# ------------------------------------------------------------------ bundled MNIST
def test_bundled_mnist_loads_with_published_content():
    ds = load_dataset("mnist")
    assert ds.name == "mnist" and ds.class_names == tuple("0123456789")
    assert ds.train_images.shape == (60000, 28, 28) and ds.test_images.shape == (10000, 28, 28)
    assert ds.train_labels.shape == (60000,) and ds.test_labels.shape == (10000,)
    for a in (ds.train_images, ds.train_labels, ds.test_images, ds.test_labels):
        assert a.dtype == np.uint8 and not a.flags.writeable
    assert ds.train_labels.max() == 9 and ds.test_labels.max() == 9
    # Well-known facts about MNIST: the first labels and the class sizes.
    assert ds.train_labels[0] == 5 and ds.test_labels[0] == 7
    assert np.bincount(ds.train_labels)[1] == 6742 and np.bincount(ds.test_labels)[1] == 1135
    for stem, digest in MNIST_RAW_SHA256.items():
        raw = gzip.decompress((ds.source / f"{stem}.gz").read_bytes())
        assert hashlib.sha256(raw).hexdigest() == digest
    assert load_dataset() is ds  # cached per process


@pytest.mark.skipif(not FASHION_DIR.is_dir(),
                    reason="Fashion-MNIST not installed (apt-get install dataset-fashion-mnist)")
def test_fashion_mnist_loads_when_installed():
    ds = load_dataset("fashion-mnist")
    assert ds.train_images.shape == (60000, 28, 28) and ds.test_images.shape == (10000, 28, 28)
    assert ds.class_names[0] == "T-shirt/top" and ds.class_names[9] == "Ankle boot"
    assert np.array_equal(np.bincount(ds.test_labels), [1000] * 10)


def test_unknown_dataset_name_lists_the_choices():
    with pytest.raises(ConfigError) as err:
        load_dataset("cifar10")
    one_line_error(err, "cifar10", *DATASETS)


def test_missing_fashion_mnist_says_how_to_install(tmp_path, monkeypatch):
    spec = dataclasses.replace(data._SPECS["fashion-mnist"], default_dir=tmp_path / "absent")
    monkeypatch.setitem(data._SPECS, "fashion-mnist", spec)
    monkeypatch.delenv(data.ENV_DATA_DIR, raising=False)
    with pytest.raises(DataError) as err:
        load_dataset("fashion-mnist")
    one_line_error(err, "train-images-idx3-ubyte", "apt-get install dataset-fashion-mnist",
                   "--data-dir")


# ------------------------------------------------------------------ IDX files
@pytest.mark.parametrize("gz", [False, True])
def test_write_then_read_idx_round_trips(tmp_path, gz):
    images = np.arange(3 * 4 * 5, dtype=np.uint8).reshape(3, 4, 5)
    labels = np.array([0, 9, 3], dtype=np.uint8)
    write_idx(tmp_path / "img", images, gz=gz)
    write_idx(tmp_path / "lbl", labels, gz=gz)
    assert (tmp_path / "img").read_bytes()[:2] == (b"\x1f\x8b" if gz else b"\x00\x00")
    got = read_idx(tmp_path / "img")
    assert got.dtype == np.uint8 and got.shape == (3, 4, 5) and np.array_equal(got, images)
    assert np.array_equal(read_idx(tmp_path / "lbl"), labels)


def test_compression_is_detected_by_content_not_name(tmp_path):
    labels = np.array([1, 2, 3], dtype=np.uint8)
    write_idx(tmp_path / "raw.gz", labels, gz=False)
    write_idx(tmp_path / "packed", labels, gz=True)
    assert np.array_equal(read_idx(tmp_path / "raw.gz"), labels)
    assert np.array_equal(read_idx(tmp_path / "packed"), labels)


def test_write_idx_rejects_non_uint8(tmp_path):
    with pytest.raises(DataError):
        write_idx(tmp_path / "x", np.zeros((2, 3, 3), dtype=np.float32))


def _valid_images(n=4):
    return struct.pack(">IIII", 2051, n, 3, 3) + bytes(range(n * 9))


def _gzip_truncated(raw):
    return gzip.compress(raw, mtime=0)[:-12]  # ends before the end-of-stream marker (EOFError)


def _gzip_flipped(raw):
    packed = bytearray(gzip.compress(raw * 50, mtime=0))
    packed[len(packed) // 2] ^= 0xFF  # corrupt deflate data or CRC (zlib.error/BadGzipFile)
    return bytes(packed)


@pytest.mark.parametrize("content, needle", [
    (struct.pack(">II", 2050, 4) + bytes(4), "bad magic"),
    (b"\x00\x00\x08", "truncated"),
    (struct.pack(">III", 2051, 4, 3), "truncated image header"),
    (struct.pack(">IIII", 2051, 4, 0, 3), "0x3 pixels"),
    (struct.pack(">II", 2049, 0), "0 items"),
    (_valid_images()[:-5], "truncated: header says 4x3x3 = 36 bytes, found 31"),
    (_valid_images() + b"\x00\x00", "2 trailing bytes"),
    (_gzip_truncated(_valid_images()), "corrupt gzip"),
    (_gzip_flipped(_valid_images()), "corrupt gzip"),
], ids=["magic", "short", "short-header", "zero-size", "empty", "truncated", "trailing",
        "gzip-truncated", "gzip-corrupt"])
def test_corrupt_idx_files_raise_one_line_data_error(tmp_path, content, needle):
    path = tmp_path / "train-images-idx3-ubyte.gz"
    path.write_bytes(content)
    with pytest.raises(DataError) as err:
        read_idx(path)
    one_line_error(err, "train-images-idx3-ubyte.gz", needle)


def test_unreadable_paths_raise_data_error(tmp_path):
    with pytest.raises(DataError) as err:
        read_idx(tmp_path / "nope")
    one_line_error(err, "nope", "not found")
    with pytest.raises(DataError) as err:
        read_idx(tmp_path)
    one_line_error(err, str(tmp_path), "cannot read")


# ------------------------------------------------------------------ folders
def test_custom_data_dir_is_validated_structurally(tmp_path, monkeypatch):
    monkeypatch.delenv(data.ENV_DATA_DIR, raising=False)
    train_x, train_y, test_x, test_y = make_dataset(tmp_path, gz=False)
    ds = load_dataset(None, data_dir=tmp_path)
    assert ds.name == "custom" and ds.source == tmp_path
    assert np.array_equal(ds.train_images, train_x) and np.array_equal(ds.test_labels, test_y)
    with pytest.raises(ConfigError, match="needs a folder"):
        load_dataset("custom")  # no folder at all
    assert load_dataset(None).name == "mnist"  # no folder: the bundled MNIST


def test_env_var_alone_means_the_users_own_data(tmp_path, monkeypatch):
    make_dataset(tmp_path)
    monkeypatch.setenv(data.ENV_DATA_DIR, str(tmp_path))
    assert load_dataset().name == "custom"


def test_env_var_names_the_folder_and_data_dir_wins(tmp_path, monkeypatch):
    make_dataset(tmp_path / "a", seed=1)
    make_dataset(tmp_path / "b", seed=2)
    monkeypatch.setenv(data.ENV_DATA_DIR, str(tmp_path / "a"))
    from_env = load_dataset(None)
    assert from_env.source == tmp_path / "a"
    assert load_dataset(None, data_dir=tmp_path / "b").source == tmp_path / "b"
    monkeypatch.setenv(data.ENV_DATA_DIR, str(tmp_path / "absent"))
    with pytest.raises(DataError) as err:
        load_dataset(None)
    one_line_error(err, "absent", data.ENV_DATA_DIR)


def test_known_dataset_in_a_data_dir_subfolder_is_checksummed(tmp_path, monkeypatch):
    bundled = load_dataset("mnist").source
    (tmp_path / "mnist").mkdir()
    for stem in FILES:
        os.symlink(bundled / f"{stem}.gz", tmp_path / "mnist" / f"{stem}.gz")
    monkeypatch.setenv(data.ENV_DATA_DIR, str(tmp_path))
    assert load_dataset("mnist").source == tmp_path / "mnist"


def test_checksum_mismatch_for_a_known_dataset(tmp_path):
    make_dataset(tmp_path)  # structurally fine, but not MNIST
    with pytest.raises(DataError) as err:
        load_dataset("mnist", data_dir=tmp_path)
    one_line_error(err, "train-images-idx3-ubyte.gz", "checksum mismatch", "not the MNIST")


def test_missing_files_are_listed_with_the_folder(tmp_path):
    make_dataset(tmp_path)
    (tmp_path / "t10k-labels-idx1-ubyte.gz").unlink()
    with pytest.raises(DataError) as err:
        load_dataset(None, data_dir=tmp_path)
    one_line_error(err, "t10k-labels-idx1-ubyte", str(tmp_path), "--data-dir")


def test_bad_label_value_names_the_file(tmp_path):
    make_dataset(tmp_path)
    labels = read_idx(tmp_path / "train-labels-idx1-ubyte.gz").copy()
    labels[7] = 12
    write_idx(tmp_path / "train-labels-idx1-ubyte.gz", labels)
    with pytest.raises(DataError) as err:
        load_dataset(None, data_dir=tmp_path)
    one_line_error(err, "train-labels-idx1-ubyte.gz", "label 12 at index 7")


def test_count_mismatch_names_both_files(tmp_path):
    make_dataset(tmp_path)
    write_idx(tmp_path / "t10k-labels-idx1-ubyte.gz", np.zeros(9, dtype=np.uint8))
    with pytest.raises(DataError) as err:
        load_dataset(None, data_dir=tmp_path)
    one_line_error(err, "t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz",
                   "10 images", "9 labels")


def test_train_and_test_image_sizes_must_agree(tmp_path):
    make_dataset(tmp_path)
    write_idx(tmp_path / "t10k-images-idx3-ubyte.gz", np.zeros((10, 32, 32), dtype=np.uint8))
    with pytest.raises(DataError) as err:
        load_dataset(None, data_dir=tmp_path)
    one_line_error(err, "28x28", "32x32", "t10k-images-idx3-ubyte.gz")


def test_swapped_files_are_reported(tmp_path):
    make_dataset(tmp_path)
    write_idx(tmp_path / "train-images-idx3-ubyte.gz", np.zeros(40, dtype=np.uint8))
    with pytest.raises(DataError) as err:
        load_dataset(None, data_dir=tmp_path)
    one_line_error(err, "train-images-idx3-ubyte.gz", "expected images")


def test_a_replaced_file_is_read_again(tmp_path):
    make_dataset(tmp_path, seed=1)
    first = load_dataset(None, data_dir=tmp_path)
    new_x = make_dataset(tmp_path, seed=2)[0]
    path = tmp_path / "train-images-idx3-ubyte.gz"
    stat = path.stat()  # the rewrite may land in the same clock tick: move mtime on
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))
    second = load_dataset(None, data_dir=tmp_path)
    assert second is not first and np.array_equal(second.train_images, new_x)


# ------------------------------------------------------------------ preprocessing
def test_prepare_mnist_shapes_and_statistics():
    p = prepare(load_dataset("mnist"), val_size=0)
    assert p.x_train.shape == (60000, 1, 32, 32) and p.x_train.dtype == np.float32
    assert p.y_train.shape == (60000,) and p.y_train.dtype == np.int64
    assert p.x_val.shape == (0, 1, 32, 32) and p.y_val.shape == (0,)
    assert p.x_test.shape == (10000, 1, 32, 32) and p.x_test.dtype == np.float32
    assert p.mean == pytest.approx(0.1307, abs=1e-4) and p.std == pytest.approx(0.3081, abs=1e-4)
    background = np.float32(-p.mean / p.std)
    for x in (p.x_train[:100], p.x_test[:100]):
        border = np.concatenate([x[..., :MNIST_PAD, :].ravel(), x[..., -MNIST_PAD:, :].ravel(),
                                 x[..., :, :MNIST_PAD].ravel(), x[..., :, -MNIST_PAD:].ravel()])
        assert np.all(border == background)
    assert p.class_names == tuple("0123456789") and p.name == "mnist"


def _recover(p, x):
    """Undo the normalisation: back to the uint8 28x28 images."""
    inner = x[:, 0, MNIST_PAD:-MNIST_PAD, MNIST_PAD:-MNIST_PAD].astype(np.float64)
    return np.rint((inner * p.std + p.mean) * 255).astype(np.uint8)


def _rows(ds, images):
    """Index in ds.train_images of each image (the tiny datasets' images are distinct)."""
    where = {img.tobytes(): i for i, img in enumerate(ds.train_images)}
    return [where[img.tobytes()] for img in images]


def test_split_is_disjoint_covering_seeded_and_normalised(tmp_path):
    make_dataset(tmp_path)
    ds = load_dataset(None, data_dir=tmp_path)
    p = prepare(ds, val_size=12, seed=3)
    train, val = _rows(ds, _recover(p, p.x_train)), _rows(ds, _recover(p, p.x_val))
    assert len(train) == 28 and len(val) == 12
    assert sorted(train + val) == list(range(40))
    assert np.array_equal(p.y_train, ds.train_labels[train])
    assert np.array_equal(p.y_val, ds.train_labels[val])
    inner = p.x_train[:, :, MNIST_PAD:-MNIST_PAD, MNIST_PAD:-MNIST_PAD].astype(np.float64)
    assert inner.mean() == pytest.approx(0, abs=1e-6) and inner.std() == pytest.approx(1, abs=1e-6)
    again, other = prepare(ds, val_size=12, seed=3), prepare(ds, val_size=12, seed=4)
    assert np.array_equal(again.x_val, p.x_val) and np.array_equal(again.x_train, p.x_train)
    assert set(_rows(ds, _recover(other, other.x_val))) != set(val)


def test_train_limit_takes_the_first_shuffled_images(tmp_path):
    make_dataset(tmp_path)
    ds = load_dataset(None, data_dir=tmp_path)
    full, small = prepare(ds, val_size=10, seed=0), prepare(ds, val_size=10, seed=0, train_limit=5)
    assert small.x_train.shape == (5, 1, 32, 32)
    assert _rows(ds, _recover(small, small.x_train)) == _rows(ds, _recover(full, full.x_train))[:5]
    assert np.array_equal(_recover(small, small.x_val), _recover(full, full.x_val))


@pytest.mark.parametrize("val_size, train_limit, needle", [
    (-1, None, "--val-size"), (40, None, "--val-size"),
    (10, 0, "--limit"), (10, 31, "--limit")])
def test_prepare_rejects_out_of_range_sizes(tmp_path, val_size, train_limit, needle):
    make_dataset(tmp_path)  # 40 training images
    with pytest.raises(ConfigError) as err:
        prepare(load_dataset(None, data_dir=tmp_path), val_size=val_size, train_limit=train_limit)
    one_line_error(err, needle, f"got {val_size if needle == '--val-size' else train_limit}")


def test_prepare_rejects_blank_images(tmp_path):
    for stem, array in zip(FILES, (np.zeros((8, 4, 4), np.uint8), np.zeros(8, np.uint8),
                                   np.zeros((2, 4, 4), np.uint8), np.zeros(2, np.uint8))):
        write_idx(tmp_path / stem, array)
    with pytest.raises(DataError):
        prepare(load_dataset(None, data_dir=tmp_path), val_size=0)


def test_preprocess_values_and_shapes():
    images = np.array([[[0, 255, 51], [102, 0, 0]]], dtype=np.uint8)  # (1, 2, 3)
    out = preprocess(images, mean=0.2, std=0.5, pad=1)
    assert out.shape == (1, 1, 4, 5) and out.dtype == np.float32
    expected = (images / 255.0 - 0.2) / 0.5
    np.testing.assert_allclose(out[0, 0, 1:-1, 1:-1], expected[0], rtol=1e-6)
    assert np.all(out[0, 0, 0] == np.float32(-0.4)) and np.all(out[0, 0, :, 0] == np.float32(-0.4))
    with pytest.raises(DataError):
        preprocess(images.astype(np.float64), 0.2, 0.5)
