"""Turn a photo or scan of one handwritten digit into a 28x28 MNIST-style image.

MNIST was made by fitting each binary NIST digit into a 20x20 box (keeping its aspect
ratio, anti-aliased, hence grey edges) and then placing it in a 28x28 field so that its
centre of mass sits at the centre. A photo needs a few steps more first. The recipe, one
function per step:

1. ``to_grayscale``     any Pillow image -> (H, W) float gray levels 0 (black) .. 255
2. ``subtract_paper``   subtract the paper's level (a plane fitted to the border)
3. ``make_ink_bright``  flip the sign when the ink is darker than the paper (pen on paper)
4. ``stretch_ink``      drop the paper's noise, stretch the ink to 0..255, detect blanks
                        (and tell noise or texture, with no stroke, from a blank page)
5. ``crop_to_ink``      cut out the ink's bounding box, ignoring isolated specks
6. ``fit_box``          resize so the longer side is 20 px, keeping the aspect ratio
7. ``center_of_mass_field``  paste into 28x28 with the centre of mass at (14, 14)

``load_digit(path)`` runs all seven; ``digit_from_array(gray)`` runs 2-7. Both return
(28, 28) uint8, white ink on black like MNIST. Pillow (the ``images`` extra) is imported
only when one of them is called.
"""

from __future__ import annotations

import os

import numpy as np

from .errors import FastLeNetError

FIELD = 28           # MNIST image side
BOX = 20             # side of the box the digit is fitted into
MAX_SIDE = 1024      # photos are shrunk to this first: the target is 20 px, this is speed
NOISE_SIGMAS = 3.0   # paper noise above this many sigmas of the border counts as ink
MIN_CONTRAST = 10.0  # ink fainter than this (of 255) above the paper's noise: blank page
INK_FRACTION = 0.3   # a pixel is part of the digit's box above this share of full ink
SPECK_SHARE = 0.05   # an island of ink this small against the largest one is a speck
TEXTURE_SIGMA = 50.0  # paper noise this strong (of 255) is noise or texture, not paper


def _pil():
    """Import Pillow, or say how to get it."""
    try:
        from PIL import Image, ImageOps
    except ImportError:
        raise FastLeNetError("reading images needs Pillow: pip install 'fastlenet[images]'") from None
    return Image, ImageOps


def _resize(a: np.ndarray, h: int, w: int, resample: str) -> np.ndarray:
    """Resize a (H, W) float array to (h, w) with a Pillow filter ("BOX" or "LANCZOS")."""
    Image, _ = _pil()
    img = Image.fromarray(np.ascontiguousarray(a, dtype=np.float32))
    return np.asarray(img.resize((w, h), getattr(Image, resample)), dtype=np.float64)


def load_digit(path: str | os.PathLike) -> np.ndarray:
    """Read an image file (PNG, JPEG, ...) of one digit -> (28, 28) uint8 MNIST-style."""
    Image, _ = _pil()
    try:
        with Image.open(path) as img:
            img.load()
            gray = to_grayscale(img)
    except FileNotFoundError:
        raise FastLeNetError(f"image file {path} does not exist") from None
    except Image.UnidentifiedImageError:
        raise FastLeNetError(f"{path} is not an image Pillow can read (expected a PNG or JPEG file)") from None
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as err:
        # Pillow reports damaged data as any of these, depending on the format; an
        # OSError with a strerror comes from the system (a folder, no permission).
        problem = getattr(err, "strerror", None) or f"{err} (export it again as PNG or JPEG)"
        raise FastLeNetError(f"cannot read image {path}: {problem}") from None
    return digit_from_array(gray, name=str(path))


