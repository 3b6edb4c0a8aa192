"""Photos of digits -> MNIST-style 28x28 (fastlenet.imageprep).

The "photos" are synthesised from bundled MNIST test digits: inverted to dark ink on
light paper, enlarged off-centre into a bigger page with a lighting gradient and noise,
saved in the formats people have (PNG, JPEG, RGBA, palette, 16-bit, rotated by EXIF).
Reading one back must give the original digit again, up to the +-1 px that MNIST's own
rounded centring allows.
"""

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import fastlenet.imageprep as imageprep
from fastlenet.data import load_dataset
from fastlenet.errors import FastLeNetError
from fastlenet.imageprep import digit_from_array, load_digit

Image = pytest.importorskip("PIL.Image")
ImageFilter = pytest.importorskip("PIL.ImageFilter")

@pytest.fixture(scope="module")
def mnist_test():
    return load_dataset("mnist")


@pytest.fixture(scope="module")
def digits(mnist_test) -> np.ndarray:
    """(10, 28, 28) uint8: the first test digit of each class 0-9, white on black."""
    images, labels = mnist_test.test_images, mnist_test.test_labels
    return np.stack([images[np.flatnonzero(labels == k)[0]] for k in range(10)])


def similarity(a: np.ndarray, b: np.ndarray) -> float:
    """Best normalised correlation of two 28x28 images over shifts of up to 1 px."""
    b = b.astype(np.float64).ravel() - b.mean()
    best = -1.0
    for dy in (-1, 0, 1):
        for dx in (-1, 0, 1):
            s = np.roll(a.astype(np.float64), (dy, dx), axis=(0, 1)).ravel()
            s -= s.mean()
            best = max(best, s @ b / np.sqrt((s @ s) * (b @ b)))
    return best


def center_of_mass(a: np.ndarray) -> np.ndarray:
    a = a.astype(np.float64)
    return np.array([a.sum(1) @ np.arange(28), a.sum(0) @ np.arange(28)]) / a.sum()


def ink_box_side(a: np.ndarray) -> int:
    rows, cols = np.flatnonzero(a.any(1)), np.flatnonzero(a.any(0))
    return max(rows[-1] - rows[0] + 1, cols[-1] - cols[0] + 1)


def ink_cover(digit: np.ndarray, shape=(200, 300), origin=(25, 140), side=140) -> np.ndarray:
    """(H, W) float 0..1: how much ink covers each pixel of a page with the digit
    enlarged to ``side`` px at ``origin`` (top, left) -- off-centre, with margins."""
    big = Image.fromarray(digit).resize((side, side), Image.BILINEAR)
    cover = np.zeros(shape)
    top, left = origin
    cover[top:top + side, left:left + side] = np.asarray(big) / 255
    return cover


def photo(digit: np.ndarray, rng, shape=(200, 300), paper=(150, 235), depth=0.8, noise=4.0):
    """(H, W) uint8 photo: dark ink on paper lit unevenly from left to right, plus noise."""
    light = np.linspace(*paper, shape[1])[None, :]
    page = light * (1 - depth * ink_cover(digit, shape)) + rng.normal(0, noise, shape)
    return np.clip(page, 0, 255).astype(np.uint8)


def save(tmp_path, kind: str, digit: np.ndarray, rng) -> Path:
    """Write ``digit`` as a photo/scan file of the given kind; return its path."""
    gray = photo(digit, rng)
    if kind == "png":
        img, name = Image.fromarray(gray), "digit.png"
    elif kind == "jpeg":
        # Blue ink on cream paper: colour, then lossy compression.
        rgb = np.clip(gray[..., None] * np.array([1.0, 0.95, 0.8]) + [0, 0, 40], 0, 255)
        img, name = Image.fromarray(rgb.astype(np.uint8)), "digit.jpg"
    elif kind == "rgba":
        # A drawing app's export: black ink whose alpha is its coverage, on transparency.
        rgba = np.zeros((*gray.shape, 4), np.uint8)
        rgba[..., 3] = np.round(255 * ink_cover(digit))
        img, name = Image.fromarray(rgba), "digit_rgba.png"
    elif kind == "palette":
        img, name = Image.fromarray(gray).quantize(16), "digit_palette.png"
    elif kind == "16bit":
        img, name = Image.fromarray(gray.astype(np.uint16) * 257), "digit16.png"
    path = tmp_path / name
    img.save(path, quality=75)  # JPEG's quality; the PNG writer ignores it
    return path


