"""Augmentation: a naive per-pixel oracle for the gather, reproducibility, every backend,
and digits that stay recognisable to a trained model."""

import math

import numpy as np
import pytest

from fastlenet.augment import AugmentSettings, Augmenter, gaussian_matrix
from fastlenet.config import TrainConfig
from fastlenet.errors import ConfigError
from fastlenet.evaluation import evaluate
from fastlenet.train import Trainer

from helpers import write_tiny_mnist

MEAN, STD = 0.13, 0.31
BACKGROUND = -MEAN / STD
OFF = AugmentSettings(shift=0, rotate=0, scale=0, shear=0, elastic=0, noise=0)
ALL_ON = AugmentSettings(elastic=16.0, noise=0.02)  # the defaults plus the two that are off


def digits(n, c=1, seed=0):
    """(C, 32, 32, N) float32: blank background with a random bright blob per image."""
    rng = np.random.default_rng(seed)
    x = np.full((c, 32, 32, n), BACKGROUND, dtype=np.float32)
    x[:, 8:24, 10:22] = rng.random((c, 16, 12, n), dtype=np.float32) * 3
    return x


def to_host(backend, a):
    return np.asarray(backend.to_numpy(a))


def test_same_seed_same_batches_other_seed_or_batch_differs(backend):
    x = backend.asarray(digits(16))
    first, again = (Augmenter(backend, ALL_ON, MEAN, STD, seed=5) for _ in range(2))
    other = Augmenter(backend, ALL_ON, MEAN, STD, seed=6)
    a1, a2 = to_host(backend, first(x)), to_host(backend, first(x))
    np.testing.assert_array_equal(a1, to_host(backend, again(x)))
    np.testing.assert_array_equal(a2, to_host(backend, again(x)))
    assert not np.allclose(a1, a2)  # the next batch gets new transforms
    assert not np.allclose(a1, to_host(backend, other(x)))
    assert not np.allclose(a1, to_host(backend, x))
    state = backend.rng_state(first.rng)  # what a checkpoint saves
    a3 = to_host(backend, first(x))
    backend.set_rng_state(first.rng, state)
    np.testing.assert_array_equal(to_host(backend, first(x)), a3)


@pytest.mark.parametrize("n", [1, 257])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_shape_and_dtype_are_kept_for_any_batch(backend, n, dtype):
    x = backend.asarray(digits(n, c=2).astype(dtype))
    y = Augmenter(backend, ALL_ON, MEAN, STD)(x)
    assert type(y) is type(x) and y.shape == x.shape and y.dtype == x.dtype
    assert np.isfinite(to_host(backend, y)).all()


def test_all_transforms_off_is_the_identity(backend):
    x = backend.asarray(digits(9))
    np.testing.assert_array_equal(to_host(backend, Augmenter(backend, OFF, MEAN, STD)(x)),
                                  to_host(backend, x))


def naive_bilinear(x, src_x, src_y, background):
    """One pixel at a time: the four neighbours, background outside the image."""
    c, h, w, n = x.shape
    out = np.empty_like(x)
    for i in range(h):
        for j in range(w):
            for k in range(n):
                sx, sy = src_x[i, j, k], src_y[i, j, k]
                x0, y0 = math.floor(sx), math.floor(sy)
                total = np.zeros(c)
                for yy, xx, weight in ((y0, x0, (1 - (sx - x0)) * (1 - (sy - y0))),
                                       (y0, x0 + 1, (sx - x0) * (1 - (sy - y0))),
                                       (y0 + 1, x0, (1 - (sx - x0)) * (sy - y0)),
                                       (y0 + 1, x0 + 1, (sx - x0) * (sy - y0))):
                    inside = 0 <= yy < h and 0 <= xx < w
                    total += weight * (x[:, yy, xx, k] if inside else background)
                out[:, i, j, k] = total
    return out


