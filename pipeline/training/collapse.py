"""Did the refiner collapse? A check of the exported refiner on synthetic images.

An adversarial run can end with a refiner that maps every image to a flat picture
(seen: all black, after a run with a 4x slower refiner learning rate) or to one picture
whatever the input. D then wins easily and the losses alone do not say what happened;
refining a data set with that file would erase it. The check compares refined with
synthetic images on two figures: contrast (pixel spread within an image) and diversity
(pixel spread across images).
"""

from __future__ import annotations

import json
import os

import numpy as np
import torch

from pipeline.models import refine_array

CHECK_FILE = "refiner_check.json"
# A refiner that keeps less than this share of the synthetic images' contrast or
# diversity is called collapsed. The demo's digit refiners keep 0.75-0.95 of both.
MIN_KEPT = 0.25


def refiner_check(refiner: torch.nn.Module, synthetic: np.ndarray, batch_size: int = 256) -> dict:
    """Figures comparing `refiner(synthetic)` with `synthetic` (N x C x H x W in [0, 1])."""
    refined = refine_array(refiner, synthetic, batch_size)
    figures = {
        "images": int(len(synthetic)),
        "synthetic_contrast": float(synthetic.std(axis=(1, 2, 3)).mean()),
        "refined_contrast": float(refined.std(axis=(1, 2, 3)).mean()),
        "synthetic_diversity": float(synthetic.std(axis=0).mean()),
        "refined_diversity": float(refined.std(axis=0).mean()),
        "mean_abs_change": float(np.abs(refined - synthetic).mean()),
    }
    figures["collapsed"] = bool(
        figures["refined_contrast"] < MIN_KEPT * figures["synthetic_contrast"]
        or figures["refined_diversity"] < MIN_KEPT * figures["synthetic_diversity"]
    )
    return figures


def write_check(run_dir: str, figures: dict) -> str | None:
    """Save the figures beside the run; returns a warning to show when the refiner collapsed."""
    with open(os.path.join(run_dir, CHECK_FILE), "w") as handle:
        json.dump(figures, handle, indent=2)
    if not figures["collapsed"]:
        return None
    return (
        f"WARNING: the refiner collapsed. On {figures['images']} synthetic images its output keeps "
        f"contrast {figures['refined_contrast']:.3f} of {figures['synthetic_contrast']:.3f} and diversity "
        f"{figures['refined_diversity']:.3f} of {figures['synthetic_diversity']:.3f} (mean change "
        f"{figures['mean_abs_change']:.3f}): refining a data set with it would flatten the images. "
        f"Look at {os.path.join(run_dir, 'samples')}, and train a new run with other options "
        "(a higher self_reg_weight, other learning rates, fewer iterations)."
    )