def to_grayscale(img) -> np.ndarray:
    """Step 1: a Pillow image -> (H, W) float64 gray levels, 0 black .. 255 white.

    Applies the EXIF orientation (phone photos are stored sideways), composites
    transparency on white paper, scales 16-bit images down to 0..255 and shrinks big
    photos so that the longer side is at most ``MAX_SIDE`` (averaging, which also
    smooths sensor noise).
    """
    Image, ImageOps = _pil()
    img = ImageOps.exif_transpose(img)
    if img.mode.startswith("I") or img.mode == "F":
        gray = np.asarray(img, dtype=np.float64)
        # 16-bit modes span 0..65535; 32-bit "I"/"F" declare no range, so a maximum
        # above 255 is taken to mean 16-bit data.
        if img.mode.startswith("I;16") or gray.max() > 255:
            gray *= 255 / 65535
    else:
        if img.mode in ("RGBA", "LA", "PA", "RGBa", "La") or "transparency" in img.info:
            rgba = img.convert("RGBA")
            img = Image.alpha_composite(Image.new("RGBA", rgba.size, "white"), rgba)
        gray = np.asarray(img.convert("L"), dtype=np.float64)
    h, w = gray.shape
    if max(h, w) > MAX_SIDE:
        s = MAX_SIDE / max(h, w)
        gray = _resize(gray, max(1, round(h * s)), max(1, round(w * s)), "BOX")
    return gray


def digit_from_array(gray: np.ndarray, *, name: str = "the array") -> np.ndarray:
    """Steps 2-7 on a (H, W) array of gray levels (0 black .. 255 white, any real dtype).

    Either polarity works (dark ink on paper, or MNIST-like white on black). Returns
    (28, 28) uint8 with bright ink. ``name`` is used in the error for a blank image.
    """
    gray = np.asarray(gray)
    if gray.ndim != 2 or gray.size == 0 or not np.issubdtype(gray.dtype, np.number):
        raise FastLeNetError(
            f"{name} must be a non-empty 2-D array of gray levels, got shape {gray.shape} of {gray.dtype}")
    gray = gray.astype(np.float64)
    if not np.isfinite(gray).all():
        raise FastLeNetError(f"{name} contains NaN or infinite gray levels")
    diff, sigma = subtract_paper(gray)
    ink = stretch_ink(make_ink_bright(diff, sigma), sigma)
    if ink is None and sigma >= TEXTURE_SIGMA:  # a stroke would need 3 sigma > 150 to show
        raise FastLeNetError(f"no digit-like stroke found in {name}: it is noise or texture "
                             f"(its gray levels scatter by {sigma:.0f} of 255), not a digit on a "
                             "plain background")
    if ink is None:
        raise FastLeNetError(f"no digit found in {name} (the image is blank)")
    return center_of_mass_field(fit_box(crop_to_ink(ink)))


def _frame(shape: tuple[int, int]) -> np.ndarray:
    """(H, W) bool mask of the outer 5% frame (at least one pixel): mostly bare paper."""
    h, w = shape
    k = max(1, round(0.05 * min(h, w)))
    inner = np.zeros(shape, dtype=bool)
    inner[k:h - k, k:w - k] = True
    return ~inner


def _mad_sigma(r: np.ndarray) -> float:
    """Noise sigma of residuals r, robust to outliers: 1.4826 * median |r - median(r)|
    (the factor makes it the standard deviation for Gaussian noise)."""
    return 1.4826 * float(np.median(np.abs(r - np.median(r))))


def subtract_paper(gray: np.ndarray) -> tuple[np.ndarray, float]:
    """Step 2: (H, W) gray -> ((H, W) signed difference from the paper, noise sigma).

    The paper's level is a plane a + b*x + c*y (so an even lighting gradient goes away)
    fitted by least squares to the frame pixels. Ink crossing the frame pulls that fit,
    so it is fitted again without the pixels more than 3 sigma off the first one.
    """
    frame = _frame(gray.shape)
    yy, xx = np.mgrid[:gray.shape[0], :gray.shape[1]]
    plane = np.stack([np.ones(gray.shape), xx, yy], axis=-1)  # (H, W, 3): 1, x, y
    design, v = plane[frame], gray[frame]
    coef = np.linalg.lstsq(design, v, rcond=None)[0]
    r = v - design @ coef
    keep = np.abs(r - np.median(r)) <= 3 * _mad_sigma(r)
    coef = np.linalg.lstsq(design[keep], v[keep], rcond=None)[0]
    return gray - plane @ coef, _mad_sigma(v[keep] - design[keep] @ coef)