@pytest.mark.parametrize("affine", [False, True])
def test_bilinear_gather_matches_a_per_pixel_loop(backend, affine):
    """warp_bilinear's source points as a displacement field alone, and as an affine map
    per image plus a field."""
    rng = np.random.default_rng(1)
    x = rng.standard_normal((2, 9, 11, 3))
    src_x = rng.uniform(-3, 14, (9, 11, 3))  # some points fully or partly outside
    src_y = rng.uniform(-3, 12, (9, 11, 3))
    src_x[0, 0, 0], src_y[0, 0, 0] = 4.0, 5.0  # exactly on a pixel
    coeffs = np.zeros((6, 3))
    displacement = np.stack([src_x, src_y])
    if affine:
        coeffs = rng.uniform(-1.5, 1.5, (6, 3))
        i, j = np.arange(9)[:, None, None], np.arange(11)[None, :, None]
        displacement -= np.stack([coeffs[0] * j + coeffs[1] * i + coeffs[2],
                                  coeffs[3] * j + coeffs[4] * i + coeffs[5]])
    background = Augmenter(backend, OFF, MEAN, STD).background
    expected = naive_bilinear(x, src_x, src_y, background)
    got = backend.warp_bilinear(backend.asarray(x), backend.asarray(coeffs),
                                backend.asarray(displacement), background)
    np.testing.assert_allclose(to_host(backend, got), expected, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_separable_filter_is_a_matrix_product_per_image(backend, dtype):
    """out[f, :, :, n] = gh @ a[f, :, :, n] @ gw.T, with banded and with dense filters."""
    rng = np.random.default_rng(4)
    a = rng.standard_normal((2, 9, 11, 5)).astype(dtype)
    for gh, gw in ((gaussian_matrix(9, 2.0), gaussian_matrix(11, 1.0)),
                   (rng.standard_normal((9, 9)), rng.standard_normal((11, 11)))):
        want = np.einsum("ip,fpqn,jq->fijn", gh, a.astype(np.float64), gw)
        got = to_host(backend, backend.separable_filter(backend.asarray(a), backend.asarray(gh.astype(dtype)),
                                                        backend.asarray(gw.astype(dtype))))
        assert got.dtype == dtype and got.shape == a.shape
        np.testing.assert_allclose(got, want, **(dict(rtol=1e-4, atol=1e-4) if dtype == np.float32
                                                 else dict(rtol=1e-12, atol=1e-12)))


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_warp_without_displacement_matches_numpy(backend, dtype):
    """A backend's own warp_bilinear (numba's fused pass) against the generic one, affine
    maps alone, on a batch like training's."""
    from fastlenet.backends import get_backend

    rng = np.random.default_rng(3)
    x = digits(33).astype(dtype)
    coeffs = np.array([1.1, -0.2, 0.5, 0.15, 0.9, -1.0])[:, None] + rng.uniform(-0.3, 0.3, (6, 33))
    numpy_backend = get_backend("numpy")
    want = numpy_backend.warp_bilinear(x, coeffs.astype(dtype), None, BACKGROUND)
    got = to_host(backend, backend.warp_bilinear(backend.asarray(x), backend.asarray(coeffs.astype(dtype)),
                                                 None, BACKGROUND))
    assert got.dtype == dtype
    np.testing.assert_allclose(got, want, **(dict(rtol=1e-5, atol=1e-5) if dtype == np.float32
                                             else dict(rtol=1e-12, atol=1e-12)))


def test_gaussian_matrix_is_a_zero_padded_convolution():
    sigma, size = 4.0, 32
    radius = 12
    taps = np.exp(-0.5 * (np.arange(-radius, radius + 1) / sigma) ** 2)
    taps /= taps.sum()
    f = np.random.default_rng(2).standard_normal(size)
    np.testing.assert_allclose(gaussian_matrix(size, sigma) @ f,
                               np.convolve(f, taps, mode="same"), rtol=1e-12, atol=1e-12)


def test_each_transform_moves_the_digit_within_its_range(backend):
    x = digits(200)
    mass = x[0] - BACKGROUND  # (H, W, N)
    centre = lambda m: ((m * np.arange(32)[None, :, None]).sum((0, 1)) / m.sum((0, 1)),
                        (m * np.arange(32)[:, None, None]).sum((0, 1)) / m.sum((0, 1)))
    cx, cy = centre(mass)
    y = to_host(backend, Augmenter(backend, AugmentSettings(**{**vars(OFF), "shift": 2.5}),
                                   MEAN, STD)(backend.asarray(x)))
    mx, my = centre(y[0] - BACKGROUND)
    # a pure shift moves the centre of mass by the shift (within interpolation's blur)
    assert np.abs(mx - cx).max() <= 2.5 + 0.05 and np.abs(my - cy).max() <= 2.5 + 0.05
    assert np.abs(mx - cx).mean() > 0.8  # uniform in [-2.5, 2.5] averages 1.25 away
    np.testing.assert_allclose((y[0] - BACKGROUND).sum((0, 1)), mass.sum((0, 1)), rtol=1e-3)

    blank = backend.asarray(np.full((1, 32, 32, 4), BACKGROUND, np.float32))
    warped = Augmenter(backend, AugmentSettings(noise=0), MEAN, STD)(blank)
    np.testing.assert_allclose(to_host(backend, warped), BACKGROUND, atol=1e-5)  # no edges drawn
    noisy = to_host(backend, Augmenter(backend, AugmentSettings(**{**vars(OFF), "noise": 0.1}),
                                       MEAN, STD)(blank))
    assert abs((noisy - BACKGROUND).std() - 0.1 / STD) < 0.03 / STD


@pytest.mark.parametrize("field, value, message", [
    ("shift", -1.0, "--augment-shift must be >= 0"), ("rotate", 200.0, "--augment-rotate"),
    ("scale", 1.0, "--augment-scale must be in"), ("elastic", float("nan"), "finite"),
    ("noise", "0.1", "--augment-noise"), ("shear", -0.1, "--augment-shear"),
])
def test_bad_settings_are_named(field, value, message):
    with pytest.raises(ConfigError, match=message):
        TrainConfig(augment=True, **{f"augment_{field}": value}).validate()


@pytest.fixture(scope="module")
def augmented_run(tmp_path_factory):
    """LeNet-5 trained with augmentation on 3,000 MNIST images (a few seconds)."""
    data_dir = write_tiny_mnist(tmp_path_factory.mktemp("mnist-4k"), n_train=3000, n_test=1000)
    config = TrainConfig(dataset="custom", data_dir=str(data_dir), epochs=5, val_size=0,
                         seed=0, augment=True, backend="numpy")
    trainer = Trainer(config, out=tmp_path_factory.mktemp("aug-run") / "r", log=None)
    trainer.run()
    return trainer


def test_augmented_digits_stay_recognisable(augmented_run):
    """The trained model classifies augmented test digits nearly as well as clean ones,
    unlike digits turned by up to 180 degrees (a 6 becomes a 9), which it has not seen."""
    model, data, backend = augmented_run.model, augmented_run.data, augmented_run.backend

    def accuracy(settings):
        augmenter = Augmenter(backend, settings, data.mean, data.std, seed=123)
        x = augmenter(backend.to_batch_last(backend.asarray(data.x_test)))
        return evaluate(model, backend.to_numpy(backend.from_batch_last(x)), data.y_test)[1]

    clean, augmented = accuracy(OFF), accuracy(AugmentSettings())
    turned = accuracy(AugmentSettings(**{**vars(OFF), "rotate": 180}))
    # measured: 93.0% clean, 88.8% augmented, 34.8% turned (3,000 images, 5 epochs, seed 0,
    # the default augmentation: affine maps only)
    assert clean > 0.9
    assert augmented > clean - 0.10, (clean, augmented)
    assert turned < augmented - 0.2, (augmented, turned)
