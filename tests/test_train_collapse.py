"""The collapse figures: working refiners pass, flat or constant ones are caught, and a
refiner may lower contrast towards faint real images without being called collapsed."""

import numpy as np
import torch
from torch import nn

from pipeline.models import Refiner, refine_array, refiner_preset
from pipeline.training.collapse import collapse_figures


def digits_like(n=64, seed=0):
    rng = np.random.default_rng(seed)
    images = np.zeros((n, 1, 12, 12), np.float32)
    for image in images:
        top, left = rng.integers(1, 5, size=2)
        image[0, top : top + 6, left : left + 2] = 1.0  # a stroke somewhere
    return images


class SameImage(nn.Module):
    """Mode collapse: one non-flat picture whatever the input."""

    def forward(self, x):
        pattern = torch.zeros(x.shape[1:])
        pattern[..., 3:9, 5:7] = 1.0
        return pattern.expand_as(x).clone()


def test_a_near_identity_refiner_passes():
    torch.manual_seed(0)
    synthetic, real = digits_like(), digits_like(seed=1)
    figures = collapse_figures(synthetic, refine_array(Refiner(refiner_preset("digits")), synthetic), real)
    assert not figures["collapsed"]
    assert abs(figures["refined_contrast"] - figures["synthetic_contrast"]) < 0.05


def test_a_refiner_that_blacks_out_every_image_is_caught():
    refiner = Refiner(refiner_preset("digits"))
    with torch.no_grad():
        refiner.conv_out.bias.fill_(-30.0)
    synthetic = digits_like()
    figures = collapse_figures(synthetic, refine_array(refiner, synthetic), digits_like(seed=1))
    assert figures["collapsed"] and figures["refined_contrast"] < 1e-3


def test_a_refiner_that_draws_one_picture_for_every_input_is_caught():
    synthetic = digits_like()
    figures = collapse_figures(synthetic, refine_array(SameImage(), synthetic), digits_like(seed=1))
    assert figures["refined_contrast"] > 0.5 * figures["synthetic_contrast"]  # not flat...
    assert figures["refined_diversity"] < 1e-6 and figures["collapsed"]  # ...but all the same


def test_fainter_images_are_judged_against_the_real_images_own_contrast():
    synthetic = digits_like()
    faint_real = 0.4 + 0.2 * digits_like(seed=1)  # grey paper, grey ink
    towards_real = 0.4 + 0.2 * synthetic
    assert not collapse_figures(synthetic, towards_real, faint_real)["collapsed"]
    # The same faint output is collapsed when the real images have full contrast.
    assert collapse_figures(synthetic, towards_real, digits_like(seed=1))["collapsed"]
