"""Refiner and patch discriminator networks. Plain PyTorch: nothing here knows about
training, Ray or files.

Images are float tensors in [0, 1], NCHW. The refiner keeps size and channels; the
discriminator returns a map of 2-class logits (N, 2, h, w), class 1 = refined,
class 0 = real (the paper's convention).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

REFINED, REAL = 1, 0


OUTPUT_FORMS = ("logit", "residual")


@dataclass(frozen=True)
class RefinerSpec:
    kernel: int = 3
    features: int = 64
    blocks: int = 4
    channels: int = 1
    # How the last layer's change is applied (see Refiner.forward).
    output: str = "logit"
    # Largest displacement, in pixels, of the learned smooth deformation applied before
    # the appearance refiner; 0 = no deformation.
    deform_pixels: float = 0.0
    # A fixed per-channel tone curve (ToneMap) applied to the input first, fitted by
    # training to the real images' intensity distribution.
    tone_map: bool = False
    # An extra input channel of noise (image_noise), so the refiner can add the grain
    # of a real sensor, which no function of a clean rendering can produce.
    noise: bool = False
    # A fixed stroke-width change (StrokeWidth) applied to the input before the tone
    # curve, fitted by training to the real images' stroke widths.
    stroke: bool = False
    # Fixed sensor grain (Grain) added after the tone curve, its strength fitted by
    # training to the real images' noise; none when they are as clean as the synthetic.
    grain: bool = False
    # Fixed uneven lighting of the paper (Shading) after the tone curve, drawn per image
    # from fields fitted to the real images' paper; none when their paper is evenly lit.
    shading: bool = False
    # A fixed optical blur (Blur) after the stroke width, its width fitted by training to
    # the real images' edges; none when they are as sharp as the synthetic.
    blur: bool = False
    # A fixed per-image zoom (GlyphSize) applied first, fitted by training to the real
    # images' glyph sizes.
    size: bool = False

    def to_dict(self) -> dict:
        # Fields added after the first release are written only when they differ from
        # their defaults, so the description (and so the content hash) of a refiner
        # file made before they existed stays the same.
        data = asdict(self)
        for name, default in (("output", "logit"), ("deform_pixels", 0.0), ("tone_map", False), ("noise", False),
                              ("stroke", False), ("grain", False), ("blur", False), ("size", False),
                              ("shading", False)):
            if data[name] == default:
                del data[name]
        return data


REFINER_PRESETS = {
    # The paper's networks.
    "eye": RefinerSpec(kernel=3, features=64, blocks=4),
    "hand": RefinerSpec(kernel=7, features=64, blocks=10),
    # CPU-sized networks for the demos.
    "digits": RefinerSpec(kernel=3, features=32, blocks=3),
    "eyes": RefinerSpec(kernel=3, features=32, blocks=4),
}


class ResnetBlock(nn.Module):
    def __init__(self, features: int, kernel: int):
        super().__init__()
        # Replicate padding: with zero padding the refiner can locate the image border
        # and learns to paint lines along it.
        self.conv1 = nn.Conv2d(features, features, kernel, padding=kernel // 2, padding_mode="replicate")
        self.conv2 = nn.Conv2d(features, features, kernel, padding=kernel // 2, padding_mode="replicate")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(x + self.conv2(F.relu(self.conv1(x))))


_MASK = 0x7FFFFFFF


def _mix(values: torch.Tensor) -> torch.Tensor:
    """An integer hash of int64 values in [0, 2**31), into [0, 2**31). Every product stays
    below 2**63, so CPU and CUDA compute the same numbers."""
    for _ in range(3):
        values = (((values >> 15) ^ values) * 0x2C1B3C6D) & _MASK
    return values


def image_seed(x: torch.Tensor) -> torch.Tensor:
    """(N,) int64 in [0, 2**31): a hash of each image's 8-bit levels, the seed of what is
    drawn per image. Not drawn from a generator: refining the same image again, on any
    device, in any batch, must give the same bytes (resume and byte-identical outputs
    rely on it)."""
    levels = (x.detach().float().clamp(0, 1) * 255).round().to(torch.int64).flatten(1)
    position = torch.arange(levels.shape[1], device=x.device, dtype=torch.int64)
    # +1 and the odd constants below: _mix(0) is 0, which would leave a pixel unweighted.
    return ((levels * _mix(position + 1)) & _MASK).sum(1) & _MASK


def image_noise(x: torch.Tensor) -> torch.Tensor:
    """(N, 1, H, W) standard normal noise that depends only on each image's 8-bit levels
    (image_seed)."""
    n, _, h, w = x.shape
    seed = image_seed(x)
    pixel = torch.arange(h * w, device=x.device, dtype=torch.int64)
    first = _mix((_mix(seed + 0x3C6EF372)[:, None] + pixel[None, :]) & _MASK)
    second = _mix((first + 0x5BD1E995) & _MASK)
    u1 = (first.float() + 0.5) / 2**31
    u2 = (second.float() + 0.5) / 2**31
    return (torch.sqrt(-2 * torch.log(u1)) * torch.cos(2 * torch.pi * u2)).view(n, 1, h, w).to(x.dtype)


class _FittedStrength(nn.Module):
    """A fixed change of the image whose per-channel strength `sigma` training fits to
    the real images: a buffer, saved with the weights; at zero the image passes
    unchanged (and no work is done)."""

    def __init__(self, channels: int):
        super().__init__()
        self.register_buffer("sigma", torch.zeros(channels))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.change(x) if bool(self.sigma.any()) else x

    def change(self, x: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError


class Grain(_FittedStrength):
    """Fixed sensor grain: `sigma` (per channel) times `image_noise`, added to the image,
    clipped to [0, 1] as a sensor's values are.

    Real cameras and scanners add noise that no function of a clean rendering produces,
    and a discriminator tells it apart at once (on noisy real digits every refiner was
    refused: none got more realistic). Training measures the noise of the real images
    and of the synthetic ones as they reach the grain (pipeline.training.tone) and sets
    `sigma` so that the grainy synthetic images measure as noisy as the real ones; the
    self-regularisation then compares with the grainy input. The noise is a function of
    the image, so refining it again gives the same bytes.
    """

    def change(self, x: torch.Tensor) -> torch.Tensor:
        return (x + self.sigma.view(1, -1, 1, 1).to(x.dtype) * image_noise(x)).clamp(0, 1)


class Blur(_FittedStrength):
    """Fixed optical blur: a Gaussian of standard deviation `sigma` pixels (per channel),
    edges extended, as a lens or a scanner spreads every point of the scene.

    A renderer's edges are as sharp as its pixels; a camera's are not, and a refiner
    left to soften every edge alone must change every edge pixel against the L1
    self-regularisation while a patch discriminator sees the hard edges at once (on
    blurred real digits every refiner collapsed into dim smudges). Training measures
    how sharp the edges of the real and the synthetic images are
    (pipeline.training.tone) and sets `sigma` so that the blurred synthetic images
    measure as sharp as the real ones; the self-regularisation then compares with the
    blurred input.
    """

    LIMIT = 3.0  # pixels, the widest blur fitted
    RADIUS = 3  # the kernel reaches this many standard deviations

    def change(self, x: torch.Tensor) -> torch.Tensor:
        sigma = self.sigma.to(x.dtype).clamp(0, self.LIMIT)
        reach = max(1, int(math.ceil(self.RADIUS * sigma.max().item())))
        offsets = torch.arange(-reach, reach + 1, device=x.device, dtype=x.dtype)
        # A channel at sigma 0 gets the one-tap kernel: unchanged.
        taps = torch.exp(-offsets[None, :] ** 2 / (2 * sigma[:, None].clamp(min=1e-3) ** 2))
        taps = taps / taps.sum(dim=1, keepdim=True)
        channels = x.shape[1]
        x = F.conv2d(F.pad(x, (reach, reach, 0, 0), mode="replicate"), taps.view(channels, 1, 1, -1), groups=channels)
        x = F.conv2d(F.pad(x, (0, 0, reach, reach), mode="replicate"), taps.view(channels, 1, -1, 1), groups=channels)
        return x.clamp(0, 1)


class Shading(nn.Module):
    """Fixed uneven lighting of the paper: each image gets one of `fields`, smooth fields
    over the image (quadratic in its coordinates, BASIS), picked by a hash of the image
    (image_seed), added where the image is paper and faded out towards its ink.

    A photo of paper under a lamp brightens it from one side to the other, in another
    direction in every photo; no tone curve does that, and a fully convolutional refiner
    bound by L1 cannot place a ramp by position, so on such real images every refiner
    was refused. Training fits a field to the paper of each of BANK real images and to
    the synthetic images' paper as the shading gets them (pipeline.training.tone), and
    keeps the differences: a synthetic image's paper then becomes the lighting of one
    real photo. All zero (off) when the real paper is as even as the synthetic. `tones`
    (per channel: paper, ink) tell paper from ink; all are buffers, saved with the weights.
    """

    BANK = 256
    BASIS = 6  # 1, u, v, u^2, uv, v^2 with u, v in [-1, 1] across the image
    RAMP = (0.25, 0.75)  # of the paper-to-ink scale: the field fades out over it

    def __init__(self, channels: int):
        super().__init__()
        self.register_buffer("fields", torch.zeros(self.BANK, channels, self.BASIS))
        self.register_buffer("tones", torch.tensor([[0.0, 1.0]]).repeat(channels, 1))

    @classmethod
    def basis(cls, h: int, w: int, device=None, dtype=torch.float32) -> torch.Tensor:
        """(BASIS, H, W): the functions a field is made of."""
        v, u = torch.meshgrid(torch.linspace(-1, 1, h, device=device, dtype=dtype),
                              torch.linspace(-1, 1, w, device=device, dtype=dtype), indexing="ij")
        return torch.stack([torch.ones_like(u), u, v, u * u, u * v, v * v])

    def paper_weight(self, x: torch.Tensor) -> torch.Tensor:
        """(N, C, H, W): 1 on paper, 0 on ink, a ramp between."""
        paper, ink = (t.to(x.dtype).view(1, -1, 1, 1) for t in self.tones.unbind(1))
        scale = (x - paper) / (ink - paper)
        start, end = self.RAMP
        return 1 - ((scale - start) / (end - start)).clamp(0, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not bool(self.fields.any()):
            return x
        pick = _mix((image_seed(x) + 0x1B873593) & _MASK) % self.BANK
        basis = self.basis(x.shape[2], x.shape[3], x.device, x.dtype)
        field = torch.einsum("nck,khw->nchw", self.fields[pick].to(x.dtype), basis)
        return (x + self.paper_weight(x) * field).clamp(0, 1)


class ToneMap(nn.Module):
    """A fixed, monotone per-channel tone curve: `levels` values at evenly spaced input
    intensities, linearly interpolated between them. It starts as the identity.

    Global changes of tone (grey paper, faded ink, dark-on-light polarity) are the ones
    an L1 self-regularisation forbids most, since they touch every pixel; they say
    nothing about what an image shows. Training fits this curve to the real images
    before the refiner learns (pipeline.training.tone) and the self-regularisation
    then compares the refined image with the tone-mapped input, so the refiner is left
    the local changes. The curve is a buffer, saved with the weights.
    """

    LEVELS = 256

    def __init__(self, channels: int, levels: int = LEVELS):
        super().__init__()
        self.register_buffer("table", torch.linspace(0, 1, levels).repeat(channels, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        channels, levels = self.table.shape
        position = x.clamp(0, 1) * (levels - 1)
        low = position.floor().clamp(max=levels - 2)
        fraction = position - low
        index = low.long() + (torch.arange(channels, device=x.device) * levels).view(1, channels, 1, 1)
        flat = self.table.to(x.dtype).flatten()
        return (flat[index] * (1 - fraction) + flat[index + 1] * fraction).clamp(0, 1)


def _grow(x: torch.Tensor, step: int) -> torch.Tensor:
    """Bright regions one pixel wider: a cross on even steps, a square on odd ones, so
    that repeated steps grow an octagon rather than a diamond or a square."""
    if step % 2 == 0:
        return torch.maximum(F.max_pool2d(x, (1, 3), 1, (0, 1)), F.max_pool2d(x, (3, 1), 1, (1, 0)))
    return F.max_pool2d(x, 3, 1, 1)


class _FittedCurve(nn.Module):
    """A per-image figure of the ink (`measure`), mapped through a monotone curve fitted
    by training: `source` values to `target` values at matching quantiles of the
    synthetic and the real images, so images keep their order while the spread becomes
    the real one. The rendering's paper and ink tones (`tones`) tell ink from paper. All
    are buffers, saved with the weights; the identity curve leaves images unchanged."""

    QUANTILES = 33
    RAMP = (0.25, 0.75)  # of the paper-to-ink scale: below is paper, above is ink
    SPAN = 8.0  # the identity curve's range; any range is the identity

    def __init__(self):
        super().__init__()
        identity = torch.linspace(0, self.SPAN, self.QUANTILES)
        self.register_buffer("source", identity.clone())
        self.register_buffer("target", identity.clone())
        self.register_buffer("tones", torch.tensor([0.0, 1.0]))  # paper, ink

    def ink_map(self, x: torch.Tensor) -> torch.Tensor:
        """(N, 1, H, W) in [0, 1]: how much of each pixel is ink. The ramp keeps paper
        grain, blur and faded tones from counting as ink."""
        paper, ink = self.tones.to(x.dtype)
        scale = ((x - paper) / (ink - paper)).mean(dim=1, keepdim=True)
        start, end = self.RAMP
        return ((scale - start) / (end - start)).clamp(0, 1)

    def measure(self, x: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def mapped(self, values: torch.Tensor) -> torch.Tensor:
        """`values` through the source -> target curve: linear between quantiles, and
        beyond the ends the change at that end (so the identity curve is the identity
        everywhere)."""
        source, target = self.source.to(values.dtype), self.target.to(values.dtype)
        upper = torch.searchsorted(source, values.contiguous()).clamp(1, len(source) - 1)
        low, high = source[upper - 1], source[upper]
        fraction = (values - low) / (high - low).clamp(min=1e-6)
        inside = target[upper - 1] + fraction.clamp(0, 1) * (target[upper] - target[upper - 1])
        below, above = values + (target[0] - source[0]), values + (target[-1] - source[-1])
        return torch.where(values < source[0], below, torch.where(values > source[-1], above, inside))


class StrokeWidth(_FittedCurve):
    """A fixed change of each image's stroke width: grey-level dilation or erosion of
    its ink by a per-image amount, a fractional part blending in the next step.

    The simulator's pen is rarely the real one, and growing or shrinking every stroke
    is a change an L1 self-regularisation forbids (it touches every edge pixel) while
    a patch discriminator sees it at once; a refiner left to do it alone breaks glyphs
    or collapses. Each image's width is measured (`widths`) and mapped through the
    curve, so bold and light glyphs keep their order while the spread becomes the real
    one. Training fits the curve and the tones to the real images before the refiner
    learns (pipeline.training.tone); the self-regularisation then compares with the
    adjusted input.
    """

    LIMIT = 3  # pixels of growth or shrinkage at most
    SPAN = 2 * LIMIT + 2

    def widths(self, x: torch.Tensor) -> torch.Tensor:
        """(N,) stroke width in pixels: twice the ink area over its outline's length (a
        stroke of width w and length L has area wL and outline 2L). Blur spreads an
        edge but keeps its total change, so it barely moves the figure of a lone
        stroke; close strokes it merges, and those measure broader."""
        ink = self.ink_map(x)
        dx = F.pad(ink[..., :, 1:] - ink[..., :, :-1], (0, 1))
        dy = F.pad(ink[..., 1:, :] - ink[..., :-1, :], (0, 0, 0, 1))
        outline = torch.sqrt(dx**2 + dy**2).sum(dim=(1, 2, 3))
        return 2 * ink.sum(dim=(1, 2, 3)) / outline.clamp(min=1e-3)

    measure = widths

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        widths = self.widths(x)
        # Growing a stroke by one step widens it by a pixel on each side.
        amount = ((self.mapped(widths) - widths) / 2).clamp(-self.LIMIT, self.LIMIT).detach()
        if not bool((amount.abs() > 1e-3).any()):
            return x
        return change_width(x, amount, bright_ink=bool(self.tones[1] >= self.tones[0]))


class GlyphSize(_FittedCurve):
    """A fixed change of each image's size: a zoom about its centre of ink by a
    per-image factor, resampled bilinearly, edges extended.

    A simulator draws its objects at a size of its own (the digit renderer's glyphs
    spread less than MNIST's, which are scaled to fill a 20-pixel box), and no local
    refiner can rescale a whole glyph. Each image's size is measured (`sizes`: the
    spread of its ink about its centre) and mapped through the curve, fitted by
    training to the real images (pipeline.training.tone) before the stroke width, so
    small and large glyphs keep their order while the spread of sizes becomes the real
    one. Keep it off where position or size is the label.
    """

    LIMIT = 1.5  # the largest zoom in or out
    SPAN = 14.0

    def sizes(self, x: torch.Tensor) -> torch.Tensor:
        """(N,) the root mean square distance of the ink from its centre, in pixels:
        it scales exactly with a zoom about that centre and barely moves with the
        stroke width."""
        return self._centred(x)[2]

    measure = sizes

    def _centred(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        ink = self.ink_map(x)[:, 0]
        n, h, w = ink.shape
        mass = ink.sum(dim=(1, 2)).clamp(min=1e-6)
        ys = torch.arange(h, device=x.device, dtype=x.dtype).view(1, h, 1)
        xs = torch.arange(w, device=x.device, dtype=x.dtype).view(1, 1, w)
        cy, cx = (ink * ys).sum(dim=(1, 2)) / mass, (ink * xs).sum(dim=(1, 2)) / mass
        spread = (ink * ((ys - cy.view(n, 1, 1)) ** 2 + (xs - cx.view(n, 1, 1)) ** 2)).sum(dim=(1, 2)) / mass
        return cy, cx, spread.sqrt()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n, _, h, w = x.shape
        # In float32 whatever the refiner runs in: centres and sizes summed over a whole
        # image in bfloat16 would be off by a large part of a pixel.
        image = x.detach().float()
        cy, cx, size = self._centred(image)
        zoom = (self.mapped(size) / size.clamp(min=1e-3)).clamp(1 / self.LIMIT, self.LIMIT)
        zoom = torch.where(size > 1e-3, zoom, torch.ones_like(zoom))
        keep = (zoom - 1).abs() <= 1e-3
        if bool(keep.all()):
            return x
        # Output pixel p shows the input at c + (p - c) / zoom, in grid_sample's [-1, 1] coordinates.
        ys = torch.arange(h, device=x.device, dtype=image.dtype).view(1, h, 1)
        xs = torch.arange(w, device=x.device, dtype=image.dtype).view(1, 1, w)
        z = zoom.view(n, 1, 1)
        source_y = (cy.view(n, 1, 1) + (ys - cy.view(n, 1, 1)) / z).expand(n, h, w)
        source_x = (cx.view(n, 1, 1) + (xs - cx.view(n, 1, 1)) / z).expand(n, h, w)
        grid = torch.stack([2 * source_x / max(w - 1, 1) - 1, 2 * source_y / max(h - 1, 1) - 1], dim=-1)
        zoomed = F.grid_sample(image, grid, mode="bilinear", padding_mode="border", align_corners=True)
        return torch.where(keep.view(n, 1, 1, 1), x, zoomed.to(x.dtype))


def change_width(x: torch.Tensor, amount: torch.Tensor, bright_ink: bool = True) -> torch.Tensor:
    """Each image's ink grown (amount > 0) or shrunk (< 0) by `amount` (N,) pixels on
    each side: whole steps of grey-level dilation or erosion, the fractional part
    blended from the next step."""
    # Work where ink is bright; shrinking the ink is growing the paper.
    y = x if bright_ink else -x
    steps = max(1, int(amount.abs().max().ceil()))
    grown, shrunk = [y], [y]
    for step in range(steps):
        grown.append(_grow(grown[-1], step))
        shrunk.append(-_grow(-shrunk[-1], step))
    levels = torch.stack([torch.where((amount >= 0).view(-1, 1, 1, 1), g, s) for g, s in zip(grown, shrunk)])
    whole = amount.abs().floor().long().clamp(max=steps - 1)
    fraction = (amount.abs() - whole).view(-1, 1, 1, 1).to(y.dtype)
    pick = torch.arange(len(y), device=y.device)
    out = (1 - fraction) * levels[whole, pick] + fraction * levels[whole + 1, pick]
    return out if bright_ink else -out


class Deformation(nn.Module):
    """A smooth displacement field predicted from the image, applied by resampling.

    For simulators whose shapes are slightly off (font strokes against pen strokes):
    a few convolutions predict a 2-channel field, a fixed wide blur makes it smooth,
    tanh bounds it to `max_pixels`. The last layer starts at zero, so the deformation
    starts as the identity. Training penalises its size and roughness.
    """

    def __init__(self, channels: int, max_pixels: float, features: int = 16):
        super().__init__()
        self.max_pixels = max_pixels
        self.net = nn.Sequential(
            nn.Conv2d(channels, features, 5, padding=2, padding_mode="replicate"), nn.ReLU(),
            nn.Conv2d(features, features, 5, padding=2, padding_mode="replicate"), nn.ReLU(),
            nn.Conv2d(features, 2, 3, padding=1, padding_mode="replicate"),
        )
        nn.init.zeros_(self.net[-1].weight)
        nn.init.zeros_(self.net[-1].bias)
        taps = torch.exp(-torch.arange(-4, 5, dtype=torch.float32) ** 2 / (2 * 2.0**2))
        self.register_buffer("taps", taps / taps.sum(), persistent=False)

    def field(self, x: torch.Tensor) -> torch.Tensor:
        """(N, 2, H, W) displacement in pixels (x then y)."""
        raw = self.net(x)
        k = self.taps.to(raw)
        raw = F.conv2d(F.pad(raw, (4, 4, 0, 0), mode="replicate"), k.view(1, 1, 1, 9).expand(2, 1, 1, 9), groups=2)
        raw = F.conv2d(F.pad(raw, (0, 0, 4, 4), mode="replicate"), k.view(1, 1, 9, 1).expand(2, 1, 9, 1), groups=2)
        return self.max_pixels * torch.tanh(raw)

    @staticmethod
    def warp(x: torch.Tensor, field: torch.Tensor) -> torch.Tensor:
        n, _, h, w = x.shape
        ys = torch.linspace(-1, 1, h, device=x.device, dtype=x.dtype)
        xs = torch.linspace(-1, 1, w, device=x.device, dtype=x.dtype)
        base = torch.stack(torch.meshgrid(xs, ys, indexing="xy"), dim=-1)  # (h, w, 2) as (x, y)
        scale = torch.tensor([2 / max(w - 1, 1), 2 / max(h - 1, 1)], device=x.device, dtype=x.dtype)
        grid = base.unsqueeze(0) + field.permute(0, 2, 3, 1) * scale
        return F.grid_sample(x, grid, mode="bilinear", padding_mode="border", align_corners=True)


class Refiner(nn.Module):
    """Fully convolutional ResNet, no striding or pooling: any input size, same output size.

    The last layer predicts a change `delta`, applied in one of two forms (spec.output):
    - "logit": output = sigmoid(logit(x) + delta), the original form. At a binary
      input (0 or 1) it saturates: turning a hard black edge grey takes a large delta.
    - "residual": t = tanh(delta); output = x + t * (1 - x) where t > 0, x * (1 + t)
      where t < 0. A bounded step towards white or black whose size does not depend
      on how saturated the pixel is.
    Both keep the output in [0, 1] like the input (no tanh/[0, 1] mismatch in the L1
    term) and are the identity at delta = 0. With spec.deform_pixels > 0 a smooth
    deformation (Deformation) is applied first; with spec.tone_map a fixed tone curve
    (ToneMap) before that, with spec.blur a fixed optical blur (Blur) before the tone
    curve, with spec.stroke a fixed stroke-width change (StrokeWidth) before that, and
    with spec.size a fixed per-image zoom (GlyphSize) before everything; with
    spec.shading fixed uneven lighting (Shading) after the tone curve, and with
    spec.grain fixed sensor grain (Grain) after that.
    """

    EPS = 1e-3

    def __init__(self, spec: RefinerSpec = RefinerSpec()):
        super().__init__()
        if spec.output not in OUTPUT_FORMS:
            raise ValueError(f"unknown refiner output form {spec.output!r}; choose from {OUTPUT_FORMS}")
        self.spec = spec
        k = spec.kernel
        self.size = GlyphSize() if spec.size else None
        self.stroke = StrokeWidth() if spec.stroke else None
        self.tone = ToneMap(spec.channels) if spec.tone_map else None
        self.shading = Shading(spec.channels) if spec.shading else None
        self.grain = Grain(spec.channels) if spec.grain else None
        self.blur = Blur(spec.channels) if spec.blur else None
        self.deformation = Deformation(spec.channels, spec.deform_pixels) if spec.deform_pixels > 0 else None
        inputs = spec.channels + (1 if spec.noise else 0)
        self.conv_in = nn.Conv2d(inputs, spec.features, k, padding=k // 2, padding_mode="replicate")
        self.blocks = nn.Sequential(*[ResnetBlock(spec.features, k) for _ in range(spec.blocks)])
        self.conv_out = nn.Conv2d(spec.features, spec.channels, 1)
        # Start close to the identity; self-regularisation pre-training finishes the job.
        with torch.no_grad():
            # Drawn on the CPU and copied: the same numbers as nn.init.normal_, but a
            # refiner built on the meta device (to check a file's shapes) does not pay
            # ~2 s for torch's Python meta kernel of normal_ (it imports torch._dynamo).
            self.conv_out.weight.copy_(torch.empty(self.conv_out.weight.shape, device="cpu").normal_(0.0, 1e-3))
        nn.init.zeros_(self.conv_out.bias)

    def appearance(self, x: torch.Tensor) -> torch.Tensor:
        features = torch.cat([x, image_noise(x)], dim=1) if self.spec.noise else x
        delta = self.conv_out(self.blocks(F.relu(self.conv_in(features))))
        if self.spec.output == "residual":
            t = torch.tanh(delta)
            return torch.where(t > 0, x + t * (1 - x), x * (1 + t))
        return torch.sigmoid(torch.logit(x.clamp(self.EPS, 1 - self.EPS)) + delta)

    def parts(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        """(refined, input as the appearance refiner gets it (size, stroke width, blur,
        tone, shading, grain and deformation applied), displacement field or None): what training's
        losses need."""
        if self.size is not None:
            x = self.size(x)
        if self.stroke is not None:
            x = self.stroke(x)
        if self.blur is not None:
            x = self.blur(x)
        if self.tone is not None:
            x = self.tone(x)
        if self.shading is not None:
            x = self.shading(x)
        if self.grain is not None:
            x = self.grain(x)
        if self.deformation is None:
            return self.appearance(x), x, None
        field = self.deformation.field(x)
        deformed = Deformation.warp(x, field)
        return self.appearance(deformed), deformed, field

    def forward(self, x: torch.Tensor, parts: bool = False):
        # `parts` goes through forward (not a method of its own) so a
        # DistributedDataParallel wrapper still synchronises the gradients.
        return self.parts(x) if parts else self.parts(x)[0]


def refine_array(refiner: nn.Module, images: np.ndarray, batch_size: int = 256) -> np.ndarray:
    """Refine an N x C x H x W float array in [0, 1], `batch_size` images per forward pass.

    For in-memory checks on float images; datasets of stored integer images go through
    `pipeline.refine.stage.RefineStage`.
    """
    weight = next(refiner.parameters(), None)
    device = weight.device if weight is not None else torch.device("cpu")
    with torch.no_grad():
        parts = [
            refiner(torch.from_numpy(np.ascontiguousarray(images[start : start + batch_size])).to(device)).cpu().numpy()
            for start in range(0, len(images), batch_size)
        ]
    return np.concatenate(parts)


# A discriminator layer: ("conv", out_maps, kernel, stride, padding) or
# ("pool", kernel, stride, padding). The last conv must output 2 maps.
# Two optional stabilisers from "Improved Techniques for Training GANs" are part of the
# architecture: minibatch discrimination before the last layer (minibatch_kernels > 0)
# and virtual batch norm after every hidden conv.
@dataclass(frozen=True)
class DiscriminatorSpec:
    layers: tuple
    channels: int = 1
    minibatch_kernels: int = 0
    virtual_batch_norm: bool = False
    spectral_norm: bool = False

    def to_dict(self) -> dict:
        return {
            "layers": [list(layer) for layer in self.layers],
            "channels": self.channels,
            "minibatch_kernels": self.minibatch_kernels,
            "virtual_batch_norm": self.virtual_batch_norm,
            "spectral_norm": self.spectral_norm,
        }


DISCRIMINATOR_PRESETS = {
    "eye": DiscriminatorSpec(
        (("conv", 96, 3, 2, 0), ("conv", 64, 3, 2, 0), ("pool", 3, 1, 0),
         ("conv", 32, 3, 1, 0), ("conv", 32, 1, 1, 0), ("conv", 2, 1, 1, 0))
    ),
    "hand": DiscriminatorSpec(
        (("conv", 96, 7, 4, 0), ("conv", 64, 5, 2, 0), ("pool", 3, 2, 0),
         ("conv", 32, 3, 2, 0), ("conv", 32, 1, 1, 0), ("conv", 2, 1, 1, 0))
    ),
    # 28x28 in, a 7x7 map of patches out.
    "digits": DiscriminatorSpec(
        (("conv", 64, 3, 2, 1), ("conv", 64, 3, 2, 1), ("pool", 3, 1, 1),
         ("conv", 32, 3, 1, 1), ("conv", 32, 1, 1, 0), ("conv", 2, 1, 1, 0))
    ),
    "eyes": DiscriminatorSpec(
        (("conv", 48, 3, 2, 0), ("conv", 32, 3, 2, 0), ("pool", 3, 1, 0),
         ("conv", 32, 3, 1, 0), ("conv", 32, 1, 1, 0), ("conv", 2, 1, 1, 0))
    ),
}


class VirtualBatchNorm(nn.Module):
    """Normalises with the per-channel statistics of a fixed reference batch.

    Unlike batch norm, a sample's output does not depend on the other samples of its
    minibatch. The reference batch is an input, not state: the caller keeps it.
    """

    def __init__(self, maps: int, eps: float = 1e-5):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(1, maps, 1, 1))
        self.bias = nn.Parameter(torch.zeros(1, maps, 1, 1))

    def forward(self, x: torch.Tensor, reference: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        mean = reference.mean(dim=(0, 2, 3), keepdim=True)
        var = reference.var(dim=(0, 2, 3), unbiased=False, keepdim=True)
        scale = self.weight / torch.sqrt(var + self.eps)
        return (x - mean) * scale + self.bias, (reference - mean) * scale + self.bias


class MinibatchDiscrimination(nn.Module):
    """Per patch location, how close each sample is to the others of its minibatch.

    A learned 1x1 projection gives `kernels` vectors of size `dims` per location; the
    extra feature map k of sample i is sum_j exp(-L1(M_ik - M_jk)) over the other
    samples j. A refiner that collapses to one output makes these features large,
    which D can see.
    """

    def __init__(self, maps: int, kernels: int, dims: int = 4):
        super().__init__()
        self.kernels, self.dims = kernels, dims
        self.project = nn.Conv2d(maps, kernels * dims, 1, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n, _, h, w = x.shape
        m = self.project(x).view(n, self.kernels, self.dims, h, w)
        distance = (m[:, None] - m[None, :]).abs().sum(dim=3)  # (n, n, kernels, h, w)
        closeness = torch.exp(-distance).sum(dim=1) - 1.0  # drop each sample's own exp(0)
        return torch.cat([x, closeness], dim=1)


class _Conv(nn.Module):
    """conv, optional virtual batch norm, LeakyReLU (omitted on the output layer)."""

    def __init__(self, maps_in, maps_out, kernel, stride, padding, vbn: bool, activation: bool,
                 spectral: bool = False):
        super().__init__()
        self.conv = nn.Conv2d(maps_in, maps_out, kernel, stride, padding)
        if spectral:
            # Bounds D's Lipschitz constant: a D that cannot become arbitrarily sharp
            # keeps giving the refiner gradients it can follow.
            self.conv = nn.utils.parametrizations.spectral_norm(self.conv)
        self.norm = VirtualBatchNorm(maps_out) if vbn else None
        self.activation = activation

    def forward(self, x, reference):
        if reference is not None:
            both = self.conv(torch.cat([x, reference]))
            x, reference = both[: len(x)], both[len(x):]
            if self.norm is not None:
                x, reference = self.norm(x, reference)
        else:
            x = self.conv(x)
        if self.activation:
            x = F.leaky_relu(x, 0.2)
            reference = None if reference is None else F.leaky_relu(reference, 0.2)
        return x, reference


class _Pool(nn.Module):
    def __init__(self, kernel, stride, padding):
        super().__init__()
        self.pool = nn.MaxPool2d(kernel, stride, padding)

    def forward(self, x, reference):
        return self.pool(x), None if reference is None else self.pool(reference)


class Discriminator(nn.Module):
    """Patch discriminator: a map of 2-class logits, one per receptive-field patch.

    Every hidden conv is followed by a LeakyReLU (a D without activations is linear);
    the output logits have no activation. With virtual batch norm the forward pass
    needs `reference`, the fixed reference batch, which is run alongside `x`.
    """

    def __init__(self, spec: DiscriminatorSpec = DISCRIMINATOR_PRESETS["eye"]):
        super().__init__()
        self.spec = spec
        *hidden, last = spec.layers
        if last[0] != "conv" or last[1] != 2:
            raise ValueError("the last discriminator layer must be a conv with 2 output maps")
        layers: list[nn.Module] = []
        maps = spec.channels
        for layer in hidden:
            if layer[0] == "conv":
                _, out, kernel, stride, padding = layer
                layers.append(_Conv(maps, out, kernel, stride, padding, spec.virtual_batch_norm, True,
                                    spec.spectral_norm))
                maps = out
            elif layer[0] == "pool":
                _, kernel, stride, padding = layer
                layers.append(_Pool(kernel, stride, padding))
            else:
                raise ValueError(f"unknown discriminator layer {layer!r}")
        self.layers = nn.ModuleList(layers)
        self.minibatch = MinibatchDiscrimination(maps, spec.minibatch_kernels) if spec.minibatch_kernels else None
        _, out, kernel, stride, padding = last
        self.head = nn.Conv2d(maps + spec.minibatch_kernels, out, kernel, stride, padding)

    def forward(self, x: torch.Tensor, return_features: bool = False, reference: torch.Tensor | None = None):
        """Logits (N, 2, h, w); with `return_features`, also the last hidden feature map."""
        if self.spec.virtual_batch_norm and reference is None:
            raise ValueError("this discriminator uses virtual batch norm: pass the reference batch")
        if not self.spec.virtual_batch_norm:
            reference = None
        features = x
        for layer in self.layers:
            features, reference = layer(features, reference)
        head_in = self.minibatch(features) if self.minibatch is not None else features
        logits = self.head(head_in)
        return (logits, features) if return_features else logits


def refiner_preset(name: str, channels: int = 1, output: str = "logit", deform_pixels: float = 0.0,
                   tone_map: bool = False, noise: bool = False, stroke: bool = False, grain: bool = False,
                   blur: bool = False, size: bool = False, shading: bool = False) -> RefinerSpec:
    if name not in REFINER_PRESETS:
        raise ValueError(f"unknown refiner preset {name!r}; choose from {sorted(REFINER_PRESETS)}")
    return RefinerSpec(**{**REFINER_PRESETS[name].to_dict(), "channels": channels, "output": output,
                          "deform_pixels": deform_pixels, "tone_map": tone_map, "noise": noise,
                          "stroke": stroke, "grain": grain, "blur": blur, "size": size,
                          "shading": shading})


def discriminator_preset(
    name: str, channels: int = 1, minibatch_kernels: int = 0, virtual_batch_norm: bool = False,
    spectral_norm: bool = False,
) -> DiscriminatorSpec:
    if name not in DISCRIMINATOR_PRESETS:
        raise ValueError(f"unknown discriminator preset {name!r}; choose from {sorted(DISCRIMINATOR_PRESETS)}")
    return DiscriminatorSpec(DISCRIMINATOR_PRESETS[name].layers, channels, minibatch_kernels, virtual_batch_norm,
                             spectral_norm)
