"""Fitting the refiner's tone curve (pipeline.models.ToneMap) to the real images.

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

from pipeline.models import ToneMap

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
