"""Fitting the refiner's fixed input changes to the real images: the stroke width
(pipeline.models.StrokeWidth) and the tone curve (pipeline.models.ToneMap).

The curve is the straight line that takes the synthetic images' darkest and brightest
tones (their 1st and 99th percentiles, channel by channel) to the real images'. Matching
whole histograms would be wrong: when the real strokes are thicker or thinner than the
simulator's, the share of ink differs, and a histogram match turns part of the
background grey or part of the ink dark. The extremes do not depend on that share.

A percentile match cannot tell which way round it should go: on dark-on-light real
images the synthetic background must become the light tone. So both the rising and the
falling line are fitted, and the one whose mean tone-mapped image is closer to the mean
real image is kept. No labels are used.
"""

from __future__ import annotations

import torch

from pipeline.models import StrokeWidth, ToneMap

# Images and pixels per channel used for the fit: plenty for two percentiles.
FIT_IMAGES = 2000
FIT_PIXELS = 1_000_000
PERCENTILES = (0.01, 0.99)


def _extremes(images: torch.Tensor) -> torch.Tensor:
    """(channels, 2): each channel's low and high percentile."""
    values = images.transpose(0, 1).reshape(images.shape[1], -1)
    if values.shape[1] > FIT_PIXELS:
        values = values[:, torch.linspace(0, values.shape[1] - 1, FIT_PIXELS).long()]
    return torch.quantile(values, torch.tensor(PERCENTILES), dim=1).T


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


def fit_tone_table(synthetic: torch.Tensor, real: torch.Tensor) -> tuple[torch.Tensor, str]:
    """The table for ToneMap and which way it runs ("rising" or "falling")."""
    synthetic = synthetic[:FIT_IMAGES].detach().float().cpu()
    real = real[:FIT_IMAGES].detach().float().cpu()
    lines = fit_lines(synthetic, real)
    mean_real = real.mean(0)
    distance = {name: (_apply(table, synthetic).mean(0) - mean_real).abs().mean().item() for name, table in lines.items()}
    direction = min(distance, key=distance.get)
    return lines[direction], direction



def fit_stroke_width(synthetic: torch.Tensor, real: torch.Tensor) -> dict[str, torch.Tensor]:
    """The buffers of pipeline.models.StrokeWidth fitted to the real images."""
    synthetic = synthetic[:FIT_IMAGES].detach().float().cpu()
    real = real[:FIT_IMAGES].detach().float().cpu()
    low, high = _extremes(synthetic).mean(dim=0).tolist()
    # Ink is the minority tone: on a light page, the dark extreme.
    dark_ink = synthetic.mean().item() > (low + high) / 2
    paper, ink = (high, low) if dark_ink else (low, high)
    # The real page has the tone the synthetic page gets from the tone curve.
    real_low, real_high = _extremes(real).mean(dim=0).tolist()
    falling = fit_tone_table(synthetic, real)[1] == "falling"
    real_paper, real_ink = (real_high, real_low) if dark_ink != falling else (real_low, real_high)
    quantiles = torch.linspace(0, 1, StrokeWidth.QUANTILES)

    def widths(images, paper, ink):
        stroke = StrokeWidth()
        stroke.tones.copy_(torch.tensor([paper, ink]))
        return torch.quantile(stroke.widths(images), quantiles)

    # Strictly increasing, so that the curve is a function of the width.
    source = torch.cummax(widths(synthetic, paper, ink), 0).values + torch.arange(len(quantiles)) * 1e-4
    return {"source": source, "target": widths(real, real_paper, real_ink),
            "tones": torch.tensor([paper, ink])}
