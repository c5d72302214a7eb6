"""Digit simulator: 28x28 grey digits, white on black, rendered from matplotlib's fonts.

Two renderings of the same geometry. `binary` is what a renderer without a camera or
pen model draws: a pixel is ink when the glyph covers at least half of it, else
background. It is the default because it is the situation refinement is for: the
simulator gets shape and label right and leaves appearance to the refiner. `antialiased`
is hand-tuned towards MNIST (coverage-weighted grey, re-stretched so strokes saturate);
it shows what an appearance-matched simulator looks like, and how little a refiner can
add to one.

Only TrueType files that ship inside matplotlib are used, so no font download is ever
needed. Several of them are symbol or math fonts whose code points '0'-'9' hold blanks,
primes, boxes or brackets; `usable_fonts` renders every digit of every font once and
keeps a font only when all ten glyphs are non-blank, distinct, and each one resembles
the same digit in at least one reference font (DejaVu Sans/Serif/Mono, upright and
slanted). A nearest-class rule was tried and wrongly rejected legible bold and italic
fonts (Computer Modern bold 5 is closer to a DejaVu 6); resemblance to the right digit
separates them cleanly from the symbol fonts, which score below 0.3.
"""

from __future__ import annotations

import functools
import os

import matplotlib
import numpy as np
from PIL import Image, ImageDraw, ImageFont
from scipy.ndimage import gaussian_filter

SIZE = 28  # output is SIZE x SIZE (square, so no (W, H) vs (H, W) ambiguity here)
SCALE = 4  # glyphs are drawn at SCALE times the output size, then area-averaged down
CANVAS = 160  # drawing pixels: room for any glyph at any rotation and shear
REFERENCE_FONTS = (
    "DejaVuSans.ttf",
    "DejaVuSans-Oblique.ttf",
    "DejaVuSans-Bold.ttf",
    "DejaVuSerif.ttf",
    "DejaVuSerif-Italic.ttf",
    "DejaVuSerif-BoldItalic.ttf",
    "DejaVuSansMono.ttf",
)
# Correlation (after a light blur) a glyph must reach with the same reference digit.
# Legible fonts here score 0.66 or more, symbol fonts 0.3 or less.
MIN_AGREEMENT = 0.55

# Parameter ranges. The glyph height matches MNIST, whose digits fit a 20x20 box.
HEIGHT_RANGE = (15.0, 21.0)  # output pixels
STROKE_RANGE = (0, 5)  # extra outline at drawing scale, in drawing pixels (inclusive)
ROTATION_RANGE = (-15.0, 15.0)  # degrees, counter-clockwise
SHEAR_RANGE = (-0.25, 0.25)  # horizontal shear per unit height
SHIFT_RANGE = (-2, 2)  # output pixels, inclusive
RENDERINGS = ("binary", "antialiased")
DEFAULT_RENDERING = "binary"


def font_dir() -> str:
    return os.path.join(matplotlib.get_data_path(), "fonts", "ttf")


@functools.lru_cache(maxsize=None)
def _font(name: str) -> ImageFont.FreeTypeFont:
    # Drawn at a fixed size; the glyph is scaled to the sampled height afterwards.
    return ImageFont.truetype(os.path.join(font_dir(), name), size=SIZE * SCALE)


