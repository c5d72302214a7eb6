"""Other real domains made from the same real digits: a refiner must not make any of them worse.

A user's real images differ from the simulator's in ways nobody lists in advance:
thicker or thinner pens, faded scans, sensor noise (alone, or with blur, vignetting
and grey paper), dust and dead pixels, dark-on-light paper, blur, weak ink, another
tone response, uneven lighting or shadow, stained paper, a low-resolution or
thresholding sensor, smaller, larger or slanted handwriting, camera shake, heavy JPEG
compression, or two or three of these at once.
Each variant here is one such change (or a few) applied to real MNIST digits, so
robustness can be measured on real handwriting in several appearances
(`simgan import-real mnist --variant NAME`).
Variants change appearance only: the class of every digit stays what it was.

Every function takes and returns uint8 images (N x H x W) and draws its randomness
from the seed it is given, so a variant is the same every time it is built.
"""

from __future__ import annotations

import io
from typing import Callable

import numpy as np
from PIL import Image
from scipy import ndimage


def _as_uint8(images: np.ndarray) -> np.ndarray:
    return np.clip(np.rint(images), 0, 255).astype(np.uint8)


def thick(images: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """A broad pen: strokes grown by about one pixel on every side."""
    return ndimage.grey_dilation(images, size=(1, 3, 3))


def thin(images: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """A fine pen: strokes shrunk (a cross-shaped erosion keeps thin parts alive)."""
    cross = np.zeros((1, 3, 3), bool)
    cross[0, 1, :] = cross[0, :, 1] = True
    return ndimage.grey_erosion(images, footprint=cross)


def low_contrast(images: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """A faded scan: grey paper (about 90) and grey ink (at most about 170)."""
    return _as_uint8(90 + images.astype(np.float32) * (80 / 255))


def noisy(images: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """A cheap sensor: slight blur, vignetting (darker corners) and Gaussian noise."""
    x = ndimage.gaussian_filter(images.astype(np.float32), sigma=(0, 0.7, 0.7))
    h, w = images.shape[1:]
    yy, xx = np.mgrid[0:h, 0:w]
    radius = np.hypot((yy - (h - 1) / 2) / (h / 2), (xx - (w - 1) / 2) / (w / 2))
    x = (x + 25) * np.clip(1 - 0.35 * radius**2, 0, 1)
    return _as_uint8(x + rng.normal(0, 18, size=x.shape))


def grainy(images: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Sensor noise alone: Gaussian noise of 25 levels on the digits as they are, clipped."""
    return _as_uint8(images.astype(np.float32) + rng.normal(0, 25, size=images.shape))


def inverted(images: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Dark ink on light paper: the opposite polarity of the simulator's digits."""
    return 255 - images


def heavy(images: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """A marker: strokes grown by about two pixels on every side (loops nearly close)."""
    return ndimage.grey_dilation(images, size=(1, 5, 5))


def blurred(images: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """An out-of-focus camera: a Gaussian blur of 1.2 pixels, nothing else."""
    return _as_uint8(ndimage.gaussian_filter(images.astype(np.float32), sigma=(0, 1.2, 1.2)))


def faded_inverted(images: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """A faded print: grey ink (about 85) on light grey paper (about 165)."""
    return 255 - low_contrast(images, rng)


def dim_ink(images: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Weak ink on black paper: strokes at most about 120."""
    return _as_uint8(images.astype(np.float32) * (120 / 255))


def speckled(images: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """A very noisy sensor: grey paper (about 30) and Gaussian noise of 40 levels."""
    return _as_uint8(images.astype(np.float32) + 30 + rng.normal(0, 40, size=images.shape))


def gamma(images: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Another tone response: mid tones lifted (gamma 0.4), stroke edges brighter and wider."""
    return _as_uint8(255 * (images.astype(np.float32) / 255) ** 0.4)


def faint(images: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """A badly exposed scan: light grey paper (about 110) and ink only 45 levels above it."""
    return _as_uint8(110 + images.astype(np.float32) * (45 / 255))


def broad(images: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """A slightly broader pen: strokes grown by about half a pixel on every side (2x2)."""
    return ndimage.grey_dilation(images, size=(1, 2, 2))


def salt_pepper(images: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Dust and dead pixels: 3 % of the pixels black and 3 % white, the rest as they are."""
    draw = rng.random(images.shape)
    out = images.copy()
    out[draw < 0.03] = 0
    out[draw > 0.97] = 255
    return out


def _ramps(shape: tuple[int, int, int], rng: np.random.Generator) -> np.ndarray:
    """(N, H, W): a linear ramp from 0 to 1 across each image, in a direction drawn per image."""
    n, h, w = shape
    yy, xx = np.mgrid[0:h, 0:w]
    angle = rng.uniform(0, 2 * np.pi, size=(n, 1, 1))
    ramp = np.cos(angle) * (xx / (w - 1) - 0.5) + np.sin(angle) * (yy / (h - 1) - 0.5)
    return (ramp - ramp.min(axis=(1, 2), keepdims=True)) / np.ptp(ramp, axis=(1, 2), keepdims=True)


def uneven_light(images: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """A photo of paper under a lamp: paper brightening from 0 to about 70 across each image,
    in a direction drawn per image, the ink on top of it."""
    return _as_uint8(np.maximum(images.astype(np.float32), 70 * _ramps(images.shape, rng)))


def shadowed(images: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Dark ink on white paper photographed in a shadow: the light, ink and paper alike,
    falling off by up to half across each image, in a direction drawn per image."""
    return _as_uint8((255 - images.astype(np.float32)) * (1 - 0.5 * _ramps(images.shape, rng)))


def pixelated(images: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """A low-resolution sensor shown at full size: 2x2 blocks averaged, each drawn as one value."""
    n, h, w = images.shape
    blocks = images.astype(np.float32).reshape(n, h // 2, 2, w // 2, 2).mean(axis=(2, 4))
    return _as_uint8(blocks.repeat(2, axis=1).repeat(2, axis=2))


def stained(images: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Stained or textured paper: blotches up to about 60 levels bright, a few pixels
    across, different on every page, the ink on top of them."""
    field = ndimage.gaussian_filter(rng.normal(size=images.shape), sigma=(0, 3, 3))
    field /= field.std(axis=(1, 2), keepdims=True)
    return _as_uint8(np.maximum(images.astype(np.float32), np.clip(20 * (field + 1), 0, 60)))


def binarized(images: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """A fax or a thresholding scanner: every pixel black or white, no grey edges."""
    return np.where(images > 127, 255, 0).astype(np.uint8)


def _resampled(images: np.ndarray, matrix: np.ndarray, offset: np.ndarray) -> np.ndarray:
    """Each image resampled (bilinear, paper beyond its edges): output pixel p shows the
    input at matrix @ p + offset, p as (row, column)."""
    return _as_uint8(np.stack([ndimage.affine_transform(image.astype(np.float32), matrix, offset=offset, order=1)
                               for image in images]))


def _zoomed(images: np.ndarray, factor: float) -> np.ndarray:
    """Each image zoomed by `factor` about its centre."""
    h, w = images.shape[1:]
    # Output pixel p shows the input at centre + (p - centre) / factor.
    centre = np.array([(h - 1) / 2, (w - 1) / 2])
    return _resampled(images, np.diag([1 / factor, 1 / factor]), centre - centre / factor)


def small(images: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Digits written smaller: each shrunk to three quarters of its size about the image's centre."""
    return _zoomed(images, 0.75)


def large(images: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Digits written larger: each grown to 1.2 times its size about the image's centre
    (MNIST's 20-pixel box becomes 24 of 28)."""
    return _zoomed(images, 1.2)


def shaken(images: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Camera shake: each image smeared along a straight line 5 pixels long, in a
    direction drawn per image (a motion blur, unlike the round blur of a bad focus)."""
    out = np.empty(images.shape, np.float32)
    steps = np.linspace(-2, 2, 33)
    for i, angle in enumerate(rng.uniform(0, np.pi, len(images))):
        # Points along the line, each shared bilinearly among its four pixels, so that
        # the line is as long at 45 degrees as along a row.
        rows, columns = 3 + steps * np.sin(angle), 3 + steps * np.cos(angle)
        kernel = np.zeros((7, 7), np.float32)
        r0, c0 = np.floor(rows).astype(int), np.floor(columns).astype(int)
        fr, fc = rows - r0, columns - c0
        for dr, wr in ((0, 1 - fr), (1, fr)):
            for dc, wc in ((0, 1 - fc), (1, fc)):
                np.add.at(kernel, (r0 + dr, c0 + dc), wr * wc)
        out[i] = ndimage.convolve(images[i].astype(np.float32), kernel / kernel.sum(), mode="constant")
    return _as_uint8(out)


def jpeg(images: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Heavy JPEG compression (quality 15): 8x8 blocks, ringing around the strokes."""
    def compressed(image: np.ndarray) -> np.ndarray:
        buffer = io.BytesIO()
        Image.fromarray(image).save(buffer, format="JPEG", quality=15)
        return np.asarray(Image.open(buffer))

    return np.stack([compressed(image) for image in images])


def slanted(images: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Handwriting slanted to the right: each digit sheared by 0.3 (about 17 degrees) about the image's centre."""
    h = images.shape[1]
    # Output (row, column) shows the input at (row, column - 0.3 * (centre row - row)).
    return _resampled(images, np.array([[1.0, 0.0], [0.3, 1.0]]), np.array([0.0, -0.3 * (h - 1) / 2]))


def _chain(*changes):
    """Several changes at once, in order: real domains rarely differ in one way only."""
    def chained(images: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        for change in changes:
            images = change(images, rng)
        return images

    chained.__doc__ = " then ".join(change.__name__ for change in changes)
    return chained


def very_grainy(images: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """A sensor in poor light: Gaussian noise of 50 levels on the digits as they are, clipped."""
    return _as_uint8(images.astype(np.float32) + rng.normal(0, 50, size=images.shape))


VARIANTS: dict[str, Callable[[np.ndarray, np.random.Generator], np.ndarray] | None] = {
    "none": None,
    "thick": thick,
    "thin": thin,
    "low-contrast": low_contrast,
    "noisy": noisy,
    "grainy": grainy,
    "inverted": inverted,
    "heavy": heavy,
    "blurred": blurred,
    "faded-inverted": faded_inverted,
    "dim-ink": dim_ink,
    "speckled": speckled,
    "gamma": gamma,
    # Two changes at once.
    "thin-inverted": _chain(thin, inverted),
    "faded-grainy": _chain(low_contrast, grainy),
    "blurred-inverted": _chain(blurred, inverted),
    "thick-inverted": _chain(thick, inverted),
    "grainy-inverted": _chain(grainy, inverted),
    "thin-faded": _chain(thin, low_contrast),
    "faint": faint,
    "broad": broad,
    "salt-pepper": salt_pepper,
    "thick-grainy": _chain(thick, grainy),
    "thin-blurred": _chain(thin, blurred),
    "thick-faded": _chain(thick, low_contrast),
    "thin-grainy": _chain(thin, grainy),
    "blurred-grainy": _chain(blurred, grainy),
    "thick-blurred": _chain(thick, blurred),
    "broad-noisy": _chain(broad, noisy),
    "uneven-light": uneven_light,
    "pixelated": pixelated,
    "shadowed": shadowed,
    "stained": stained,
    "binarized": binarized,
    "small": small,
    "slanted": slanted,
    "uneven-grainy": _chain(uneven_light, grainy),
    "very-grainy": very_grainy,
    "large": large,
    "shaken": shaken,
    "jpeg": jpeg,
    "dim-inverted": _chain(dim_ink, inverted),
    "broad-faded": _chain(broad, low_contrast),
    "thick-very-grainy": _chain(thick, very_grainy),
    # Three changes at once.
    "thick-grainy-inverted": _chain(thick, grainy, inverted),
    "thin-faded-inverted": _chain(thin, faded_inverted),
}


def apply_variant(name: str, images: np.ndarray, seed: int) -> np.ndarray:
    """`images` (N x H x W uint8) as they would look in the variant's domain."""
    if name not in VARIANTS:
        raise ValueError(f"unknown variant {name!r}; choose from {sorted(VARIANTS)}")
    function = VARIANTS[name]
    if function is None:
        return images
    return function(images, np.random.default_rng([seed, 0x5EED]))
