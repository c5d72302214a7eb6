"""Did the refiner collapse? Contrast and diversity of refined images.

An adversarial run can end with a refiner that maps every image to a flat picture
(seen: all black, when D overpowered the refiner) or to one picture whatever the input.
D then wins easily and the losses alone do not say what happened; refining a data set
with that refiner would erase it. Two figures show it: contrast (pixel spread within an
image) and diversity (pixel spread across images).

They are compared with the lower of the synthetic and the real images' own figures:
a refiner may rightly lower the contrast towards faint real images, but not far below
both.
"""

from __future__ import annotations

import numpy as np

# A refiner whose images keep less than this share of the lower of the synthetic and
# real contrast (or diversity) is called collapsed. Refiners that helped downstream
# models kept 0.75-1.0 of it; the collapsed runs seen kept 0.3 or less.
MIN_KEPT = 0.5


def contrast(images: np.ndarray) -> float:
    return float(images.std(axis=(1, 2, 3)).mean())


def diversity(images: np.ndarray) -> float:
    return float(images.std(axis=0).mean())


def collapse_figures(synthetic: np.ndarray, refined: np.ndarray, real: np.ndarray) -> dict:
    """Contrast and diversity of the three sets (N x C x H x W in [0, 1]) and the verdict."""
    figures = {
        "synthetic_contrast": contrast(synthetic),
        "refined_contrast": contrast(refined),
        "real_contrast": contrast(real),
        "synthetic_diversity": diversity(synthetic),
        "refined_diversity": diversity(refined),
        "real_diversity": diversity(real),
        "mean_abs_change": float(np.abs(refined - synthetic).mean()),
    }
    floor_contrast = MIN_KEPT * min(figures["synthetic_contrast"], figures["real_contrast"])
    floor_diversity = MIN_KEPT * min(figures["synthetic_diversity"], figures["real_diversity"])
    figures["collapsed"] = bool(
        figures["refined_contrast"] < floor_contrast or figures["refined_diversity"] < floor_diversity
    )
    return figures


def describe(figures: dict) -> str:
    """One sentence for a collapsed refiner's figures."""
    return (
        f"its images keep contrast {figures['refined_contrast']:.3f} (synthetic {figures['synthetic_contrast']:.3f}, "
        f"real {figures['real_contrast']:.3f}) and diversity {figures['refined_diversity']:.3f} "
        f"(synthetic {figures['synthetic_diversity']:.3f}, real {figures['real_diversity']:.3f})"
    )
