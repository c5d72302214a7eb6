"""Fitting the refiner's fixed input changes to the real images: the glyph size
(pipeline.models.GlyphSize), the stroke width (pipeline.models.StrokeWidth), the optical
blur (pipeline.models.Blur), the tone curve (pipeline.models.ToneMap), the uneven
lighting (pipeline.models.Shading) and the sensor grain (pipeline.models.Grain). No
real labels are used; the size and stroke curves and the blur are checked against the
task network trained on the simulator's labels (keep_labels).

The curve is the straight line that takes the synthetic images' darkest and brightest
tones (their 1st and 99th percentiles, channel by channel) to the real images'. Matching
whole histograms would be wrong: when the real strokes are thicker or thinner than the
simulator's, the share of ink differs, and a histogram match turns part of the
background grey or part of the ink dark. The extremes do not depend on that share.

A percentile match cannot tell which way round it should go: on dark-on-light real
images the synthetic background must become the light tone. So both the rising and the
falling line are fitted, and the one whose mean tone-mapped image is closer to the mean
real image is kept.
"""

from __future__ import annotations

from typing import Callable

import torch
import torch.nn.functional as F

from pipeline.models import Blur, GlyphSize, Grain, Shading, StrokeWidth, ToneMap
from pipeline.training import task

# Images and pixels per channel used for the fit: plenty for two percentiles.
FIT_IMAGES = 2000
FIT_PIXELS = 1_000_000
PERCENTILES = (0.01, 0.99)
# The paper, the tone most pixels have, is measured at its quartile instead: on noisy
# images even 3x3-median filtered, the 1st percentile of a grey paper is the far tail
# of its noise (clipped to black), not its tone. On clean images the quartile is the
# same tone as the percentile, so their fit does not change.
PAPER_QUARTILES = (0.25, 0.75)
# Grain weaker than this (about 2.5 of 255 levels), or than half the synthetic images'
# own noise (the estimates' error then dominates the difference), is left out: the
# images count as equally clean.
GRAIN_FLOOR = 0.01
# The size and stroke-width curves and the blur are scaled towards the identity until the task
# network reads at least min_label_consistency + this on held-out synthetic images so
# adjusted: the refiner's own changes then still have room under the selection's threshold.
LABEL_MARGIN = 0.05
# Bisection steps for that scale in 0..1.
LABEL_STEPS = 6
# Sharpness: the percentile of neighbour differences taken as an image's steepest edge,
# and the least tone range (1st to 99th percentile) an image needs to be measured.
SHARPNESS_PERCENTILE = 0.99
MIN_SPAN = 0.05
# Real images less sharp than the synthetic by no more than this share count as as sharp
# (about sigma 0.3 px: below what an eye or a discriminator tells apart).
BLUR_TOLERANCE = 0.05
# Bisection steps for the blur's sigma in 0..Blur.LIMIT: to about 0.003 px.
BLUR_STEPS = 10
# Bisection steps for the grain's sigma in 0..1: to about 0.001 (a quarter of a level).
GRAIN_STEPS = 10
# Real paper whose fitted lighting strays from its own mean by less than this (about 8 of
# 255 levels, the median over the images, beyond the synthetic paper's own) counts as
# evenly lit: no shading. Measured on MNIST made noisy, blurred, pixelated or vignetted,
# the fits stray 0 to 3 levels; under a lamp brightening the paper by 70, 14.
SHADING_FLOOR = 0.03
# An image whose paper covers less than this share of it tells little about its lighting.
SHADING_MIN_PAPER = 0.25
# The median absolute value of a standard normal variable.
_MEDIAN_ABS_NORMAL = 0.6745