def assert_like(result: np.ndarray, digit: np.ndarray, min_similarity: float) -> None:
    assert result.dtype == np.uint8 and result.shape == (28, 28)
    assert similarity(result, digit) > min_similarity
    assert np.abs(center_of_mass(result) - 14).max() <= 1.0
    assert 19 <= ink_box_side(result) <= 21


@pytest.mark.parametrize("kind", ["png", "jpeg", "rgba", "palette", "16bit"])
def test_photo_files_give_back_the_mnist_digit(tmp_path, digits, kind):
    rng = np.random.default_rng(0)
    saved = save(tmp_path, kind, digits[0], rng)
    with Image.open(saved) as img:
        assert img.mode == {"png": "L", "jpeg": "RGB", "rgba": "RGBA", "palette": "P", "16bit": "I;16"}[kind]
    for digit in digits:
        assert_like(load_digit(save(tmp_path, kind, digit, rng)), digit, 0.85)


def test_exif_orientation_is_applied(tmp_path, digits):
    """A phone stores the pixels sideways and says so in EXIF (6 = rotate 90 clockwise)."""
    seven = digits[7]
    stored = Image.fromarray(np.rot90(photo(seven, np.random.default_rng(1))))  # 90 anticlockwise
    exif = Image.Exif()
    exif[0x0112] = 6
    stored.save(tmp_path / "phone.jpg", exif=exif)
    assert_like(load_digit(tmp_path / "phone.jpg"), seven, 0.85)


def test_mnist_input_round_trips(mnist_test):
    for digit in mnist_test.test_images[:100]:
        assert similarity(digit_from_array(digit), digit) > 0.98


def test_white_ink_on_dark_board(digits):
    """Chalk on a blackboard: already bright ink, so it must not be inverted."""
    rng = np.random.default_rng(2)
    for digit in digits:
        board = 40 + 30 * np.linspace(0, 1, 300)[None, :] + 150 * ink_cover(digit)
        assert_like(digit_from_array(board + rng.normal(0, 3, board.shape)), digit, 0.85)


def test_faint_ink_in_dim_uneven_light(digits):
    """Pencil-like contrast (about 35-60 levels) under noise of 8 levels."""
    rng = np.random.default_rng(3)
    for digit in digits:
        assert_like(digit_from_array(photo(digit, rng, paper=(110, 200), depth=0.3, noise=8)), digit, 0.85)


def test_specks_are_ignored(digits):
    rng = np.random.default_rng(4)
    for digit in digits:
        page = photo(digit, rng).astype(np.float64)
        page[rng.random(page.shape) < 0.002] = 0  # dust: scattered black pixels
        page[5:9, 10:14] = 0                      # a blot far from the digit
        assert_like(digit_from_array(page), digit, 0.85)


def test_tight_crop_of_a_marker_digit(digits):
    """Cropped at the ink, so the border that the paper is fitted to crosses thick strokes."""
    rng = np.random.default_rng(5)
    for digit in digits:
        thick = np.asarray(Image.fromarray(digit).filter(ImageFilter.MaxFilter(3)))
        rows, cols = (np.flatnonzero(ink_cover(thick).max(axis=a) > 0.3) for a in (1, 0))
        page = photo(thick, rng)[rows[0]:rows[-1] + 1, cols[0]:cols[-1] + 1]
        assert_like(digit_from_array(page), digit_from_array(thick), 0.85)