def _draw(font: str, digit: int, stroke: int, rotation: float, shear: float) -> np.ndarray:
    """The glyph as a tight-cropped float image at drawing scale (may be empty)."""
    canvas = Image.new("L", (CANVAS, CANVAS), 0)
    draw = ImageDraw.Draw(canvas)
    draw.text(
        (CANVAS // 2, CANVAS // 2),
        str(digit),
        fill=255,
        font=_font(font),
        anchor="mm",
        stroke_width=stroke,
        stroke_fill=255,
    )
    if shear or rotation:
        # One affine resampling for both: shear (positive leans the top right, like
        # italics), then rotation (positive is counter-clockwise on screen), both about
        # the centre. PIL wants the inverse map, output pixel -> input pixel; y is down.
        angle = np.radians(rotation)
        cos, sin = np.cos(angle), np.sin(angle)
        forward = np.array([[cos, sin], [-sin, cos]]) @ np.array([[1.0, -shear], [0.0, 1.0]])
        inverse = np.linalg.inv(forward)
        centre = np.array([CANVAS / 2, CANVAS / 2])
        offset = centre - inverse @ centre
        coefficients = (*inverse[0], offset[0], *inverse[1], offset[1])
        canvas = canvas.transform(canvas.size, Image.Transform.AFFINE, coefficients, Image.Resampling.BILINEAR)
    box = canvas.getbbox()
    if box is None:
        return np.zeros((0, 0), np.float32)
    if box[0] == 0 or box[1] == 0 or box[2] == CANVAS or box[3] == CANVAS:
        raise ValueError(f"font {font} draws digit {digit} beyond the canvas")
    return np.asarray(canvas.crop(box), dtype=np.float32)


def _place(glyph: np.ndarray, height: float, shift_x: int, shift_y: int) -> np.ndarray:
    """Scale the glyph to `height` output pixels and centre it by its centre of mass."""
    h, w = glyph.shape
    scale = height / h
    # Wide glyphs (e.g. a bold 0 or 4) are limited in width so they never clip.
    scale = min(scale, (SIZE - 6) / w)
    out_h, out_w = max(1, round(h * scale)), max(1, round(w * scale))
    # PIL sizes are (width, height).
    small = np.asarray(
        Image.fromarray(glyph.astype(np.uint8)).resize((out_w, out_h), Image.Resampling.BOX), dtype=np.float32
    )
    mass = small.sum()
    rows, cols = np.indices(small.shape)
    cy, cx = (rows * small).sum() / mass, (cols * small).sum() / mass
    top = int(round(SIZE / 2 - cy)) + shift_y
    left = int(round(SIZE / 2 - cx)) + shift_x
    top = min(max(top, 0), SIZE - out_h)
    left = min(max(left, 0), SIZE - out_w)
    image = np.zeros((SIZE, SIZE), np.float32)
    image[top : top + out_h, left : left + out_w] = small
    return image


def render(
    font: str,
    digit: int,
    height: float,
    stroke: int,
    rotation: float,
    shear: float,
    shift_x: int,
    shift_y: int,
    *,
    rendering: str,
) -> np.ndarray:
    """One 28x28 uint8 digit image (white on black)."""
    if rendering not in RENDERINGS:
        raise ValueError(f"unknown rendering {rendering!r}; choose one of {', '.join(RENDERINGS)}")
    glyph = _draw(font, digit, stroke, rotation, shear)
    if glyph.size == 0:
        raise ValueError(f"font {font} renders digit {digit} blank")
    image = _place(glyph, height, shift_x, shift_y)
    if rendering == "binary":
        # The area average is the glyph's coverage of each output pixel.
        return np.where(image >= 127.5, 255, 0).astype(np.uint8)
    # Re-stretch to full white: area-averaging dims thin strokes, MNIST strokes saturate.
    image *= 255.0 / max(image.max(), 1.0)
    return np.clip(np.rint(image), 0, 255).astype(np.uint8)


def _standard(font: str, digit: int) -> np.ndarray:
    # Grey, so the resemblance check sees the glyph's shape rather than its pixel grid.
    return render(font, digit, height=20.0, stroke=0, rotation=0.0, shear=0.0, shift_x=0, shift_y=0,
                  rendering="antialiased")


def _normalised(image: np.ndarray) -> np.ndarray:
    """Zero-mean unit vector of a lightly blurred image: tolerant to small offsets."""
    vector = gaussian_filter(image.astype(np.float64), 1.0).ravel()
    vector -= vector.mean()
    norm = np.linalg.norm(vector)
    return vector / norm if norm else vector


def font_rejection(font: str, references: np.ndarray) -> str | None:
    """Why `font` is unfit for digits, or None. `references`: fonts x 10 x 784, normalised."""
    try:
        glyphs = [_standard(font, digit) for digit in range(10)]
    except (OSError, ValueError) as exc:
        return str(exc)
    for digit, glyph in enumerate(glyphs):
        if (glyph > 127).sum() < 15:
            return f"digit {digit} renders (nearly) blank"
    vectors = np.stack([_normalised(g) for g in glyphs])
    similarity = vectors @ vectors.T
    np.fill_diagonal(similarity, -1)
    if similarity.max() > 0.98:
        a, b = np.unravel_index(similarity.argmax(), similarity.shape)
        return f"digits {a} and {b} render the same glyph"
    # agreement[d]: best correlation of this font's digit d with digit d of any reference.
    agreement = np.einsum("dp,fdp->fd", vectors, references).max(axis=0)
    for digit in range(10):
        if agreement[digit] < MIN_AGREEMENT:
            return f"digit {digit} does not look like a {digit} (similarity {agreement[digit]:.2f})"
    return None


@functools.lru_cache(maxsize=1)
def usable_fonts() -> tuple[str, ...]:
    """File names of matplotlib's fonts that render all ten digits legibly, sorted."""
    references = np.array([[_normalised(_standard(font, d)) for d in range(10)] for font in REFERENCE_FONTS])
    names = sorted(n for n in os.listdir(font_dir()) if n.lower().endswith(".ttf"))
    fonts = tuple(name for name in names if font_rejection(name, references) is None)
    if not fonts:
        raise RuntimeError(f"no usable digit font among matplotlib's fonts in {font_dir()}")
    return fonts


def sample(rng: np.random.Generator, fonts: tuple[str, ...], rendering: str = DEFAULT_RENDERING) -> tuple[np.ndarray, dict]:
    """A random digit image and its labels: the class and every rendering parameter.

    The random draws do not depend on `rendering`: one seed gives the same digits in
    either rendering.
    """
    labels = {
        "class": int(rng.integers(10)),
        "font": fonts[int(rng.integers(len(fonts)))],
        "height": round(float(rng.uniform(*HEIGHT_RANGE)), 3),
        "stroke": int(rng.integers(STROKE_RANGE[0], STROKE_RANGE[1] + 1)),
        "rotation": round(float(rng.uniform(*ROTATION_RANGE)), 3),
        "shear": round(float(rng.uniform(*SHEAR_RANGE)), 4),
        "shift_x": int(rng.integers(SHIFT_RANGE[0], SHIFT_RANGE[1] + 1)),
        "shift_y": int(rng.integers(SHIFT_RANGE[0], SHIFT_RANGE[1] + 1)),
    }
    image = render(
        labels["font"],
        labels["class"],
        labels["height"],
        labels["stroke"],
        labels["rotation"],
        labels["shear"],
        labels["shift_x"],
        labels["shift_y"],
        rendering=rendering,
    )
    labels["rendering"] = rendering
    return image, labels