def _extremes(images: torch.Tensor) -> torch.Tensor:
    """(channels, 2): each channel's dark and light extreme tone: the low and high
    percentile, the paper's end taken at its quartile (the end whose quartile lies
    nearer its percentile: the ink's quartile is paper)."""
    values = images.transpose(0, 1).reshape(images.shape[1], -1)
    if values.shape[1] > FIT_PIXELS:
        values = values[:, torch.linspace(0, values.shape[1] - 1, FIT_PIXELS).long()]
    low, low_quartile, high_quartile, high = torch.quantile(
        values, torch.tensor([PERCENTILES[0], *PAPER_QUARTILES, PERCENTILES[1]]), dim=1)
    dark_paper = (low_quartile - low) <= (high - high_quartile)
    return torch.stack([torch.where(dark_paper, low_quartile, low), torch.where(dark_paper, high, high_quartile)], dim=1)


def fit_lines(synthetic: torch.Tensor, real: torch.Tensor, levels: int = ToneMap.LEVELS) -> dict[str, torch.Tensor]:
    """{"rising": table, "falling": table}, each (channels, levels), for float NCHW images in [0, 1]."""
    source, target = _extremes(synthetic), _extremes(real)
    grid = torch.linspace(0, 1, levels)
    span = (source[:, 1:] - source[:, :1]).clamp(min=1e-3)
    position = ((grid[None, :] - source[:, :1]) / span).clamp(0, 1)  # 0 at the dark extreme, 1 at the bright
    low, high = target[:, :1], target[:, 1:]
    return {"rising": low + (high - low) * position, "falling": high - (high - low) * position}


def _apply(table: torch.Tensor, images: torch.Tensor) -> torch.Tensor:
    tone = ToneMap(table.shape[0], table.shape[1])
    tone.table.copy_(table)
    return tone(images)


def _prepared(images: torch.Tensor) -> torch.Tensor:
    """The images a fit looks at: the first FIT_IMAGES, as float on the CPU, and, when
    they are noisy, 3x3-median filtered. Percentiles of noisy images measure the noise's
    extremes (clipped to black or white), not the paper's and the ink's tones, and noise
    breaks every stroke's outline; the median keeps edges and removes most noise. Clean
    images are left exactly as they are."""
    images = images[:FIT_IMAGES].detach().float().cpu()
    if noise_level(images).max() < GRAIN_FLOOR:
        return images
    n, c, h, w = images.shape
    patches = F.unfold(F.pad(images, (1, 1, 1, 1), mode="replicate"), 3)  # (n, c * 9, h * w)
    return patches.view(n, c, 9, h * w).median(dim=2).values.view(n, c, h, w)


def _tone(synthetic: torch.Tensor, real: torch.Tensor) -> tuple[torch.Tensor, str]:
    lines = fit_lines(synthetic, real)
    mean_real = real.mean(0)
    distance = {name: (_apply(table, synthetic).mean(0) - mean_real).abs().mean().item() for name, table in lines.items()}
    direction = min(distance, key=distance.get)
    return lines[direction], direction


def fit_tone_table(synthetic: torch.Tensor, real: torch.Tensor) -> tuple[torch.Tensor, str]:
    """The table for ToneMap and which way it runs ("rising" or "falling")."""
    return _tone(_prepared(synthetic), _prepared(real))