def test_large_photo(tmp_path, digits):
    digit = digits[3]
    cover = ink_cover(digit, shape=(1500, 2000), origin=(300, 700), side=900)
    Image.fromarray(np.uint8(220 - 180 * cover)).save(tmp_path / "big.png")
    assert_like(load_digit(tmp_path / "big.png"), digit, 0.85)


def test_to_grayscale_scales_composites_and_shrinks():
    white16 = Image.fromarray(np.full((4, 6), 65535, np.uint16))
    np.testing.assert_allclose(imageprep.to_grayscale(white16), 255)
    clear = Image.new("RGBA", (6, 4), (0, 0, 0, 0))        # transparent = the white paper
    np.testing.assert_allclose(imageprep.to_grayscale(clear), 255)
    assert imageprep.to_grayscale(Image.new("L", (3000, 2000))).shape == (683, 1024)


@pytest.mark.parametrize("noise", [0, 10, 40])
def test_blank_image_is_an_error(tmp_path, noise):
    page = photo(np.zeros((28, 28), np.uint8), np.random.default_rng(6), paper=(60, 190), noise=noise)
    Image.fromarray(page).save(tmp_path / "blank.png")
    with pytest.raises(FastLeNetError, match=r"no digit found in .*blank\.png \(the image is blank\)"):
        load_digit(tmp_path / "blank.png")


@pytest.mark.parametrize("name, gray", [
    ("noise", np.random.default_rng(7).integers(0, 256, (64, 64))),
    ("checkerboard", np.array([[0, 255], [255, 0]])),
    ("big-checkerboard", np.kron(np.indices((8, 8)).sum(axis=0) % 2, np.ones((8, 8))) * 255),
])
def test_noise_and_texture_are_not_called_blank(tmp_path, name, gray):
    Image.fromarray(gray.astype(np.uint8)).save(tmp_path / f"{name}.png")
    with pytest.raises(FastLeNetError) as error:
        load_digit(tmp_path / f"{name}.png")
    assert f"no digit-like stroke found in {tmp_path / name}.png" in str(error.value)
    assert "noise or texture" in str(error.value) and "blank" not in str(error.value)


def test_unreadable_files_name_the_file(tmp_path, digits):
    (tmp_path / "notes.png").write_text("not an image\n")
    with pytest.raises(FastLeNetError, match=r"notes\.png is not an image"):
        load_digit(tmp_path / "notes.png")

    Image.fromarray(photo(digits[1], np.random.default_rng(5))).save(tmp_path / "whole.png")
    data = (tmp_path / "whole.png").read_bytes()
    (tmp_path / "cut.png").write_bytes(data[:len(data) // 2])
    with pytest.raises(FastLeNetError, match=r"cannot read image .*cut\.png.*truncated"):
        load_digit(tmp_path / "cut.png")

    with pytest.raises(FastLeNetError, match=r"missing\.png does not exist"):
        load_digit(tmp_path / "missing.png")

    (tmp_path / "folder.png").mkdir()
    with pytest.raises(FastLeNetError, match=r"cannot read image .*folder\.png"):
        load_digit(tmp_path / "folder.png")


def test_bad_arrays_are_errors():
    with pytest.raises(FastLeNetError, match=r"no digit found in the array \(the image is blank\)"):
        digit_from_array(np.zeros((28, 28)))
    with pytest.raises(FastLeNetError, match="2-D array"):
        digit_from_array(np.zeros((28, 28, 3)))
    with pytest.raises(FastLeNetError, match="NaN"):
        digit_from_array(np.full((28, 28), np.nan))


def test_importing_does_not_import_pillow():
    code = "import sys, fastlenet.imageprep; sys.exit('PIL' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code]).returncode == 0


def test_missing_pillow_says_how_to_install(monkeypatch, tmp_path):
    monkeypatch.setitem(sys.modules, "PIL", None)
    message = r"^reading images needs Pillow: pip install 'fastlenet\[images\]'$"
    with pytest.raises(FastLeNetError, match=message):
        load_digit(tmp_path / "digit.png")
    with pytest.raises(FastLeNetError, match=message):
        digit_from_array(np.eye(28) * 255)