def make_ink_bright(diff: np.ndarray, sigma: float) -> np.ndarray:
    """Step 3: (H, W) signed difference from the paper -> (H, W) with the ink positive.

    The ink is whichever side stands out of the paper's noise more (summed over pixels
    beyond NOISE_SIGMAS sigma): darker for a pen on paper, brighter for chalk or MNIST.
    """
    t = NOISE_SIGMAS * sigma
    dark_ink = np.clip(-diff - t, 0, None).sum() > np.clip(diff - t, 0, None).sum()
    return -diff if dark_ink else diff


def stretch_ink(diff: np.ndarray, sigma: float) -> np.ndarray | None:
    """Step 4: (H, W) bright-positive difference -> (H, W) ink 0..255 on exact 0.

    What rises less than NOISE_SIGMAS sigma above the paper is paper (sensor and JPEG
    noise). The rest is scaled so that strong strokes (90th percentile of the pixels
    above half the peak) reach 255. Returns None when no ink stands out: the peak of the
    3x3-blurred ink (so that one hot pixel is not a digit) is below MIN_CONTRAST.
    """
    ink = np.clip(diff - NOISE_SIGMAS * sigma, 0, None)
    peak = _blur3(ink).max()
    if peak < MIN_CONTRAST:
        return None
    level = np.percentile(ink[ink > peak / 2], 90)
    return np.clip(ink * (255 / level), 0, 255)


def _blur3(a: np.ndarray) -> np.ndarray:
    """(H, W) -> (H, W) mean over each 3x3 neighbourhood (edges repeated)."""
    h, w = a.shape
    p = np.pad(a, 1, mode="edge")
    return sum(p[i:i + h, j:j + w] for i in range(3) for j in range(3)) / 9


def _span(profile: np.ndarray) -> tuple[int, int]:
    """[start, stop) of the ink along one axis, given its ink count per line.

    Lines with ink form islands separated by empty lines; islands holding less than
    ``SPECK_SHARE`` of the largest island's ink are specks and are skipped.
    """
    edges = np.flatnonzero(np.diff(np.concatenate([[0], profile > 0, [0]]).astype(np.int8)))
    starts, stops = edges[::2], edges[1::2]
    mass = np.array([profile[s:e].sum() for s, e in zip(starts, stops)])
    big = mass >= SPECK_SHARE * mass.max()
    return int(starts[big][0]), int(stops[big][-1])


def crop_to_ink(ink: np.ndarray) -> np.ndarray:
    """Step 5: (H, W) -> (h, w), the bounding box of the pixels above INK_FRACTION of
    full ink, less the specks that ``_span`` skips."""
    mask = ink > INK_FRACTION * 255
    top, bottom = _span(mask.sum(axis=1))
    left, right = _span(mask.sum(axis=0))
    return ink[top:bottom, left:right]


def fit_box(ink: np.ndarray) -> np.ndarray:
    """Step 6: (h, w) -> (h', w') with max(h', w') = 20 and the aspect ratio kept.

    Lanczos resampling anti-aliases like MNIST's fitting; its ringing is clipped. The
    result is stretched back to a peak of 255, since thin strokes shrunk from a large
    photo come out faint and MNIST strokes are saturated.
    """
    h, w = ink.shape
    s = BOX / max(h, w)
    box = np.clip(_resize(ink, max(1, round(h * s)), max(1, round(w * s)), "LANCZOS"), 0, None)
    return np.clip(box * (255 / box.max()), 0, 255)


def center_of_mass_field(box: np.ndarray) -> np.ndarray:
    """Step 7: (h, w) with h, w <= 20 -> (28, 28) uint8, centre of mass at (14, 14).

    The shift is rounded to whole pixels, as for MNIST, and clamped so that the digit
    stays inside the field.
    """
    h, w = box.shape
    total = box.sum()
    cy = box.sum(axis=1) @ np.arange(h) / total
    cx = box.sum(axis=0) @ np.arange(w) / total
    top = int(np.clip(round(FIELD // 2 - cy), 0, FIELD - h))
    left = int(np.clip(round(FIELD // 2 - cx), 0, FIELD - w))
    field = np.zeros((FIELD, FIELD))
    field[top:top + h, left:left + w] = box
    return np.rint(field).astype(np.uint8)