def fit_stroke_width(synthetic: torch.Tensor, real: torch.Tensor, blur: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
    """The buffers of pipeline.models.StrokeWidth fitted to the real images. With the
    `blur` (sigma per channel) that the refiner applies after the stroke width, the
    curve aims at widths that measure as the real ones once blurred: a blur merges
    close strokes, which then measure broader (MNIST's digits by about 0.7 px at sigma
    1.2), so a curve fitted without it broadens a pen that is only out of focus."""
    curve = _fit_curve(StrokeWidth(), synthetic, real)
    if blur is None or not blur.any():
        return curve
    blurred = _fit_curve(StrokeWidth(), synthetic, _module("blur", {"sigma": blur}, synthetic.shape[1])(synthetic))
    # The widening at each quantile, taken off the real widths; still increasing, so
    # bold and light glyphs keep their order.
    target = curve["target"] - (blurred["target"] - blurred["source"])
    return {**curve, "target": torch.cummax(target.clamp(min=0), 0).values}


def fit_glyph_size(synthetic: torch.Tensor, real: torch.Tensor) -> dict[str, torch.Tensor]:
    """The buffers of pipeline.models.GlyphSize fitted to the real images."""
    return _fit_curve(GlyphSize(), synthetic, real)


def _fit_curve(curve, synthetic: torch.Tensor, real: torch.Tensor) -> dict[str, torch.Tensor]:
    """A _FittedCurve's buffers: its figure of the synthetic images mapped to the real
    images' at matching quantiles, each side's ink told from its own paper."""
    synthetic, real = _prepared(synthetic), _prepared(real)
    low, high = _extremes(synthetic).mean(dim=0).tolist()
    # Ink is the minority tone: on a light page, the dark extreme.
    dark_ink = synthetic.mean().item() > (low + high) / 2
    paper, ink = (high, low) if dark_ink else (low, high)
    # The real page has the tone the synthetic page gets from the tone curve.
    real_low, real_high = _extremes(real).mean(dim=0).tolist()
    falling = _tone(synthetic, real)[1] == "falling"
    real_paper, real_ink = (real_high, real_low) if dark_ink != falling else (real_low, real_high)
    quantiles = torch.linspace(0, 1, curve.QUANTILES)

    def figures(images, paper, ink):
        curve.tones.copy_(torch.tensor([paper, ink]))
        return torch.quantile(curve.measure(images), quantiles)

    # Strictly increasing, so that the curve is a function of the figure.
    source = torch.cummax(figures(synthetic, paper, ink), 0).values + torch.arange(len(quantiles)) * 1e-4
    return {"source": source, "target": figures(real, real_paper, real_ink), "tones": torch.tensor([paper, ink])}


def noise_level(images: torch.Tensor) -> torch.Tensor:
    """(channels,): the standard deviation of pixel noise in float NCHW images, by the
    usual robust estimate: the median absolute diagonal Haar detail over 0.6745. Each
    non-overlapping 2x2 block's (a - b - c + d) / 2 holds one pixel's worth of noise
    and is zero wherever the picture is flat or has a straight horizontal or vertical
    edge, so glyphs barely move the median; clean renderings and scans give 0."""
    images = images[:FIT_IMAGES].detach().float().cpu()
    h, w = images.shape[2] // 2 * 2, images.shape[3] // 2 * 2
    x = images[..., :h, :w]
    detail = (x[..., 0::2, 0::2] - x[..., 0::2, 1::2] - x[..., 1::2, 0::2] + x[..., 1::2, 1::2]) / 2
    return detail.abs().transpose(0, 1).reshape(images.shape[1], -1).median(dim=1).values / _MEDIAN_ABS_NORMAL


def fit_grain(synthetic: torch.Tensor, real: torch.Tensor) -> dict[str, torch.Tensor]:
    """The buffer of pipeline.models.Grain for `synthetic` images as the grain gets them
    (after the stroke width and tone curve): the sigma at which they measure as noisy
    as the real images. Found by bisection on the grain itself, since clipping at black
    and white hides part of any noise, the real images' and the grain's alike. Zero
    where the real images are no noisier than the synthetic ones (the missing noise,
    variances adding, under GRAIN_FLOOR or half the synthetic noise)."""
    synthetic = synthetic[:FIT_IMAGES].detach().float().cpu()
    own, target = noise_level(synthetic), noise_level(real)
    missing = (target**2 - own**2).clamp(min=0).sqrt()
    sigma = torch.zeros_like(missing)
    for channel in range(len(sigma)):
        if missing[channel] < GRAIN_FLOOR or missing[channel] < own[channel] / 2:
            continue
        grain, low, high = Grain(1), 0.0, 1.0
        images = synthetic[:, channel : channel + 1]
        for _ in range(GRAIN_STEPS):
            grain.sigma.fill_((low + high) / 2)
            if noise_level(grain(images)).item() < target[channel].item():
                low = grain.sigma.item()
            else:
                high = grain.sigma.item()
        sigma[channel] = (low + high) / 2
    return {"sigma": sigma}


def _paper_and_ink(images: torch.Tensor) -> torch.Tensor:
    """(channels, 2): each channel's paper and ink tones: its extremes (_extremes), the
    paper the one its mean tone lies nearer (most of a page is paper)."""
    extremes = _extremes(images)
    mean = images.transpose(0, 1).reshape(images.shape[1], -1).mean(dim=1)
    dark_paper = mean < extremes.mean(dim=1)
    return torch.where(dark_paper[:, None], extremes, extremes.flip(1))


def paper_fields(images: torch.Tensor) -> torch.Tensor:
    """(n, channels, Shading.BASIS): the smooth field (Shading.basis) that best fits each
    image's paper, by least squares over the pixels well away from any ink (those past a
    quarter of the way from paper to ink, grown by two pixels, left out: blur and
    antialiasing spread ink onto the paper nearby). Images with too little paper
    (SHADING_MIN_PAPER) are left out."""
    x = _prepared(images)
    n, c, h, w = x.shape
    tones = _paper_and_ink(x)
    paper, ink = tones[:, 0].view(1, c, 1, 1), tones[:, 1].view(1, c, 1, 1)
    scale = ((x - paper) / (ink - paper).where((ink - paper).abs() > 1e-3, torch.ones_like(ink))).mean(dim=1, keepdim=True)
    near_ink = F.max_pool2d((scale > Shading.RAMP[0]).float(), 5, 1, 2)
    weight = (1 - near_ink).reshape(n, 1, h * w)
    keep = weight.mean(dim=(1, 2)) >= SHADING_MIN_PAPER
    basis = Shading.basis(h, w).reshape(Shading.BASIS, h * w)
    weight, values = weight[keep], x[keep].reshape(-1, c, h * w)
    normal = torch.einsum("kp,np,lp->nkl", basis, weight[:, 0], basis) + 1e-4 * torch.eye(Shading.BASIS)
    right = torch.einsum("kp,np,ncp->nkc", basis, weight[:, 0], values)
    return torch.linalg.solve(normal, right).transpose(1, 2)


def unevenness(coefficients: torch.Tensor, h: int, w: int) -> torch.Tensor:
    """(channels,): how uneven the fields are: the mean absolute departure of each
    field from its own mean over the image, the median over the images."""
    fields = torch.einsum("nck,kp->ncp", coefficients, Shading.basis(h, w).reshape(Shading.BASIS, h * w))
    return (fields - fields.mean(dim=2, keepdim=True)).abs().mean(dim=2).median(dim=0).values


def fit_shading(synthetic: torch.Tensor, real: torch.Tensor) -> dict[str, torch.Tensor]:
    """The buffers of pipeline.models.Shading for `synthetic` images as the shading gets
    them (after the tone curve): the field of each of Shading.BANK real images' paper
    less the synthetic images' mean paper field, so a shaded synthetic page takes the
    lighting of a real one; and the synthetic paper and ink tones. Zero fields (off)
    where the real paper is no more uneven than the synthetic (SHADING_FLOOR)."""
    synthetic = synthetic[:FIT_IMAGES].detach().float().cpu()
    h, w = synthetic.shape[2:]
    own, theirs = paper_fields(synthetic), paper_fields(real)
    tones = _paper_and_ink(_prepared(synthetic))
    fields = torch.zeros(Shading.BANK, synthetic.shape[1], Shading.BASIS)
    if not len(own) or not len(theirs):
        return {"fields": fields, "tones": tones}
    if (unevenness(theirs, h, w) - unevenness(own, h, w)).max() < SHADING_FLOOR:
        return {"fields": fields, "tones": tones}
    # Real images spread evenly over the bank (repeated when there are fewer).
    pick = torch.arange(Shading.BANK) * len(theirs) // Shading.BANK
    return {"fields": theirs[pick] - own.mean(dim=0), "tones": tones}


def sharpness(images: torch.Tensor) -> torch.Tensor:
    """(channels,): how sharp the images' edges are, from 0 (flat) to 1 (a step from
    paper to ink between two neighbouring pixels). Per image, the steepest neighbour
    differences (their 99th percentile) over the image's tone range (1st to 99th
    percentile); the median over the images. A Gaussian blur of sigma pixels takes a
    step's steepest slope to about 1 / (2.5 sigma) of its height, whatever the tones,
    and the share of ink, which stroke width sets, barely moves a high percentile."""
    images = _prepared(images)
    n, c = images.shape[:2]
    flat = images.transpose(0, 1).reshape(c, n, -1)
    low, high = torch.quantile(flat, torch.tensor(PERCENTILES), dim=2)
    dx = (images[..., :, 1:] - images[..., :, :-1]).abs().transpose(0, 1).reshape(c, n, -1)
    dy = (images[..., 1:, :] - images[..., :-1, :]).abs().transpose(0, 1).reshape(c, n, -1)
    steepest = torch.quantile(torch.cat([dx, dy], dim=2), SHARPNESS_PERCENTILE, dim=2)
    span = high - low
    ratio = steepest / span.clamp(min=1e-3)
    # Blank images have no edges to measure.
    return torch.stack([r[s > MIN_SPAN].median() if (s > MIN_SPAN).any() else r.new_tensor(0.0)
                        for r, s in zip(ratio, span)])


def fit_blur(synthetic: torch.Tensor, real: torch.Tensor) -> dict[str, torch.Tensor]:
    """The buffer of pipeline.models.Blur for `synthetic` images as the blur gets them
    (after the stroke width): the sigma at which they measure as sharp as the real
    images, found by bisection. Zero where the real images are about as sharp
    (within BLUR_TOLERANCE) or sharper: nothing is ever sharpened."""
    synthetic = synthetic[:FIT_IMAGES].detach().float().cpu()
    own, target = sharpness(synthetic), sharpness(real)
    sigma = torch.zeros_like(own)
    for channel in range(len(sigma)):
        if target[channel] >= own[channel] * (1 - BLUR_TOLERANCE):
            continue
        blur, low, high = Blur(1), 0.0, Blur.LIMIT
        images = synthetic[:, channel : channel + 1]
        for _ in range(BLUR_STEPS):
            blur.sigma.fill_((low + high) / 2)
            if sharpness(blur(images)).item() > target[channel].item():
                low = blur.sigma.item()
            else:
                high = blur.sigma.item()
        sigma[channel] = (low + high) / 2
    return {"sigma": sigma}


# The fixed input changes, by refiner module name, in the order the refiner applies them.
_MODULES = {"size": lambda channels: GlyphSize(), "stroke": lambda channels: StrokeWidth(), "blur": Blur,
            "tone": ToneMap, "shading": Shading, "grain": Grain}
# How the training log names those that are kept label-safe.
DESCRIPTIONS = {"size": "size curve", "stroke": "stroke-width curve", "blur": "blur"}


def _module(name: str, buffers: dict[str, torch.Tensor], channels: int, device: torch.device | str = "cpu"):
    module = _MODULES[name](channels).to(device)
    for buffer, value in buffers.items():
        getattr(module, buffer).copy_(value)
    return module


def _changed(fitted: dict[str, dict[str, torch.Tensor]], images: torch.Tensor) -> torch.Tensor:
    """`images` through the fitted changes, in the refiner's order."""
    with torch.no_grad():
        for name in _MODULES:
            if name in fitted:
                images = _module(name, fitted[name], images.shape[1], images.device)(images)
    return images


def fit_input_changes(config, synthetic: torch.Tensor, real: torch.Tensor, network: task.TaskNetwork | None = None,
                      held_out: torch.Tensor | None = None) -> tuple[dict[str, dict[str, torch.Tensor]], dict[str, float]]:
    """The buffers of each fixed input change the config turns on, by refiner module
    name, fitted to these images (as pipeline.training.step.build_state takes them),
    and, for each geometric change (stroke width, blur) scaled back to keep labels, the
    fraction of its fitted change kept. With a task `network`, those changes are kept
    label-safe on the `held_out` synthetic images (keep_labels). Each change is fitted
    to the synthetic images as the changes before it leave them; the stroke curve also
    foresees the blur after it (fit_stroke_width)."""
    fitted: dict[str, dict[str, torch.Tensor]] = {}
    kept: dict[str, float] = {}
    sample = synthetic[:FIT_IMAGES].detach().float().cpu()

    def label_safe(name: str, scaled: Callable[[float], dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
        if network is None:
            return scaled(1.0)
        fraction = keep_labels(lambda f: (lambda images: _changed({**fitted, name: scaled(f)}, images)),
                               network, held_out, label_floor(config))
        if fraction < 1.0:
            kept[name] = fraction
        return scaled(fraction)

    if config.glyph_size:
        size = fit_glyph_size(sample, real)
        fitted["size"] = label_safe("size", lambda f: scaled_curve(size, f))
    if config.stroke_width:
        before = _changed(fitted, sample)
        # The blur the real edges ask for, as the stroke curve's fit must foresee it.
        ahead = fit_blur(before, real)["sigma"] if config.blur else None
        stroke = fit_stroke_width(before, real, ahead)
        fitted["stroke"] = label_safe("stroke", lambda f: scaled_curve(stroke, f))
    if config.blur:
        blur = fit_blur(_changed(fitted, sample), real)
        fitted["blur"] = label_safe("blur", lambda f: {"sigma": blur["sigma"] * f})
    if config.tone_map:
        fitted["tone"] = {"table": fit_tone_table(_changed(fitted, sample), real)[0]}
    if config.shading:
        fitted["shading"] = fit_shading(_changed(fitted, sample), real)
    if config.grain:
        fitted["grain"] = fit_grain(_changed(fitted, sample), real)
    return fitted, kept


def label_floor(config) -> float:
    """The label consistency the size and stroke-width curves and the blur must keep on their own."""
    return min(1.0, config.min_label_consistency + LABEL_MARGIN)


def scaled_curve(curve: dict[str, torch.Tensor], fraction: float) -> dict[str, torch.Tensor]:
    """A fitted curve's buffers (size or stroke width) with `fraction` of its change."""
    return {**curve, "target": curve["source"] + fraction * (curve["target"] - curve["source"])}


def keep_labels(change: Callable[[float], Callable[[torch.Tensor], torch.Tensor]], network: task.TaskNetwork,
                synthetic: torch.Tensor, least: float) -> float:
    """The largest fraction of a fitted change (1.0: all of it; else found by
    bisection) at which `network`, the task network trained on the simulator's labels,
    reads at least `least` of the `synthetic` images so changed as it reads them
    unchanged. `change(fraction)` is that much of the change, as a function of images.

    A pen much broader than the simulator's closes the loops of its bold glyphs (an 8
    becomes a blot), as a strong blur merges close strokes, and no refiner can undo
    that; a partial change keeps the labels."""
    synthetic = synthetic[:FIT_IMAGES].detach().float()

    def reads(fraction: float) -> float:
        with torch.no_grad():
            return task.consistency(network, synthetic, change(fraction)(synthetic))

    if reads(1.0) >= least:
        return 1.0
    low, high = 0.0, 1.0
    for _ in range(LABEL_STEPS):
        middle = (low + high) / 2
        if reads(middle) >= least:
            low = middle
        else:
            high = middle
    return low
